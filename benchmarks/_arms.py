"""Arms (a) ``loops.Trainer.fit`` and (b) Keras ``model.fit``.

Every arm offers the same two calls: ``gate(k)`` trains ``k`` steps one batch
at a time from the shared initial weights and returns each step's logs (the
first call, trace and compile, is timed apart), and ``run(epochs)`` trains
``epochs`` passes over the pool of batches and returns after a forced sync.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from benchmarks import _workloads as W


def _loss() -> Any:
    import keras

    return keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def _gan_trainer_class() -> Any:
    import keras
    from keras import ops

    from loops import Trainer

    class GANTrainer(Trainer):
        """The README's GAN step with the noise passed in the batch (host-generated)."""

        def __init__(self, generator: Any, discriminator: Any):
            super().__init__()
            self.generator, self.discriminator = generator, discriminator
            self.g_opt, self.d_opt = keras.optimizers.Adam(W.LR, epsilon=W.EPS), keras.optimizers.Adam(W.LR, epsilon=W.EPS)

        def train_step(self, batch: dict[str, Any]) -> dict[str, Any]:
            real, z1, z2 = batch["real"], batch["z1"], batch["z2"]
            n = ops.shape(real)[0]
            bce = keras.losses.BinaryCrossentropy(from_logits=True)

            def d_loss() -> Any:
                fake = self.generator(z1, training=True)
                return (bce(ops.ones((n, 1)), self.discriminator(real, training=True))
                        + bce(ops.zeros((n, 1)), self.discriminator(fake, training=True)))

            d, grads = self.value_and_grad(d_loss, self.discriminator.trainable_variables)
            self.d_opt.apply(grads, self.discriminator.trainable_variables)

            def g_loss() -> Any:
                return bce(ops.ones((n, 1)), self.discriminator(self.generator(z2, training=True), training=True))

            g, grads = self.value_and_grad(g_loss, self.generator.trainable_variables)
            self.g_opt.apply(grads, self.generator.trainable_variables)
            return {"d_loss": d, "g_loss": g}

    return GANTrainer


def gan_models(weights: dict[str, list[np.ndarray]]) -> tuple[Any, Any]:
    g = W.keras_model(W.GENERATOR, (W.LATENT,), "generator")
    d = W.keras_model(W.DISCRIMINATOR, (784,), "discriminator")
    g.set_weights(weights["generator"])
    d.set_weights(weights["discriminator"])
    return g, d


class FitArm:
    """``fit`` of a Trainer or a compiled Keras model over the pool."""

    def __init__(self, name: str, fitter: Any, w: W.Workload, arrays: dict[str, np.ndarray]):
        self.name, self.fitter, self.w, self.arrays = name, fitter, w, arrays
        self.first_call_s = float("nan")

    def _fit(self, arrays: dict[str, np.ndarray], epochs: int) -> Any:
        if "x" in arrays:
            return self.fitter.fit(arrays["x"], arrays["y"], batch_size=self.w.batch_size, epochs=epochs,
                                   shuffle=False, verbose=0)
        return self.fitter.fit(arrays, batch_size=self.w.batch_size, epochs=epochs, shuffle=False, verbose=0)

    def gate(self, k: int, per_call: int = 1) -> list[dict[str, float]]:
        """``k`` steps, ``per_call`` batches per fit call; logs per call."""
        out = []
        b = self.w.batch_size
        for i in range(0, k, per_call):
            part = {key: a[i * b:(i + per_call) * b] for key, a in self.arrays.items()}
            start = time.perf_counter()
            history = self._fit(part, 1)
            if i == 0:
                self.first_call_s = time.perf_counter() - start
            out.append({m: float(v[-1]) for m, v in history.history.items()})
        return out

    def run(self, epochs: int) -> None:
        self._fit(self.arrays, epochs)  # ends with epoch logs on the host: a sync


def trainer_arm(w: W.Workload, weights: Any, arrays: dict[str, np.ndarray], spe: int = 1) -> FitArm:
    import keras

    from loops import Trainer

    if w is W.GAN:
        trainer = _gan_trainer_class()(*gan_models(weights))
    else:
        model = W.keras_model(w.spec, w.input_shape, w.name)
        model.set_weights(weights)
        trainer = Trainer(model, keras.optimizers.Adam(W.LR, epsilon=W.EPS), _loss(), steps_per_execution=spe)
    return FitArm("trainer" if spe == 1 else f"trainer_spe{spe}", trainer, w, arrays)


def keras_arm(w: W.Workload, weights: Any, arrays: dict[str, np.ndarray]) -> FitArm:
    import keras

    model = W.keras_model(w.spec, w.input_shape, w.name)
    model.set_weights(weights)
    model.compile(keras.optimizers.Adam(W.LR, epsilon=W.EPS), _loss())
    return FitArm("keras", model, w, arrays)
