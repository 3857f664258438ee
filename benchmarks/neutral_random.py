"""The cost of neutral random numbers: ``loops.set_seed(..., neutral_random=True)``
against each engine's own generator, on Dropout-heavy models, per backend.

    python -m benchmarks.neutral_random            # 5 rounds of >= 1 s blocks per arm
    python -m benchmarks.neutral_random --quick    # 3 rounds of 0.2 s (a smoke run)

Each backend runs in its own process. Arms: ``engine`` (Keras's draws:
jax.random, tf.random, a torch.Generator) and ``neutral`` (the counter-based
integer generator); both ``Trainer.fit`` with the same model, data and batch
size, timed as the other benchmarks are (blocks of whole epochs, arm order
rotated each round, median ms/step; ratio = neutral / engine per round,
median). On torch the engine arm's step runs eagerly (a seeded Keras draw
reads a tensor into Python, which graph capture cannot hold) and the neutral
arm's is captured: that difference is what a user gets, so it is measured as is.
Writes ``benchmarks/results/neutral_random.{md,json}``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from typing import Any

import numpy as np

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
BACKENDS = ("jax", "tensorflow", "torch")


def _model(kind: str) -> Any:
    import keras

    if kind == "dropout_mlp":
        return keras.Sequential([keras.Input((784,)), keras.layers.Dense(512, activation="relu"),
                                 keras.layers.Dropout(0.5), keras.layers.Dense(512, activation="relu"),
                                 keras.layers.Dropout(0.5), keras.layers.Dense(10)])
    return keras.Sequential([keras.Input((28, 28, 1)), keras.layers.Conv2D(16, 3, activation="relu"),
                             keras.layers.SpatialDropout2D(0.2), keras.layers.Conv2D(32, 3, activation="relu"),
                             keras.layers.Flatten(), keras.layers.Dropout(0.5), keras.layers.Dense(10)])


class _Arm:
    def __init__(self, name: str, kind: str, x: np.ndarray, y: np.ndarray, batch: int):
        import keras

        import loops
        from loops import neutral_random

        self.name, self.neutral, self.x, self.y, self.batch = name, name == "neutral", x, y, batch
        self._switch = neutral_random.enable
        loops.set_seed(0, neutral_random=self.neutral)
        self.trainer = loops.Trainer(_model(kind), optimizer="adam",
                                     loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))

    def run(self, epochs: int) -> None:
        self._switch(self.neutral)  # (an eager torch step looks the draw functions up at every call)
        self.trainer.fit(self.x, self.y, batch_size=self.batch, epochs=epochs, shuffle=False, verbose=0)


def worker(quick: bool) -> dict[str, Any]:
    import warnings

    import keras

    from benchmarks import _timing

    warnings.filterwarnings("ignore")  # (torch's eager-fallback notice for the engine arm: expected)
    rng = np.random.default_rng(0)
    out: dict[str, Any] = {"backend": keras.backend.backend(), "workloads": {}}
    for kind, shape in (("dropout_mlp", (784,)), ("dropout_cnn", (28, 28, 1))):
        batch, steps = 128, 8
        x = rng.normal(size=(batch * steps, *shape)).astype("float32")
        y = rng.integers(0, 10, size=(batch * steps,)).astype("int32")
        arms = [_Arm("engine", kind, x, y, batch), _Arm("neutral", kind, x, y, batch)]
        for arm in arms:
            arm.run(1)  # compile / capture
        epochs = _timing.epochs_per_block(arms, steps, 0.2 if quick else 1.0)
        ms = _timing.rounds(arms, steps, epochs, 3 if quick else 5)
        ratios = [n / e for n, e in zip(ms["neutral"], ms["engine"])]
        out["workloads"][kind] = {"ms_per_step": {a: statistics.median(v) for a, v in ms.items()},
                                  "neutral_over_engine": statistics.median(ratios), "rounds_ms": ms}
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.neutral_random", description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--backends", default=",".join(BACKENDS))
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.worker:
        print("RESULT " + json.dumps(worker(a.quick)))
        return 0
    results = []
    for backend in a.backends.split(","):
        env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="2")
        cmd = [sys.executable, "-m", "benchmarks.neutral_random", "--worker"] + (["--quick"] if a.quick else [])
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1800,
                              cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        if proc.returncode != 0:
            print(proc.stderr[-3000:], file=sys.stderr)
            return 1
        results.append(json.loads(next(ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT "))[7:]))
    lines = ["# Neutral random numbers: cost against each engine's generator", "",
             f"{'Quick run (3 rounds of 0.2 s)' if a.quick else '5 rounds of >= 1 s blocks'}, "
             "Trainer.fit, batch 128, median ms/step; ratio = neutral / engine (median of rounds).", "",
             "| backend | workload | engine ms/step | neutral ms/step | neutral / engine |", "|---|---|---|---|---|"]
    for r in results:
        for kind, w in r["workloads"].items():
            lines.append(f"| {r['backend']} | {kind} | {w['ms_per_step']['engine']:.2f} | "
                         f"{w['ms_per_step']['neutral']:.2f} | {w['neutral_over_engine']:.2f} |")
    text = "\n".join(lines) + "\n"
    print(text)
    if a.backends == ",".join(BACKENDS):
        name = "neutral_random_quick" if a.quick else "neutral_random"
        os.makedirs(RESULTS, exist_ok=True)
        with open(os.path.join(RESULTS, f"{name}.md"), "w") as f:
            f.write(text)
        with open(os.path.join(RESULTS, f"{name}.json"), "w") as f:
            json.dump(results, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
