"""Short runs: a whole short ``fit``, end to end, ``loops.Trainer.fit`` against
Keras ``model.fit``, over a zoo of six small models, on each backend.

    python -m benchmarks.short_runs            # 2 epochs x 24 batches of 50, 5 rounds
    python -m benchmarks.short_runs --quick    # the same fits, 2 rounds (~3 minutes on 2 CPU cores)
    python -m benchmarks.short_runs --backends torch --models lstm --rounds 2
    python -m benchmarks.short_runs --from-json benchmarks/results/short_runs_quick.json   # the report only

Models (``ZOO``): Conv2D + BatchNormalization, LSTM, bidirectional GRU,
self-attention (``MultiHeadAttention``) + LayerNormalization, Embedding +
Conv1D, SeparableConv2D + GroupNormalization; each a classifier over 10
classes, Adam(1e-3), sparse cross-entropy from logits, no metrics. Data: seeded
random NumPy arrays in their final dtype, made once per model.

Each backend runs in its own process (``KERAS_BACKEND`` set per process). The
engine is warmed up first on a tiny model with both arms, so imports and the
engine's own start are not counted. Then, per round and model, both arms run
one after the other (the order flips every round), each on a fresh model
loaded with the same initial weights, ``shuffle=False``:

- short run: the seconds of the whole ``fit`` call (it ends with host logs, a
  sync); the ratio Trainer / ``model.fit`` (< 1: the Trainer is faster) is
  taken per round, and the median over rounds is reported;
- first call: from the ``fit`` call to the end of the first step, taken in the
  same runs by a callback's ``on_train_batch_end`` of batch 0 (which reads the
  loss, a sync). Being a per-batch hook it also makes both arms turn the logs
  into Python floats every step, as any per-batch callback does;
- gate: the final epoch losses of the two arms agree to ``GATE_RTOL``
  relative in every round, else the row is marked failed.

The first round of a model is the first time its process sees that
architecture; later rounds build fresh models of the same architecture, which
may reuse what an engine or the Trainer cached in the process (the report
lists the per-round ratios, so the cold first round can be read apart).

Writes ``benchmarks/results/short_runs{_quick}.{md,json}``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from typing import Any, Callable

import numpy as np

from benchmarks import _timing

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BACKENDS = ("jax", "tensorflow", "torch")
ARMS = ("trainer", "keras")
GATE_RTOL = 1e-4
TAG = "SHORT_RUNS "
CLASSES = 10
VOCAB = 200
MODES = {"quick": dict(epochs=2, batches=24, batch_size=50, rounds=2),
         "full": dict(epochs=2, batches=24, batch_size=50, rounds=5)}


def _convbn(k: Any) -> Any:
    L, x = k.layers, k.Input((16, 16, 1))
    h = L.ReLU()(L.BatchNormalization()(L.Conv2D(8, 3, padding="same", use_bias=False)(x)))
    h = L.MaxPooling2D(2)(h)
    h = L.ReLU()(L.BatchNormalization()(L.Conv2D(16, 3, padding="same", use_bias=False)(h)))
    return k.Model(x, L.Dense(CLASSES)(L.GlobalAveragePooling2D()(h)), name="convbn")


def _lstm(k: Any) -> Any:
    L, x = k.layers, k.Input((16, 8))
    return k.Model(x, L.Dense(CLASSES)(L.LSTM(32)(x)), name="lstm")


def _bigru(k: Any) -> Any:
    L, x = k.layers, k.Input((16, 8))
    return k.Model(x, L.Dense(CLASSES)(L.Bidirectional(L.GRU(16))(x)), name="bigru")


def _attention(k: Any) -> Any:
    L, x = k.layers, k.Input((16, 16))
    h = L.LayerNormalization()(x + L.MultiHeadAttention(num_heads=2, key_dim=8)(x, x))
    h = L.LayerNormalization()(h + L.Dense(16)(L.Dense(32, activation="relu")(h)))
    return k.Model(x, L.Dense(CLASSES)(L.GlobalAveragePooling1D()(h)), name="attention")


def _embconv(k: Any) -> Any:
    L, x = k.layers, k.Input((32,), dtype="int32")
    h = L.Conv1D(32, 3, padding="same", activation="relu")(L.Embedding(VOCAB, 16)(x))
    return k.Model(x, L.Dense(CLASSES)(L.GlobalMaxPooling1D()(h)), name="embconv")


def _sepconv_gn(k: Any) -> Any:
    L, x = k.layers, k.Input((16, 16, 3))
    h = L.ReLU()(L.GroupNormalization(groups=4)(L.SeparableConv2D(16, 3, padding="same")(x)))
    h = L.ReLU()(L.GroupNormalization(groups=4)(L.SeparableConv2D(32, 3, padding="same")(L.MaxPooling2D(2)(h))))
    return k.Model(x, L.Dense(CLASSES)(L.GlobalAveragePooling2D()(h)), name="sepconv_gn")


def _tiny(k: Any) -> Any:
    return k.Sequential([k.Input((5,)), k.layers.Dense(CLASSES)])


# name: (builder, input shape, input dtype, what it is)
ZOO: dict[str, tuple[Callable[[Any], Any], tuple[int, ...], str, str]] = {
    "convbn": (_convbn, (16, 16, 1), "float32", "Conv2D(8)+BN, pool, Conv2D(16)+BN, GAP, 16x16x1"),
    "lstm": (_lstm, (16, 8), "float32", "LSTM(32), 16 steps x 8 features"),
    "bigru": (_bigru, (16, 8), "float32", "Bidirectional(GRU(16)), 16 steps x 8 features"),
    "attention": (_attention, (16, 16), "float32",
                  "MultiHeadAttention(2 heads x 8) + LayerNorm, MLP 32 + LayerNorm, 16 tokens x 16"),
    "embconv": (_embconv, (32,), "int32", f"Embedding({VOCAB}, 16), Conv1D(32, 3), global max pool, 32 tokens"),
    "sepconv_gn": (_sepconv_gn, (16, 16, 3), "float32",
                   "SeparableConv2D(16)+GroupNorm(4), pool, SeparableConv2D(32)+GroupNorm(4), 16x16x3"),
}
CHEAPEST = "embconv"  # the quickest to build and fit on every backend (the test's model)
_TINY = (_tiny, (5,), "float32", "warm-up")


def make_data(name: str, n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    _, shape, dtype, _ = ZOO.get(name, _TINY)
    rng = np.random.default_rng(seed)
    if dtype == "int32":
        x = rng.integers(0, VOCAB, (n, *shape)).astype("int32")
    else:
        x = rng.standard_normal((n, *shape)).astype("float32")
    return x, rng.integers(0, CLASSES, n).astype("int32")


def _first_step_timer() -> Any:
    import keras

    class FirstStep(keras.callbacks.Callback):
        """The time at the end of the first step of the first epoch."""

        def __init__(self) -> None:
            super().__init__()
            self.at: float | None = None

        def on_train_batch_end(self, batch: int, logs: Any = None) -> None:
            if self.at is None:
                if logs and "loss" in logs:
                    float(np.asarray(logs["loss"]))  # the step is done when its loss is on the host
                self.at = time.perf_counter()

    return FirstStep()


def run_arm(name: str, arm: str, weights: list[np.ndarray], x: np.ndarray, y: np.ndarray,
            epochs: int, batch_size: int) -> dict[str, float]:
    """One whole ``fit`` of a fresh ``name`` model loaded with ``weights``:
    its seconds, the seconds to the first step done and the final loss."""
    import keras

    model = ZOO.get(name, _TINY)[0](keras)
    model.set_weights(weights)
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    if arm == "trainer":
        from loops import Trainer

        fitter = Trainer(model, keras.optimizers.Adam(1e-3), loss)
    else:
        model.compile(keras.optimizers.Adam(1e-3), loss)
        fitter = model
    timer = _first_step_timer()
    start = time.perf_counter()
    history = fitter.fit(x, y, batch_size=batch_size, epochs=epochs, shuffle=False, verbose=0, callbacks=[timer])
    fit_s = time.perf_counter() - start
    return {"fit_s": fit_s, "first_s": (timer.at or float("nan")) - start,
            "loss": float(history.history["loss"][-1])}


def rel(a: float, b: float) -> float:
    return abs(a - b) / max(abs(b), 1e-12)


def run_model(name: str, rounds: int, epochs: int, batches: int, batch_size: int) -> dict[str, Any]:
    """``rounds`` rounds of both arms, interleaved, on one model."""
    import keras

    keras.utils.set_random_seed(0)
    x, y = make_data(name, batches * batch_size)
    weights = ZOO.get(name, _TINY)[0](keras).get_weights()  # the same start for every run
    runs: dict[str, list[dict[str, float]]] = {arm: [] for arm in ARMS}
    for r in range(rounds):
        for arm in (ARMS if r % 2 == 0 else ARMS[::-1]):
            runs[arm].append(run_arm(name, arm, weights, x, y, epochs, batch_size))
    ratios = [t["fit_s"] / k["fit_s"] for t, k in zip(runs["trainer"], runs["keras"])]
    rels = [rel(t["loss"], k["loss"]) for t, k in zip(runs["trainer"], runs["keras"])]
    med = {arm: {key: statistics.median(run[key] for run in runs[arm]) for key in ("fit_s", "first_s")}
           for arm in ARMS}
    return {"model": name, "rounds": rounds, "steps": epochs * batches, "ratio": statistics.median(ratios),
            "ratios": ratios, "trainer_s": med["trainer"]["fit_s"], "keras_s": med["keras"]["fit_s"],
            "trainer_first_s": med["trainer"]["first_s"], "keras_first_s": med["keras"]["first_s"],
            "gate": {"ok": all(v <= GATE_RTOL for v in rels), "max_rel": max(rels)}, "runs": runs}


def worker(models: list[str], rounds: int, epochs: int, batches: int, batch_size: int) -> dict[str, Any]:
    import warnings

    import keras

    warnings.filterwarnings("ignore")
    start = time.perf_counter()
    run_model("tiny", 1, 1, 2, 8)  # the engine's warm-up, both arms
    out: dict[str, Any] = {"backend": keras.backend.backend(), "warmup_s": time.perf_counter() - start, "rows": []}
    for name in models:
        try:
            row = run_model(name, rounds, epochs, batches, batch_size)
        except Exception as e:  # noqa: BLE001 - a model that fails is a failed row, not a lost backend
            row = {"model": name, "error": f"{type(e).__name__}: {e}"[:500]}
        out["rows"].append(row)
        print(f"[{out['backend']}] {name}: " + (row.get("error") or
              f"a {row['trainer_s']:.2f} s, b {row['keras_s']:.2f} s, a/b {row['ratio']:.2f}, "
              f"gate {'ok' if row['gate']['ok'] else 'FAILED'}"), file=sys.stderr, flush=True)
    return out


def _launch(backend: str, a: argparse.Namespace, mode: dict[str, int]) -> dict[str, Any] | None:
    env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="3")
    cmd = [sys.executable, "-m", "benchmarks.short_runs", "--worker", "--models", a.models,
           "--rounds", str(mode["rounds"]), "--epochs", str(mode["epochs"]), "--batches", str(mode["batches"]),
           "--batch-size", str(mode["batch_size"])]
    return _timing.run_worker(cmd, env, TAG, f"{backend}", timeout=3600)


def _gate(row: dict[str, Any]) -> str:
    if "error" in row:
        return "FAILED (error)"
    g = row["gate"]
    return f"{'ok' if g['ok'] else 'FAILED'} ({g['max_rel']:.0e})"


def markdown(results: list[dict[str, Any]], machine: str, mode: dict[str, int], failed: list[str],
             note: str, quick: bool) -> str:
    steps = mode["epochs"] * mode["batches"]
    lines = [f"# Short runs{' (quick)' if quick else ''}: Trainer.fit vs model.fit, end to end", "",
             f"Machine: {machine}. Each fit: {mode['epochs']} epoch(s) x {mode['batches']} batches of "
             f"{mode['batch_size']} samples ({steps} steps), shuffle=False, Adam(1e-3), sparse cross-entropy "
             f"from logits, fresh models from the same initial weights; {mode['rounds']} round(s) per model, the "
             "two arms interleaved (order flipped each round); each backend in its own process, the engine "
             "warmed up first on a tiny model. Seconds: the whole fit call (median over rounds); ratio: median "
             "of per-round Trainer / model.fit (< 1: the Trainer is faster). First call: fit() to the first "
             "step done, from an on_train_batch_end callback in the same runs (a per-batch callback: both arms "
             "also pull the logs to the host every step). Gate: the final epoch losses agree to "
             f"{GATE_RTOL:g} relative in every round (max relative difference shown).", ""]
    lines += [f"- {name}: {desc}" for name, (_, _, _, desc) in ZOO.items()]
    if note:
        lines += [f"- note: {note}"]
    if failed:
        lines += [f"- failed backends: {', '.join(failed)}"]
    for res in results:
        lines += ["", f"## {res['backend']} (engine warm-up {res['warmup_s']:.1f} s, not counted)", "",
                  "| model | Trainer s | model.fit s | ratio | first call Trainer s | first call model.fit s | gate |",
                  "|---|---|---|---|---|---|---|"]
        for row in res["rows"]:
            if "error" in row:
                lines.append(f"| {row['model']} | — | — | — | — | — | FAILED: {row['error'][:80]} |")
                continue
            lines.append(f"| {row['model']} | {row['trainer_s']:.2f} | {row['keras_s']:.2f} | {row['ratio']:.2f} | "
                         f"{row['trainer_first_s']:.2f} | {row['keras_first_s']:.2f} | {_gate(row)} |")
        per_round = ", ".join(f"{row['model']} " + " / ".join(f"{v:.2f}" for v in row["ratios"])
                              for row in res["rows"] if "error" not in row)
        lines += ["", f"Per-round ratios (round 1 is the first time the process sees the architecture): {per_round}."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.short_runs", description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="2 rounds instead of 5 (all six models, the same fits)")
    p.add_argument("--backends", default=",".join(BACKENDS))
    p.add_argument("--models", default=",".join(ZOO))
    p.add_argument("--rounds", type=int, default=None)
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--batches", type=int, default=None, help="batches per epoch")
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--out", default=RESULTS)
    p.add_argument("--note", default="", help="a line for the report's head (e.g. the machine's load)")
    p.add_argument("--from-json", default=None, help="only rewrite the markdown next to an earlier results JSON")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    mode = dict(MODES["quick" if a.quick else "full"])
    for key in mode:
        if getattr(a, key) is not None:
            mode[key] = getattr(a, key)
    if a.from_json:
        with open(a.from_json) as f:
            saved = json.load(f)
        text = markdown(saved["results"], saved["machine"], saved["mode"], saved["failed"], a.note or saved["note"],
                        "quick" in os.path.basename(a.from_json))
        with open(os.path.splitext(a.from_json)[0] + ".md", "w") as f:
            f.write(text)
        print(text)
        return 0
    if a.worker:
        out = worker(a.models.split(","), mode["rounds"], mode["epochs"], mode["batches"], mode["batch_size"])
        print(TAG + json.dumps(out), flush=True)
        return 0
    start = time.perf_counter()
    results, failed = [], []
    for backend in a.backends.split(","):
        res = _launch(backend, a, mode)
        if res is None:
            failed.append(backend)
        else:
            results.append(res)
    from benchmarks.__main__ import _machine

    stem = "short_runs_quick" if a.quick else "short_runs"
    text = markdown(results, _machine(), mode, failed, a.note, a.quick)
    os.makedirs(a.out, exist_ok=True)
    with open(os.path.join(a.out, stem + ".md"), "w") as f:
        f.write(text)
    with open(os.path.join(a.out, stem + ".json"), "w") as f:
        json.dump({"machine": _machine(), "mode": mode, "gate_rtol": GATE_RTOL, "note": a.note, "failed": failed,
                   "results": results}, f, indent=1)
    print(text)
    print(f"wrote {a.out}/{stem}.{{md,json}} in {time.perf_counter() - start:.0f} s", file=sys.stderr)
    bad = failed or [r for res in results for r in res["rows"] if "error" in r or not r["gate"]["ok"]]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
