"""Where the first ``fit`` call's time goes, from the call to the first step
done: ``loops.Trainer.fit`` against Keras ``model.fit``, on each backend.

    python -m benchmarks.first_call [--repeats 3] [--backends jax,tensorflow,torch] [--profile]
    python -m benchmarks.first_call --from-json benchmarks/results/first_call.json   # the report only

Each (backend, model, arm) runs in its own process (``KERAS_BACKEND`` set per
process): the engine is warmed up on a tiny model first (imports and the
engine's own start are not counted), then a fresh model's first ``fit`` on one
batch is timed, with timers patched onto the library from outside
(``benchmarks/_probe.py``; nothing under ``loops/`` or ``backends/`` is
edited): the eager first step and its checks, tracing, XLA / tf.function
compilation, torch capture and its throw-away runs. Also timed: a second
``fit`` of the same trainer (the steady cost) and a fresh model of the same
architecture again (shapes seen before). Models: the MLP 784-256-128-10
(batch 128) and a small Conv2D + BatchNorm network on 28x28x1 (batch 64),
Adam, sparse cross-entropy from logits, an accuracy metric. With
``--repeats N`` each cell runs in N processes and the median of each row is
reported. ``--profile`` adds a cProfile (cumulative) of the Trainer's first
call per backend. Writes ``benchmarks/results/first_call.{md,json}`` (the
candidate cuts are derived from the measured rows: see
``benchmarks/_first_call_report.py``).
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import pstats
import statistics
import subprocess
import sys
import time
from typing import Any

import numpy as np

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BACKENDS = ("jax", "tensorflow", "torch")
MODELS = {"mlp": ((784,), 128), "convbn": ((28, 28, 1), 64)}
ARMS = ("trainer", "keras")
TAG = "FIRST_CALL "


def build_model(kind: str) -> Any:
    import keras

    if kind == "tiny":
        return keras.Sequential([keras.Input((5,)), keras.layers.Dense(3)])
    if kind == "mlp":
        return keras.Sequential([keras.Input((784,)), keras.layers.Dense(256, activation="relu"),
                                 keras.layers.Dense(128, activation="relu"), keras.layers.Dense(10)])
    layers = keras.layers
    return keras.Sequential([keras.Input((28, 28, 1)),
                             layers.Conv2D(16, 3, padding="same", use_bias=False), layers.BatchNormalization(),
                             layers.ReLU(), layers.MaxPooling2D(2),
                             layers.Conv2D(32, 3, padding="same", use_bias=False), layers.BatchNormalization(),
                             layers.ReLU(), layers.GlobalAveragePooling2D(), layers.Dense(10)])


def _data(kind: str) -> tuple[np.ndarray, np.ndarray, int]:
    shape, batch = MODELS.get(kind, ((5,), 8))
    rng = np.random.default_rng(0)
    x = rng.random((batch, *shape)).astype("float32")
    y = rng.integers(0, 3 if kind == "tiny" else 10, batch).astype("int32")
    return x, y, batch


def _fitter(arm: str, model: Any) -> Any:
    import keras

    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    metrics = [keras.metrics.SparseCategoricalAccuracy(name="accuracy")]
    if arm == "trainer":
        from loops import Trainer

        return Trainer(model, keras.optimizers.Adam(1e-3), loss, metrics=metrics)
    model.compile(keras.optimizers.Adam(1e-3), loss, metrics=metrics)
    return model


def _fit(fitter: Any, kind: str) -> float:
    x, y, batch = _data(kind)
    start = time.perf_counter()
    fitter.fit(x, y, batch_size=batch, epochs=1, shuffle=False, verbose=0)  # ends with host logs: a sync
    return time.perf_counter() - start


def _rss_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM (peak RSS) to the current RSS
        return True
    except OSError:
        return False


def _measured(arm: str, kind: str, timers: Any, backend: str, profile: bool) -> dict[str, Any]:
    """A fresh model's first ``fit`` with the probes on: its rows, peak RSS
    growth and (``profile``) its cProfile."""
    from benchmarks import _probe
    from benchmarks._first_call_report import breakdown

    start = time.perf_counter()
    model = build_model(kind)
    fitter = _fitter(arm, model)
    construct_s = time.perf_counter() - start
    if arm == "keras":
        _probe.install_keras(timers, backend, model)
    timers.reset()  # (the Trainer's probes saw the construction)
    peak_ok, rss_before = _reset_peak(), _rss_kb("VmRSS")
    prof = cProfile.Profile() if profile else None
    if prof is not None:
        prof.enable()
    first_s = _fit(fitter, kind)
    if prof is not None:
        prof.disable()
    out = {"first_s": first_s, "rows": {**breakdown(timers, arm, backend, first_s), "construct": construct_s},
           "timers": timers.as_json(), "peak_rss_growth_mb": (_rss_kb("VmHWM") - rss_before) / 1024
           if peak_ok else float("nan"), "fitter": fitter}
    if prof is not None:
        text = io.StringIO()
        pstats.Stats(prof, stream=text).sort_stats("cumulative").print_stats(40)
        out["profile"] = text.getvalue()
    return out


def worker(kind: str, arm: str, profile: bool) -> dict[str, Any]:
    import warnings

    import keras

    from benchmarks import _probe

    warnings.filterwarnings("ignore")
    backend = keras.backend.backend()
    keras.utils.set_random_seed(0)
    timers = _probe.Timers()
    try:
        if arm == "trainer":
            _probe.install_trainer(timers, backend)
        warm = _measured(arm, "tiny", timers, backend, profile)  # the first fit in the process
        first = _measured(arm, kind, timers, backend, profile)
        out: dict[str, Any] = {"backend": backend, "model": kind, "arm": arm, "first_s": first["first_s"],
                               "rows": first["rows"], "timers": first["timers"], "missing": timers.missing,
                               "warmup_s": warm["first_s"], "warmup_rows": warm["rows"],
                               "peak_rss_growth_mb": first["peak_rss_growth_mb"]}
        if profile:
            out["profile"], out["warmup_profile"] = first["profile"], warm["profile"]
        timers.reset()
        out["second_s"] = _fit(first["fitter"], kind)
        out["fresh_again_s"] = _measured(arm, kind, timers, backend, False)["first_s"]
    finally:
        timers.undo()  # (in a test's process the library is left as it was)
    return out


def _run(backend: str, kind: str, arm: str, profile: bool) -> dict[str, Any] | None:
    env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="3")
    cmd = [sys.executable, "-m", "benchmarks.first_call", "--worker", kind, arm] + (["--profile"] if profile else [])
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900, cwd=ROOT)
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith(TAG)), None)
    if proc.returncode != 0 or line is None:
        print(f"{backend} {kind} {arm}: failed (exit {proc.returncode})\n{proc.stderr[-3000:]}", file=sys.stderr)
        return None
    return json.loads(line[len(TAG):])


def _median(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One cell: each number the median over the processes that ran it."""
    out = dict(runs[0])
    for key in ("first_s", "second_s", "fresh_again_s", "warmup_s", "peak_rss_growth_mb"):
        out[key] = statistics.median(r[key] for r in runs)
    for rows in ("rows", "warmup_rows"):
        out[rows] = {row: statistics.median(r[rows].get(row, 0.0) for r in runs) for row in runs[0][rows]}
    out["repeats"] = len(runs)
    out["first_s_all"] = [r["first_s"] for r in runs]
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.first_call", description=__doc__.split("\n")[0])
    p.add_argument("--backends", default=",".join(BACKENDS))
    p.add_argument("--models", default=",".join(MODELS))
    p.add_argument("--repeats", type=int, default=3, help="processes per cell (median)")
    p.add_argument("--profile", action="store_true", help="also a cProfile of the Trainer's first call")
    p.add_argument("--out", default=RESULTS)
    p.add_argument("--note", default="", help="a line for the report's head (e.g. the machine's load)")
    p.add_argument("--from-json", default=None, help="only rewrite the markdown from an earlier first_call.json")
    p.add_argument("--worker", nargs=2, metavar=("MODEL", "ARM"), help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.worker:
        print(TAG + json.dumps(worker(a.worker[0], a.worker[1], a.profile)), flush=True)
        return 0
    from benchmarks import _first_call_report as report

    if a.from_json:
        with open(a.from_json) as f:
            saved = json.load(f)
        text = report.markdown(saved["cells"], saved["machine"], saved["repeats"], saved["failed"],
                               a.note or saved.get("note", ""))
        with open(os.path.join(a.out, "first_call.md"), "w") as f:
            f.write(text)
        print(text)
        return 0
    start = time.perf_counter()
    cells, failed = [], []
    for backend in a.backends.split(","):
        for kind in a.models.split(","):
            for arm in ARMS:
                runs = [r for r in (_run(backend, kind, arm, False) for _ in range(a.repeats)) if r is not None]
                if not runs:
                    failed.append(f"{backend}/{kind}/{arm}")
                    continue
                cells.append(_median(runs))
                print(f"[{backend}] {kind} {arm}: first fit {cells[-1]['first_s']:.2f} s", file=sys.stderr, flush=True)
        if a.profile:
            prof = _run(backend, "mlp", "trainer", True)
            if prof is not None:
                cells.append({**prof, "arm": "trainer_profile"})
    from benchmarks.__main__ import _machine

    text = report.markdown(cells, _machine(), a.repeats, failed, a.note)
    os.makedirs(a.out, exist_ok=True)
    with open(os.path.join(a.out, "first_call.md"), "w") as f:
        f.write(text)
    with open(os.path.join(a.out, "first_call.json"), "w") as f:
        json.dump({"machine": _machine(), "repeats": a.repeats, "failed": failed, "note": a.note, "cells": cells},
                  f, indent=1)
    print(text)
    print(f"wrote {a.out}/first_call.{{md,json}} in {time.perf_counter() - start:.0f} s", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
