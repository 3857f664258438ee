"""A Trainer subclass whose step is written once with value_and_grad: two
models, two optimizers, trainer-owned noise; compiled and eager agree."""

import keras
import numpy as np
import pytest
from keras import ops

from conftest import BACKEND
from loops import Trainer

COMPILES = BACKEND in ("jax", "tensorflow")  # torch: TinyGAN's seeded keras.random cannot be captured (eager)


class TinyGAN(Trainer):
    def __init__(self, run_eagerly=False):
        super().__init__(run_eagerly=run_eagerly)
        self.generator = keras.Sequential([keras.Input((4,)), keras.layers.Dense(16, activation="relu"),
                                           keras.layers.Dense(8)], name="generator")
        self.discriminator = keras.Sequential([keras.Input((8,)), keras.layers.Dense(16, activation="relu"),
                                               keras.layers.Dense(1)], name="discriminator")
        self.g_opt = keras.optimizers.Adam(1e-2)
        self.d_opt = keras.optimizers.Adam(1e-2)
        self.noise = keras.random.SeedGenerator(7)
        self.d_loss_tracker = keras.metrics.Mean(name="d_loss")
        self.python_calls = 0

    def train_step(self, real):
        self.python_calls += 1  # counts traces when compiled, steps when eager
        n = ops.shape(real)[0]
        bce = keras.losses.BinaryCrossentropy(from_logits=True)
        z = keras.random.normal((n, 4), seed=self.noise)

        def d_loss():
            fake = self.generator(z, training=True)
            return (bce(ops.ones((n, 1)), self.discriminator(real, training=True))
                    + bce(ops.zeros((n, 1)), self.discriminator(fake, training=True)))

        d, d_grads = self.value_and_grad(d_loss, self.discriminator.trainable_variables)
        self.d_opt.apply(d_grads, self.discriminator.trainable_variables)

        z2 = keras.random.normal((n, 4), seed=self.noise)

        def g_loss():
            return bce(ops.ones((n, 1)), self.discriminator(self.generator(z2, training=True), training=True))

        g, g_grads = self.value_and_grad(g_loss, self.generator.trainable_variables)
        self.g_opt.apply(g_grads, self.generator.trainable_variables)
        self.d_loss_tracker.update_state(d)
        return {"d_loss": self.d_loss_tracker.result(), "g_loss": g}


def _real(n=96):
    rng = np.random.default_rng(0)
    return (rng.normal(size=(n, 8)) * 0.5 + 2.0).astype("float32")


def test_gan_step_compiled_and_eager_give_the_same_losses():
    compiled, eager = TinyGAN(run_eagerly=False), TinyGAN(run_eagerly=True)
    eager.set_weights(compiled.get_weights())  # one starting point for both
    before = [w.copy() for w in compiled.get_weights()]
    hc = compiled.fit(_real(), batch_size=16, epochs=3, shuffle=False, verbose=0)
    he = eager.fit(_real(), batch_size=16, epochs=3, shuffle=False, verbose=0)
    assert set(hc.history) == {"d_loss", "g_loss"}
    for key in ("d_loss", "g_loss"):
        np.testing.assert_allclose(hc.history[key], he.history[key], rtol=1e-5, atol=1e-6)
    for a, b in zip(compiled.get_weights(), eager.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
    # both networks and both optimizers actually moved
    moved = [not np.allclose(a, b) for a, b in zip(before, compiled.get_weights())]
    assert all(moved)
    assert int(ops.convert_to_numpy(compiled.g_opt.iterations)) == 18
    assert int(ops.convert_to_numpy(compiled.d_opt.iterations)) == 18
    # eager ran Python every step (+1 for the first, checking step); compiled only traced
    assert eager.python_calls == 18 + 1
    if COMPILES:
        assert compiled.python_calls <= 3


def test_subclass_metric_is_tracked_and_reset_each_epoch():
    gan = TinyGAN()
    assert gan.d_loss_tracker in gan.metrics
    seen = []

    class Probe(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            seen.append(float(ops.convert_to_numpy(self.model.d_loss_tracker.count)))

    gan.fit(_real(), batch_size=16, epochs=2, verbose=0, callbacks=[Probe()])
    assert seen == [0.0, 0.0]


_ORPHAN = keras.random.SeedGenerator(3)  # owned by nobody the Trainer can see


class OrphanNoise(TinyGAN):
    def train_step(self, real):
        real = real + keras.random.normal(ops.shape(real), seed=_ORPHAN) * 0.01
        return super().train_step(real)


def test_seed_generator_the_trainer_cannot_see_is_an_error():
    gan = OrphanNoise()
    before = gan.get_weights()
    with pytest.raises(ValueError, match=r"cannot see.*SeedGenerator"):
        gan.fit(_real(), batch_size=16, epochs=1, verbose=0)
    for a, b in zip(before, gan.get_weights()):
        np.testing.assert_array_equal(a, b)


class MakesAVariable(TinyGAN):
    def __init__(self, from_value):
        super().__init__()
        self.from_value = from_value

    def train_step(self, real):
        if self.from_value:
            scale = keras.Variable(np.ones((8,), "float32"), name="made_in_step")
        else:
            scale = keras.Variable(initializer="ones", shape=(8,), name="made_in_step")
        return super().train_step(real * scale)


@pytest.mark.parametrize("from_value", [True, False])
def test_variable_created_inside_train_step_is_an_error(from_value):
    match = r"creates variable\(s\) .*__init__" if from_value else r"creates variable\(s\) made_in_step"
    with pytest.raises(ValueError, match=match):
        MakesAVariable(from_value).fit(_real(), batch_size=16, epochs=1, verbose=0)


class Prints(TinyGAN):
    def train_step(self, real):
        print("step!")
        return super().train_step(real)


def test_print_in_a_compiled_step_warns_and_points_at_run_eagerly(capsys):
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        Prints().fit(_real(), batch_size=16, epochs=1, verbose=0)
        Prints(run_eagerly=True).fit(_real(), batch_size=16, epochs=1, verbose=0)
    messages = [str(w.message) for w in caught if "print()" in str(w.message)]
    if COMPILES:
        assert messages and "run_eagerly=True" in messages[0]
        # compiled: printed in the checking step and while tracing, not 6 times
        assert capsys.readouterr().out.count("step!") < 6 + 7
    # eager runs never warn about print
    assert len(messages) == (1 if COMPILES else 0)


class DrawsItsOwnData(Trainer):
    """Each epoch's batches come from the model acting on fresh inputs (the
    shape of an RL rollout), not from fit's arguments."""

    def __init__(self):
        super().__init__(keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)]), keras.optimizers.SGD(0.1), "mse")
        self.drawn = []

    def epoch_data(self, epoch):
        rng = np.random.default_rng(epoch)
        x = rng.normal(size=(32, 3)).astype("float32")
        # the model acts with its current weights (synced before this call)
        acted = ops.convert_to_numpy(self.model(x))
        self.drawn.append((epoch, float(np.abs(acted).sum())))
        return [(x[i:i + 8], (x[i:i + 8] @ np.array([[1.0], [-2.0], [0.5]], "float32"))) for i in range(0, 32, 8)]


def test_epoch_data_hook_draws_batches_each_epoch():
    t = DrawsItsOwnData()
    h = t.fit(epochs=4, verbose=0)
    assert [e for e, _ in t.drawn] == [0, 1, 2, 3]
    assert len({a for _, a in t.drawn}) == 4  # the model acted with weights that kept changing
    assert h.history["loss"][-1] < h.history["loss"][0]
    with pytest.raises(ValueError, match="draws its own batches"):
        t.fit(np.zeros((4, 3)), np.zeros((4, 1)), verbose=0)
