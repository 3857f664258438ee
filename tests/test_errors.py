"""Bad input: a clear error naming the value and the fix, before any step runs
(the weights are checked unchanged afterwards)."""

import keras
import numpy as np
import pytest

from conftest import classic_mlp
from loops import Trainer

SCE = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def _data(n=64):
    rng = np.random.default_rng(0)
    return rng.random((n, 8, 8), dtype=np.float32), rng.integers(0, 10, n).astype("int32")


def _untouched(trainer, fn, match, exc=ValueError):
    before = [w.copy() for w in trainer.get_weights()]
    with pytest.raises(exc, match=match):
        fn()
    for a, b in zip(before, trainer.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_x_y_length_mismatch():
    x, y = _data()
    t = Trainer(classic_mlp(), "adam", SCE)
    _untouched(t, lambda: t.fit(x, y[:50], verbose=0), r"x has 64 samples, y has 50 samples")


def test_fit_without_optimizer():
    x, y = _data()
    t = Trainer(classic_mlp(), loss=SCE)
    _untouched(t, lambda: t.fit(x, y, verbose=0), r"needs an optimizer.*optimizer='adam'")


@pytest.mark.parametrize("loss,labels,match", [
    ("mse", lambda y: y.reshape(-1, 1).astype("float32"),
     r"'mse'.*labels of shape \(32, 1\).*shape \(32, 10\)"),
    (SCE, lambda y: keras.utils.to_categorical(y, 10),
     r"labels of shape \(32, 10\).*integer class ids of shape \(32,\)"),
    (keras.losses.CategoricalCrossentropy(from_logits=True), lambda y: y,
     r"labels of shape \(32,\).*use a sparse loss"),
])
def test_loss_that_does_not_match_the_output_shape(loss, labels, match):
    x, y = _data()
    t = Trainer(classic_mlp(), "adam", loss)
    _untouched(t, lambda: t.fit(x, labels(y), verbose=0), match)


class WithDeadLayer(keras.Model):
    def __init__(self):
        super().__init__()
        self.flat = keras.layers.Flatten()
        self.used = keras.layers.Dense(10, name="used")
        self.unused = keras.layers.Dense(10, name="unused")

    def build(self, input_shape):
        self.flat.build(input_shape)
        self.used.build((None, 64))
        self.unused.build((None, 64))

    def call(self, x):
        return self.used(self.flat(x))


def test_trainable_variable_without_gradient_is_named():
    x, y = _data()
    model = WithDeadLayer()
    model.build((None, 8, 8))
    t = Trainer(model, "adam", SCE)
    _untouched(t, lambda: t.fit(x, y, verbose=0), r"No gradient reaches.*unused/kernel.*not used in the loss")


@pytest.mark.parametrize("split", [-0.1, 1.0, 1.5, "0.2"])
def test_validation_split_outside_0_1(split):
    x, y = _data()
    t = Trainer(classic_mlp(), "adam", SCE)
    _untouched(t, lambda: t.fit(x, y, validation_split=split, verbose=0), r"validation_split must be .* \[0, 1\)")


def test_validation_split_on_a_generator_points_to_validation_data():
    x, y = _data()
    t = Trainer(classic_mlp(), "adam", SCE)
    gen = ((x[i:i + 16], y[i:i + 16]) for i in range(0, 64, 16))
    _untouched(t, lambda: t.fit(gen, validation_split=0.2, verbose=0), r"validation_data=")


def test_labels_without_loss():
    x, y = _data()
    t = Trainer(classic_mlp(), "adam")
    _untouched(t, lambda: t.fit(x, y, verbose=0), r"no loss to minimise.*loss=")


def test_constructor_arguments_are_checked():
    with pytest.raises(TypeError, match="keras.Model"):
        Trainer(object())
    with pytest.raises(ValueError, match="steps_per_execution"):
        Trainer(classic_mlp(), steps_per_execution=0)
    with pytest.raises(ValueError, match="jit_compile"):
        Trainer(classic_mlp(), jit_compile="yes")
    with pytest.raises(ValueError, match="not_a_loss"):
        Trainer(classic_mlp(), "adam", "not_a_loss")


def test_save_weights_path_and_roundtrip(tmp_path):
    x, y = _data()
    t = Trainer(classic_mlp(), "adam", SCE)
    with pytest.raises(ValueError, match=r"\.weights\.h5"):
        t.save_weights(tmp_path / "w.h5")
    t.fit(x, y, verbose=0)
    t.save_weights(tmp_path / "w.weights.h5")
    plain = classic_mlp()
    plain.load_weights(tmp_path / "w.weights.h5")  # loads in plain Keras
    for a, b in zip(t.get_weights(), plain.get_weights()):
        np.testing.assert_array_equal(a, b)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["w.weights.h5"]  # no temp file left
