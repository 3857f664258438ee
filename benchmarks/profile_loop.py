"""Where ``Trainer.fit`` loses time against the native loop, on the current
backend: a cProfile of the tiny-MLP fit, then prototypes of proposed loop
changes applied by monkeypatching (the repo's loop files are not edited),
timed in rotated rounds against the unpatched Trainer and the native loop.

    KERAS_BACKEND=jax python -m benchmarks.profile_loop [--rounds 5] [--block-s 0.5]
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import io
import pstats
import statistics
import time
from typing import Any, Callable, Iterator

from benchmarks import _workloads as W
from benchmarks._arms import trainer_arm
from benchmarks._native import native_arm
from benchmarks._worker import _weights


@contextlib.contextmanager
def skip_idle_batch_hooks() -> Iterator[None]:
    """Proposal 1 (loops/trainer/loop.py, LoopMixin.fit/_run_evaluate): when no
    callback overrides a batch hook, do not call CallbackList's batch hooks:
    they pythonify the logs (a host sync per step on tensorflow/torch) or hand
    them to a thread pool (jax)."""
    import keras

    from loops.trainer.loop import LoopMixin

    original = LoopMixin._callback_list

    def patched(self: Any, *args: Any, **kwargs: Any) -> Any:
        cbs = original(self, *args, **kwargs)
        base = keras.callbacks.Callback
        for hook in ("on_train_batch_begin", "on_train_batch_end"):
            if all(getattr(type(cb), hook) is getattr(base, hook) for cb in cbs.callbacks) and all(
                    type(cb).on_batch_end is base.on_batch_end for cb in cbs.callbacks):
                setattr(cbs, hook, lambda *a, **k: None)
        return cbs

    LoopMixin._callback_list = patched  # type: ignore[method-assign]
    try:
        yield
    finally:
        LoopMixin._callback_list = original  # type: ignore[method-assign]


@contextlib.contextmanager
def host_batches_to_jit() -> Iterator[None]:
    """Proposal 2 (backends/jax/__init__.py, to_native): return the NumPy batch as is;
    jax.jit transfers it in its C++ dispatch path, cheaper than a Python-side
    ``jax.device_put`` of the whole nest."""
    from loops import backends

    engine = backends.get()
    if engine.NAME != "jax":
        yield
        return
    original = engine.to_native
    engine.to_native = lambda batch: batch
    try:
        yield
    finally:
        engine.to_native = original


VARIANTS: dict[str, Callable[[], Any]] = {
    "trainer": contextlib.nullcontext,
    "trainer+skip_hooks": skip_idle_batch_hooks,
    "trainer+host_batches": host_batches_to_jit,
    "trainer+both": lambda: _both(),
}


@contextlib.contextmanager
def _both() -> Iterator[None]:
    with skip_idle_batch_hooks(), host_batches_to_jit():
        yield


def main(argv: list[str] | None = None) -> int:
    import keras

    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--block-s", type=float, default=0.5)
    parser.add_argument("--workload", default="tiny_mlp", choices=["tiny_mlp", "mlp"])
    args = parser.parse_args(argv)
    w = W.TINY if args.workload == "tiny_mlp" else W.MLP
    weights, arrays = _weights(w), W.data(w, 64)
    arms: dict[str, Any] = {name: trainer_arm(w, weights, arrays) for name in VARIANTS}
    arms["native"] = native_arm(w, weights, arrays)
    for name, arm in arms.items():
        with VARIANTS.get(name, contextlib.nullcontext)():
            arm.run(1)  # compile and warm up
    prof = cProfile.Profile()
    prof.enable()
    arms["trainer"].run(4)
    prof.disable()
    text = io.StringIO()
    pstats.Stats(prof, stream=text).sort_stats("tottime").print_stats(18)
    print(f"== {keras.backend.backend()}: cProfile of Trainer.fit, {w.name}, 4 epochs x 64 steps (tottime) ==")
    print("\n".join(text.getvalue().splitlines()[6:30]))
    start = time.perf_counter()
    arms["native"].run(1)
    epochs = max(1, round(args.block_s / (time.perf_counter() - start)))
    ms: dict[str, list[float]] = {name: [] for name in arms}
    names = list(arms)
    for r in range(args.rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            with VARIANTS.get(name, contextlib.nullcontext)():
                start = time.perf_counter()
                arms[name].run(epochs)
                ms[name].append(1e3 * (time.perf_counter() - start) / (epochs * 64))
    print(f"== {keras.backend.backend()} {w.name}: median ms/step over {args.rounds} rotated rounds, "
          f"median per-round ratio to native ==")
    for name in names:
        ratio = statistics.median(a / b for a, b in zip(ms[name], ms["native"]))
        print(f"{name:22s} {statistics.median(ms[name]):8.3f} ms/step   x{ratio:.2f} native")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
