"""Gradient clipping with norm logging (the seeds' Day 4 exercise), written once.

Clips gradients by global norm 1.0 and reports the *pre-clip* norm as
``grad_norm`` in the progress bar and History; EarlyStopping still works.

    KERAS_BACKEND=jax python examples/grad_clipping.py      # or tensorflow, torch
"""

from __future__ import annotations

import keras

import loops
from loops import Trainer


class ClippedTrainer(Trainer):
    def __init__(self, model: keras.Model, clip_norm: float = 1.0, **kwargs):
        super().__init__(model, **kwargs)
        self.clip_norm = clip_norm
        # A metric held as an attribute: tracked, logged and reset each epoch.
        self.grad_norm_tracker = keras.metrics.Mean(name="grad_norm")

    def train_step(self, batch):
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(batch)
        variables = self.model.trainable_variables

        def loss_fn():
            y_pred = self.model(x, training=True)
            return self.compute_loss(x, y, y_pred, sample_weight), y_pred

        (loss, y_pred), grads = self.value_and_grad(loss_fn, variables, has_aux=True)
        grads, norm = loops.clip_by_global_norm(grads, self.clip_norm)  # norm is pre-clip
        self.optimizer.apply(grads, variables)
        self.grad_norm_tracker.update_state(norm)
        self._loss_tracker.update_state(loss)
        return self.compute_metrics(x, y, y_pred, sample_weight)


def make_model() -> keras.Model:
    return keras.Sequential([
        keras.Input((8, 8)),
        keras.layers.Flatten(),
        keras.layers.Dense(256, activation="relu"),
        keras.layers.Dense(128, activation="relu"),
        keras.layers.Dense(10),
    ])


def main(epochs: int = 15, verbose: int = 1, run_eagerly: bool = False) -> tuple[keras.callbacks.History, dict]:
    from examples._digits import load_digits_split

    x, y, xt, yt = load_digits_split()
    trainer = ClippedTrainer(make_model(), optimizer=keras.optimizers.SGD(0.1, momentum=0.9),
                             loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                             metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
                             run_eagerly=run_eagerly)
    history = trainer.fit(x, y, batch_size=64, epochs=epochs, validation_split=0.15, verbose=verbose,
                          callbacks=[keras.callbacks.EarlyStopping(monitor="val_loss", patience=3,
                                                                   restore_best_weights=True)])
    return history, trainer.evaluate(xt, yt, return_dict=True, verbose=0)


if __name__ == "__main__":
    history, result = main()
    print("grad_norm per epoch:", [round(v, 3) for v in history.history["grad_norm"]])
    print("test:", result)
