"""How a captured torch graph is run: its FX code or a TorchScript trace of
it, whichever measures faster (``capture.CapturedStep`` decides), and the
trial runs that measure and check them without leaving a trace."""

from __future__ import annotations

import contextlib
import gc
import os
import time
import warnings
from typing import Any, Callable, Iterator, Sequence

import torch
from torch.utils import _pytree as pytree

# TorchScript's trace and its first (profiling) runs hold every intermediate
# of the step at once: a one-time host-memory peak of about the sum of the
# graph's intermediate tensors (measured: 13.7 MB of them, an MLP 1024-256-10
# train step at batch 256, gave +12.7 MB in the trace and +17.9 MB in the first
# run; before this bound, +226 MB for a 48 MB state). Above this sum the FX
# graph runs, whose peak is the eager step's, so a capture never holds more
# than ``model.fit`` beyond allocator noise (benchmarks/memory.py).
TORCHSCRIPT_MAX_HELD_BYTES = 4 * 2**20


def held_bytes(graph: torch.fx.GraphModule) -> int:
    """The bytes of every tensor the graph's ops produce (from the fake
    values the trace left on its nodes; 0 for a node without one)."""
    total = 0
    for node in graph.graph.nodes:
        if node.op == "call_function":
            for value in pytree.tree_leaves(node.meta.get("val")):
                if isinstance(value, torch.Tensor):
                    total += value.numel() * value.element_size()
    return total


def on_gpu(tensors: Sequence[Any]) -> bool:
    return any(isinstance(t, torch.Tensor) and t.device.type != "cpu" for t in tensors)


def torchscript(graph: Any, tensors: list[Any], inputs: list[Any]) -> Callable[[list[Any], list[Any]], Any] | None:
    """The graph as a TorchScript trace, or None. TorchScript's interpreter
    runs the ops from C++: on the MLP benchmark the step is ~12% faster than
    the FX graph's generated Python, on the tiny MLP ~30%. ``torch.jit.trace``
    is deprecated (torch 2.13 says so), so this is an executor, not a
    dependency: where it is missing, fails, or does not reproduce the
    captured step, or the step's intermediates are over
    ``TORCHSCRIPT_MAX_HELD_BYTES`` (its memory peak), the FX graph runs.
    CPU steps only: on an H200 a traced step's second run took ~45 MB more
    host memory (fusers off too; the same step as FX code none), and the FX
    replay was as fast there (benchmarks/memory.py's evaluate 0.3 s, fit
    1.2 s, either way). ``LOOPS_TORCH_REPLAY=fx`` turns it off everywhere,
    ``LOOPS_TORCH_REPLAY=torchscript`` tries it on a GPU too."""
    mode = os.environ.get("LOOPS_TORCH_REPLAY", "").strip().lower()
    if mode not in ("", "auto", "fx", "torchscript"):
        raise ValueError(f"LOOPS_TORCH_REPLAY must be one of auto, fx, torchscript; got {mode!r}.")
    if mode == "fx" or not hasattr(torch.jit, "trace") or held_bytes(graph) > TORCHSCRIPT_MAX_HELD_BYTES \
            or (mode != "torchscript" and on_gpu([*tensors, *inputs])):
        return None
    try:
        # Tracing runs the step once, on copies: its random draws must not count.
        with trial_run(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # its deprecation notice, and tracer hints
            scratch = tuple(t.detach().clone() for t in tensors)
            traced = torch.jit.trace(lambda state, batch: graph(list(state), list(batch)),
                                     (scratch, tuple(inputs)), check_trace=False, strict=False)
    except Exception:  # noqa: BLE001 - any failure: keep the FX graph
        return None

    def run(state: list[Any], batch: list[Any]) -> Any:
        # Without the profiling executor's optimizing passes: the same speed
        # on CPU (an MLP step: 0.60 ms either way, FX code 0.86 ms), and its
        # first runs allocate ~10 MB less (benchmarks/memory.py's evaluate).
        with torch.jit.optimized_execution(False):
            return traced(tuple(state), tuple(batch))

    return run


def best_times(fns: Sequence[Callable[..., Any]], state: list[Any], inputs: list[Any], runs: int = 3,
               budget_s: float = 0.5) -> list[float]:
    """Each replay's best time over ``runs`` runs (interleaved, on copies of
    the state; the RNG is put back). TorchScript's interpreter wins on small
    ops (MLPs: ~12%) and loses on convolution graphs with channels-last views
    (~12% on the benchmark CNN), and a replay can lose to the eager step (a
    long recurrence), so the executors are measured rather than assumed. A
    step over ``budget_s`` ends the race (compute-bound). A failing one: inf."""
    scratch = [t.detach().clone() for t in state]
    best = [float("inf")] * len(fns)
    with trial_run():
        for _ in range(runs):
            for i, fn in enumerate(fns):
                start = time.perf_counter()
                try:
                    out = fn(scratch, inputs)
                except Exception:  # noqa: BLE001 - a failing executor is not faster
                    best[i] = float("inf")
                    return best
                for leaf in pytree.tree_leaves(out):  # waits for the device, where there is one
                    if isinstance(leaf, torch.Tensor) and leaf.is_cuda:
                        torch.cuda.synchronize(leaf.device)
                        break
                best[i] = min(best[i], time.perf_counter() - start)
                if best[i] > budget_s:
                    return best
    return best


@contextlib.contextmanager
def trial_run(start: Any = None) -> Iterator[None]:
    """A run of the step that must leave no trace: under ``no_grad``, from
    the random state ``start`` if given, with torch's RNG put back after."""
    now = rng_state()
    if start is not None:
        set_rng_state(start)
    try:
        with torch.no_grad():
            yield
    finally:
        set_rng_state(now)


def rng_state() -> Any:
    return torch.get_rng_state(), (torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None)


def set_rng_state(state: Any) -> None:
    cpu, cuda = state
    torch.set_rng_state(cpu)
    if cuda is not None:
        torch.cuda.set_rng_state_all(cuda)


# Keras's torch tree utilities (``keras/src/tree/torchtree_impl.py``: closures
# over a layer's inputs, in reference cycles) leave garbage that holds an
# eager step's activations until Python's cyclic collector next runs, which
# can be several steps later: on the realistic ResNet (full size, eager,
# 2 CPU cores) peak RSS grew 253 MB in an epoch, 186 MB with the young
# generations collected after each step, at 0.2-0.3 ms a step (of ~80 ms).
# model.fit has the same cycles (219 MB; 176 collected). So an eager step
# that took at least CYCLES_AFTER_S collects them; shorter steps hold small
# activations, and the collection would be a visible share of their time.
CYCLES_AFTER_S = 0.01


def collect_cycles(step_seconds: float) -> None:
    """After an eager step of ``step_seconds``: Python's young generations
    collected (the step's cyclic garbage, with the tensors it holds)."""
    if step_seconds >= CYCLES_AFTER_S:
        gc.collect(1)
