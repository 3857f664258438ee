"""PyTorch engine: eager steps (``torch.compile`` on request), gradients from
``torch.autograd.grad``. Steps run under ``no_grad``; only the function given
to ``value_and_grad`` records a graph, so optimizer and metric updates never
do, and gradients never leak into other networks' ``.grad``.

Owns everything torch: this module (the protocol functions), ``capture.py``,
``policy.py`` and ``graph_passes.py`` (graph capture of compiled steps),
``compiled.py`` (``torch.compile``, for ``jit_compile=True``), ``optim.py``
(``torch.optim`` as a Keras optimizer) and ``distributed.py``
(``torch.distributed`` data parallelism, torchrun). May import torch, keras,
numpy and ``loops._keras_private``.
"""

from __future__ import annotations

import contextlib
import functools
import os
import threading
import time
from typing import Any, Callable, Iterator, Sequence

import keras
import numpy as np
import torch

from . import distributed as _dp
from . import capture, compiled, executors
from .distributed import data_parallel, replicas  # noqa: F401  (protocol functions)

NAME = "torch"

# Depth of value_and_grad calls on this thread: a nested call must build a
# differentiable graph (create_graph) so the outer call can differentiate it.
_nesting = threading.local()


class _Runner:
    def __init__(self, variables: Sequence[keras.Variable]):
        self.variables = list(variables)
        self.captured: dict[str, capture.CapturedStep] = {}  # by kind: the steps expect() informs

    def compile(self, fn: Callable[[Any], Any], *, eager: bool, jit_compile: bool,
                on_trace: Callable[[Any], None] | None = None, kind: str = "train",
                checks: bool = False) -> Callable[[Any], Any]:
        del checks  # trace_only never takes the first step here: its checks ran eagerly
        gather = kind == "predict" and _dp.active()  # each process predicted its rows

        def body(batch: Any) -> Any:
            with torch.no_grad():
                out = fn(batch)
                return _dp.gather_rows(out) if gather else out

        def step(batch: Any) -> Any:
            start = time.perf_counter()
            out = body(batch)
            executors.collect_cycles(time.perf_counter() - start)
            return out

        if eager:
            return step  # nothing is traced, so on_trace is never called
        if not jit_compile:
            if _dp.active():
                return step  # the gradient all-reduce runs eagerly (DDP's hooks)
            # The compiled mode: one call is captured as an aten graph (when,
            # policy.py decides from expect()), later calls replay it (capture.py).
            self.captured[kind] = capture.CapturedStep(fn, self.variables, on_trace)
            return self.captured[kind]
        # (torch.compile takes the body alone: a clock read or gc.collect inside
        # would break its graph and guard on the clock's value, recompiling at every call)
        return compiled.step(body, on_trace)

    def expect(self, kind: str, calls: int | None) -> None:
        # Capture pays off only over many calls: the policy weighs the plan (policy.py).
        step = self.captured.get(kind)
        if step is not None:
            step.expect(calls)

    def sync(self) -> None:
        return None


def make_runner(variables: Sequence[keras.Variable]) -> _Runner:
    _dp.broadcast_state(variables)  # data parallel: every process starts from rank 0's state
    return _Runner(variables)


def value_and_grad(
    fn: Callable[..., Any],
    variables: Sequence[keras.Variable],
    *,
    inputs: Sequence[Any] = (),
    has_aux: bool,
    state: Sequence[keras.Variable],
    detect_unused: bool = False,
) -> tuple[Any, list[Any]]:
    del state, detect_unused  # stateful engine; autograd reports None itself
    # An input already in a graph (nested call) stays connected; a plain
    # tensor becomes a leaf that records its uses.
    inputs = [t if t.requires_grad else t.detach().requires_grad_(True) for t in inputs]
    targets = [v.value for v in variables] + inputs
    depth = getattr(_nesting, "depth", 0)
    checks_only = getattr(_nesting, "checks_only", False)
    # The checks' forward-only pass records the graph's structure, not the
    # tensors a backward pass would read (the activations: none are kept, and
    # pytree's reference cycles would hold them until gc); a nested call
    # differentiates, with its own tensors.
    saved = (torch.autograd.graph.saved_tensors_hooks(_nothing, _nothing) if checks_only and depth == 0 else
             torch.autograd.graph.saved_tensors_hooks(_same, _same) if checks_only else contextlib.nullcontext())
    _nesting.depth = depth + 1
    try:
        with torch.enable_grad(), saved:
            out = fn(*inputs)
    finally:
        _nesting.depth = depth
    loss = out[0] if has_aux else out
    if not loss.requires_grad:
        return out, [None] * len(targets)
    nested = depth > 0
    if not nested and checks_only:
        # The discarded first step: which targets the loss reaches, from its
        # graph; no backward pass (its results would be thrown away).
        reached = _reached(loss, targets)
        return out, [torch.zeros_like(t) if r else None for t, r in zip(targets, reached)]
    grads: list[Any] = list(torch.autograd.grad(
        loss,
        targets,
        allow_unused=True,
        create_graph=nested,
        retain_graph=nested,
    ))
    if not nested:  # data parallel: the global batch's gradient (DDP's all-reduce)
        grads[:len(variables)] = _dp.mean_gradients(grads[:len(variables)])
    return out, grads


def _nothing(value: Any) -> Any:
    return None


def _same(value: Any) -> Any:
    return value


def _reached(loss: Any, targets: Sequence[Any]) -> list[bool]:
    """Which of ``targets`` ``loss``'s autograd graph reaches: those
    ``torch.autograd.grad(..., allow_unused=True)`` gives a gradient (a leaf
    through its ``AccumulateGrad`` node, a non-leaf through its ``grad_fn``)."""
    leaves: set[int] = set()
    nodes: set[Any] = set()
    stack = [loss.grad_fn]
    while stack:
        node = stack.pop()
        if node is None or node in nodes:
            continue
        nodes.add(node)
        variable = getattr(node, "variable", None)  # AccumulateGrad: the leaf it feeds
        if variable is not None:
            leaves.add(id(variable))
        stack.extend(next_node for next_node, _ in node.next_functions)
    return [(t.grad_fn in nodes) if t.grad_fn is not None else id(t) in leaves for t in targets]


@contextlib.contextmanager
def checks_only() -> Iterator[bool]:
    # value_and_grad above: the reached targets get zeros, nothing is differentiated
    previous = getattr(_nesting, "checks_only", False)
    _nesting.checks_only = True
    try:
        yield True  # reach is read from the autograd graph
    finally:
        _nesting.checks_only = previous


def traces(eager: bool, jit_compile: bool) -> bool:
    # Captured (see capture.py): the Python runs once per input signature
    # (unless the capture fails: then eagerly, and tracing() says so).
    # torch.compile replays the Python's side effects at every call.
    return not eager and not jit_compile


def tracing() -> bool:
    # Under torch.compile a print breaks the graph and runs at every call.
    return capture.capturing()


def trace_only(fn: Callable[[Any], Any], batch: Any) -> bool:
    del fn, batch
    return False  # an eager step is cheap here: the first-step checks run on values


def outside_trace() -> contextlib.AbstractContextManager[None]:
    return contextlib.nullcontext()


def host_values(fn: Callable[..., None], tensors: Sequence[Any]) -> None:
    if torch.compiler.is_compiling():
        return  # dynamo is tracing: no values
    def host(t: Any) -> Any:
        if not isinstance(t, torch.Tensor):
            return np.asarray(t)
        t = t.detach().cpu()
        return (t.float() if t.dtype == torch.bfloat16 else t).numpy()  # NumPy has no bfloat16

    fn(*[host(t) for t in tensors])


# NumPy dtypes torch holds as they are (keras.ops.convert_to_tensor keeps them too).
_SAME_DTYPES = {np.dtype(d) for d in ("float16", "float32", "float64", "int8", "int16", "int32", "int64",
                                      "uint8", "bool", "complex64", "complex128")}


def _tensor(value: Any) -> Any:
    if value is None:
        return None
    if not isinstance(value, np.ndarray):
        from loops._keras_private import is_sparse

        if is_sparse(value):
            raise ValueError(
                f"Sparse inputs ({type(value).__module__}.{type(value).__name__}) are not supported on the "
                "torch backend (Keras's model.fit does not take them there either). Densify them first "
                "(x.toarray() for SciPy, tf.sparse.to_dense, bcoo.todense()), or train on jax or tensorflow.")
    if not isinstance(value, np.ndarray) or value.dtype not in _SAME_DTYPES:
        return keras.ops.convert_to_tensor(value)
    # A fresh array (a shuffled batch) is wrapped without a copy; a view of
    # the caller's data is copied, so a step writing into its inputs cannot
    # write into the caller's arrays. (keras.ops.convert_to_tensor costs
    # ~25 us per array here, most of it not the copy.)
    own = value.flags.owndata and value.flags.writeable and value.flags.c_contiguous
    tensor = torch.from_numpy(value if own else np.array(value, order="C"))
    device = _keras_device()
    return tensor if device == "cpu" else tensor.to(device)


@functools.cache
def _keras_device() -> str:
    from loops._keras_private import torch_core

    return str(torch_core().get_device())


def to_native(batch: Any) -> Any:
    return keras.tree.map_structure(_tensor, batch)


def to_step_input(batch: Any) -> Any:
    return to_native(batch)


def step_context() -> contextlib.AbstractContextManager[None]:
    return torch.no_grad()


def resolve_jit_compile(value: bool | str) -> bool:
    # As Keras: "auto" means eager on torch.
    return False if value == "auto" else bool(value)


def set_deterministic(enabled: bool) -> None:
    if enabled:
        # cuBLAS needs a fixed workspace for deterministic matmuls on CUDA
        # (read when cuBLAS initializes: set it early); harmless on CPU.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(enabled)
    torch.backends.cudnn.deterministic = enabled
    if enabled:
        torch.backends.cudnn.benchmark = False


def prepare_optimizer(optimizer: Any) -> None:
    # Keras's torch SGD and Adadelta pass the learning rate, a tensor, as a
    # foreach op's `alpha`, which torch reads as a Python number: a captured
    # step (see capture.py) cannot hold that. Their per-variable update_step
    # (keras.ops, the rate stays a tensor) is the same rule.
    if isinstance(optimizer, (keras.optimizers.SGD, keras.optimizers.Adadelta)) \
            and hasattr(optimizer, "_parallel_update_step") and "_backend_update_step" not in vars(optimizer):
        from loops._keras_private import backend_update_step

        optimizer._backend_update_step = functools.partial(backend_update_step(), optimizer)


def wrap_native_optimizer(native: Any, options: dict[str, Any]) -> Any:
    from .optim import TorchOptimizer

    kwargs = dict(options)
    cls = native
    if isinstance(native, functools.partial):  # functools.partial(torch.optim.Adam, lr=1e-3)
        if native.args:
            raise TypeError("Pass a torch optimizer's arguments by keyword: functools.partial(torch.optim.Adam, lr=1e-3).")
        cls = native.func
        kwargs = {**native.keywords, **kwargs}
    if isinstance(cls, type) and issubclass(cls, torch.optim.Optimizer):
        return TorchOptimizer(cls, **kwargs)
    if isinstance(native, torch.optim.Optimizer):
        raise TypeError(
            f"Pass the torch optimizer's class, not an instance ({type(native).__name__} over some "
            f"parameters): loops.optimizers.from_torch(torch.optim.{type(native).__name__}, lr=...) creates "
            "it over the Keras model's variables.")
    return None


def loop_steps(step: Callable[[Any], Any], variables: Sequence[keras.Variable]) -> Callable[[Any], Any]:
    # No graph capture on torch: the k steps run as a Python loop inside one
    # call (one transfer of the stacked batches; torch.compile, with
    # jit_compile=True, compiles the loop body).
    del variables

    def run(stacked: Any) -> Any:
        first = next(t for t in keras.tree.flatten(stacked) if t is not None)
        logs = None
        for i in range(int(first.shape[0])):
            logs = step(keras.tree.map_structure(lambda t, i=i: None if t is None else t[i], stacked))
        return logs

    return run


def prefetch_default() -> int:
    # On CPU the prefetch thread only wraps NumPy arrays (torch.as_tensor, no
    # copy) and its hand-off competes with the step's intra-op threads
    # (measured on 2 cores: MLP 1.18x -> 1.10x, CNN 1.36x -> 1.06x the
    # native loop); on a GPU it overlaps the host-to-device copy.
    return 1 if torch.cuda.is_available() else 0


def rng_state() -> dict[str, Any]:
    # An unseeded keras Dropout/noise layer on torch calls torch's own
    # functional ops, which draw from torch's global generators.
    state = {"torch_cpu": torch.get_rng_state().numpy()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            state[f"torch_cuda_{i}"] = s.numpy()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    if "torch_cpu" in state:
        torch.set_rng_state(torch.from_numpy(np.asarray(state["torch_cpu"], dtype=np.uint8)))
    cuda = [state[f"torch_cuda_{i}"] for i in range(torch.cuda.device_count()) if f"torch_cuda_{i}" in state]
    if cuda and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([torch.from_numpy(np.asarray(s, dtype=np.uint8)) for s in cuda])


def take_rows(leaf: Any, index: Any) -> Any:
    return leaf[index]


def concat_rows(parts: Sequence[Any]) -> Any:
    return np.concatenate(parts, axis=0)


def compilation_cache(directory: str) -> str | None:
    del directory  # (captured graphs are per process; torch.compile keeps its own cache already)
    return None
