"""Debugging built in (issue 7): each trap planted and caught, on every backend.

check() pre-flight, from_logits traps, labels out of range, NaN provenance
under jit/tf.function, gradient diagnostics as metrics, the retrace counter,
and the seeds' second-order story."""

import math
import warnings

import keras
import numpy as np
import pytest
from keras import ops

from conftest import BACKEND, classic_mlp, requires
from test_errors import WithDeadLayer  # the same disconnected-layer model
import loops
from loops import Trainer

SCE = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def _data(n=64, features=(8, 8)):
    rng = np.random.default_rng(0)
    return rng.random((n,) + features, dtype=np.float32), rng.integers(0, 10, n).astype("int32")


def _softmax_mlp():
    return keras.Sequential([keras.Input((8, 8)), keras.layers.Flatten(), keras.layers.Dense(32, activation="relu"),
                             keras.layers.Dense(10, activation="softmax")])


def _caught(category, fn):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fn()
    return [str(w.message) for w in caught if issubclass(w.category, category)]


# ------------------------------------------------------------------ check()

def test_check_report_matches_the_classic_mlp_and_changes_nothing(capsys):
    x, y = _data()
    model = classic_mlp()
    t = Trainer(model, "adam", SCE)
    before = [w.copy() for w in t.get_weights()]
    report = t.check(x, y, batch_size=32)
    assert [r.name for r in report.layers] == [layer.name for layer in model.layers]
    for row, layer in zip(report.layers, model.layers):
        assert row.output_shape == (32,) + tuple(layer.output.shape[1:]), row
        assert row.params == layer.count_params()
        assert row.no_gradient == [] and row.zero_gradient == [] and row.nonfinite_gradient == []
        assert (row.grad_norms[0] is None) == (not layer.trainable_weights)
        assert row.grad_norms[0] is None or 0 < row.grad_norms[0] < 100
    assert report.total_params == model.count_params() == 50_826
    assert report.loss_finite and report.expected_loss == pytest.approx(math.log(10))
    assert abs(report.loss - math.log(10)) < 1.0  # a fresh classifier is close to random guessing
    (info,) = report.loss_inputs
    assert (info.label_min, info.label_max, info.width) == (float(y[:32].min()), float(y[:32].max()), 10)
    assert report.ok and report.findings == []
    out = capsys.readouterr().out
    assert "Layer (type)" in out and f"{model.layers[2].name} (Dense)" in out
    assert "Total params: 50,826" in out and "ln(10)" in out
    for a, b in zip(before, t.get_weights()):
        np.testing.assert_array_equal(a, b)
    assert not t.optimizer.built or int(ops.convert_to_numpy(t.optimizer.iterations)) == 0
    t.fit(x, y, epochs=1, verbose=0)  # and training works after it


def test_check_names_a_disconnected_layer_and_fit_warns():
    x, y = _data()
    model = WithDeadLayer()
    model.build((None, 8, 8))
    t = Trainer(model, "adam", SCE)
    report = t.check(x, y, verbose=0)
    rows = {r.name: r for r in report.layers}
    assert [p.rsplit("/", 1)[-1] for p in rows["unused"].no_gradient] == ["kernel", "bias"]
    assert rows["used"].grad_norms[0] > 0 and rows["unused"].grad_norms[0] is None
    assert any("No gradient reaches" in e and "unused/kernel" in e and "not used in the loss" in e
               for e in report.errors)
    # fit trains what the loss reaches, as Keras does, and names the rest in a warning.
    before = [v.numpy() if hasattr(v, "numpy") else ops.convert_to_numpy(v) for v in model.unused.weights]
    with pytest.warns(loops.UnusedVariableWarning, match=r"No gradient reaches.*unused/kernel.*Likely causes"):
        t.fit(x, y, verbose=0)
    for a, v in zip(before, model.unused.weights):
        np.testing.assert_array_equal(a, ops.convert_to_numpy(v))


class Antirectifier(keras.layers.Layer):
    """The debugging seed's Tip 1 bug: concatenated on the batch axis."""

    def build(self, input_shape):
        self.kernel = self.add_weight(shape=(input_shape[-1] * 2, input_shape[-1]), name="kernel")

    def call(self, inputs):
        return ops.matmul(ops.concatenate([ops.relu(inputs), ops.relu(-inputs)], axis=0), self.kernel)


class WithAntirectifier(keras.Model):
    def __init__(self):
        super().__init__()
        self.dense = keras.layers.Dense(5)
        self.anti = Antirectifier(name="antirectifier")
        self.head = keras.layers.Dense(10)

    def build(self, input_shape):  # built by hand: the bug shows only on real data
        for layer in (self.dense, self.anti, self.head):
            layer.build((None, 5))

    def call(self, x):
        return self.head(self.anti(self.dense(x)))


def test_check_reports_the_layer_that_fails_with_its_input_shape():
    x, y = _data(features=(5,))
    model = WithAntirectifier()
    model.build((None, 5))
    t = Trainer(model, "adam", SCE)
    report = t.check(x, y, batch_size=2, verbose=0)
    (error,) = report.errors
    assert "Layer 'antirectifier' (Antirectifier) failed when called on inputs of shape (2, 5)" in error


def test_fit_check_true_prints_the_table_and_stops_on_errors(capsys):
    x, y = _data()
    t = Trainer(classic_mlp(), "adam", SCE)
    t.fit(x, y, epochs=1, verbose=1, check=True)
    assert "Output Shape" in capsys.readouterr().out
    bad = Trainer(classic_mlp(), "adam", SCE)
    before = [w.copy() for w in bad.get_weights()]
    with pytest.raises(ValueError, match=r"(?s)fit\(check=True\) found errors.*range over 1..10"):
        bad.fit(x, y + 1, epochs=1, verbose=0, check=True)
    for a, b in zip(before, bad.get_weights()):
        np.testing.assert_array_equal(a, b)


# ------------------------------------------------------------- from_logits

@pytest.mark.parametrize("run_eagerly", [False, True])
def test_softmax_with_from_logits_true_warns_once_on_every_backend(run_eagerly):
    x, y = _data()
    t = Trainer(_softmax_mlp(), "adam", SCE, run_eagerly=run_eagerly)
    found = _caught(loops.FromLogitsWarning, lambda: (t.fit(x, y, epochs=2, verbose=0, validation_split=0.25),
                                                     t.evaluate(x, y, verbose=0)))
    assert len(found) == 1, found
    assert "from_logits=True" in found[0] and "sum to 1" in found[0] and "remove the final softmax" in found[0]
    assert any("softmax" in w for w in t.check(x, y, verbose=0).warnings)


@pytest.mark.parametrize("loss,labels", [
    ("sparse_categorical_crossentropy", lambda y: y),
    (keras.losses.CategoricalCrossentropy(), lambda y: keras.utils.to_categorical(y, 10)),
])
def test_logits_with_from_logits_false_warns(loss, labels):
    x, y = _data()
    t = Trainer(classic_mlp(), "adam", loss)
    found = _caught(loops.FromLogitsWarning, lambda: t.fit(x, labels(y), epochs=1, verbose=0))
    assert len(found) == 1 and "from_logits=False" in found[0] and "from_logits=True)" in found[0], found
    report = t.check(x, labels(y), verbose=0)
    assert any("look like logits" in w for w in report.warnings)


def test_binary_crossentropy_traps_and_label_range():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 4)).astype("float32")
    y = (x[:, :1] > 0).astype("float32")
    logits = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
    t = Trainer(logits, "adam", keras.losses.BinaryCrossentropy())
    assert len(_caught(loops.FromLogitsWarning, lambda: t.fit(x, y, verbose=0))) == 1
    sigmoid = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1, activation="sigmoid")])
    t = Trainer(sigmoid, "adam", keras.losses.BinaryCrossentropy(from_logits=True))
    assert len(_caught(loops.FromLogitsWarning, lambda: t.fit(x, y, verbose=0))) == 1
    t = Trainer(keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)]), "adam",
                keras.losses.BinaryCrossentropy(from_logits=True))
    with pytest.raises(ValueError, match=r"must lie in \[0, 1\], got -1..1.*\(y \+ 1\) / 2"):
        t.fit(x, y * 2 - 1, verbose=0)


def test_matching_from_logits_does_not_warn():
    x, y = _data()
    for model, loss in ((classic_mlp(), SCE), (_softmax_mlp(), "sparse_categorical_crossentropy")):
        t = Trainer(model, "adam", loss)
        assert _caught(loops.FromLogitsWarning, lambda: t.fit(x, y, epochs=1, verbose=0)) == []


# ------------------------------------------------------------------- labels

def test_labels_out_of_range_for_sparse_ce_are_an_error_before_any_step():
    x, y = _data()
    y = y.copy()
    y[[3, 7]] = 10
    t = Trainer(classic_mlp(), "adam", SCE)
    before = [w.copy() for w in t.get_weights()]
    # (unshuffled: the rows named are those of the first batch, here the data's first rows)
    with pytest.raises(ValueError, match=r"range over 0..10.*width 10.*0..9 \(rows \[3, 7\].*11 units"):
        t.fit(x, y, verbose=0, shuffle=False)
    with pytest.raises(ValueError, match=r"range over -1..9.*ignore_class"):
        t.fit(x, np.where(y == 10, -1, y), verbose=0, shuffle=False)
    for a, b in zip(before, t.get_weights()):
        np.testing.assert_array_equal(a, b)


# -------------------------------------------------------------- NaN provenance

class NaNAt(keras.layers.Layer):
    """Returns NaN at training step `k` (0-based), counted by a variable, so
    the jit-compiled step plants it too; the gradient stays finite otherwise."""

    def __init__(self, k, **kwargs):
        super().__init__(**kwargs)
        self.k = k
        self.calls = self.add_weight(shape=(), initializer="zeros", trainable=False, name="calls")

    def call(self, x, training=False):
        if training:
            self.calls.assign(self.calls + 1.0)
        return x * ops.where(ops.equal(self.calls, float(self.k + 1)), float("nan"), 1.0)


def _nan_model(k):
    return keras.Sequential([keras.Input((8, 8)), keras.layers.Flatten(), keras.layers.Dense(16, activation="relu"),
                             NaNAt(k, name="nan_at"), keras.layers.Dense(16, activation="relu"),
                             keras.layers.Dense(10)])


@pytest.mark.parametrize("run_eagerly,steps_per_execution", [(False, 1), (True, 1), (False, 4)])
def test_a_layer_that_produces_nan_at_step_k_is_named(run_eagerly, steps_per_execution, tmp_path):
    x, y = _data()
    t = Trainer(_nan_model(5), "adam", SCE, debug_nans=True, run_eagerly=run_eagerly,
                steps_per_execution=steps_per_execution)
    with pytest.raises(loops.NonFiniteError, match=r"step 5.*layer 'nan_at' \(NaNAt\) returned NaN") as info:
        t.fit(x, y, batch_size=8, epochs=2, shuffle=False, verbose=0)
    report = info.value.report
    assert (report.step, report.where, report.layer) == (5, "forward", "nan_at")
    # stopped with the state before the step: finite, and as the report saved it
    weights = t.model.get_weights()
    assert all(np.isfinite(w).all() for w in weights)
    np.testing.assert_array_equal(report.state[t.model.layers[1].kernel.path], weights[0])
    assert report.state[t.model.layers[2].calls.path] == 5.0
    np.testing.assert_array_equal(report.batch[0], x[40:48])  # batch 5
    saved = np.load(report.save(str(tmp_path / "nan.npz")))
    assert any(k.startswith("batch/") for k in saved.files)
    assert len([k for k in saved.files if k.startswith("state/")]) == len(report.state)


class SqrtOfWeight(keras.layers.Layer):
    """Finite forward pass (sqrt(0) = 0), infinite gradient: d sqrt(w)/dw at 0."""

    def build(self, input_shape):
        self.w = self.add_weight(shape=(), initializer="zeros", name="w")

    def call(self, x):
        return x + ops.sqrt(self.w)


def test_a_non_finite_gradient_names_the_variable():
    x, y = _data()
    model = keras.Sequential([keras.Input((8, 8)), keras.layers.Flatten(), keras.layers.Dense(16),
                              SqrtOfWeight(name="sqrt_w"), keras.layers.Dense(10)])
    t = Trainer(model, "sgd", SCE, debug_nans=True)
    with pytest.raises(loops.NonFiniteError, match=r"backward pass the gradient of variable '.*sqrt_w/w'") as info:
        t.fit(x, y, batch_size=16, verbose=0)
    assert (info.value.report.where, info.value.report.step) == ("backward", 0)
    assert info.value.report.variable.endswith("sqrt_w/w")


def test_nan_in_the_data_is_named_as_the_input():
    x, y = _data()
    x = x.copy()
    x[19, 2, 2] = np.nan
    t = Trainer(classic_mlp(), "adam", SCE, debug_nans=True)
    with pytest.raises(loops.NonFiniteError, match=r"step 1.*batch itself holds NaN/Inf in x \(rows \[3\]\)"):
        t.fit(x, y, batch_size=16, shuffle=False, verbose=0)


def test_debug_nans_off_leaves_the_step_alone():
    x, y = _data()
    t = Trainer(_nan_model(1), "adam", SCE)
    t.fit(x, y, batch_size=8, epochs=1, verbose=0)  # trains on, silently
    # (the weights go NaN; on tensorflow the loss may stay finite: the fused
    # matmul+bias+relu kernel of tf.function maps NaN to 0)
    assert not all(np.isfinite(w).all() for w in t.get_weights())
    assert not any(v.name == "nonfinite_flag" for v in t.variables)


# ---------------------------------------------------------- gradient metrics

def test_gradient_diagnostics_are_logged_and_consistent():
    x, y = _data()
    model = classic_mlp()
    t = Trainer(model, keras.optimizers.SGD(0.1), SCE, grad_diagnostics=True)
    w0 = model.get_weights()
    h = t.fit(x, y, batch_size=64, epochs=1, verbose=0, validation_split=0.0)  # one step: exact identities
    logs = {k: v[0] for k, v in h.history.items()}
    dense = [layer.name for layer in model.layers[1:]]
    assert set(logs) == {"loss", "grad_norm", "update_ratio"} | {f"grad_norm/{n}" for n in dense} \
        | {f"update_ratio/{n}" for n in dense}
    per_layer = [logs[f"grad_norm/{n}"] for n in dense]
    assert logs["grad_norm"] == pytest.approx(math.sqrt(sum(v * v for v in per_layer)), rel=1e-5)
    for i, n in enumerate(dense):  # SGD: |dw| = lr * |g|
        w_norm = math.sqrt(sum(float(np.sum(w0[j] ** 2)) for j in (2 * i, 2 * i + 1)))
        assert logs[f"update_ratio/{n}"] == pytest.approx(0.1 * logs[f"grad_norm/{n}"] / w_norm, rel=1e-4)
    h = t.fit(x, y, batch_size=16, epochs=2, verbose=0, validation_split=0.25)
    assert "val_grad_norm" not in h.history and len(h.history["grad_norm"]) == 2


@requires("tensorflow")  # keras.callbacks.TensorBoard writes through tf.summary
def test_gradient_diagnostics_reach_tensorboard(tmp_path):
    from test_keras_callbacks import _event_tensors

    x, y = _data()
    t = Trainer(classic_mlp(), "adam", SCE, grad_diagnostics=["global_norm"])
    h = t.fit(x, y, batch_size=32, epochs=2, verbose=0, callbacks=[keras.callbacks.TensorBoard(str(tmp_path))])
    assert set(h.history) == {"loss", "grad_norm"}
    train = _event_tensors(str(tmp_path / "train"))
    np.testing.assert_allclose([v for _, v in train["epoch_grad_norm"]], h.history["grad_norm"], rtol=1e-6)


class TwoNets(Trainer):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.a = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, name="a_dense")])
        self.b = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1, name="b_dense")])
        self.opt = keras.optimizers.SGD(0.1)

    def train_step(self, batch):
        x, y = batch
        variables = self.a.trainable_variables + self.b.trainable_variables
        loss, grads = self.value_and_grad(lambda: ops.mean(ops.square(self.b(self.a(x)) - y)), variables)
        with self.log_gradient_stats(grads, variables):
            self.opt.apply(grads, variables)
        return {"loss": loss}


def test_a_custom_step_logs_gradient_stats():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(32, 4)).astype("float32"), rng.normal(size=(32, 1)).astype("float32")
    h = TwoNets(grad_diagnostics=True).fit(x, y, batch_size=8, epochs=2, verbose=0)
    for key in ("grad_norm", "grad_norm/a_dense", "grad_norm/b_dense", "update_ratio/b_dense"):
        assert len(h.history[key]) == 2 and all(v > 0 for v in h.history[key]), key
    with pytest.raises(ValueError, match=r"grad_diagnostics=True"):
        TwoNets().fit(x, y, batch_size=8, verbose=0)
    with pytest.raises(ValueError, match=r"grad_diagnostics takes"):
        Trainer(classic_mlp(), "adam", SCE, grad_diagnostics=["norms"])


# ------------------------------------------------------------------ retraces

class PlainStep(Trainer):
    """A custom step: batches reach it as they come (no padding)."""

    def train_step(self, batch):
        x, y = batch
        variables = self.model.trainable_variables
        loss, grads = self.value_and_grad(lambda: self.compute_loss(x, y, self.model(x, training=True)), variables)
        self.optimizer.apply(grads, variables)
        return {"loss": loss}


def test_a_changing_input_shape_is_counted_and_named(capture_first):
    x, y = _data()
    t = PlainStep(classic_mlp(), "sgd", SCE)
    batches = [(x[:n], y[:n]) for n in (8, 9, 10, 11)]
    found = _caught(loops.RetraceWarning, lambda: t.fit(batches, epochs=1, verbose=0))
    traces = t.trace_counts["train"]
    if BACKEND in ("jax", "torch"):  # jax.jit traces, torch captures, once per shape
        assert traces == 4
        assert len(found) == 1 and "traced 3 times" in found[0]
        assert "input x changed shape (9, 8, 8) -> (10, 8, 8)" in found[0] and "input y changed shape" in found[0]
    else:  # tensorflow's reduce_retracing: the second trace is shape-generic, then reused
        assert traces == 2 and found == []
        assert t._trace_counters["train"].specs[1]["x"][0] == (None, 8, 8)


def test_a_changing_dtype_retraces_on_compiling_backends(capture_first):
    x, y = _data()
    t = PlainStep(classic_mlp(), "sgd", SCE)
    for dtype in ("float32", "float16", "bfloat16"):
        found = _caught(loops.RetraceWarning, lambda: t.fit(x[:16].astype(dtype) if dtype != "bfloat16" else
                                                            keras.ops.convert_to_numpy(keras.ops.cast(x[:16], dtype)),
                                                            y[:16], batch_size=16, verbose=0))
    assert t.trace_counts["train"] == 3
    assert len(found) == 1 and "input x changed dtype float16 -> bfloat16" in found[0]


def test_normal_training_traces_each_step_once(capture_first):
    x, y = _data(70)  # a ragged last batch: padded, so no second trace
    t = Trainer(classic_mlp(), "adam", SCE)
    found = _caught(loops.RetraceWarning, lambda: (t.fit(x, y, batch_size=16, epochs=2, verbose=0,
                                                         validation_split=0.2),
                                                   t.evaluate(x, y, batch_size=16, verbose=0)))
    assert found == []
    assert t.trace_counts == {"train": 1, "test": 1}  # torch: one capture each


# ------------------------------------------------------ second-order story

class SeedSecondOrder(Trainer):
    """The debugging seed's step: first- and second-order gradients mixed raw."""

    def train_step(self, batch):
        x, y = batch
        variables = self.model.trainable_variables

        def loss_fn():
            return self.compute_loss(x, y, self.model(x, training=True))

        def first_order_sum():
            loss, dl_dw = self.value_and_grad(loss_fn, variables)
            return ops.sum(ops.stack([ops.sum(g) for g in dl_dw])), (loss, dl_dw)

        (_, (loss, dl_dw)), d2l_dw2 = self.value_and_grad(first_order_sum, variables, has_aux=True)
        self.optimizer.apply([0.5 * a + 0.5 * b for a, b in zip(d2l_dw2, dl_dw)], variables)
        return {"loss": loss}


def test_check_shows_first_and_second_order_gradients_differ_by_orders_of_magnitude(digits):
    x, _, _, _ = digits
    x_flat = x.reshape(len(x), -1)
    y = digits[1]
    model = keras.Sequential([keras.Input((64,)), keras.layers.Dense(256, activation="relu"),
                              keras.layers.Dense(10, activation="softmax")])
    t = SeedSecondOrder(model, keras.optimizers.SGD(1e-2), "sparse_categorical_crossentropy")
    report = t.check(x_flat, y, batch_size=512, verbose=0)
    first, second = report.gradient_sets  # the nested (first-order) call completes first
    assert second.global_norm() / first.global_norm() >= 10
    for row in report.layers:  # and per layer, in the table's two columns
        assert row.grad_norms[1] / row.grad_norms[0] >= 10
    (warning,) = [w for w in report.warnings if "Gradient set #2" in w]
    assert "orders of magnitude" in warning and "normalise each" in warning


def test_a_label_shape_mismatch_names_the_output():
    rng = np.random.default_rng(0)
    inputs = keras.Input((4,))
    model = keras.Model(inputs, {"price": keras.layers.Dense(1, name="price")(inputs),
                                 "kind": keras.layers.Dense(3, name="kind")(inputs)})
    x = rng.normal(size=(16, 4)).astype("float32")
    y = {"price": np.zeros((16, 1), "float32"), "kind": np.zeros((16, 1), "int32")}
    t = Trainer(model, "adam", {"price": "mse", "kind": keras.losses.CategoricalCrossentropy(from_logits=True)})
    with pytest.raises(ValueError, match=r"labels of shape \(16, 1\) with model output 'kind' of shape \(16, 3\)"):
        t.fit(x, y, batch_size=16, verbose=0)


def test_all_nan_predictions_on_the_first_batch_reach_debug_nans():
    """The loss-input traps read the first batch's predictions; all NaN there
    must not stop at numpy's "All-NaN slice" but reach debug_nans' report."""
    x = np.full((8, 3), np.nan, "float32")
    y = np.zeros((8,), "int32")
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(3, activation="softmax")])
    t = loops.Trainer(model, "sgd", "sparse_categorical_crossentropy", debug_nans=True)
    with pytest.raises(loops.NonFiniteError):
        t.fit(x, y, batch_size=8, verbose=0)
