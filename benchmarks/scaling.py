"""Scaling: steady-state ms/step of ``loops.Trainer.fit``, Keras ``model.fit``
and the hand-written native loop as the work per step grows (issue #19), on
each backend.

    python -m benchmarks.scaling            # 6 batch sizes, 6 widths, 30-batch epochs, 3 rounds of >= 0.5 s
    python -m benchmarks.scaling --quick    # 3 batch sizes, 3 widths, 6-batch epochs, 3 short rounds
    python -m benchmarks.scaling --backends torch --widths 64,2048 --out /tmp/scaling

Model: an MLP, 64 input features, Dense(W, relu), Dense(W, relu), Dense(10),
Adam(1e-3), sparse cross-entropy from logits, on synthetic float32 data
(``benchmarks/_workloads.py``: NumPy Glorot weights, teacher labels). Sweep
"batch": the batch size from 32 to 1024 at width 256; sweep "width": W from 64
to 2048 at batch 128 (a point on both sweeps is measured once).

Per point the arms of ``benchmarks/_arms.py`` and ``_native.py`` (jax: one
donated ``jax.jit``; tensorflow: ``tf.function`` + ``GradientTape``; torch:
``torch.nn`` + ``torch.optim.Adam``) start from the same weights. Each warms
up with ``WARM`` one-batch ``fit`` calls (trace, compile, capture: the first
is reported apart), then as ``benchmarks/_timing.py`` does: one epoch of the
pool per arm estimates its speed, and each timed block is one ``fit`` call of
whole epochs lasting at least ``block_s``; ``rounds`` rounds with the arm
order rotated; median ms/step and median per-round ratios.

Overhead at a point: Trainer ms/step minus the fastest other arm's. Verdict
per backend: the least-squares slope of that overhead against the fastest
other arm's ms/step (the work), over all points; at most ``GROWTH_TOL`` (ms of
overhead per ms of work) reads as "does not grow with the work".

On torch the native arm runs ``torch.optim.Adam``, whose multi-tensor
kernels make fewer passes over the parameters than Keras's Adam, which
``Trainer.fit`` and ``model.fit`` both run: a gap that grows with the
parameter count (H200: 2.21 against 1.49 ms per update at 67.7M parameters).
So on torch each width's two updates are also timed alone, eagerly
(``benchmarks.optimizer_diag``), and shown beside the overhead. Their
difference is not subtracted: timed alone, Keras's eager update also pays its
Python per op, which the replayed step does not, so at small widths it
overstates what the step pays.

Each backend runs in its own process (``KERAS_BACKEND`` set per process).
On torch the Trainer captures a step only when a run plans enough calls
(``backends/torch/policy.py``), which these short timed fits do not, so the
workers run with ``LOOPS_TORCH_CAPTURE=first`` unless it is set: the replayed
step, as in any fit of a hundred steps or more, is the steady state measured.
Writes ``benchmarks/results/scaling{_quick}.{md,json,png}`` (the PNG when
matplotlib is installed: ms/step against batch size and width, log-log).
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import sys
import time
from typing import Any, Callable

import numpy as np

from benchmarks import _timing
from benchmarks import _workloads as W

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BACKENDS = ("jax", "tensorflow", "torch")
ARMS = ("trainer", "keras", "native")
LABELS = {"trainer": "Trainer", "keras": "model.fit", "native": "native"}
FEATURES, BASE_WIDTH, BASE_BATCH, WARM = 64, 256, 128, 2
GROWTH_TOL = 0.05
TAG = "SCALING "
MODES: dict[str, dict[str, Any]] = {
    "full": dict(batches=(32, 64, 128, 256, 512, 1024), widths=(64, 128, 256, 512, 1024, 2048),
                 steps=30, block_s=0.5, rounds=3),
    "quick": dict(batches=(32, 256, 1024), widths=(64, 512, 2048), steps=6, block_s=0.05, rounds=3),
}


def sweeps(batches: tuple[int, ...], widths: tuple[int, ...]) -> dict[str, list[tuple[int, int]]]:
    """(batch, width) of each sweep's points, in order."""
    return {"batch": [(b, BASE_WIDTH) for b in batches], "width": [(BASE_BATCH, w) for w in widths]}


def workload(batch: int, width: int) -> W.Workload:
    spec = (("dense", width, "relu"), ("dense", width, "relu"), ("dense", 10, None))
    return W.Workload(f"mlp_w{width}", (FEATURES,), spec, batch)


def run_point(batch: int, width: int, steps: int, block_s: float, rounds: int,
              arms: tuple[str, ...] = ARMS) -> dict[str, Any]:
    """Every arm at one (batch, width): median ms/step, rounds interleaved."""
    from benchmarks._arms import keras_arm, trainer_arm
    from benchmarks._native import native_arm

    w = workload(batch, width)
    weights, arrays = W.initial_weights(W.keras_model(w.spec, w.input_shape, w.name), 0), W.data(w, steps)
    makers: dict[str, Callable[..., Any]] = {"trainer": trainer_arm, "keras": keras_arm, "native": native_arm}
    objs = [makers[a](w, weights, arrays) for a in arms]
    for arm in objs:
        arm.gate(min(WARM, steps))  # trace / compile / capture, and a second call
    epochs = _timing.epochs_per_block(objs, steps, block_s)
    out = _timing.summarize(_timing.rounds(objs, steps, epochs, rounds))
    out.update(batch=batch, width=width, steps_per_block=epochs * steps,
               first_call_s={arm.name: arm.first_call_s for arm in objs})
    del objs
    gc.collect()
    return out


def run_backend(batches: tuple[int, ...], widths: tuple[int, ...], steps: int, block_s: float, rounds: int,
                arms: tuple[str, ...] = ARMS) -> dict[str, Any]:
    """Both sweeps on this process's backend; each distinct point once."""
    import keras

    backend = keras.backend.backend()
    keras.utils.set_random_seed(0)
    plan = sweeps(batches, widths)
    points: dict[str, dict[str, Any]] = {}
    updates: dict[int, dict[str, float]] = {}  # torch: Keras's and torch's Adam update alone, per width
    for batch, width in dict.fromkeys(p for pts in plan.values() for p in pts):
        t0 = time.perf_counter()
        try:
            row = run_point(batch, width, steps, block_s, rounds, arms)
        except Exception as e:  # noqa: BLE001 - a point that fails is a failed row, not a lost backend
            row = {"batch": batch, "width": width, "error": f"{type(e).__name__}: {e}"[:500]}
        if backend == "torch" and "error" not in row:
            from benchmarks.optimizer_diag import update_ms

            try:
                if width not in updates:
                    updates[width] = update_ms(width, repeats=10, fused=False)
                row["optimizer_ms"] = updates[width]
            except Exception as e:  # noqa: BLE001 - a diagnostic column, not the point's timing
                print(f"[torch] optimizer timing at width {width} failed: {e}", file=sys.stderr)
        points[f"{batch}x{width}"] = row
        ms = row.get("ms_per_step", {})
        print(f"[{backend}] batch {batch} width {width}: " + (row.get("error") or ", ".join(
              f"{a} {v:.3f}" for a, v in ms.items()) + f" ms/step ({time.perf_counter() - t0:.1f} s)"),
              file=sys.stderr, flush=True)
    return {"backend": backend, "torch_capture": os.environ.get("LOOPS_TORCH_CAPTURE", "auto"),
            "sweeps": {s: [f"{b}x{w}" for b, w in pts] for s, pts in plan.items()}, "points": points}


def optimizer_gap(p: dict[str, Any]) -> float | None:
    """torch: Keras's Adam update minus ``torch.optim.Adam``'s (ms), each timed alone."""
    opt = p.get("optimizer_ms") or {}
    return opt["keras"] - opt["torch"] if "keras" in opt and "torch" in opt else None


def overheads(res: dict[str, Any]) -> dict[str, Any]:
    """Per point: Trainer ms minus the fastest other arm's (and its ms); the
    slope of the one against the other over all points, and the verdict."""
    rows = []
    for key, p in res["points"].items():
        ms = p.get("ms_per_step", {})
        others = [v for a, v in ms.items() if a != "trainer"]
        if "trainer" in ms and others:
            rows.append((min(others), ms["trainer"] - min(others), key))
    if len(rows) < 2:
        return {"points": len(rows), "verdict": "not enough points"}
    rows.sort()
    work, over = np.array([r[0] for r in rows]), np.array([r[1] for r in rows])
    slope = float(np.polyfit(work, over, 1)[0])
    grows = slope > GROWTH_TOL
    return {"points": len(rows), "slope": slope, "grows": grows,
            "smallest": {"point": rows[0][2], "work_ms": rows[0][0], "overhead_ms": rows[0][1]},
            "largest": {"point": rows[-1][2], "work_ms": rows[-1][0], "overhead_ms": rows[-1][1]},
            "verdict": "GROWS with the work" if grows else "does not grow with the work"}


def verdict_line(res: dict[str, Any]) -> str:
    o = res["overhead"]
    if "slope" not in o:
        return f"{res['backend']}: {o['verdict']}"
    s, g = o["smallest"], o["largest"]
    return (f"{res['backend']}: Trainer overhead {s['overhead_ms']:+.3f} ms at {s['work_ms']:.3f} ms/step "
            f"({s['point']}) -> {g['overhead_ms']:+.3f} ms at {g['work_ms']:.3f} ms/step ({g['point']}); "
            f"slope {o['slope']:+.3f} ms/ms: {o['verdict']}")


def _fmt(x: float | None, spec: str = ".3f") -> str:
    return "—" if x is None or not math.isfinite(x) else format(x, spec)


def markdown(results: list[dict[str, Any]], machine: str, mode: dict[str, Any], failed: list[str],
             note: str, quick: bool) -> str:
    lines = [f"# Scaling{' (quick)' if quick else ''}: ms/step against batch size and model width", "",
             f"Machine: {machine}. MLP: {FEATURES} input features, 2 hidden Dense(W, relu), Dense(10), Adam(1e-3), "
             "sparse cross-entropy from logits, synthetic float32 data, the same initial weights for every arm. "
             f"Sweep batch: batch sizes {', '.join(map(str, mode['batches']))} at width {BASE_WIDTH}; sweep width: "
             f"widths {', '.join(map(str, mode['widths']))} at batch {BASE_BATCH}. Per point: {WARM} one-batch "
             f"warm-up fits per arm, then {mode['rounds']} rounds of one fit call per arm over whole epochs of "
             f"{mode['steps']} batches lasting >= {mode['block_s']} s, arm order rotated; median ms/step. Each "
             "backend in its own process. Ratio: median of per-round Trainer / model.fit (< 1: the Trainer is "
             "faster); a − b: Trainer minus model.fit ms/step; overhead: Trainer minus the fastest other arm. "
             f"Verdict: least-squares slope of the overhead against the fastest other arm's ms/step (the work), "
             f"over all points; <= {GROWTH_TOL:g} ms per ms: does not grow with the work.", ""]
    if note:
        lines.append(f"- note: {note}")
    if failed:
        lines.append(f"- failed backends: {', '.join(failed)}")
    for res in results:
        capture = f" (LOOPS_TORCH_CAPTURE={res.get('torch_capture', 'auto')})" if res["backend"] == "torch" else ""
        net = any("optimizer_ms" in p for p in res["points"].values())
        lines += ["", f"## {res['backend']}{capture}", "",
                  "| sweep | batch | width | Trainer (a) | model.fit (b) | native (c) | a/b | a − b ms "
                  "| overhead ms |" + (" Keras − torch Adam ms (alone) |" if net else ""),
                  "|---" * (10 if net else 9) + "|"]
        for sweep, keys in res["sweeps"].items():
            for key in keys:
                p = res["points"][key]
                if "error" in p:
                    lines.append(f"| {sweep} | {p['batch']} | {p['width']} | FAILED: {p['error'][:60]} |"
                                 + " — |" * (6 if net else 5))
                    continue
                ms = p["ms_per_step"]
                a, b = ms.get("trainer"), ms.get("keras")
                others = [v for k, v in ms.items() if k != "trainer"]
                over = a - min(others) if a and others else None
                row = (f"| {sweep} | {p['batch']} | {p['width']} | {_fmt(a)} | {_fmt(b)} "
                       f"| {_fmt(ms.get('native'))} | {_fmt(p['ratios'].get('trainer/keras'), '.2f')} "
                       f"| {_fmt(a - b if a and b else None, '+.3f')} | {_fmt(over, '+.3f')} |")
                if net:
                    row += f" {_fmt(optimizer_gap(p), '+.3f')} |"
                lines.append(row)
        lines += ["", f"Verdict: {verdict_line(res)}."]
        if net:
            lines += ["", "Keras − torch Adam: one Adam update of that width's parameters, Keras's (which the "
                      "Trainer and `model.fit` run) minus `torch.optim.Adam`'s (the native arm's), each timed "
                      "alone and eagerly (`benchmarks.optimizer_diag`): the part of the overhead that is the optimizer's "
                      "arithmetic, which `model.fit` pays as well; the rest is the step's other kernels (Keras's "
                      "layers against `torch.nn`'s) and the loop."]
    return "\n".join(lines) + "\n"


def plot(results: list[dict[str, Any]], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5))
    styles = {"trainer": "-", "keras": "--", "native": ":"}
    for ax, (sweep, axis) in zip(axes, (("batch", "batch size"), ("width", "width W"))):
        for i, res in enumerate(results):
            pts = [res["points"][k] for k in res["sweeps"][sweep]]
            for arm in ARMS:
                xy = [(p[sweep], p["ms_per_step"][arm]) for p in pts if arm in p.get("ms_per_step", {})]
                if xy:
                    ax.plot(*zip(*xy), styles[arm], color=f"C{i}", marker="o", ms=3,
                            label=f"{res['backend']} {LABELS[arm]}")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        xs = sorted({p[sweep] for res in results for p in (res["points"][k] for k in res["sweeps"][sweep])})
        ax.set_xticks(xs, [str(x) for x in xs])
        ax.set_xlabel(axis)
        ax.set_ylabel("ms/step (lower is better)")
        fixed = f"width {BASE_WIDTH}" if sweep == "batch" else f"batch {BASE_BATCH}"
        ax.set_title(f"ms/step against {axis} ({fixed})")
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend(fontsize=7, ncol=len(results) or 1)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def write(results: list[dict[str, Any]], machine: str, mode: dict[str, Any], failed: list[str], note: str,
          out_dir: str, stem: str, quick: bool) -> dict[str, str]:
    for res in results:
        res["overhead"] = overheads(res)
    os.makedirs(out_dir, exist_ok=True)
    paths = {ext: os.path.join(out_dir, f"{stem}.{ext}") for ext in ("md", "json", "png")}
    with open(paths["md"], "w") as f:
        f.write(markdown(results, machine, mode, failed, note, quick))
    with open(paths["json"], "w") as f:
        json.dump({"machine": machine, "mode": mode, "growth_tol": GROWTH_TOL, "note": note, "failed": failed,
                   "results": results}, f, indent=1)
    try:
        plot(results, paths["png"])
    except ImportError:  # matplotlib is optional (pip install ".[bench]")
        del paths["png"]
    return paths


def _ints(text: str | None) -> tuple[int, ...] | None:
    return None if text is None else tuple(int(v) for v in text.split(",") if v)


def _launch(backend: str, mode: dict[str, Any]) -> dict[str, Any] | None:
    env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="3")
    env.setdefault("LOOPS_TORCH_CAPTURE", "first")  # the replayed step: see the module's docstring
    cmd = [sys.executable, "-m", "benchmarks.scaling", "--worker",
           "--batches", ",".join(map(str, mode["batches"])), "--widths", ",".join(map(str, mode["widths"])),
           "--steps", str(mode["steps"]), "--block-s", str(mode["block_s"]), "--rounds", str(mode["rounds"])]
    return _timing.run_worker(cmd, env, TAG, f"{backend}", timeout=3600)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.scaling", description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="3 batch sizes, 3 widths, short epochs")
    p.add_argument("--backends", default=",".join(BACKENDS))
    p.add_argument("--batches", default=None, help="batch sizes of the batch sweep, e.g. 32,64")
    p.add_argument("--widths", default=None, help="widths of the width sweep, e.g. 64,2048")
    p.add_argument("--steps", type=int, default=None, help="batches per epoch (the data pool)")
    p.add_argument("--block-s", type=float, default=None, help="seconds per timed block, at least")
    p.add_argument("--rounds", type=int, default=None)
    p.add_argument("--out", default=RESULTS)
    p.add_argument("--note", default="", help="a line for the report's head (e.g. the machine's load)")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    mode = dict(MODES["quick" if a.quick else "full"])
    for key, value in (("batches", _ints(a.batches)), ("widths", _ints(a.widths)), ("steps", a.steps),
                       ("block_s", a.block_s), ("rounds", a.rounds)):
        if value is not None:
            mode[key] = value
    if a.worker:
        import warnings

        warnings.filterwarnings("ignore")
        out = run_backend(mode["batches"], mode["widths"], mode["steps"], mode["block_s"], mode["rounds"])
        print(TAG + json.dumps(out), flush=True)
        return 0
    start = time.perf_counter()
    results, failed = [], []
    for backend in a.backends.split(","):
        res = _launch(backend, mode)
        if res is None:
            failed.append(backend)
        else:
            results.append(res)
    from benchmarks.__main__ import _machine

    stem, machine = "scaling_quick" if a.quick else "scaling", _machine()
    paths = write(results, machine, mode, failed, a.note, a.out, stem, a.quick)
    print(markdown(results, machine, mode, failed, a.note, a.quick))
    for res in results:
        print(verdict_line(res))
    print(f"wrote {', '.join(paths.values())} in {time.perf_counter() - start:.0f} s", file=sys.stderr)
    bad = any("error" in pt for res in results for pt in res["points"].values())
    return 1 if failed or bad or not results else 0


if __name__ == "__main__":
    sys.exit(main())
