"""Timing rounds: blocks of whole epochs over the pool lasting at least
``block_s``, arm order rotated each round, medians and per-round ratios."""

from __future__ import annotations

import math
import os
import statistics
import sys
import time
from typing import Any


def time_block(arm: Any, epochs: int) -> float:
    start = time.perf_counter()
    arm.run(epochs)
    return time.perf_counter() - start


def epochs_per_block(arms: list[Any], steps_per_epoch: int, block_s: float) -> int:
    """Epochs per block so the fastest arm's block lasts ``block_s``
    (after one warm-up epoch per arm, which also estimates the speed)."""
    fastest = min(time_block(arm, 1) for arm in arms) / steps_per_epoch
    return max(1, math.ceil(block_s / (fastest * steps_per_epoch)))


def rounds(arms: list[Any], steps_per_epoch: int, epochs: int, n_rounds: int) -> dict[str, list[float]]:
    """ms/step of each arm in each round; round ``r`` starts with arm ``r``."""
    out: dict[str, list[float]] = {arm.name: [] for arm in arms}
    for r in range(n_rounds):
        k = r % len(arms)
        for arm in arms[k:] + arms[:k]:
            out[arm.name].append(1e3 * time_block(arm, epochs) / (epochs * steps_per_epoch))
    return out


def summarize(ms: dict[str, list[float]]) -> dict[str, Any]:
    """Median ms/step per arm and median per-round ratios against ``native``
    and ``keras`` for every other arm."""
    out: dict[str, Any] = {"ms_per_step": {a: statistics.median(v) for a, v in ms.items()},
                           "rounds_ms": ms, "ratios": {}}
    for arm, values in ms.items():
        for ref in ("native", "keras"):
            if ref in ms and arm != ref and arm != "keras":
                per_round = [a / b for a, b in zip(values, ms[ref])]
                out["ratios"][f"{arm}/{ref}"] = statistics.median(per_round)
    return out


def run_worker(cmd: list[str], env: dict[str, str], tag: str, label: str, timeout: float) -> Any:
    """Runs a benchmark worker process from the repository root and returns the
    JSON it printed after ``tag``, or None (said on stderr) if it failed."""
    import json
    import subprocess

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    proc = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, text=True, timeout=timeout, cwd=root)
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith(tag)), None)
    if proc.returncode != 0 or line is None:
        print(f"{label}: failed (exit {proc.returncode})", file=sys.stderr)
        return None
    return json.loads(line[len(tag):])
