"""A small training run for the resume tests, in this process or as a script:

    KERAS_BACKEND=torch python tests/_resume_case.py CKPT_DIR OUT.json [--die-at N --signal KILL|TERM]
        [--raise-at N] [--epochs E] [--dropout]

It trains with ``fit(checkpoint_dir=CKPT_DIR, checkpoint_every=4)`` (resuming
whatever the directory holds), optionally kills itself (SIGKILL / SIGTERM) or
raises after global step N, and writes the final weights and History to OUT.json.
"""

import argparse
import json
import os
import signal
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from loops import Trainer  # noqa: E402

STEPS_PER_EPOCH = 7  # 200 samples, batch 32 (a ragged last batch)


def data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(260, 8)).astype("float32")
    y = (x[:, 0] + 0.5 * x[:, 1] > 0).astype("int32")
    return (x[:200], y[:200]), (x[200:], y[200:])


def trainer(dropout: bool, neutral: bool = False) -> Trainer:
    keras.utils.set_random_seed(1)
    if neutral:  # the same Dropout masks on every backend
        import loops

        loops.set_seed(1, neutral_random=True)
    layers = [keras.Input((8,)), keras.layers.Dense(16, activation="relu")]
    if dropout:
        layers.append(keras.layers.Dropout(0.25))
    model = keras.Sequential(layers + [keras.layers.Dense(2)])
    rng = np.random.default_rng(3)  # the same initial numbers on every engine
    model.set_weights([rng.normal(0, 0.3, size=w.shape).astype("float32") for w in model.get_weights()])
    return Trainer(model, optimizer=keras.optimizers.Adam(0.01),
                   loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                   metrics=["accuracy"], seed=7)


class Interrupt(keras.callbacks.Callback):
    """Dies (a signal to itself) or raises after global step ``at``."""

    def __init__(self, at: int, how: str):
        super().__init__()
        self.at, self.how, self.steps = at, how, 0

    def on_train_begin(self, logs=None):
        self.steps = int(keras.ops.convert_to_numpy(self.model.optimizer.iterations))

    def on_train_batch_end(self, batch, logs=None):
        self.steps += 1
        if self.steps == self.at:
            if self.how == "raise":
                raise RuntimeError(f"planted failure after step {self.at}")
            os.kill(os.getpid(), getattr(signal, f"SIG{self.how}"))


def run(ckpt_dir, epochs=5, dropout=True, interrupt=None, checkpoint_every=4, neutral=False):
    (x, y), val = data()
    t = trainer(dropout, neutral)
    cbs = [Interrupt(*interrupt)] if interrupt else []
    history = t.fit(x, y, batch_size=32, epochs=epochs, validation_data=val, verbose=0, callbacks=cbs,
                    checkpoint_dir=ckpt_dir, checkpoint_every=checkpoint_every)
    return t, history


def main():
    p = argparse.ArgumentParser()
    p.add_argument("ckpt_dir")
    p.add_argument("out")
    p.add_argument("--die-at", type=int)
    p.add_argument("--signal", default="KILL")
    p.add_argument("--raise-at", type=int)
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--dropout", action="store_true")
    p.add_argument("--neutral", action="store_true", help="loops.set_seed(..., neutral_random=True)")
    a = p.parse_args()
    interrupt = (a.die_at, a.signal) if a.die_at else ((a.raise_at, "raise") if a.raise_at else None)
    t, history = run(a.ckpt_dir, epochs=a.epochs, dropout=a.dropout, interrupt=interrupt, neutral=a.neutral)
    with open(a.out, "w") as f:
        json.dump({"weights": [w.tolist() for w in t.get_weights()], "history": history.history,
                   "epoch": history.epoch}, f)


if __name__ == "__main__":
    main()
