"""Bad input: a clear error naming the value and the fix, before any step runs
(the weights are checked unchanged afterwards)."""

import keras
from keras import ops
import numpy as np
import pytest

import loops

from conftest import classic_mlp, requires
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


def test_fit_without_optimizer_uses_keras_default_rmsprop():
    x, y = _data()
    start = classic_mlp().get_weights()
    model = classic_mlp()
    model.set_weights(start)
    t = Trainer(model, loss=SCE)
    h = t.fit(x, y, shuffle=False, verbose=0)
    assert isinstance(t.optimizer, keras.optimizers.RMSprop)
    ref = classic_mlp()
    ref.set_weights(start)
    ref.compile(loss=SCE)  # Keras's default optimizer, "rmsprop"
    hk = ref.fit(x, y, shuffle=False, verbose=0)
    np.testing.assert_allclose(h.history["loss"], hk.history["loss"], rtol=1e-5)


def test_labels_keras_s_loss_broadcasts_train_as_model_fit_with_a_warning():
    """MSE of (n, 1) labels against (n, 10) outputs: Keras broadcasts and
    trains; so does the Trainer (the same numbers), warning with both shapes."""
    x, y = _data()
    y = y.reshape(-1, 1).astype("float32")
    start = classic_mlp().get_weights()
    ref, model = classic_mlp(), classic_mlp()
    ref.set_weights(start)
    model.set_weights(start)
    ref.compile(keras.optimizers.SGD(0.01), "mse")
    hk = ref.fit(x, y, shuffle=False, verbose=0)
    with pytest.warns(loops.LabelShapeWarning, match=r"'mse'.*labels of shape \(32, 1\).*shape \(32, 10\)"):
        h = Trainer(model, keras.optimizers.SGD(0.01), "mse").fit(x, y, shuffle=False, verbose=0)
    np.testing.assert_allclose(h.history["loss"], hk.history["loss"], rtol=1e-5)


@pytest.mark.parametrize("loss,labels,match", [
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
    with pytest.warns(loops.UnusedVariableWarning, match=r"No gradient reaches.*unused/kernel.*not used in the loss"):
        t.fit(x, y, verbose=0)


class DetachedModel(keras.Model):
    """The loss reaches none of its variables (the output ignores them)."""

    def __init__(self):
        super().__init__()
        self.dense = keras.layers.Dense(10)

    def call(self, x):
        self.dense(ops.reshape(x, (-1, 64)))
        return ops.zeros((ops.shape(x)[0], 10)) + ops.mean(x)


def test_no_variable_reached_by_the_loss_is_an_error():
    x, y = _data()
    t = Trainer(DetachedModel(), "adam", SCE)
    with pytest.raises(ValueError, match=r"No gradient reaches any of the trainable variables"):
        t.fit(x, y, verbose=0)


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


# ----------------------------------------------------- data sources (issue 3)

def test_dict_key_that_names_no_model_input():
    rng = np.random.default_rng(0)
    a, b = keras.Input((3,), name="a"), keras.Input((2,), name="b")
    model = keras.Model({"a": a, "b": b}, keras.layers.Dense(1)(keras.layers.Concatenate()([a, b])))
    t = Trainer(model, "sgd", "mse")
    x = {"a": rng.random((8, 3), dtype=np.float32), "bb": rng.random((8, 2), dtype=np.float32)}
    y = rng.random((8, 1), dtype=np.float32)
    _untouched(t, lambda: t.fit(x, y, verbose=0), r"key\(s\) \['bb'\] that name no input.*lacks \['b'\].*\['a', 'b'\]")
    with pytest.raises(ValueError, match="name no input"):
        t.predict(x, verbose=0)


@requires("tensorflow")
def test_validation_split_on_a_tf_dataset_points_to_validation_data():
    import tensorflow as tf

    x, y = _data()
    t = Trainer(classic_mlp(), "adam", SCE)
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(16)
    _untouched(t, lambda: t.fit(ds, validation_split=0.2, verbose=0),
               r"tf.data.Dataset.*cannot be split.*validation_data=\(x_val, y_val\)")


@requires("tensorflow")
def test_empty_sources():
    import tensorflow as tf

    x, y = _data()
    t = Trainer(classic_mlp(), "adam", SCE)
    empty = tf.data.Dataset.from_tensor_slices((x, y)).take(0).batch(16)
    _untouched(t, lambda: t.fit(empty, verbose=0), r"tf.data.Dataset is empty")
    _untouched(t, lambda: t.fit((b for b in []), verbose=0), r"generator is empty")
    _untouched(t, lambda: t.fit(x[:0], y[:0], verbose=0), r"x is empty")


@requires("tensorflow")
def test_infinite_source_without_steps():
    import tensorflow as tf

    x, y = _data()
    t = Trainer(classic_mlp(), "adam", SCE)
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(16).repeat()
    _untouched(t, lambda: t.fit(ds, verbose=0), r"infinite.*steps_per_epoch=N")
    _untouched(t, lambda: t.fit(x, y, validation_data=ds, verbose=0), r"infinite.*validation_steps=N")
    with pytest.raises(ValueError, match=r"infinite.*steps=N"):
        t.evaluate(ds, verbose=0)
    assert t.predict(ds.map(lambda a, b: a), steps=2, verbose=0).shape == (32, 10)


def test_class_weight_dict_leaving_classes_out_weighs_them_one():
    x, y = _data()
    t = Trainer(classic_mlp(), "adam", keras.losses.CategoricalCrossentropy(from_logits=True))
    onehot = keras.utils.to_categorical(y, 10)
    # As Keras: classes the dict leaves out weigh 1.0 (one-hot labels count as their argmax).
    start = t.get_weights()
    h = t.fit(x, onehot, class_weight={0: 1.0, 1: 2.0, 2: 1.0}, shuffle=False, verbose=0)
    full = Trainer(classic_mlp(), "adam", keras.losses.CategoricalCrossentropy(from_logits=True))
    full.set_weights(start)
    hf = full.fit(x, onehot, class_weight={k: 2.0 if k == 1 else 1.0 for k in range(10)}, shuffle=False, verbose=0)
    np.testing.assert_allclose(h.history["loss"], hf.history["loss"], rtol=1e-6)
    with pytest.raises(ValueError, match="non-empty dict"):
        t.fit(x, onehot, class_weight={}, verbose=0)


def test_nan_or_inf_with_check_inputs():
    x, y = _data()
    bad = x.copy()
    bad[5, 2, 3] = np.nan
    t = Trainer(classic_mlp(), "adam", SCE)
    _untouched(t, lambda: t.fit(bad, y, check_inputs=True, verbose=0), r"x contains NaN.*rows \[5\]")
    inf_gen = ((np.where(np.arange(16)[:, None, None] == 3, np.inf, x[:16]), y[:16]) for _ in range(2))
    _untouched(t, lambda: t.fit(inf_gen, check_inputs=True, verbose=0),
               r"batch 0 of the generator: x contains Inf.*rows \[3\]")
    with pytest.raises(ValueError, match="NaN"):
        t.evaluate(x, y, sample_weight=np.where(np.arange(64) == 7, np.nan, 1.0), check_inputs=True, verbose=0)
    t.fit(bad, y, verbose=0)  # off by default: Keras trains on it


def test_string_features_get_a_clear_error_on_every_backend(tmp_path):
    x = np.array([["a", "b"], ["c", "d"]] * 8)
    y = np.zeros((16, 1), "float32")
    t = Trainer(keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)]), "sgd", "mse")
    with pytest.raises(ValueError, match=r"The data holds strings: x \(dtype <U1\).*Encode them first"):
        t.fit(x, y, verbose=0, checkpoint_dir=tmp_path / "ckpt")
    assert not any((tmp_path / "ckpt").glob("*")) if (tmp_path / "ckpt").exists() else True


def test_a_callback_that_is_not_one_is_refused_before_any_step():
    x, y = _data()
    t = Trainer(classic_mlp(), "adam", SCE)
    for call in (lambda: t.fit(x, y, verbose=0, callbacks=[keras.callbacks.History(), object()]),
                 lambda: t.evaluate(x, y, verbose=0, callbacks=[object()]),
                 lambda: t.predict(x, verbose=0, callbacks=[object()])):
        _untouched(t, call, r"callbacks\[\d\] is a object.*not a keras.callbacks.Callback", exc=TypeError)
    assert not t.optimizer.built  # nothing ran


def test_validation_data_without_labels_is_refused():
    x, y = _data()
    t = Trainer(classic_mlp(), "adam", SCE)
    _untouched(t, lambda: t.fit(x, y, verbose=0, validation_data=(x,)),
               r"validation_data must be \(x_val, y_val\).*1 element")
