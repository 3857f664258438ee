"""Where a torch Trainer step's time goes, against ``model.fit``: a diagnosis
(written for a GPU, runs anywhere).

    KERAS_BACKEND=torch python -m benchmarks.capture_diag [--workloads gpt,lstm,resnet]
        [--modes keras,never,first,auto] [--size full]

For each realistic workload (``benchmarks/_real_models.py``) and mode:
``keras`` is ``model.fit``; ``never``, ``first`` and ``auto`` are
``Trainer.fit`` with ``LOOPS_TORCH_CAPTURE`` set so (eager, captured at the
first call, the default policy over a run long enough to capture). Prints
ms/step (best of 3 epochs after a warm-up), what the captured step chose
(graphs, replay kind, the policy's eager timing, why it stayed eager), and a
profiler count over one epoch of what can stall the host on a GPU (stream
syncs, host-device copies, ``.item()``) and of the device's kernels.

What it showed on an H200 (``benchmarks/results/gpu_startup/torch/``): the
captured LSTM graph ran 4.6x slower than the eager step (the recurrence
unrolled without cuDNN), which the policy kept because on a GPU it did not
time the eager step; the GPT replay needed ~2 stream syncs a step where the
eager step needed ~8.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings
from typing import Any

WATCHED = ("cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaEventSynchronize", "aten::_local_scalar_dense",
           "cudaMemcpyAsync", "cudaMemcpy", "aten::_to_copy", "aten::copy_")
MODES = ("keras", "never", "first", "auto")


def _sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def captured_info(arm: Any) -> str:
    """The Trainer's captured steps: graphs, replay kinds, eager timings, eager reason."""
    runner = getattr(arm.fitter, "_runner", None)
    out = []
    for kind, step in getattr(runner, "captured", {}).items():
        kinds = sorted({getattr(g, "__qualname__", type(g).__name__) for g in step.graphs.values()})
        eager_ms = [round(v * 1e3, 2) for v in step.policy.eager_s.values()]
        out.append(f"{kind}: graphs={len(step.graphs)} {kinds} eager_ms={eager_ms} "
                   f"stay_eager={len(step.policy.stay_eager)} eager_reason={step.eager_reason}")
    return "; ".join(out) or "(model.fit)"


def profile_epoch(arm: Any) -> dict[str, Any]:
    """One epoch under torch's profiler: the watched events' counts, kernels and their time."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
    with profile(activities=activities) as prof:
        arm.run(1)
        _sync()
    counts = dict.fromkeys(WATCHED, 0)
    kernels, kernel_us = 0, 0.0
    for e in prof.events():
        if e.name in counts:
            counts[e.name] += 1
        if e.device_type == torch.autograd.DeviceType.CUDA:
            kernels += 1
            kernel_us += getattr(e, "device_time", 0) or 0
    return {"counts": {k: v for k, v in counts.items() if v}, "kernels": kernels, "kernel_ms": kernel_us / 1e3}


def measure(name: str, mode: str, size: str, profile: bool = True) -> dict[str, Any]:
    """One workload under one mode, in this process."""
    import keras

    from benchmarks import _real_models as R
    from benchmarks import _workloads as W
    from benchmarks.workloads_real import make_arm

    r = R.SIZES[size][name]
    keras.utils.set_random_seed(0)
    arrays = R.data(r)
    weights = W.initial_weights(R.keras_model(r), 0)
    before = os.environ.get("LOOPS_TORCH_CAPTURE")
    os.environ["LOOPS_TORCH_CAPTURE"] = "auto" if mode == "keras" else mode
    try:  # the policy reads the mode when the Trainer builds its step (the gate's first fit)
        arm = make_arm("keras" if mode == "keras" else "trainer", r, weights, arrays)
        start = time.perf_counter()
        arm.gate(2)
        first_s = time.perf_counter() - start
    finally:
        if before is None:
            del os.environ["LOOPS_TORCH_CAPTURE"]
        else:
            os.environ["LOOPS_TORCH_CAPTURE"] = before
    arm.run(4 if mode == "auto" else 1)  # auto: a run that plans >= 100 calls, so the policy may capture
    _sync()
    ms = []
    for _ in range(3):
        start = time.perf_counter()
        arm.run(1)
        _sync()
        ms.append((time.perf_counter() - start) * 1e3 / r.pool)
    out = {"workload": name, "mode": mode, "ms_per_step": min(ms), "first_s": first_s,
           "captured": captured_info(arm), "steps_per_epoch": r.pool}
    if profile:
        out.update(profile_epoch(arm))
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.capture_diag", description=__doc__.split("\n")[0])
    p.add_argument("--workloads", default="gpt,lstm,resnet")
    p.add_argument("--modes", default=",".join(MODES))
    p.add_argument("--size", default="full", choices=("tiny", "quick", "full"))
    p.add_argument("--no-profile", action="store_true")
    a = p.parse_args(argv)
    import keras

    if keras.backend.backend() != "torch":
        p.error(f"this diagnosis is of torch's captured steps: run it with KERAS_BACKEND=torch "
                f"(got {keras.backend.backend()!r})")
    bad = [m for m in a.modes.split(",") if m not in MODES]
    if bad:
        p.error(f"--modes takes {', '.join(MODES)}; got {', '.join(bad)}")
    warnings.simplefilter("ignore")
    for name in a.workloads.split(","):
        for mode in a.modes.split(","):
            got = measure(name, mode, a.size, profile=not a.no_profile)
            per = got["steps_per_epoch"]
            line = f"{name:6s} {mode:6s} ms/step {got['ms_per_step']:7.2f} (first fit {got['first_s']:.2f} s)"
            if "counts" in got:
                line += (" | per step: " + " ".join(f"{k.replace('aten::', '')}={v / per:.1f}"
                                                     for k, v in got["counts"].items())
                         + f" kernels={got['kernels'] / per:.0f} kernel_ms={got['kernel_ms'] / per:.2f}")
            print(line + f"\n        {got['captured']}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
