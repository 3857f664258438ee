"""A conditional DCGAN on scikit-learn's 8x8 digits, written once.

Two models, two optimizers, alternating updates, noise from a trainer-owned
SeedGenerator. The generator is asked for a digit class; a classifier trained
on the real digits (with ``loops.Trainer`` too) checks it delivers that class.

    KERAS_BACKEND=jax python examples/dcgan_digits.py
"""

from __future__ import annotations

import keras
import numpy as np
from keras import layers, ops

import loops
from loops import Trainer

LATENT, CLASSES = 32, 10


def make_generator() -> keras.Model:
    z, label = keras.Input((LATENT,)), keras.Input((CLASSES,))
    h = layers.Dense(2 * 2 * 128)(layers.Concatenate()([z, label]))
    h = layers.LeakyReLU(0.2)(layers.Reshape((2, 2, 128))(h))
    h = layers.LeakyReLU(0.2)(layers.Conv2DTranspose(64, 3, strides=2, padding="same")(h))  # 4x4
    h = layers.LeakyReLU(0.2)(layers.Conv2DTranspose(32, 3, strides=2, padding="same")(h))  # 8x8
    image = layers.Conv2D(1, 3, padding="same", activation="tanh")(h)                     # (8, 8, 1)
    return keras.Model([z, label], image, name="generator")


def make_discriminator() -> keras.Model:
    image, label = keras.Input((8, 8, 1)), keras.Input((CLASSES,))
    label_map = layers.Reshape((8, 8, CLASSES))(layers.RepeatVector(64)(label))  # one-hot on every pixel
    h = layers.Concatenate()([image, label_map])
    h = layers.LeakyReLU(0.2)(layers.Conv2D(64, 3, strides=2, padding="same")(h))         # 4x4
    h = layers.LeakyReLU(0.2)(layers.Conv2D(128, 3, strides=2, padding="same")(h))        # 2x2
    return keras.Model([image, label], layers.Dense(1)(layers.Flatten()(h)), name="discriminator")


class ConditionalGAN(Trainer):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.generator, self.discriminator = make_generator(), make_discriminator()
        self.g_opt = keras.optimizers.Adam(2e-4, beta_1=0.5)
        self.d_opt = keras.optimizers.Adam(2e-4, beta_1=0.5)
        self.noise = keras.random.SeedGenerator(0)
        self.d_tracker = keras.metrics.Mean(name="d_loss")
        self.g_tracker = keras.metrics.Mean(name="g_loss")

    def train_step(self, batch):
        real, labels = batch                       # (n, 8, 8, 1) in [-1, 1], (n,) ints
        n = ops.shape(real)[0]
        onehot = ops.one_hot(labels, CLASSES)
        bce = keras.losses.BinaryCrossentropy(from_logits=True)
        z = keras.random.normal((n, LATENT), seed=self.noise)

        def d_loss():
            fake = self.generator([z, onehot], training=True)
            real_logits = self.discriminator([real, onehot], training=True)
            fake_logits = self.discriminator([fake, onehot], training=True)
            # (label smoothing as ones * 0.9: torch's full() reads a tensor fill value into Python)
            return bce(ops.ones((n, 1)) * 0.9, real_logits) + bce(ops.zeros((n, 1)), fake_logits)

        d, grads = self.value_and_grad(d_loss, self.discriminator.trainable_variables)
        self.d_opt.apply(grads, self.discriminator.trainable_variables)

        z2 = keras.random.normal((n, LATENT), seed=self.noise)

        def g_loss():
            fake = self.generator([z2, onehot], training=True)
            return bce(ops.ones((n, 1)), self.discriminator([fake, onehot], training=True))

        g, grads = self.value_and_grad(g_loss, self.generator.trainable_variables)
        self.g_opt.apply(grads, self.generator.trainable_variables)
        self.d_tracker.update_state(d)
        self.g_tracker.update_state(g)
        return self.get_metrics_result()

    def generate(self, labels: np.ndarray) -> np.ndarray:
        """Images for ``labels``, in [0, 1] like the data, shape (n, 8, 8)."""
        z = keras.random.normal((len(labels), LATENT), seed=self.noise)
        images = self.generator([z, ops.one_hot(ops.convert_to_tensor(labels), CLASSES)], training=False)
        return (ops.convert_to_numpy(images)[..., 0] + 1.0) / 2.0


def train_judge(x: np.ndarray, y: np.ndarray) -> Trainer:
    """A digits classifier (about 97% test accuracy) that grades generated images."""
    judge = Trainer(keras.Sequential([keras.Input((8, 8)), layers.Flatten(), layers.Dense(128, activation="relu"),
                                      layers.Dense(CLASSES)]),
                    "adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    judge.fit(x, y, batch_size=64, epochs=30, verbose=0)
    return judge


def main(epochs: int = 40, verbose: int = 1, run_eagerly: bool = False) -> tuple[ConditionalGAN, float]:
    from examples._digits import load_digits_split

    x, y, _, _ = load_digits_split()
    loops.set_seed(0, neutral_random=True)  # noise a captured torch step can hold; the same on every backend
    gan = ConditionalGAN(run_eagerly=run_eagerly)
    gan.fit(x[..., None] * 2.0 - 1.0, y, batch_size=64, epochs=epochs, verbose=verbose)
    asked = np.repeat(np.arange(CLASSES), 50).astype("int32")
    judged = np.argmax(train_judge(x, y).predict(gan.generate(asked), verbose=0), axis=1)
    return gan, float(np.mean(judged == asked))


if __name__ == "__main__":
    _, accuracy = main()
    print(f"the classifier reads the requested digit in {accuracy:.0%} of generated images")
