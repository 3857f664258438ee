"""``python -m loops demo``: the classic recipe on scikit-learn's digits, on the
current backend or on each backend in its own process, then a comparison."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from typing import Any

from loops import backends

_RESULT_TAG = "LOOPS_DEMO_RESULT "


def run_one(epochs: int, verbose: int) -> dict[str, Any]:
    """Trains the classic MLP with loops.Trainer on the current backend."""
    import keras
    import numpy as np
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    from loops import Trainer

    keras.utils.set_random_seed(0)
    digits = load_digits()
    x = (digits.images / 16.0).astype("float32")  # (1797, 8, 8) in [0, 1]
    x_train, x_test, y_train, y_test = train_test_split(
        x, digits.target.astype("int32"), test_size=0.2, random_state=0, stratify=digits.target)
    model = keras.Sequential([
        keras.Input((8, 8)),
        keras.layers.Flatten(),
        keras.layers.Dense(256, activation="relu"),
        keras.layers.Dense(128, activation="relu"),
        keras.layers.Dense(10),  # logits
    ])
    # Identical starting weights on every backend (the same Keras seed gives
    # different weights per engine): Glorot-uniform drawn with NumPy.
    rng = np.random.default_rng(0)
    model.set_weights([
        rng.uniform(-1, 1, w.shape).astype("float32") * np.sqrt(6.0 / sum(w.shape)) if w.ndim == 2
        else np.zeros(w.shape, "float32") for w in model.get_weights()])
    trainer = Trainer(model, optimizer=keras.optimizers.Adam(1e-3), seed=0,
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                      metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")])
    start = time.perf_counter()
    history = trainer.fit(x_train, y_train, batch_size=128, epochs=epochs, validation_split=0.15,
                          verbose=verbose,
                          callbacks=[keras.callbacks.EarlyStopping(monitor="val_loss", patience=5,
                                                                   restore_best_weights=True)])
    seconds = time.perf_counter() - start
    result = trainer.evaluate(x_test, y_test, return_dict=True, verbose=0)
    return {"backend": keras.backend.backend(), "epochs": len(history.history["loss"]),
            "test_loss": result["loss"], "test_accuracy": result["accuracy"], "fit_seconds": seconds}


def main(backend: str, epochs: int, verbose: int) -> int:
    names = backends.names() if backend == "all" else [backend]
    if backend not in ("all", *backends.names()):
        print(f"unknown backend {backend!r}; choose one of {backends.names()} or 'all'", file=sys.stderr)
        return 2
    if backend != "all" and os.environ.get("KERAS_BACKEND") == backend:
        result = run_one(epochs, verbose)
        print(f"\n{result['backend']}: test accuracy {result['test_accuracy']:.4f} "
              f"(loss {result['test_loss']:.4f}) after {result['epochs']} epochs, "
              f"fit {result['fit_seconds']:.1f} s")
        print(_RESULT_TAG + json.dumps(result), flush=True)
        return 0
    results = []
    for name in names:
        print(f"\n=== {name} ===", flush=True)
        env = dict(os.environ, KERAS_BACKEND=name, TF_CPP_MIN_LOG_LEVEL="2")
        proc = subprocess.run([sys.executable, "-m", "loops", "demo", "--backend", name,
                               "--epochs", str(epochs), "--verbose", str(verbose)],
                              env=env, stdout=subprocess.PIPE, text=True)
        for line in proc.stdout.splitlines():
            if line.startswith(_RESULT_TAG):
                results.append(json.loads(line[len(_RESULT_TAG):]))
            else:
                print(line)
        if proc.returncode != 0:
            print(f"{name}: failed with exit code {proc.returncode}", file=sys.stderr)
            return proc.returncode
    if len(results) > 1:
        print("\n| backend | epochs | test accuracy | test loss | fit seconds |")
        print("|---|---|---|---|---|")
        for r in results:
            print(f"| {r['backend']} | {r['epochs']} | {r['test_accuracy']:.4f} | {r['test_loss']:.4f} "
                  f"| {r['fit_seconds']:.1f} |")
    return 0
