"""Graph capture for torch steps: the compiled mode of the torch engine.

Keras layers, losses, metrics and optimizers cost far more Python per call on
torch than the tensor work they do (a Dense layer's ``__call__`` is ~50 µs of
bookkeeping around one matmul). jax and tensorflow trace that Python once and
then run a graph; this module gives torch the same: one call for each input
signature (when, ``policy.py`` decides: not the first) runs under ``make_fx``
(the tracer AOTAutograd is built on), which records every aten operation the
step performs, forward, backward and the optimizer's in-place updates alike.
The trace runs on fake tensors standing in for the variables and the batch
(``FakeTensorMode``: shapes and dtypes, no data), so it allocates nothing
for the step's intermediates and changes no variable; the graph then runs
once on the live tensors, and that run is the capturing call's step. Later
calls replay it the same way: no Keras Python runs, the updates land in
place, as in eager mode. It is not ``torch.compile``: nothing is generated
or fused; the replay runs the ops eager mode runs (less ``detach``, folded
constants and dead ops; and, where a replay from the step's starting state
shows the same results, without Keras's memory-format copies around
convolutions and pools).

What a graph cannot hold is a value the step reads back into Python
(``.item()``, ``bool(t)``, ``.numpy()``: a Python ``if`` on a tensor, a
Keras ``SeedGenerator`` seeding a ``torch.Generator``). The capture stops at
the first such read and that step then runs eagerly for good (a warning
names the read); so does a step the trace or the graph's first run fails
on, unless the eager step fails too: then its error is raised, as Keras's
torch loop raises it (a label out of range, say, which fake tensors cannot
see).
"""

from __future__ import annotations

import contextlib
import copy
import re
import threading
import time
import traceback
import warnings
from typing import Any, Callable, Sequence

import keras
import torch
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.fx.experimental.proxy_tensor import make_fx
from torch.overrides import TorchFunctionMode
from torch.utils import _pytree as pytree
from torch.utils._python_dispatch import TorchDispatchMode

from . import executors, graph_passes
from .executors import rng_state as _rng_state, set_rng_state as _set_rng_state, trial_run as _trial_run
from .policy import Policy

_aten = torch.ops.aten

# Ops that hand a tensor's value to Python: a graph would bake the value in.
_HOST_READS = {_aten._local_scalar_dense.default, _aten.item.default, _aten.is_nonzero.default,
               _aten.equal.default}

_state = threading.local()


def capturing() -> bool:
    """True while a step is being captured on this thread."""
    return getattr(_state, "capturing", False)


class HostRead(Exception):
    """The step read a tensor's value into Python while being captured."""


class _RefuseHostReads(TorchDispatchMode):
    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        if func in _HOST_READS:
            raise HostRead(f"{func.name()}")
        return func(*args, **(kwargs or {}))


# torch's fused recurrent kernels (cuDNN's on a GPU, oneDNN's on CPU): a
# trace records them as their per-timestep decomposition, which replays
# slower than the fused kernel (an LSTM of 64 steps on an H200: 54 ms a
# step captured, 12 ms eagerly; Keras's torch LSTM/GRU call them on a GPU).
_FUSED_RECURRENCE = frozenset(getattr(torch, name) for name in ("lstm", "gru", "rnn_tanh", "rnn_relu")
                              if hasattr(torch, name))


class _WatchFusedRecurrence(TorchFunctionMode):
    """Notes whether the step calls a fused recurrent kernel (``found``: its name)."""

    found: str | None = None

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        if func in _FUSED_RECURRENCE:
            self.found = f"torch.{func.__name__}"
        return func(*args, **(kwargs or {}))


class _NoTensorExport:
    """``Tensor.numpy()`` / ``.tolist()`` dispatch no op: refused while capturing."""

    names = ("numpy", "tolist", "__array__")

    def __enter__(self) -> None:
        self.saved = {name: getattr(torch.Tensor, name) for name in self.names}
        for name, original in self.saved.items():
            setattr(torch.Tensor, name, _refuse(name, original))

    def __exit__(self, *exc: Any) -> None:
        for name, method in self.saved.items():
            setattr(torch.Tensor, name, method)


def _refuse(name: str, original: Callable[..., Any]) -> Callable[..., Any]:
    def method(self: Any, *args: Any, **kwargs: Any) -> Any:
        if capturing():  # this thread's step; other threads (data loading) are not affected
            raise HostRead(f"Tensor.{name}()")
        return original(self, *args, **kwargs)

    return method


class _CapturableKeras:
    """Keras torch functions that read values, replaced while capturing by
    equivalents a graph can hold (other threads and eager steps get the
    originals). ``keras.ops.cond`` (a Python ``if`` on the predicate on
    torch): when neither branch writes state (a learning-rate warm-up, a
    loss's case split) both are computed and selected with ``torch.where``,
    as XLA lowers a small ``cond``; a branch that assigns variables (gradient
    accumulation, loss scaling) cannot be selected after the fact: the step
    runs eagerly. ``one_hot``: torch checks the labels' range with two value
    reads; a comparison with ``arange`` builds the same matrix."""

    def __init__(self, tensors: Sequence[Any]):
        self.tensors = tensors

    def __enter__(self) -> None:
        from loops._keras_private import torch_core as _torch_core

        torch_core = _torch_core(capture=True)

        self.core = torch_core
        self.saved_cond, self.saved_one_hot = torch_core.cond, torch.nn.functional.one_hot
        original_cond, original_one_hot = self.saved_cond, self.saved_one_hot
        tensors = self.tensors

        def cond(pred: Any, true_fn: Callable[[], Any], false_fn: Callable[[], Any]) -> Any:
            if not capturing() or not isinstance(pred, torch.Tensor):
                return original_cond(pred, true_fn, false_fn)
            versions = [t._version for t in tensors]
            with keras.StatelessScope() as scope:  # records assignments instead of applying them
                if_true, if_false = true_fn(), false_fn()
            if scope.state_mapping or [t._version for t in tensors] != versions:
                raise HostRead("keras.ops.cond whose branches assign variables")
            return keras.tree.map_structure(
                lambda a, b: torch.where(pred.bool(), torch.as_tensor(a), torch.as_tensor(b)), if_true, if_false)

        def one_hot(x: Any, num_classes: int = -1) -> Any:
            if not capturing() or num_classes < 0:
                return original_one_hot(x, num_classes)
            return (x.unsqueeze(-1) == torch.arange(num_classes, device=x.device)).long()

        torch_core.cond = cond
        torch.nn.functional.one_hot = one_hot  # type: ignore[assignment]

    def __exit__(self, *exc: Any) -> None:
        self.core.cond = self.saved_cond
        torch.nn.functional.one_hot = self.saved_one_hot


def _where_in_user_code(error: BaseException) -> tuple[str, bool]:
    """Where the read is (innermost frame outside torch and Keras); whether a Keras random op's."""
    frames = traceback.extract_tb(error.__traceback__)
    paths = [frame.filename.replace("\\", "/") for frame in frames]
    from_random = any("/keras/src/random/" in path for path in paths)
    for frame, path in zip(reversed(frames), reversed(paths)):
        if not any(part in path for part in ("/torch/", "/keras/", "/backends/torch/")):
            return f"{frame.filename}:{frame.lineno} ({frame.line})", from_random
    return "unknown location", from_random


MAX_GRAPHS = 8


class CapturedStep:
    """``step(batch)`` that captures ``fn`` on an input signature when the
    policy says so (``policy.py``) and replays the graph; runs ``fn`` itself
    (eagerly) before that, and where it cannot capture or a graph is slower."""

    def __init__(self, fn: Callable[[Any], Any], variables: Sequence[keras.Variable],
                 on_trace: Callable[[Any], None] | None = None):
        self.fn = fn
        self.variables = list(variables)
        self.on_trace = on_trace
        self.graphs: dict[Any, Any] = {}
        self.policy = Policy()
        self.eager_reason: str | None = None  # set when capture failed: every call runs eagerly
        self.fused_recurrence: str | None = None  # a fused RNN kernel the step calls: it stays eager
        self.warned_too_many = False
        # Eager calls are timed for the policy; on a GPU a host clock times the
        # launch, not the step, so the first few calls of a signature (all the
        # policy reads) wait for the device before and after.
        self.on_gpu = any(v._value.is_cuda for v in self.variables[:1])

    def expect(self, calls: int | None) -> None:
        """The run that starts plans ``calls`` calls of this step (None: unknown)."""
        self.policy.expect(calls)

    def __call__(self, batch: Any) -> Any:
        self.policy.tick()
        if self.eager_reason is not None:
            return self._eager(batch)
        leaves, spec = pytree.tree_flatten(batch)
        try:
            key = (spec, tuple((t.shape, t.dtype, t.device) if isinstance(t, torch.Tensor) else ("v", t)
                               for t in leaves))
            hash(key)
        except TypeError:  # an unhashable non-tensor leaf: nothing to key a graph on
            return self._eager(batch)
        graph = self.graphs.get(key)
        if graph is None:
            if not self.policy.capture(key):
                return self._eager(batch, key)
            if len(self.graphs) >= MAX_GRAPHS:
                return self._too_many(batch)
            return self._capture(key, batch, leaves, spec, [v._value for v in self.variables])
        with torch.no_grad():
            return graph([v._value for v in self.variables], [t for t in leaves if isinstance(t, torch.Tensor)])

    def _too_many(self, batch: Any) -> Any:
        if not self.warned_too_many:
            self.warned_too_many = True
            warnings.warn(
                f"This step has been captured for {MAX_GRAPHS} different input shapes/dtypes; batches of "
                "any further shape run eagerly (capturing costs more than an eager step, so a stream of "
                "new shapes would be slower captured). Pad or bucket inputs to a few shapes.", stacklevel=4)
        return self._eager(batch)

    def _eager(self, batch: Any, key: Any = None) -> Any:
        timed = key is not None and (not self.on_gpu or self.policy.wants_time(key))
        if timed and self.on_gpu:
            torch.cuda.synchronize()
        # A signature's first call (its warm-up, not counted in the timings)
        # is watched for fused recurrent kernels: a step calling one stays
        # eager, without paying for a capture the timings would then drop.
        watch = _WatchFusedRecurrence() if key is not None and self.policy.first_call(key) else None
        start = time.perf_counter()
        with torch.no_grad(), watch or contextlib.nullcontext():
            out = self.fn(batch)
        if watch is not None and watch.found:
            self.fused_recurrence = watch.found
            self.policy.refuse(key)
        if timed:
            if self.on_gpu:
                torch.cuda.synchronize()
            self.policy.timed(key, time.perf_counter() - start)
        executors.collect_cycles(time.perf_counter() - start)
        return out

    def _capture(self, key: Any, batch: Any, leaves: list[Any], spec: Any, tensors: list[Any]) -> Any:
        positions = [i for i, t in enumerate(leaves) if isinstance(t, torch.Tensor)]
        inputs = [leaves[i] for i in positions]

        def traced(state: list[Any], batch_tensors: list[Any]) -> Any:
            full = list(leaves)
            for i, t in zip(positions, batch_tensors):
                full[i] = t
            for v, t in zip(self.variables, state):  # the step reads and updates the stand-ins
                v._value = t
            try:
                with torch.no_grad(), _RefuseHostReads():
                    return self.fn(pytree.tree_unflatten(full, spec))
            finally:
                for v, t in zip(self.variables, tensors):
                    v._value = t

        rng = _rng_state()
        # The trace runs on fake tensors (shapes, no data): no memory for the
        # step's intermediates, no updates to undo if it fails. Traced on real
        # tensors, the allocator's heap grew ~10x past the step's own peak (1 GB
        # on an LSTM of 64 steps: make_fx's small objects pin the freed blocks).
        fake = FakeTensorMode(allow_non_fake_inputs=True)
        fake_state = [fake.from_tensor(t) for t in tensors]
        try:
            # Warnings the step's Python raises are held back: if the capture
            # fails, the eager rerun raises its own (print() inside a compiled
            # step warns only where the step really is traced).
            with warnings.catch_warnings(record=True) as held, _NoTensorExport(), _CapturableKeras(fake_state):
                warnings.simplefilter("always")
                _state.capturing = True
                try:
                    with fake:
                        graph = make_fx(traced)(fake_state, [fake.from_tensor(t) for t in inputs])
                finally:
                    _state.capturing = False
                    _set_rng_state(rng)
            for w in held:
                warnings.warn_explicit(w.message, w.category, w.filename, w.lineno, source=w.source)
        except HostRead as e:
            return self._host_read(e, batch)
        except Exception as e:  # noqa: BLE001 - the eager step raises the step's own error, if it has one
            return self._not_captured(batch, e)
        graph_passes.simplify(graph)
        saved = [t.detach().clone() for t in tensors]
        if self.on_gpu:
            torch.cuda.synchronize()
        start = time.perf_counter()
        try:
            with torch.no_grad():
                out = graph(tensors, inputs)  # the step itself
        except Exception as e:  # noqa: BLE001 - a value error (an index out of range): the eager step's message
            self._restore(tensors, saved, rng)
            return self._not_captured(batch, e)
        if self.on_gpu:
            torch.cuda.synchronize()
        if self.policy.hopeless(key, time.perf_counter() - start):
            return out  # far slower than its eager step: eager for good, without timing it again
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch's pytree specs, deep-copied
            candidate = copy.deepcopy(graph)
        if graph_passes.relayout(candidate) and self._reproduces(candidate, saved, rng, inputs, out, tensors):
            graph = candidate
        replay: Callable[[list[Any], list[Any]], Any] = graph
        if not self.policy.keep(key, executors.best_times([graph], saved, inputs, runs=2)[0]):
            return out  # slower than its eager step: eager for good (no TorchScript trace either)
        script = executors.torchscript(graph, tensors, inputs)
        if script is not None and self._reproduces(script, saved, rng, inputs, out, tensors):
            times = executors.best_times([script, graph], saved, inputs)
            replay = script if times[0] < times[1] else graph
        self.graphs[key] = replay
        if self.on_trace is not None:
            self.on_trace(batch)
        return out

    def _not_captured(self, batch: Any, error: Exception) -> Any:
        """The eager step, after a capture that failed with ``error``: where
        the step itself fails (a label out of range), that error is raised as
        Keras's torch loop raises it; where it runs, the step stays eager."""
        out = self._eager(batch)
        self.eager_reason = f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
        warnings.warn(f"torch could not capture this step as a graph ({self.eager_reason}); it runs eagerly, "
                      "as Keras's own torch loop does (slower). Pass Trainer(..., run_eagerly=True) to silence "
                      "this.", stacklevel=5)
        return out

    def _host_read(self, e: HostRead, batch: Any) -> Any:
        where, from_random = _where_in_user_code(e)
        # (Keras re-raises errors from a layer's call with its own message around ours.)
        found = re.search(r"aten::\w+|Tensor\.\w+\(\)|keras\.ops\.cond[^\n.]*", str(e))
        self.eager_reason = f"{found.group(0) if found else e} at {where}"
        if from_random:
            advice = ("Keras's seeded random ops (keras.random.* with a seed or SeedGenerator) seed a "
                      "torch.Generator from a tensor's value at every call. For noise a graph can hold, "
                      "call loops.set_seed(seed, neutral_random=True) first (random numbers a graph can "
                      "hold, the same on every backend), or pass the noise in the batch")
        else:
            advice = ("Keep values as tensors inside the step (keras.ops.where instead of an `if` on a "
                      "tensor, no .item() / float())")
        warnings.warn(
            f"This step reads a tensor's value into Python ({self.eager_reason}), so torch cannot run it "
            f"as a captured graph: it runs eagerly instead, as Keras's own torch loop does (slower). "
            f"{advice}; or pass Trainer(..., run_eagerly=True) to silence this.",
            stacklevel=5)
        return self._eager(batch)

    @staticmethod
    def _reproduces(graph: Any, before: list[Any], rng: Any, inputs: list[Any], outputs: Any,
                    after: list[Any]) -> bool:
        """Whether ``graph``, run from the state before the step (copies) and
        the same random state, gives the step's outputs and final state."""
        trial = [t.clone() for t in before]
        try:
            with _trial_run(start=rng):
                got = graph(trial, inputs)
            def close(a: Any, b: Any) -> bool:
                if not isinstance(a, torch.Tensor):
                    return True
                if a.shape != b.shape or a.dtype != b.dtype:
                    return False
                if not a.is_floating_point():
                    return bool(torch.equal(a, b))
                return bool(torch.allclose(a, b, rtol=1e-4, atol=1e-6, equal_nan=True))

            same_out = all(close(a, b) for a, b in zip(pytree.tree_leaves(got), pytree.tree_leaves(outputs)))
            return same_out and all(close(a, b) for a, b in zip(trial, after))
        except Exception:  # noqa: BLE001 - e.g. a view of what is no longer contiguous
            return False

    @staticmethod
    def _restore(tensors: list[Any], saved: list[Any], rng: Any) -> None:
        with torch.no_grad():
            for t, s in zip(tensors, saved):
                t.copy_(s)
        _set_rng_state(rng)
