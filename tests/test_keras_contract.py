"""Keras's behaviour is the contract: wherever ``model.fit`` trains, the
Trainer trains, with the same results. Each test runs the same thing through
``keras.Model.compile``/``fit`` and through ``loops.Trainer`` on the current
backend and compares them (``bash .ci/run`` runs this file on all three).

The whole of Keras's own trainer and callback tests runs against the Trainer
in ``scripts/keras_conformance.sh`` (``tests/conformance``).
"""

import os
import warnings

import keras
import numpy as np
import pytest
from keras import ops

import loops
from conftest import BACKEND, KERAS_VERSION, requires
from loops import Trainer

INIT = dict(kernel_initializer=keras.initializers.GlorotUniform(seed=1), bias_initializer="zeros")


def _data(n=100, d=6, classes=3, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d)).astype("float32")
    y = rng.integers(0, classes, size=(n,)).astype("int32")
    return x, y


class Subclassed(keras.Model):
    """A subclassed model: unbuilt until its first call."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.hidden = keras.layers.Dense(16, activation="relu", **INIT)
        self.out = keras.layers.Dense(3, **INIT)

    def call(self, x):
        return self.out(self.hidden(x))


def _sequential_without_input():
    return keras.Sequential([keras.layers.Dense(16, activation="relu", **INIT), keras.layers.Dense(3, **INIT)])


SCE = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def _both(make_model, fit_kwargs=None, compile_kwargs=None, data=None):
    """History and final weights of model.fit and of Trainer.fit, each on a
    fresh, unbuilt model from ``make_model``."""
    x, y = data or _data()
    fit_kwargs = {"batch_size": 32, "epochs": 2, "shuffle": False, "verbose": 0, **(fit_kwargs or {})}
    compile_kwargs = compile_kwargs or {}
    ref = make_model()
    ref.compile(keras.optimizers.SGD(0.1), compile_kwargs.get("loss", SCE), metrics=["accuracy"])
    hk = ref.fit(x, y, **fit_kwargs)
    model = make_model()
    t = Trainer(model, keras.optimizers.SGD(0.1), compile_kwargs.get("loss", SCE), metrics=["accuracy"])
    h = t.fit(x, y, **fit_kwargs)
    return (hk, ref), (h, t)


@pytest.mark.parametrize("make_model", [Subclassed, _sequential_without_input], ids=["subclassed", "sequential"])
def test_unbuilt_models_train_as_model_fit_trains_them(make_model):
    x, y = _data()
    assert not make_model().built
    (hk, ref), (h, t) = _both(make_model, {"validation_split": 0.2})
    for key in ("loss", "accuracy", "val_loss", "val_accuracy"):
        np.testing.assert_allclose(h.history[key], hk.history[key], rtol=1e-5, atol=1e-6)
    for a, b in zip(ref.get_weights(), t.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(t.predict(x, verbose=0), ref.predict(x, verbose=0), rtol=1e-5, atol=1e-6)


def test_unbuilt_model_evaluates_and_predicts_before_fit():
    x, y = _data()
    ref, model = Subclassed(), Subclassed()
    ref.compile(loss=SCE, metrics=["accuracy"])
    t = Trainer(model, loss=SCE, metrics=["accuracy"])
    assert t.evaluate(x, y, return_dict=True, verbose=0) == pytest.approx(
        ref.evaluate(x, y, return_dict=True, verbose=0), rel=1e-6)
    np.testing.assert_allclose(Trainer(Subclassed()).predict(x, verbose=0), Subclassed().predict(x, verbose=0),
                               rtol=1e-6)


class UnbuiltStep(Trainer):
    """A custom step over a model that is built only by its first call."""

    def __init__(self, net):
        super().__init__()
        self.net, self.opt = net, keras.optimizers.SGD(0.1)

    def train_step(self, batch):
        x, y = batch

        def loss_fn():
            return SCE(y, self.net(x, training=True))

        loss, grads = self.value_and_grad(loss_fn, self.net.trainable_variables)
        self.opt.apply(grads, self.net.trainable_variables)
        return {"loss": loss}


def test_custom_step_over_an_unbuilt_model_trains_as_over_a_built_one():
    x, y = _data()
    lazy = UnbuiltStep(_sequential_without_input())
    h_lazy = lazy.fit(x, y, batch_size=25, epochs=2, shuffle=False, verbose=0)
    built_net = _sequential_without_input()
    built_net.build((None, 6))
    built = UnbuiltStep(built_net)
    h_built = built.fit(x, y, batch_size=25, epochs=2, shuffle=False, verbose=0)
    np.testing.assert_allclose(h_lazy.history["loss"], h_built.history["loss"], rtol=1e-6)
    assert int(ops.convert_to_numpy(lazy.opt.iterations)) == 8  # the building pass updated nothing


def test_frozen_model_is_evaluated_not_refused():
    def frozen():
        m = Subclassed()
        m(np.zeros((1, 6), "float32"))  # built by a call
        m.trainable = False
        return m

    with pytest.warns(UserWarning, match="no trainable variables"):
        (hk, ref), (h, t) = _both(frozen)
    np.testing.assert_allclose(h.history["loss"], hk.history["loss"], rtol=1e-6)
    for a, b in zip(ref.get_weights(), t.get_weights()):
        np.testing.assert_array_equal(a, b)


class WithCounter(Subclassed):
    """A trainable variable the loss never reaches (a counter made with add_weight)."""

    def build(self, shape):
        super().build(shape)
        self.calls = self.add_weight(shape=(), initializer="zeros", name="calls")

    def call(self, x):
        return self.out(self.hidden(x))


def test_variable_the_loss_does_not_reach_trains_the_rest_with_a_warning():
    with pytest.warns(loops.UnusedVariableWarning, match="calls"):
        (hk, ref), (h, t) = _both(WithCounter)
    np.testing.assert_allclose(h.history["loss"], hk.history["loss"], rtol=1e-5)
    for a, b in zip(ref.get_weights(), t.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


class WithExtraLoss(Subclassed):
    """Keras's backend-neutral customisation point: compute_loss, with super()."""

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        base = super().compute_loss(x, y, y_pred, sample_weight, training)
        return base + 0.01 * ops.mean(ops.square(y_pred))


def test_model_compute_loss_override_is_used():
    (hk, ref), (h, t) = _both(WithExtraLoss, {"validation_split": 0.2})
    plain = _both(Subclassed)[1][0]
    np.testing.assert_allclose(h.history["loss"], hk.history["loss"], rtol=1e-5)
    np.testing.assert_allclose(h.history["val_loss"], hk.history["val_loss"], rtol=1e-5)
    assert not np.allclose(h.history["loss"], plain.history["loss"])  # the override changed the loss
    for a, b in zip(ref.get_weights(), t.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_callbacks_reach_the_models_attributes():
    seen = {}

    class Reads(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            seen["hidden"] = self.model.hidden  # a layer attribute of the model
            seen["units"] = self.model.out.units
            seen["count"] = self.model.count_params()

    x, y = _data()
    model = Subclassed()
    Trainer(model, "sgd", SCE).fit(x, y, epochs=1, verbose=0, callbacks=[Reads()])
    assert seen == {"hidden": model.hidden, "units": 3, "count": model.count_params()}
    with pytest.raises(AttributeError, match="nor has its model"):
        Trainer(model, "sgd", SCE).no_such_attribute


def test_scalar_metric_function_on_a_ragged_last_batch():
    x, y = _data(70)
    # One value per batch, not per sample: padding rows would change it.
    per_batch = lambda y_true, y_pred: ops.mean(ops.abs(y_pred))  # noqa: E731
    ref = Subclassed()
    ref.compile("sgd", SCE, metrics=[per_batch])
    t = Trainer(Subclassed(), "sgd", SCE, metrics=[per_batch])
    ours = t.evaluate(x, y, batch_size=32, return_dict=True, verbose=0)
    theirs = ref.evaluate(x, y, batch_size=32, return_dict=True, verbose=0)
    assert ours == pytest.approx(theirs, rel=1e-6)


def test_partial_loss_list_with_one_label_array():
    inputs = keras.Input((2,))
    out = keras.layers.Dense(3, kernel_initializer="ones")(inputs)
    x, y = np.ones((32, 2), "float32"), np.ones((32, 3), "float32")
    partial = Trainer(keras.Model(inputs, [out, out, out]), loss=["mse", None, None])
    full = keras.Model(inputs, [out, out, out])
    full.compile(loss=["mse", "mse", "mse"])
    ours = partial.evaluate(x, y, return_dict=True, verbose=0)
    assert ours["loss"] * 3 == pytest.approx(full.evaluate(x, [y] * 3, return_dict=True, verbose=0)["loss"])


def _per_batch(method, *args, **kwargs):
    """A Keras ``*_on_batch`` result as the Trainer reports it: Keras < 3.15 keeps
    the metrics running across calls (3.15+ resets them first, as the Trainer) and
    Keras < 3.14 returns 0-d NumPy arrays (3.14+ floats, as the Trainer)."""
    method.__self__.reset_metrics()
    logs = method(*args, **kwargs)
    if isinstance(logs, dict):
        return {k: float(v) for k, v in logs.items()}
    return [float(v) for v in logs] if isinstance(logs, list) else float(logs)


def test_on_batch_methods_match_keras():
    x, y = _data(40)
    sw = np.linspace(0.5, 1.5, 40).astype("float32")
    ref = Subclassed()
    ref.compile(keras.optimizers.SGD(0.1), SCE, metrics=["accuracy"])
    t = Trainer(Subclassed(), keras.optimizers.SGD(0.1), SCE, metrics=["accuracy"])
    for kwargs in ({}, {"sample_weight": sw}, {"class_weight": {0: 2.0}}):
        assert t.train_on_batch(x, y, **kwargs) == pytest.approx(_per_batch(ref.train_on_batch, x, y, **kwargs),
                                                                 rel=1e-5)
    assert t.train_on_batch(x, y, return_dict=True) == pytest.approx(
        _per_batch(ref.train_on_batch, x, y, return_dict=True), rel=1e-5)
    assert t.test_on_batch(x, y, sample_weight=sw) == pytest.approx(
        _per_batch(ref.test_on_batch, x, y, sample_weight=sw), rel=1e-5)
    np.testing.assert_allclose(t.predict_on_batch(x), ref.predict_on_batch(x), rtol=1e-5, atol=1e-6)
    assert t.optimizer.iterations is not None and int(ops.convert_to_numpy(t.optimizer.iterations)) == 4


def test_predict_batch_hooks_fire_once_per_execution():
    class Hooks(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.begin, self.end, self.rows = [], [], []

        def on_predict_batch_begin(self, batch, logs=None):
            self.begin.append(batch)

        def on_predict_batch_end(self, batch, logs=None):
            self.end.append(batch)
            self.rows.append(len(logs["outputs"]))

    x, _ = _data(70)
    t = Trainer(Subclassed(), steps_per_execution=3)
    ours = Hooks()
    out = t.predict(x, batch_size=10, verbose=0, callbacks=[ours])  # 7 batches: executions 0-2, 3-5, 6
    assert ours.begin == [0, 3, 6] and ours.end == [2, 5, 8]
    # (Keras's torch backend refuses steps_per_execution > 1; Keras < 3.11 passed
    # on_predict_batch_end the execution's first batch index, 3.11+ its last, as the Trainer)
    if BACKEND != "torch" and KERAS_VERSION >= (3, 11):
        ref, theirs = Subclassed(), Hooks()
        ref.compile(steps_per_execution=3)
        ref.predict(x, batch_size=10, verbose=0, callbacks=[theirs])
        assert (ours.begin, ours.end) == (theirs.begin, theirs.end)
    assert ours.rows == [30, 30, 10] and out.shape == (70, 3)


def test_keras_file_written_through_the_trainer_loads_compiled(tmp_path):
    x, y = _data()
    t = Trainer(Subclassed(), keras.optimizers.Adam(1e-2), SCE, metrics=["accuracy"])
    t.fit(x, y, epochs=2, verbose=0)
    path = os.fspath(tmp_path / "model.keras")
    t.save(path)
    loaded = keras.models.load_model(path, custom_objects={"Subclassed": Subclassed})
    assert loaded.compiled and isinstance(loaded.optimizer, keras.optimizers.Adam)
    assert int(ops.convert_to_numpy(loaded.optimizer.iterations)) == int(ops.convert_to_numpy(t.optimizer.iterations))
    for a, b in zip(loaded.optimizer.variables, t.optimizer.variables):
        np.testing.assert_allclose(ops.convert_to_numpy(a), ops.convert_to_numpy(b))
    assert loaded.evaluate(x, y, return_dict=True, verbose=0) == pytest.approx(
        t.evaluate(x, y, return_dict=True, verbose=0), rel=1e-5)


@pytest.mark.parametrize("kind", ["scipy", pytest.param("tf", marks=requires("tensorflow")), "jax"])
def test_sparse_inputs_train_where_keras_trains_them(kind):
    import scipy.sparse

    rng = np.random.default_rng(0)
    dense = (rng.random((64, 6)) * (rng.random((64, 6)) < 0.3)).astype("float32")
    y = rng.integers(0, 3, size=(64,)).astype("int32")
    if kind == "scipy":
        x = scipy.sparse.csr_matrix(dense)
    elif kind == "tf":
        import tensorflow as tf

        x = tf.sparse.from_dense(dense)
    else:
        from jax.experimental import sparse as jax_sparse

        x = jax_sparse.BCOO.fromdense(dense)
    t = Trainer(_sequential_without_input(), keras.optimizers.SGD(0.1), SCE)
    if BACKEND == "torch":  # Keras's torch backend takes no sparse inputs either
        with pytest.raises(ValueError, match="Sparse inputs.*not supported on the torch backend.*toarray"):
            t.fit(x, y, batch_size=16, verbose=0)
        return
    h = t.fit(x, y, batch_size=16, epochs=2, shuffle=False, verbose=0)
    ref = Trainer(_sequential_without_input(), keras.optimizers.SGD(0.1), SCE)
    hd = ref.fit(dense, y, batch_size=16, epochs=2, shuffle=False, verbose=0)
    np.testing.assert_allclose(h.history["loss"], hd.history["loss"], rtol=1e-5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        np.testing.assert_allclose(t.predict(x, batch_size=16, verbose=0), ref.predict(dense, batch_size=16,
                                                                                        verbose=0), rtol=1e-5)


@requires("tensorflow")
def test_ragged_inputs_train_on_tensorflow_and_are_refused_clearly_elsewhere():
    import tensorflow as tf

    x = tf.ragged.constant([[1.0], [2.0, 3.0], [4.0, 5.0, 6.0], [7.0]])
    y = np.array([[1.0], [5.0], [15.0], [7.0]], "float32")

    if BACKEND != "tensorflow":
        t = Trainer(keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)]), "sgd", "mse")
        with pytest.raises(ValueError, match="only the tensorflow backend takes"):
            t.fit(x, y, verbose=0)
        return

    def model():
        inputs = keras.Input((None,), ragged=True)
        summed = keras.layers.Lambda(lambda t: tf.reduce_sum(t, axis=1, keepdims=True))(inputs)
        return keras.Model(inputs, keras.layers.Dense(1, kernel_initializer="ones")(summed))

    t = Trainer(model(), keras.optimizers.SGD(0.001), "mse")
    h = t.fit(x, y, batch_size=2, epochs=2, shuffle=False, verbose=0)
    ref = model()
    ref.compile(keras.optimizers.SGD(0.001), "mse")
    hk = ref.fit(x, y, batch_size=2, epochs=2, shuffle=False, verbose=0)
    np.testing.assert_allclose(h.history["loss"], hk.history["loss"], rtol=1e-6)
    np.testing.assert_allclose(t.predict(x, verbose=0), ref.predict(x, verbose=0), rtol=1e-6)


def test_steps_per_epoch_shorter_epoch_at_the_end_of_the_data_as_keras():
    # 10 batches of 10; 4 per epoch: epochs of 4, 4, 2, then a new pass
    (hk, ref), (h, t) = _both(Subclassed, {"batch_size": 10, "epochs": 4, "steps_per_epoch": 4},
                              data=_data(100))
    np.testing.assert_allclose(h.history["loss"], hk.history["loss"], rtol=1e-5)
    for a, b in zip(ref.get_weights(), t.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_resume_after_an_epoch_cut_short_by_the_end_of_the_data(tmp_path):
    x, y = _data(100)

    class CrashAfterShortEpoch(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch == 2:  # the third epoch ran 2 of its 4 steps: the data's end
                raise RuntimeError("crash")

    kwargs = dict(batch_size=10, epochs=5, steps_per_epoch=4, shuffle=True, verbose=0)
    whole = Trainer(Subclassed(), keras.optimizers.SGD(0.1), SCE, seed=3)
    h_whole = whole.fit(x, y, **kwargs)
    crashed = Trainer(Subclassed(), keras.optimizers.SGD(0.1), SCE, seed=3)
    with pytest.raises(RuntimeError, match="crash"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        crashed.fit(x, y, checkpoint_dir=tmp_path, callbacks=[CrashAfterShortEpoch()], **kwargs)
    resumed = Trainer(Subclassed(), keras.optimizers.SGD(0.1), SCE, seed=3)
    h = resumed.fit(x, y, checkpoint_dir=tmp_path, **kwargs)
    np.testing.assert_allclose(h.history["loss"][-2:], h_whole.history["loss"][-2:], rtol=1e-6)
    for a, b in zip(whole.get_weights(), resumed.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


def test_on_batch_methods_with_steps_per_execution():
    x, y = _data(40)
    one = Trainer(Subclassed(), keras.optimizers.SGD(0.1), SCE, metrics=["accuracy"])
    many = Trainer(Subclassed(), keras.optimizers.SGD(0.1), SCE, metrics=["accuracy"], steps_per_execution=4)
    for _ in range(2):
        assert many.train_on_batch(x, y) == pytest.approx(one.train_on_batch(x, y), rel=1e-6)
    assert many.test_on_batch(x, y) == pytest.approx(one.test_on_batch(x, y), rel=1e-6)
    np.testing.assert_allclose(many.predict_on_batch(x), one.predict_on_batch(x), rtol=1e-6)


def test_two_trainers_on_one_model_keep_their_own_metrics():
    x, y = _data()
    model = Subclassed()
    a = Trainer(model, keras.optimizers.SGD(0.1), SCE, metrics=["accuracy"])
    b = Trainer(model, loss="mse", metrics=["mae"])  # e.g. a second trainer for another evaluation
    assert not any(m in a.metrics for m in b.metrics)
    h = a.fit(x, y, epochs=1, shuffle=False, verbose=0)
    assert set(h.history) == {"loss", "accuracy"} and h.history["loss"][0] > 0.1
    ref = Subclassed()
    ref.compile(keras.optimizers.SGD(0.1), SCE, metrics=["accuracy"])
    hk = ref.fit(x, y, epochs=1, shuffle=False, verbose=0)
    np.testing.assert_allclose(h.history["loss"], hk.history["loss"], rtol=1e-5)


def test_validation_steps_start_at_the_first_batch_each_epoch():
    x, y = _data(100)
    t = Trainer(Subclassed(), keras.optimizers.SGD(0.0), SCE)  # nothing moves: every validation is the same
    h = t.fit(x[:50], y[:50], validation_data=(x[50:], y[50:]), validation_steps=2, batch_size=10, epochs=3,
              verbose=0)
    first_two = t.evaluate(x[50:70], y[50:70], batch_size=10, verbose=0)
    np.testing.assert_allclose(h.history["val_loss"], [first_two] * 3, rtol=1e-6)


@pytest.mark.skipif(BACKEND != "jax", reason="an optax optimizer")
def test_keras_file_of_a_model_trained_with_optax_loads(tmp_path):
    import optax

    x, y = _data()
    t = Trainer(Subclassed(), optax.adam(1e-2), SCE)
    t.fit(x, y, epochs=1, verbose=0)
    t.save(tmp_path / "m.keras")
    loaded = keras.models.load_model(tmp_path / "m.keras", custom_objects={"Subclassed": Subclassed})
    np.testing.assert_allclose(loaded.predict(x, verbose=0), t.predict(x, verbose=0), rtol=1e-6)


def test_per_output_loss_logs_of_a_ragged_last_batch_weigh_rows_on_every_backend():
    """Keras's compiled tensorflow step logs a partial batch's per-output
    losses as a full batch's (a static batch size it does not know); eager
    Keras, and Keras on jax and torch, weigh them by rows. The Trainer weighs
    by rows on every backend: it equals eager Keras everywhere."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(12, 3)).astype("float32")
    y = {"reg": rng.normal(size=(12, 1)).astype("float32"), "cls": rng.integers(0, 3, size=(12,)).astype("int32")}

    def make():
        keras.utils.set_random_seed(0)
        inputs = keras.Input((3,))
        h = keras.layers.Dense(8, activation="tanh")(inputs)
        return keras.Model(inputs, {"reg": keras.layers.Dense(1, name="reg")(h),
                                    "cls": keras.layers.Dense(3, name="cls")(h)})

    loss = {"reg": "mse", "cls": SCE}
    ref = make()
    ref.compile(keras.optimizers.SGD(0.05), loss, run_eagerly=True)
    hk = ref.fit(x, y, batch_size=5, epochs=2, shuffle=False, verbose=0)
    h = Trainer(make(), keras.optimizers.SGD(0.05), loss).fit(x, y, batch_size=5, epochs=2, shuffle=False, verbose=0)
    for key in ("loss", "reg_loss", "cls_loss"):
        np.testing.assert_allclose(h.history[key], hk.history[key], rtol=1e-5, atol=1e-6)


class WeightRegularized(keras.layers.Layer):
    """A custom layer whose weight carries a regularizer (add_weight(regularizer=...))."""

    def build(self, shape):
        self.w = self.add_weight(shape=(shape[-1], 3), initializer="ones", regularizer=keras.regularizers.L1(0.01))

    def call(self, x):
        return x @ self.w


class AddsLoss(Subclassed):
    def call(self, x):
        out = super().call(x)
        self.add_loss(0.1 * ops.mean(ops.square(out)))
        return out


_REGULARIZED = {
    "kernel_and_bias": lambda: keras.Sequential([
        keras.Input((6,)), keras.layers.Dense(3, kernel_regularizer="l2", bias_regularizer="l1", **INIT)]),
    "unbuilt": lambda: keras.Sequential([
        keras.layers.Dense(8, kernel_regularizer=keras.regularizers.L1L2(0.01, 0.01), **INIT),
        keras.layers.Dense(3, **INIT)]),
    "nested": lambda: keras.Sequential([
        keras.Sequential([keras.layers.Dense(8, kernel_regularizer="l2", **INIT)]), keras.layers.Dense(3, **INIT)]),
    "add_weight": lambda: keras.Sequential([keras.Input((6,)), WeightRegularized()]),
    "activity": lambda: keras.Sequential([keras.Input((6,)), keras.layers.Dense(3, activity_regularizer="l2", **INIT)]),
    "add_loss": AddsLoss,
}


@pytest.mark.parametrize("mode", ["default", "eager", "spe3"])
@pytest.mark.parametrize("name", sorted(_REGULARIZED))
def test_regularizers_and_added_losses_count_as_model_fit_counts_them(name, mode):
    # (weight regularizers once crashed every Trainer step: its first, checked
    # step read the weights through a scope that answered None for them)
    make_model = _REGULARIZED[name]
    x, y = _data()
    options = {"eager": {"run_eagerly": True}, "spe3": {"steps_per_execution": 3}}.get(mode, {})
    ref = make_model()
    # (Keras's torch trainer refuses steps_per_execution > 1: its steps one by one are the reference)
    ref.compile(keras.optimizers.SGD(0.1), SCE, **({} if BACKEND == "torch" and mode == "spe3" else options))
    hk = ref.fit(x, y, batch_size=20, epochs=2, shuffle=False, verbose=0, validation_split=0.2)
    t = Trainer(make_model(), keras.optimizers.SGD(0.1), SCE, **options)
    h = t.fit(x, y, batch_size=20, epochs=2, shuffle=False, verbose=0, validation_split=0.2)
    for key in ("loss", "val_loss"):
        np.testing.assert_allclose(h.history[key], hk.history[key], rtol=1e-5, atol=1e-6)
    evaluated = t.evaluate(x, y, verbose=0)
    np.testing.assert_allclose(evaluated, ref.evaluate(x, y, verbose=0), rtol=1e-5, atol=1e-6)
    # The extra term is in the loss: more than the labels' loss alone.
    assert evaluated > float(ops.convert_to_numpy(SCE(y, t.predict(x, verbose=0)))) + 1e-4
    for a, b in zip(ref.get_weights(), t.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def _dense_outputs():
    inputs = keras.Input((4, 4, 2))
    image = keras.layers.Conv2D(2, 3, padding="same", name="image", **INIT)(inputs)
    label = keras.layers.Dense(3, name="label", **INIT)(keras.layers.Flatten()(inputs))
    return keras.Model(inputs, {"image": image, "label": label})


@pytest.mark.parametrize("case", ["image_mse", "segmentation", "mixed_ranks", "sequence"])
def test_outputs_of_any_rank_train_over_a_ragged_last_batch_as_model_fit(case):
    # (a ragged last batch is padded and masked: its weights once had shape
    # (rows,), which Keras's losses cannot broadcast against an image-shaped loss)
    rng = np.random.default_rng(3)
    x = rng.normal(size=(23, 4, 4, 2)).astype("float32")  # 23 rows: batches of 10, 10, 3
    if case == "image_mse":
        def make():
            return keras.Sequential([keras.layers.Conv2D(2, 3, padding="same", **INIT)])
        y, loss = rng.normal(size=(23, 4, 4, 2)).astype("float32"), "mse"
    elif case == "segmentation":
        def make():
            return keras.Sequential([keras.layers.Conv2D(3, 3, padding="same", **INIT)])
        y, loss = rng.integers(0, 3, size=(23, 4, 4)).astype("int32"), SCE
    elif case == "mixed_ranks":
        make = _dense_outputs
        y = {"image": rng.normal(size=(23, 4, 4, 2)).astype("float32"),
             "label": rng.integers(0, 3, size=(23,)).astype("int32")}
        loss = {"image": "mse", "label": SCE}
    else:
        x = x.reshape(23, 8, 4)
        def make():
            return keras.Sequential([keras.layers.Dense(3, **INIT)])  # per time step: y_pred (rows, 8, 3)
        y, loss = rng.integers(0, 3, size=(23, 8)).astype("int32"), SCE
    fit = dict(batch_size=10, epochs=2, shuffle=False, verbose=0, validation_split=0.3)
    ref = make()
    # (eager on tensorflow: Keras's compiled tf step weighs a partial batch's per-output
    # losses as a full one's; see test_per_output_loss_logs_of_a_ragged_last_batch_weigh_rows...)
    ref.compile(keras.optimizers.SGD(0.1), loss, run_eagerly=BACKEND == "tensorflow")
    hk = ref.fit(x, y, **fit)
    t = Trainer(make(), keras.optimizers.SGD(0.1), loss)
    h = t.fit(x, y, **fit)
    assert h.history.keys() == hk.history.keys()
    for key in hk.history:
        np.testing.assert_allclose(h.history[key], hk.history[key], rtol=1e-5, atol=1e-6, err_msg=key)
    for a, b in zip(ref.get_weights(), t.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    # evaluate: one batch larger than the data (padded up to 32 rows)
    np.testing.assert_allclose(t.evaluate(x, y, verbose=0), ref.evaluate(x, y, verbose=0), rtol=1e-5, atol=1e-6)


class OptionalAdd(keras.layers.Layer):
    def call(self, x, o=None):
        return x if o is None else x + o


def _optional_input_model():
    x = keras.Input((2,), name="x")
    o = keras.Input((2,), name="o", optional=True)
    return keras.Model({"x": x, "o": o}, keras.layers.Dense(2, **INIT)(OptionalAdd()(x, o)))


@pytest.mark.parametrize("given", [False, True], ids=["left_out", "given"])
def test_an_optional_input_left_out_as_none_trains_as_model_fit(given):
    rng = np.random.default_rng(0)
    x = {"x": rng.normal(size=(7, 2)).astype("float32"),
         "o": rng.normal(size=(7, 2)).astype("float32") if given else None}
    y = rng.normal(size=(7, 2)).astype("float32")
    ref = _optional_input_model()
    ref.compile(keras.optimizers.SGD(0.1), "mse")
    try:
        hk = ref.fit(x, y, batch_size=4, epochs=2, shuffle=False, verbose=0, validation_split=0.4)
    except AttributeError as e:  # (the declared floor, Keras 3.10: its array adapter reads None's shape)
        pytest.skip(f"Keras {keras.__version__}'s own fit cannot leave an input out: {e}")
    t = Trainer(_optional_input_model(), keras.optimizers.SGD(0.1), "mse")
    h = t.fit(x, y, batch_size=4, epochs=2, shuffle=False, verbose=0, validation_split=0.4)
    for key in ("loss", "val_loss"):
        np.testing.assert_allclose(h.history[key], hk.history[key], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(t.evaluate(x, y, verbose=0), ref.evaluate(x, y, verbose=0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(t.predict(x, verbose=0), ref.predict(x, verbose=0), rtol=1e-5, atol=1e-6)


def test_none_for_a_required_input_is_the_model_s_own_error():
    inputs = keras.Input((3,), name="x")
    ref = keras.Model(inputs, keras.layers.Dense(1)(inputs))
    ref.compile("sgd", "mse")
    with pytest.raises(Exception) as keras_error:
        ref.fit([None], np.ones((4, 1)), verbose=0)
    if "not optional" not in str(keras_error.value):
        pytest.skip(f"Keras {keras.__version__} has no optional inputs: {keras_error.value}")
    t = Trainer(keras.Model(inputs, keras.layers.Dense(1)(inputs)), "sgd", "mse")
    with pytest.raises(ValueError, match="not optional"):
        t.fit([None], np.ones((4, 1)), verbose=0)


def _scalar_mse(y_true, y_pred):  # one value per batch, as many users write a loss
    return ops.mean(ops.square(y_true - y_pred))


class Center(keras.layers.Layer):
    """Mixes the batch's rows: subtracts their mean."""

    def call(self, t):
        return t - ops.mean(t, axis=0, keepdims=True)


class BatchMeanLoss(keras.layers.Layer):
    def call(self, t):
        self.add_loss(ops.square(ops.mean(t)))
        return t


_ROW_MIXING = {  # name: (layers between the input and the output, loss)
    "scalar_loss_function": (lambda: [keras.layers.Dense(4, **INIT)], _scalar_mse),
    "layer_mixing_rows": (lambda: [keras.layers.Dense(4, **INIT), Center()], "mse"),
    "add_loss_over_the_batch": (lambda: [keras.layers.Dense(4, **INIT), BatchMeanLoss()], "mse"),
    "activity_regularizer": (lambda: [keras.layers.Dense(4, activity_regularizer="l2", **INIT)], "mse"),
    "seeded_dropout": (lambda: [keras.layers.Dense(4, **INIT), keras.layers.Dropout(0.5, seed=3)], "mse"),
    "masked_sequence": (lambda: [keras.layers.Masking(0.0), keras.layers.GRU(3, return_sequences=True, seed=2)],
                        "mse"),
}


@pytest.mark.parametrize("name", sorted(_ROW_MIXING))
def test_a_ragged_last_batch_gives_model_fit_s_numbers_when_rows_interact(name):
    """The loop pads a ragged last batch (one compiled step for every batch)
    only where the padding cannot reach the real rows' numbers: never around
    a user's loss function or layer (either may reduce over the rows), an
    activity regularizer or added loss (averaged over the rows), random draws
    or a Keras mask (its valid entries are counted over all rows)."""
    layers, loss = _ROW_MIXING[name]
    rng = np.random.default_rng(0)
    sequence = name == "masked_sequence"
    x = rng.normal(size=(44, 6, 2) if sequence else (44, 5)).astype("float32")
    if sequence:
        x[::3, 4:] = 0.0  # masked steps
    y = rng.normal(size=(44, 6, 1) if sequence else (44, 1)).astype("float32")

    def make():
        keras.utils.set_random_seed(0)  # (the GRU's initializers)
        return keras.Sequential([keras.Input(x.shape[1:]), *layers(), keras.layers.Dense(1, **INIT)])

    fit = dict(batch_size=16, epochs=2, shuffle=False, verbose=0)  # batches of 16, 16, 12
    ref = make()
    ref.compile(keras.optimizers.SGD(0.05), loss, metrics=["mae"])
    hk = ref.fit(x, y, **fit)
    t = Trainer(make(), keras.optimizers.SGD(0.05), loss, metrics=["mae"])
    h = t.fit(x, y, **fit)
    for key in ("loss", "mae"):
        np.testing.assert_allclose(h.history[key], hk.history[key], rtol=1e-5, atol=1e-6, err_msg=key)
    for a, b in zip(ref.get_weights(), t.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(t.evaluate(x, y, batch_size=16, verbose=0), ref.evaluate(x, y, batch_size=16, verbose=0),
                               rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(t.predict(x, batch_size=16, verbose=0), ref.predict(x, batch_size=16, verbose=0),
                               rtol=1e-5, atol=1e-6)


@pytest.mark.skipif(BACKEND != "jax", reason="jax traces once per batch shape")
def test_keras_own_layers_and_losses_keep_the_padded_last_batch():
    x, y = _data(44)
    t = Trainer(_sequential_without_input(), keras.optimizers.SGD(0.05), SCE, metrics=["accuracy"])
    t.fit(x, y, batch_size=16, epochs=1, verbose=0)
    assert t.trace_counts["train"] == 1  # the 12-row batch was padded to 16: no second trace
    custom = Trainer(_sequential_without_input(), keras.optimizers.SGD(0.05),
                     lambda a, b: SCE(a, b), metrics=["accuracy"])
    custom.fit(x, y, batch_size=16, epochs=1, verbose=0)
    assert custom.trace_counts["train"] == 2  # a user's loss function: the ragged batch as it is
    custom.pad_ragged_batches = "always"
    with pytest.raises(ValueError, match="pad_ragged_batches.*'always'"):
        custom.fit(x, y, batch_size=16, epochs=1, verbose=0)


_OPTIMIZERS = ["Adadelta", "Adafactor", "Adagrad", "Adam", "AdamW", "Adamax", "Ftrl", "Lamb", "Lion", "Muon", "Nadam",
               "RMSprop", "SGD", "ScheduleFreeAdamW"]


@pytest.mark.parametrize("name", [n for n in _OPTIMIZERS if hasattr(keras.optimizers, n)])
def test_every_keras_optimizer_trains_as_model_fit_trains_it(name):
    # (Adafactor once failed: its build makes backend.Variable(0) slots, which
    # the first step's throwaway scope refused, leaving it half built)
    x, y = _data(48)

    def make():
        keras.utils.set_random_seed(0)
        return keras.Sequential([keras.Input((6,)), keras.layers.Dense(8, activation="relu"),
                                 keras.layers.Dense(3)])

    ref = make()
    # (ScheduleFreeAdamW reads a slot's `.value` before assigning it; Keras's compiled tensorflow
    # step reads it after, its eager step before: the Trainer's steps read it before, everywhere)
    ref.compile(getattr(keras.optimizers, name)(learning_rate=0.01), SCE,
                run_eagerly=BACKEND == "tensorflow" and name == "ScheduleFreeAdamW")
    try:
        hk = ref.fit(x, y, batch_size=16, epochs=2, shuffle=False, verbose=0)
    except AttributeError as e:  # (the declared floor, Keras 3.10: Muon on tensorflow reads variable.path)
        pytest.skip(f"Keras {keras.__version__}'s own fit fails with {name}: {e}")
    t = Trainer(make(), getattr(keras.optimizers, name)(learning_rate=0.01), SCE)
    h = t.fit(x, y, batch_size=16, epochs=2, shuffle=False, verbose=0)
    np.testing.assert_allclose(h.history["loss"], hk.history["loss"], rtol=1e-5, atol=1e-6)
    for a, b in zip(ref.get_weights(), t.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    for a, b in zip(ref.optimizer.variables, t.optimizer.variables):
        np.testing.assert_allclose(ops.convert_to_numpy(a), ops.convert_to_numpy(b), rtol=1e-4, atol=1e-5)


class ExtraLogs(Subclassed):
    def compute_metrics(self, x, y, y_pred, sample_weight=None):
        logs = super().compute_metrics(x, y, y_pred, sample_weight)
        logs["mean_output"] = ops.mean(y_pred)
        return logs


def test_model_compute_metrics_override_s_logs_reach_history_and_evaluate():
    x, y = _data()
    (hk, ref), (h, t) = _both(ExtraLogs, {"validation_split": 0.2})
    assert sorted(h.history) == sorted(hk.history) and "val_mean_output" in h.history
    for key in hk.history:
        np.testing.assert_allclose(h.history[key], hk.history[key], rtol=1e-5, atol=1e-6, err_msg=key)
    got, want = t.evaluate(x, y, verbose=0, return_dict=True), ref.evaluate(x, y, verbose=0, return_dict=True)
    assert got.keys() == want.keys()
    for key in want:
        np.testing.assert_allclose(got[key], want[key], rtol=1e-5, atol=1e-6, err_msg=key)


class _Batches(keras.utils.PyDataset):
    def __init__(self, x, y):
        super().__init__()
        self.x, self.y = x, y

    def __len__(self):
        return len(self.x) // 16

    def __getitem__(self, i):
        return self.x[i * 16:(i + 1) * 16], self.y[i * 16:(i + 1) * 16]


@pytest.mark.parametrize("kind", ["pydataset", pytest.param("tf_repeat", marks=requires("tensorflow"))])
def test_validation_steps_start_each_evaluation_at_the_data_s_first_batch(kind):
    """Keras: "the evaluation will start from the beginning of the dataset at
    each epoch" (validation_steps shorter than the data, or a repeated dataset)."""
    x, y = _data(64)
    if kind == "pydataset":
        val = lambda: _Batches(x, y)  # noqa: E731
    else:
        import tensorflow as tf

        val = lambda: tf.data.Dataset.from_tensor_slices((x, y)).batch(16).repeat()  # noqa: E731
    fit = dict(batch_size=16, epochs=3, shuffle=False, verbose=0, validation_steps=2)
    ref = _sequential_without_input()
    ref.compile(keras.optimizers.SGD(0.1), SCE)
    hk = ref.fit(x, y, validation_data=val(), **fit)
    h = Trainer(_sequential_without_input(), keras.optimizers.SGD(0.1), SCE).fit(x, y, validation_data=val(), **fit)
    np.testing.assert_allclose(h.history["val_loss"], hk.history["val_loss"], rtol=1e-5, atol=1e-6)


def _stateful_model():
    keras.utils.set_random_seed(1)
    return keras.Sequential([keras.Input((5, 3), batch_size=8), keras.layers.LSTM(4, stateful=True),
                             keras.layers.Dense(1)])


_STATEFUL_SKIP = pytest.mark.skipif(BACKEND == "torch", reason="Keras's torch backend cannot train a stateful "
                                    "RNN either (autograd: the carried state is modified in place)")


@_STATEFUL_SKIP
def test_a_stateful_rnn_carries_its_state_from_batch_to_batch():
    """With the weights held (lr 0) each batch's loss is the eager model's,
    called batch after batch (the state carried). Keras's jax fit loses the
    state inside its compiled step (it is not among the variables it
    threads): the Trainer carries it on jax as Keras does on tensorflow."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(32, 5, 3)).astype("float32")
    y = rng.normal(size=(32, 1)).astype("float32")
    eager = _stateful_model()
    want = [float(ops.convert_to_numpy(ops.mean(ops.square(eager(x[i:i + 8]) - y[i:i + 8]))))
            for i in range(0, 32, 8)]
    assert want[1] != pytest.approx(float(ops.convert_to_numpy(
        ops.mean(ops.square(_stateful_model()(x[8:16]) - y[8:16])))), rel=1e-4)  # (the state matters)
    seen = []
    log = keras.callbacks.LambdaCallback(on_train_batch_end=lambda b, logs: seen.append(float(logs["loss"])))
    model = _stateful_model()
    Trainer(model, keras.optimizers.SGD(0.0), "mse").fit(x, y, batch_size=8, shuffle=False, verbose=0,
                                                         callbacks=[log])
    running = np.cumsum(want) / np.arange(1, 5)  # the logs' loss: the mean so far
    np.testing.assert_allclose(seen, running, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(ops.convert_to_numpy(model.layers[0].states[0]),
                               ops.convert_to_numpy(eager.layers[0].states[0]), rtol=1e-5, atol=1e-6)


@pytest.mark.skipif(BACKEND != "tensorflow", reason="Keras's jax fit drops the state; its torch fit fails")
def test_a_stateful_rnn_carries_its_state_as_model_fit_does():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(32, 5, 3)).astype("float32")
    y = rng.normal(size=(32, 1)).astype("float32")
    ref, model = _stateful_model(), _stateful_model()
    ref.compile(keras.optimizers.SGD(0.1), "mse")
    hk = ref.fit(x, y, batch_size=8, epochs=2, shuffle=False, verbose=0)
    t = Trainer(model, keras.optimizers.SGD(0.1), "mse")
    h = t.fit(x, y, batch_size=8, epochs=2, shuffle=False, verbose=0)
    np.testing.assert_allclose(h.history["loss"], hk.history["loss"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(t.evaluate(x, y, batch_size=8, verbose=0), ref.evaluate(x, y, batch_size=8, verbose=0),
                               rtol=1e-5, atol=1e-6)
    state = ops.convert_to_numpy(model.layers[0].states[0])
    assert np.abs(state).max() > 0  # carried, not lost inside the compiled step
    np.testing.assert_allclose(state, ops.convert_to_numpy(ref.layers[0].states[0]), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("k", [1, 3], ids=["spe1", "spe3"])
def test_a_generator_whose_sequence_length_changes_trains_as_model_fit(k):
    """Keras trains a generator whose non-batch dimensions change (sequences
    of several lengths, images of several sizes): each shape compiles again.
    A change of dtype or rank stays an error (tests/test_data.py)."""
    rng = np.random.default_rng(0)
    batches = [(rng.random((8, n, 3), dtype=np.float32), rng.integers(0, 3, 8).astype("int32"))
               for n in (5, 7, 5, 9, 7, 5)]

    def model():
        return keras.Sequential([keras.layers.Dense(4, **INIT), keras.layers.GlobalAveragePooling1D(),
                                 keras.layers.Dense(3, **INIT)])

    fit = dict(epochs=1, steps_per_epoch=len(batches), verbose=0)
    ref = model()
    ref.compile(keras.optimizers.SGD(0.1), SCE, steps_per_execution=1 if BACKEND == "torch" else k)
    hk = ref.fit((b for b in batches), **fit)
    t = Trainer(model(), keras.optimizers.SGD(0.1), SCE, steps_per_execution=k)
    h = t.fit((b for b in batches), **fit)
    np.testing.assert_allclose(h.history["loss"], hk.history["loss"], rtol=1e-5, atol=1e-6)
    for a, b in zip(t.model.get_weights(), ref.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert np.asarray(t.predict(batches[3][0], verbose=0)).shape == (8, 3)


class _Hooks(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.seen = []

    def on_train_batch_begin(self, batch, logs=None):
        self.seen.append(("begin", batch))

    def on_train_batch_end(self, batch, logs=None):
        self.seen.append(("end", batch))


def test_an_unpadded_ragged_batch_inside_an_execution_window_is_one_execution_for_the_callbacks():
    """steps_per_execution=4 over 7 batches, the last one ragged and not padded
    (a subclassed model is user code): the second window holds two full
    batches and the ragged one. Keras calls the batch hooks once per window
    (begin 0, 4; end 3, 7); the numbers are those of steps_per_execution=1."""
    x, y = _data(100)
    fit = dict(batch_size=16, epochs=2, shuffle=False, verbose=0)
    hooks = _Hooks()
    t = Trainer(Subclassed(), keras.optimizers.SGD(0.1), SCE, steps_per_execution=4)
    h = t.fit(x, y, callbacks=[hooks], **fit)
    one = Trainer(Subclassed(), keras.optimizers.SGD(0.1), SCE).fit(x, y, **fit)
    np.testing.assert_allclose(h.history["loss"], one.history["loss"], rtol=1e-5, atol=1e-6)
    expected = [("begin", 0), ("end", 3), ("begin", 4), ("end", 7)] * 2
    assert hooks.seen == expected
    if BACKEND != "torch":  # (Keras's torch fit refuses steps_per_execution > 1)
        ref = Subclassed()
        ref.compile(keras.optimizers.SGD(0.1), SCE, steps_per_execution=4)
        keras_hooks = _Hooks()
        hk = ref.fit(x, y, callbacks=[keras_hooks], **fit)
        if KERAS_VERSION >= (3, 11):  # (Keras 3.10 ended an execution's hooks at its first batch)
            assert keras_hooks.seen == expected
        np.testing.assert_allclose(h.history["loss"], hk.history["loss"], rtol=1e-5, atol=1e-6)


_LOOKUP_DATA = (np.random.default_rng(0).choice([3, 7, 11, 42], size=(64, 1)).astype("int32"),)
_LOOKUP_DATA += ((_LOOKUP_DATA[0][:, 0] > 7).astype("int32"),)


def _lookup_model():
    """A lookup layer (supports_jit=False) feeding a Dense layer."""
    inputs = keras.Input((1,), dtype="int32")
    hot = keras.layers.IntegerLookup(vocabulary=[3, 7, 11, 42], output_mode="one_hot")(inputs)
    return keras.Model(inputs, keras.layers.Dense(2, **INIT)(hot))


def test_a_layer_that_cannot_be_compiled_runs_the_step_uncompiled_as_keras():
    """A lookup layer (``supports_jit=False``: it runs TensorFlow on host
    arrays) in the model: with jit_compile="auto" Keras does not compile the
    step; neither does the Trainer (jax: op by op, where Keras's own fit
    cannot build such a model; its predict can)."""
    x, y = _LOOKUP_DATA
    model = _lookup_model
    fit = dict(batch_size=16, epochs=2, shuffle=False, verbose=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # (not Keras's "Model doesn't support jit_compile=True")
        t = Trainer(model(), keras.optimizers.SGD(0.5), SCE)
    assert t._resolve_jit_compile() is False
    ref = model()
    ref.compile(keras.optimizers.SGD(0.5), SCE)
    np.testing.assert_allclose(t.predict(x, verbose=0), ref.predict(x, verbose=0), rtol=1e-5, atol=1e-6)
    h = t.fit(x, y, **fit)
    if BACKEND == "jax":  # Keras's jax fit fails on this model (its symbolic build runs TensorFlow on tracers)
        ref.set_weights(t.model.get_weights())
        np.testing.assert_allclose(t.predict(x, verbose=0), ref.predict(x, verbose=0), rtol=1e-5, atol=1e-6)
        assert h.history["loss"][1] < h.history["loss"][0]
        return
    hk = ref.fit(x, y, **fit)
    np.testing.assert_allclose(h.history["loss"], hk.history["loss"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(t.predict(x, verbose=0), ref.predict(x, verbose=0), rtol=1e-5, atol=1e-6)


def test_a_layer_that_cannot_be_compiled_with_steps_per_execution_and_jit_compile_true():
    """The same lookup model: ``steps_per_execution=2`` loops the steps in
    Python where the step is not compiled (jax), as Keras's; an explicit
    ``jit_compile=True`` is lowered to False with a warning, as Keras's."""
    x, y = _LOOKUP_DATA
    model = _lookup_model
    fit = dict(batch_size=16, epochs=2, shuffle=False, verbose=0)
    one = Trainer(model(), keras.optimizers.SGD(0.5), SCE).fit(x, y, **fit)
    two = Trainer(model(), keras.optimizers.SGD(0.5), SCE, steps_per_execution=2).fit(x, y, **fit)
    np.testing.assert_allclose(two.history["loss"], one.history["loss"], rtol=1e-5, atol=1e-6)
    with pytest.warns(UserWarning, match="supports_jit=False"):
        t = Trainer(model(), keras.optimizers.SGD(0.5), SCE, jit_compile=True)
    assert t._resolve_jit_compile() is False
    np.testing.assert_allclose(t.fit(x, y, **fit).history["loss"], one.history["loss"], rtol=1e-5, atol=1e-6)


def test_predict_outputs_of_different_shapes_join_as_keras_joins_them():
    """Batches whose outputs differ past the batch axis (a generator of images
    of two sizes through a size-keeping model): tensorflow's Keras returns one
    tf.RaggedTensor, and so does the Trainer; elsewhere Keras fails with
    NumPy's message, the Trainer with one naming the shapes and the fix."""
    rng = np.random.default_rng(0)
    batches = [(rng.random((2, 5, 4, 3), dtype=np.float32),), (rng.random((3, 6, 4, 3), dtype=np.float32),)]

    def model():
        return keras.Sequential([keras.layers.Conv2D(2, 1, **INIT)])

    t = Trainer(model(), keras.optimizers.SGD(0.1), "mse")
    if BACKEND != "tensorflow":
        with pytest.raises(ValueError, match=r"different shapes past the batch axis.*predict_on_batch"):
            t.predict((b for b in batches), verbose=0)
        return
    import tensorflow as tf

    ref = model()
    expected = ref.predict((b for b in batches), verbose=0)
    got = t.predict((b for b in batches), verbose=0)
    assert isinstance(got, tf.RaggedTensor) and isinstance(expected, tf.RaggedTensor)
    assert got.shape.as_list() == expected.shape.as_list() == [5, None, 4, 2]
    np.testing.assert_allclose(got.flat_values.numpy(), expected.flat_values.numpy(), rtol=1e-6)
    assert got.dtype == expected.dtype
    strings = loops.backends.get().concat_rows([np.array([["a", "b"]]), np.array([["c"], ["d"]])])
    assert strings.to_list() == [[b"a", b"b"], [b"c"], [b"d"]]
    with pytest.raises(ValueError):  # ranks differ: the loop's error names the shapes and the fix
        loops.backends.get().concat_rows([np.zeros((2, 3, 4)), np.zeros((2, 3))])


def test_checkpoints_fall_between_execution_windows(tmp_path):
    """checkpoint_every=1 with steps_per_execution=4 and an unpadded ragged
    last batch (the second window runs as two calls): checkpoints are written
    between windows (steps 4, then the epoch's end), never inside one."""
    import json

    x, y = _data(100)
    t = Trainer(Subclassed(), keras.optimizers.SGD(0.1), SCE, steps_per_execution=4)
    t.fit(x, y, batch_size=16, epochs=1, shuffle=False, verbose=0, checkpoint_dir=str(tmp_path),
          checkpoint_every=1, keep=None)
    steps = sorted(json.loads((d / "manifest.json").read_text())["position"]["global_step"]
                   for d in tmp_path.iterdir() if d.name.startswith("ckpt-"))
    assert steps and all(s % 4 == 0 or s == 7 for s in steps), steps


@pytest.mark.parametrize("steps", [5, 3])
def test_evaluate_steps_with_steps_per_execution_reads_whole_executions_as_keras(steps):
    """evaluate(steps=5) with steps_per_execution=2 runs 3 executions of 2
    batches in Keras (6 batches, as far as the data goes): so does the Trainer."""
    x, y = _data(100)

    def model():
        return _sequential_without_input()

    t = Trainer(model(), keras.optimizers.SGD(0.1), SCE, steps_per_execution=2)
    got = t.evaluate(x, y, batch_size=16, steps=steps, verbose=0)
    rows = min(-(-steps // 2) * 2 * 16, 100)
    whole = Trainer(model(), keras.optimizers.SGD(0.1), SCE).evaluate(x[:rows], y[:rows], batch_size=16, verbose=0)
    np.testing.assert_allclose(got, whole, rtol=1e-5)
    if BACKEND != "torch":  # (Keras's torch fit refuses steps_per_execution > 1)
        ref = model()
        ref.compile(keras.optimizers.SGD(0.1), SCE, steps_per_execution=2)
        np.testing.assert_allclose(got, ref.evaluate(x, y, batch_size=16, steps=steps, verbose=0), rtol=1e-5)
