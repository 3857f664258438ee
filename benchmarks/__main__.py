"""``python -m benchmarks [--quick] [--backends jax,tensorflow,torch]``: each
backend in its own process, one after the other; results (markdown, JSON,
PNG) under ``benchmarks/results/``. Exit status 1 if a loss gate fails."""

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
    return f"{cpu}, {os.cpu_count()} cores, {platform.system()}, Python {platform.python_version()}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="short blocks and 3 rounds (< 3 minutes)")
    parser.add_argument("--backends", default="jax,tensorflow,torch")
    parser.add_argument("--workloads", default="tiny_mlp,mlp,cnn,gan")
    parser.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results"))
    args = parser.parse_args(argv)
    results = []
    start = time.perf_counter()
    for backend in args.backends.split(","):
        env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="3")
        cmd = [sys.executable, "-m", "benchmarks._worker", "--workloads", args.workloads]
        proc = subprocess.run(cmd + (["--quick"] if args.quick else []), env=env, stdout=subprocess.PIPE, text=True)
        if proc.returncode != 0:
            print(f"{backend}: benchmark failed (exit {proc.returncode})", file=sys.stderr)
            return proc.returncode
        line = next(line for line in proc.stdout.splitlines() if line.startswith(RESULT_TAG))
        results.append(json.loads(line[len(RESULT_TAG):]))
    machine = _machine()
    paths = _report.write(results, machine, args.out, "quick" if args.quick else "latest")
    print(_report.markdown(results, machine))
    print(f"wrote {', '.join(paths.values())} in {time.perf_counter() - start:.0f} s")
    return 0 if all(wl["gate"]["ok"] for r in results for wl in r["workloads"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
