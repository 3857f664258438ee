"""WGAN-GP on a 2-D mixture of 8 Gaussians, written once.

The gradient penalty is the gradient of a gradient norm: the critic's loss
differentiates the critic with respect to its *input* (``value_and_grad(...,
inputs=x_hat)``) inside ``value_and_grad`` over the critic's weights. Each
``train_step`` takes ``n_critic`` critic steps (one per chunk of the batch)
and one generator step; noise comes from a trainer-owned SeedGenerator.

    KERAS_BACKEND=tensorflow python examples/wgan_gp.py
"""

from __future__ import annotations

import keras
import numpy as np
from keras import ops

import loops
from loops import Trainer

RADIUS, STD = 2.0, 0.02


def centers() -> np.ndarray:
    angles = np.arange(8) * (2 * np.pi / 8)
    return (RADIUS * np.stack([np.cos(angles), np.sin(angles)], axis=1)).astype("float32")  # (8, 2)


def sample_mixture(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (centers()[rng.integers(0, 8, n)] + rng.normal(0, STD, (n, 2))).astype("float32")


def modes_covered(samples: np.ndarray, min_share: float = 0.02, within: float = 0.5) -> int:
    """Modes holding at least ``min_share`` of the samples within ``within`` of their centre."""
    d = np.linalg.norm(samples[:, None, :] - centers()[None], axis=2)  # (n, 8)
    near = d.min(axis=1) < within
    counts = np.bincount(d.argmin(axis=1)[near], minlength=8)
    return int((counts >= min_share * len(samples)).sum())


def mlp(out: int, name: str) -> keras.Model:
    return keras.Sequential([keras.Input((2,)), keras.layers.Dense(128, activation="relu"),
                             keras.layers.Dense(128, activation="relu"),
                             keras.layers.Dense(128, activation="relu"), keras.layers.Dense(out)], name=name)


class WGANGP(Trainer):
    def __init__(self, n_critic: int = 5, gp_weight: float = 0.1, lr: float = 5e-4, **kwargs):
        super().__init__(**kwargs)
        self.generator, self.critic = mlp(2, "generator"), mlp(1, "critic")
        self.g_opt = keras.optimizers.Adam(lr, beta_1=0.5, beta_2=0.9)
        self.c_opt = keras.optimizers.Adam(lr, beta_1=0.5, beta_2=0.9)
        self.noise = keras.random.SeedGenerator(0)
        self.n_critic, self.gp_weight = n_critic, gp_weight
        self.c_loss_tracker = keras.metrics.Mean(name="critic_loss")
        self.gp_tracker = keras.metrics.Mean(name="gradient_penalty")
        self.g_loss_tracker = keras.metrics.Mean(name="generator_loss")

    def critic_step(self, real):
        n = ops.shape(real)[0]
        z = keras.random.normal((n, 2), seed=self.noise)
        eps = keras.random.uniform((n, 1), seed=self.noise)

        def critic_loss():
            fake = self.generator(z)
            x_hat = eps * real + (1.0 - eps) * fake
            # d critic / d input, differentiable again for the outer gradient
            _, (dx,) = self.value_and_grad(lambda x: ops.sum(self.critic(x)), inputs=x_hat)
            gp = ops.mean(ops.square(ops.sqrt(ops.sum(ops.square(dx), axis=1) + 1e-12) - 1.0))
            wasserstein = ops.mean(self.critic(fake)) - ops.mean(self.critic(real))
            return wasserstein + self.gp_weight * gp, gp

        (loss, gp), grads = self.value_and_grad(critic_loss, self.critic.trainable_variables, has_aux=True)
        self.c_opt.apply(grads, self.critic.trainable_variables)
        self.c_loss_tracker.update_state(loss)
        self.gp_tracker.update_state(gp)

    def train_step(self, real):
        chunk = ops.shape(real)[0] // self.n_critic
        for i in range(self.n_critic):
            self.critic_step(real[i * chunk:(i + 1) * chunk])
        z = keras.random.normal((chunk, 2), seed=self.noise)
        g, grads = self.value_and_grad(lambda: -ops.mean(self.critic(self.generator(z))),
                                       self.generator.trainable_variables)
        self.g_opt.apply(grads, self.generator.trainable_variables)
        self.g_loss_tracker.update_state(g)
        return self.get_metrics_result()

    def sample(self, n: int) -> np.ndarray:
        z = keras.random.normal((n, 2), seed=self.noise)
        return ops.convert_to_numpy(self.generator(z))


def main(epochs: int = 20, steps_per_epoch: int = 100, batch: int = 128, verbose: int = 1,
         run_eagerly: bool = False) -> tuple[WGANGP, int]:
    loops.set_seed(0, neutral_random=True)  # noise a captured torch step can hold; the same on every backend
    gan = WGANGP(run_eagerly=run_eagerly)
    n_critic = gan.n_critic
    data = sample_mixture(steps_per_epoch * batch * n_critic)
    gan.fit(data, batch_size=batch * n_critic, epochs=epochs, verbose=verbose)
    return gan, modes_covered(gan.sample(4000))


if __name__ == "__main__":
    _, covered = main()
    print(f"modes covered: {covered} of 8")
