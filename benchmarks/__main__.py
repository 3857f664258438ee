"""``python -m benchmarks [--quick | --gpu | --dry] [--backends jax,tensorflow,torch]``:
each backend in its own process, one after the other; results (markdown, JSON,
PNG) under ``benchmarks/results/`` (``quick``, ``latest``, ``gpu``; ``--dry``
writes ``gpu_dry``). ``--gpu`` adds a ResNet-style CNN (batch 256) to the
workloads, on jax and torch by default; ``--dry`` runs that code path at tiny
sizes (CPU tests; see ``benchmarks/gpu.sh``). Exit status 1 if a loss gate
fails or a backend's run fails (the other backends' results are written)."""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time

from benchmarks import _report
from benchmarks._worker import RESULT_TAG


def _machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    machine = f"{cpu}, {os.cpu_count()} cores, {platform.system()}, Python {platform.python_version()}"
    try:
        gpus = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
                              capture_output=True, text=True, timeout=30).stdout.strip().splitlines()
    except (OSError, subprocess.SubprocessError):
        gpus = []
    return machine + "".join(f"; GPU: {g.strip()} (name, memory, driver)" for g in gpus if g.strip())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    modes = parser.add_mutually_exclusive_group()
    modes.add_argument("--quick", action="store_true", help="short blocks and 3 rounds (< 3 minutes)")
    modes.add_argument("--gpu", action="store_true", help="the GPU run: adds the ResNet-style CNN; jax and torch")
    modes.add_argument("--dry", action="store_true", help="the --gpu code path at tiny sizes, fast, for CPU tests")
    parser.add_argument("--backends", default=None, help="jax,tensorflow,torch (--gpu/--dry: jax,torch)")
    parser.add_argument("--workloads", default=None, help="the mode's list by default")
    parser.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results"))
    parser.add_argument("--gate-rtol", type=float, default=None, help="loss gate's relative tolerance (1e-5)")
    parser.add_argument("--precision", choices=("highest", "default"), default="highest",
                        help="--gpu/--dry: float32 matmuls and convolutions (TF32 off), or the engine's default")
    parser.add_argument("--budget-s", type=float, default=0.0,
                        help="per backend: start no further workload after this many seconds (0: no limit)")
    args = parser.parse_args(argv)
    mode = "gpu" if args.gpu else "dry" if args.dry else "quick" if args.quick else "full"
    stem = {"gpu": "gpu", "dry": "gpu_dry", "quick": "quick", "full": "latest"}[mode]
    backends = args.backends or ("jax,torch" if mode in ("gpu", "dry") else "jax,tensorflow,torch")
    results, failed = [], []
    start = time.perf_counter()
    for backend in backends.split(","):
        env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="3")
        # Steady state: torch's replayed step, as any fit of 100+ steps runs it
        # (its timed blocks are shorter runs, which the capture policy leaves eager).
        env.setdefault("LOOPS_TORCH_CAPTURE", "first")
        cmd = [sys.executable, "-m", "benchmarks._worker", "--mode", mode]
        if args.workloads:
            cmd += ["--workloads", args.workloads]
        if args.gate_rtol is not None:
            cmd += ["--gate-rtol", str(args.gate_rtol)]
        if mode in ("gpu", "dry"):
            cmd += ["--precision", args.precision, "--budget-s", str(args.budget_s)]
        proc = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, text=True)
        line = next((line for line in proc.stdout.splitlines() if line.startswith(RESULT_TAG)), None)
        if proc.returncode != 0 or line is None:
            print(f"{backend}: benchmark failed (exit {proc.returncode})", file=sys.stderr)
            failed.append(backend)
            continue
        results.append(json.loads(line[len(RESULT_TAG):]))
    if not results:
        return 1
    machine = _machine()
    paths = _report.write(results, machine, args.out, stem)
    print(_report.markdown(results, machine))
    print(f"wrote {', '.join(paths.values())} in {time.perf_counter() - start:.0f} s")
    gates_ok = all(wl["gate"]["ok"] for r in results for wl in r["workloads"].values())
    return 0 if gates_ok and not failed else 1


if __name__ == "__main__":
    sys.exit(main())
