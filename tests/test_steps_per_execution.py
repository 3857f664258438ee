"""steps_per_execution=k: k batches stacked and run in one compiled call
(lax.scan on jax, tf.while_loop on tensorflow, a Python loop on torch) train
exactly as k separate steps, for default and custom steps alike."""

import keras
import numpy as np
import pytest

from conftest import classic_mlp, numpy_weights
from loops import Trainer

SCE = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def _data(n=300):
    rng = np.random.default_rng(0)
    return rng.random((n, 8, 8), dtype=np.float32), rng.integers(0, 10, n).astype("int32")


class Ends(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.ends = []

    def on_train_batch_end(self, batch, logs=None):
        self.ends.append((batch, float(logs["loss"])))


@pytest.mark.parametrize("eager", [False, True])
def test_default_step_k_equals_one_step_at_a_time(eager):
    x, y = _data()  # 300 rows / 32: 10 batches, the last ragged (padded and masked)
    runs = {}
    for k in (1, 4):
        model = classic_mlp()
        model.set_weights(numpy_weights(model))
        trainer = Trainer(model, keras.optimizers.Adam(1e-3), SCE, metrics=["accuracy"], steps_per_execution=k,
                          run_eagerly=eager)
        ends = Ends()
        h = trainer.fit(x, y, batch_size=32, epochs=2, shuffle=False, verbose=0, callbacks=[ends])
        runs[k] = (h, trainer.get_weights(), ends.ends)
    (h1, w1, e1), (h4, w4, e4) = runs[1], runs[4]
    for a, b in zip(w1, w4):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(h4.history["loss"], h1.history["loss"], rtol=1e-5)
    np.testing.assert_allclose(h4.history["accuracy"], h1.history["accuracy"], rtol=1e-6)
    # one call per group of 4: batch hooks see first + 4 - 1, as in Keras (a short last group too)
    assert [b for b, _ in e4] == [3, 7, 11] * 2
    real_last = [3, 7, 9] * 2  # the batch whose logs the group ends with
    np.testing.assert_allclose([v for _, v in e4], [e1[b + 10 * (i // 3)][1] for i, b in enumerate(real_last)],
                               rtol=1e-5)


class TwoOptimizers(Trainer):
    """A custom step (as a GAN's): two models, two optimizers, a trainer-owned
    SeedGenerator, and the ragged last batch as the data gives it."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        rng = np.random.default_rng(1)
        self.a = keras.Sequential([keras.Input((8, 8)), keras.layers.Flatten(), keras.layers.Dense(10)])
        self.b = keras.Sequential([keras.Input((8, 8)), keras.layers.Flatten(), keras.layers.Dense(10)])
        for m in (self.a, self.b):
            m.set_weights([rng.normal(0, 0.1, w.shape).astype("float32") for w in m.get_weights()])
        self.opt_a, self.opt_b = keras.optimizers.Adam(1e-2), keras.optimizers.SGD(0.1)
        self.noise = keras.random.SeedGenerator(3)
        self.tracker = keras.metrics.Mean(name="loss")

    def train_step(self, batch):
        x, y = batch
        noisy = x + 0.1 * keras.random.normal(keras.ops.shape(x), seed=self.noise)
        total = 0.0
        for model, opt in ((self.a, self.opt_a), (self.b, self.opt_b)):
            loss, grads = self.value_and_grad(lambda m=model: SCE(y, m(noisy)), model.trainable_variables)
            opt.apply(grads, model.trainable_variables)
            total = total + loss
        self.tracker.update_state(total)
        return {"loss": self.tracker.result()}


def test_custom_step_with_two_optimizers_and_a_ragged_batch():
    x, y = _data(300)
    runs = {}
    for k in (1, 3):
        keras.utils.set_random_seed(0)
        trainer = TwoOptimizers(steps_per_execution=k)
        h = trainer.fit(x, y, batch_size=32, epochs=2, shuffle=False, verbose=0)
        runs[k] = (h.history["loss"], trainer.get_weights())
    np.testing.assert_allclose(runs[3][0], runs[1][0], rtol=1e-5)
    for a, b in zip(runs[1][1], runs[3][1]):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
