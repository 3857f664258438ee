"""Models that draw random numbers, built and trained after
``loops.set_seed(0, neutral_random=True)`` with no ``set_weights``: prints each
case's initial weights' digest and per-step losses as JSON, for comparison
across backends (tests/test_neutral_random.py runs it under each).

    KERAS_BACKEND=torch python tests/_neutral_case.py [case ...]
"""

from __future__ import annotations

import json
import sys

import keras
import numpy as np
from keras import ops

import loops
from loops import Trainer


class _Losses(keras.callbacks.Callback):
    def __init__(self, key):
        super().__init__()
        self.key, self.values = key, []

    def on_train_batch_end(self, batch, logs=None):
        self.values.append(float(np.asarray(logs[self.key])))


def _fit(trainer, x, y=None, key="loss", epochs=2, batch_size=16):
    cb = _Losses(key)
    trainer.fit(x, y, batch_size=batch_size, epochs=epochs, shuffle=False, verbose=0, callbacks=[cb])
    return cb.values


def _data(shape, n=64, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, *shape)).astype("float32"), rng.integers(0, 3, size=(n,)).astype("int32")


def dropout_mlp():
    x, y = _data((12,))
    model = keras.Sequential([keras.Input((12,)), keras.layers.Dense(32, activation="relu"),
                              keras.layers.Dropout(0.3), keras.layers.Dense(32, activation="relu"),
                              keras.layers.AlphaDropout(0.1), keras.layers.GaussianDropout(0.2),
                              keras.layers.Dense(3)])
    t = Trainer(model, optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model, _fit(t, x, y)


def noise_and_augmentation_cnn():
    x, y = _data((8, 8, 1))
    model = keras.Sequential([
        keras.Input((8, 8, 1)), keras.layers.GaussianNoise(0.1), keras.layers.RandomFlip("horizontal"),
        keras.layers.RandomContrast(0.2), keras.layers.Conv2D(4, 3, activation="relu"),
        keras.layers.SpatialDropout2D(0.2), keras.layers.Flatten(), keras.layers.Dense(3)])
    t = Trainer(model, optimizer="sgd", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model, _fit(t, x, y)


def augmentation_cnn():
    """The geometric and colour augmentation layers (their draws neutral; the
    transforms themselves are each engine's interpolation)."""
    x, y = _data((8, 8, 1))
    x = (x - x.min()) / (x.max() - x.min())  # images in [0, 1]
    model = keras.Sequential([
        keras.Input((8, 8, 1)), keras.layers.RandomRotation(0.1), keras.layers.RandomZoom(0.1),
        keras.layers.RandomTranslation(0.1, 0.1), keras.layers.RandomBrightness(0.1, value_range=(0, 1)),
        keras.layers.Conv2D(4, 3, activation="relu"), keras.layers.Flatten(), keras.layers.Dense(3)])
    t = Trainer(model, optimizer="sgd", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model, _fit(t, x, y)


class NeutralSampling(keras.layers.Layer):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.noise = keras.random.SeedGenerator(5)

    def call(self, mean, log_var):
        return mean + ops.exp(0.5 * log_var) * keras.random.normal(ops.shape(mean), seed=self.noise)


class NeutralVAE(Trainer):
    def __init__(self):
        super().__init__()
        inputs = keras.Input((12,))
        h = keras.layers.Dense(16, activation="relu")(inputs)
        self.encoder = keras.Model(inputs, [keras.layers.Dense(2)(h), keras.layers.Dense(2)(h)])
        self.decoder = keras.Sequential([keras.Input((2,)), keras.layers.Dense(16, activation="relu"),
                                         keras.layers.Dense(12)])
        self.sampling = NeutralSampling()
        self.opt = keras.optimizers.Adam(1e-2)

    def train_step(self, batch):
        x = batch[0] if isinstance(batch, tuple) else batch

        def loss_fn():
            mean, log_var = self.encoder(x, training=True)
            z = self.sampling(mean, log_var)
            rec = ops.mean(ops.square(self.decoder(z, training=True) - x))
            kl = -0.5 * ops.mean(1 + log_var - ops.square(mean) - ops.exp(log_var))
            return rec + kl

        variables = self.encoder.trainable_variables + self.decoder.trainable_variables
        loss, grads = self.value_and_grad(loss_fn, variables)
        self.opt.apply(grads, variables)
        return {"loss": loss}


def vae():
    x, _ = _data((12,))
    t = NeutralVAE()
    return t.encoder, _fit(t, x)


class NeutralGAN(Trainer):
    def __init__(self):
        super().__init__()
        self.generator = keras.Sequential([keras.Input((4,)), keras.layers.Dense(12, activation="tanh")])
        self.discriminator = keras.Sequential([keras.Input((12,)), keras.layers.Dense(8, activation="relu"),
                                               keras.layers.Dropout(0.2), keras.layers.Dense(1)])
        self.g_opt, self.d_opt = keras.optimizers.Adam(1e-3), keras.optimizers.Adam(1e-3)
        self.noise = keras.random.SeedGenerator(1)

    def train_step(self, batch):
        real = batch[0] if isinstance(batch, tuple) else batch
        n = ops.shape(real)[0]
        bce = keras.losses.BinaryCrossentropy(from_logits=True)

        def d_loss():
            fake = self.generator(keras.random.normal((n, 4), seed=self.noise), training=True)
            return (bce(ops.ones((n, 1)), self.discriminator(real, training=True))
                    + bce(ops.zeros((n, 1)), self.discriminator(fake, training=True)))

        d, grads = self.value_and_grad(d_loss, self.discriminator.trainable_variables)
        self.d_opt.apply(grads, self.discriminator.trainable_variables)

        def g_loss():
            fake = self.generator(keras.random.uniform((n, 4), -1.0, 1.0, seed=self.noise), training=True)
            return bce(ops.ones((n, 1)), self.discriminator(fake, training=True))

        g, grads = self.value_and_grad(g_loss, self.generator.trainable_variables)
        self.g_opt.apply(grads, self.generator.trainable_variables)
        return {"d_loss": d, "g_loss": g}


def gan():
    x, _ = _data((12,))
    t = NeutralGAN()
    return t.generator, _fit(t, x, key="g_loss")


CASES = {"dropout_mlp": dropout_mlp, "noise_and_augmentation_cnn": noise_and_augmentation_cnn,
         "augmentation_cnn": augmentation_cnn, "vae": vae, "gan": gan}


def run(names):
    out = {}
    for name in names:
        loops.set_seed(0, neutral_random=True)
        model, losses = CASES[name]()
        out[name] = {"losses": losses}
        # the initial weights are compared through the first loss; the final ones here
        out[name]["weights"] = [np.asarray(w, "float64").ravel().tolist() for w in model.get_weights()]
    return out


if __name__ == "__main__":
    print("NEUTRAL-JSON " + json.dumps(run(sys.argv[1:] or list(CASES))))
