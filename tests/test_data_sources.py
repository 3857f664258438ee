"""Every input a Keras user passes to fit() works on every backend: arrays,
generators, tf.data, torch DataLoader and keras.utils.PyDataset; the ragged
last batch is padded and masked (exact, and compiled once); batches are
prefetched on a background thread; batch order is backend-independent."""

import json
import os
import subprocess
import sys
import textwrap
import threading

import keras
import numpy as np
import pytest

from conftest import BACKEND, classic_mlp
from loops import Trainer

SCE = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
N, B = 100, 32  # a ragged last batch of 4


def _data(n=N, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.random((n, 8, 8), dtype=np.float32), rng.integers(0, 10, n).astype("int32"),
            rng.uniform(0.1, 2.0, n).astype("float32"))


def _weights(model):
    rng = np.random.default_rng(0)
    return [rng.normal(0.0, 0.1, w.shape).astype("float32") for w in model.get_weights()]


def _trainer(**kw):
    model = classic_mlp()
    model.set_weights(_weights(model))
    return Trainer(model, keras.optimizers.SGD(0.1), SCE, metrics=["accuracy"], **kw)


def _keras_model():
    model = classic_mlp()
    model.set_weights(_weights(model))
    model.compile(keras.optimizers.SGD(0.1), SCE, metrics=["accuracy"])
    return model


# ------------------------------------------------------------------ sources

class ArrayPyDataset(keras.utils.PyDataset):
    def __init__(self, *arrays, batch_size=B, **kwargs):
        super().__init__(**kwargs)
        self.arrays, self.batch_size, self.threads = arrays, batch_size, set()

    def __len__(self):
        return -(-len(self.arrays[0]) // self.batch_size)

    def __getitem__(self, i):
        self.threads.add(threading.current_thread().name)
        sl = slice(i * self.batch_size, (i + 1) * self.batch_size)
        out = tuple(a[sl] for a in self.arrays)
        return out if len(out) > 1 else out[0]


def make(kind, *arrays):
    """The arrays as a source of batches of B, in order."""
    if kind == "generator":
        return [tuple(a[i:i + B] for a in arrays) for i in range(0, len(arrays[0]), B)]
    if kind == "tf.data":
        import tensorflow as tf

        return tf.data.Dataset.from_tensor_slices(arrays).batch(B)
    if kind == "DataLoader":
        import torch

        return torch.utils.data.DataLoader(
            torch.utils.data.TensorDataset(*(torch.from_numpy(a) for a in arrays)), batch_size=B)
    if kind == "PyDataset":
        return ArrayPyDataset(*arrays)
    if kind == "PyDataset-workers":
        return ArrayPyDataset(*arrays, workers=2)
    raise AssertionError(kind)


KINDS = ["generator", "tf.data", "DataLoader", "PyDataset", "PyDataset-workers"]


@pytest.mark.parametrize("kind", KINDS)
def test_fit_on_source_equals_fit_on_arrays(kind):
    x, y, sw = _data()
    ref = _trainer()
    hr = ref.fit(x, y, sample_weight=sw, batch_size=B, epochs=2, shuffle=False, verbose=0)
    t = _trainer()
    h = t.fit(make(kind, x, y, sw), epochs=2, shuffle=False, verbose=0)
    np.testing.assert_allclose(h.history["loss"], hr.history["loss"], rtol=1e-5)
    np.testing.assert_allclose(h.history["accuracy"], hr.history["accuracy"], rtol=1e-6)
    for a, b in zip(t.get_weights(), ref.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kind", KINDS)
def test_evaluate_on_source_equals_evaluate_on_arrays(kind):
    x, y, _ = _data()
    t = _trainer()
    got = t.evaluate(make(kind, x, y), return_dict=True, verbose=0)
    assert got == pytest.approx(t.evaluate(x, y, batch_size=B, return_dict=True, verbose=0), rel=1e-6)
    # and Keras's own evaluate on the same weights
    want = _keras_model().evaluate(x, y, batch_size=B, return_dict=True, verbose=0)
    assert got == pytest.approx(want, rel=1e-5)


@pytest.mark.parametrize("kind", KINDS)
def test_predict_on_source_equals_the_model(kind):
    x, y, _ = _data()
    t = _trainer()
    out = t.predict(make(kind, x), verbose=0)
    assert out.shape == (N, 10)
    np.testing.assert_allclose(out, keras.ops.convert_to_numpy(t.model(x)), rtol=1e-5, atol=1e-6)
    # sources that carry labels too: predict ignores them
    np.testing.assert_allclose(t.predict(make(kind, x, y), verbose=0), out, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("kind", ["tf.data", "DataLoader", "PyDataset"])
def test_validation_data_and_class_weight_on_sources(kind):
    x, y, _ = _data()
    cw = {k: 1.0 + k / 10 for k in range(10)}
    ref = _trainer()
    hr = ref.fit(x, y, batch_size=B, class_weight=cw, epochs=2, shuffle=False, verbose=0,
                 validation_data=(x[:50], y[:50]))
    t = _trainer()
    h = t.fit(make(kind, x, y), class_weight=cw, epochs=2, shuffle=False, verbose=0,
              validation_data=make(kind, x[:50], y[:50]))
    for name in ("loss", "accuracy", "val_loss", "val_accuracy"):
        np.testing.assert_allclose(h.history[name], hr.history[name], rtol=1e-5, err_msg=name)


def test_pydataset_workers_run_on_keras_threads_and_epoch_hooks_fire():
    x, y, _ = _data()
    events = []

    class Hooked(ArrayPyDataset):
        def on_epoch_end(self):
            events.append("end")

    ds = Hooked(x, y, workers=2)
    _trainer().fit(ds, epochs=2, verbose=0)
    assert threading.main_thread().name not in ds.threads  # Keras's enqueuer's workers read it
    assert events.count("end") >= 2


def test_infinite_tf_dataset_with_steps_carries_over():
    import tensorflow as tf

    x, y, _ = _data(96)
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(B).repeat()
    t = _trainer()
    h = t.fit(ds, steps_per_epoch=2, epochs=3, verbose=0)  # 6 steps over 3 passes of 3 batches
    ref = _trainer()
    ref.fit(np.concatenate([x] * 2), np.concatenate([y] * 2), batch_size=B, shuffle=False,
            steps_per_epoch=2, epochs=3, verbose=0)
    assert len(h.history["loss"]) == 3
    for a, b in zip(t.get_weights(), ref.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


# ------------------------------------------------------- ragged last batch

class Spy(keras.layers.Layer):
    """Records the shape of every Python execution of the model (an eager
    call, or one trace under jax.jit / tf.function)."""

    def __init__(self, **kw):
        super().__init__(**kw)
        self.shapes = []

    def call(self, x):
        self.shapes.append(tuple(x.shape))  # (None, ...) in a shape-generic tf.function trace
        return x


def _spied():
    spy = Spy()
    model = keras.Sequential([keras.Input((8, 8)), spy, keras.layers.Flatten(),
                              keras.layers.Dense(32, activation="relu"), keras.layers.Dense(10)])
    model.set_weights(_weights(model))
    spy.shapes.clear()
    return model, spy


def _executions_of_the_model(n, pad=True):
    x, y, _ = _data(n)
    model, spy = _spied()
    t = Trainer(model, keras.optimizers.SGD(0.1), SCE, metrics=["accuracy"])
    t.pad_ragged_batches = pad
    t.fit(x, y, batch_size=B, epochs=2, shuffle=False, verbose=0, validation_data=(x, y))
    t.evaluate(x, y, batch_size=B, verbose=0)
    out = t.predict(x, batch_size=B, verbose=0)
    shapes = list(spy.shapes)
    np.testing.assert_allclose(out, keras.ops.convert_to_numpy(model(x)), rtol=1e-5, atol=1e-6)
    return shapes


def test_ragged_last_batch_compiles_once():
    ragged = _executions_of_the_model(N)  # 100 = 3 * 32 + 4
    assert {s[0] for s in ragged} == {B}  # no step ever saw the 4-row batch (nor a generic shape)
    if BACKEND in ("jax", "tensorflow"):
        # Python runs the model once per trace: as often as with no ragged batch at all
        assert len(ragged) == len(_executions_of_the_model(96))
        # without padding the ragged batch costs a trace of its own per kind
        assert len(_executions_of_the_model(N, pad=False)) > len(ragged)
    else:  # eager torch: a new shape would recompile under torch.compile
        assert N % B in {s[0] for s in _executions_of_the_model(N, pad=False)}
    assert {s[0] for s in _executions_of_the_model(N, pad=False)} != {B}  # the test can tell


def test_ragged_last_batch_is_masked_exactly_like_keras_fit():
    x, y, sw = _data()
    for kwargs in ({}, {"sample_weight": sw}):
        t = _trainer()
        h = t.fit(x, y, batch_size=B, epochs=3, shuffle=False, verbose=0, **kwargs)
        km = _keras_model()
        hk = km.fit(x, y, batch_size=B, epochs=3, shuffle=False, verbose=0, **kwargs)
        np.testing.assert_allclose(h.history["loss"], hk.history["loss"], rtol=1e-5)
        np.testing.assert_allclose(h.history["accuracy"], hk.history["accuracy"], rtol=1e-6)
        for a, b in zip(t.get_weights(), km.get_weights()):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_ragged_evaluate_equals_an_unpadded_numpy_computation():
    x, y, sw = _data()
    t = Trainer(classic_mlp(), "sgd", SCE, metrics=["accuracy"],
                weighted_metrics=[keras.metrics.SparseCategoricalAccuracy(name="wacc")])
    logits = keras.ops.convert_to_numpy(t.model(x)).astype("float64")
    logp = logits - logits.max(1, keepdims=True)
    logp -= np.log(np.exp(logp).sum(1, keepdims=True))
    per_sample = -logp[np.arange(N), y]
    right = (logits.argmax(1) == y).astype("float64")
    res = t.evaluate(x, y, sample_weight=sw, batch_size=B, return_dict=True, verbose=0)
    # Keras: each batch averages loss * weight over its rows; the tracker weighs batches by rows
    assert res["loss"] == pytest.approx((per_sample * sw).sum() / N, rel=1e-5)
    assert res["accuracy"] == pytest.approx(right.mean(), rel=1e-6)  # unweighted: real rows only
    assert res["wacc"] == pytest.approx((right * sw).sum() / sw.sum(), rel=1e-5)


def test_ragged_multi_output_per_output_losses_match_keras():
    rng = np.random.default_rng(0)
    a_in, b_in = keras.Input((3,), name="a"), keras.Input((2,), name="b")
    h = keras.layers.Dense(8, activation="relu")(keras.layers.Concatenate()([a_in, b_in]))
    model = keras.Model({"a": a_in, "b": b_in},
                        {"cls": keras.layers.Dense(4, name="cls")(h), "reg": keras.layers.Dense(1, name="reg")(h)})
    model.set_weights(_weights(model))
    x = {"a": rng.random((50, 3), dtype=np.float32), "b": rng.random((50, 2), dtype=np.float32)}
    y = {"cls": rng.integers(0, 4, 50).astype("int32"), "reg": rng.random((50, 1), dtype=np.float32)}
    kw = dict(loss={"cls": SCE, "reg": "mse"}, loss_weights={"cls": 1.0, "reg": 0.5},
              metrics={"cls": ["accuracy"], "reg": ["mae"]})
    t = Trainer(model, "sgd", **kw)
    got = t.evaluate(x, y, batch_size=16, return_dict=True, verbose=0)  # 16, 16, 16, 2
    model.compile("sgd", **kw)
    # Keras on one batch of all 50 (no ragged batch: exact on every backend; Keras's own
    # tensorflow loop weighs a ragged batch's per-output loss by 1 instead of its rows)
    want = model.evaluate(x, y, batch_size=50, return_dict=True, verbose=0)
    assert set(want) <= set(got)
    for name in want:
        assert got[name] == pytest.approx(want[name], rel=1e-5), name


# ------------------------------------------------------------------ prefetch

def test_batches_are_prepared_one_ahead_on_a_background_thread():
    x, y, _ = _data(96)
    pulled, where = [], []

    def gen():
        for i in range(3):
            pulled.append(i)
            where.append(threading.current_thread().name)
            yield x[i * B:(i + 1) * B], y[i * B:(i + 1) * B]

    at_step = []

    class Watch(keras.callbacks.Callback):
        def on_train_batch_begin(self, batch, logs=None):
            at_step.append(len(pulled))

    t = _trainer()
    t.prefetch_batches = 1  # (the default is the engine's: off for jax on CPU)
    t.fit(gen(), epochs=1, verbose=0, callbacks=[Watch()])
    assert all(n <= i + 2 for i, n in enumerate(at_step)), at_step  # never more than one batch ahead
    assert where[1:] and all(name == "loops-prefetch" for name in where[1:])
    pulled.clear(), where.clear()
    t.prefetch_batches = 0
    h = t.fit(gen(), epochs=1, verbose=0)
    assert len(h.epoch) == 1 and where == [threading.current_thread().name] * 3  # inline, same batches


def test_prefetch_default_is_the_engines():
    from loops import backends

    t = _trainer()
    assert t.prefetch_batches is None and backends.get().prefetch_default() in (0, 1)


def test_errors_in_the_prefetch_thread_reach_the_caller():
    x, y, _ = _data(64)

    def gen():
        yield x[:B], y[:B]
        raise KeyError("broken generator")

    for prefetch in (1, 0):
        t = _trainer()
        t.prefetch_batches = prefetch
        with pytest.raises(KeyError, match="broken generator"):
            t.fit(gen(), epochs=1, verbose=0)


# ------------------------------------------------- backend-independent order

_ORDER_SCRIPT = textwrap.dedent("""
    import json, os, sys
    sys.path.insert(0, {root!r})
    import keras, numpy as np
    from loops import Trainer

    class Record(Trainer):
        def __init__(self):
            super().__init__(run_eagerly=True, seed=7)
            self.seen = []
        def train_step(self, batch):
            self.seen.append(keras.ops.convert_to_numpy(batch[0])[:, 0].astype(int).tolist())
            return {{}}

    t = Record()
    ids = np.arange(50, dtype="float32")[:, None]
    t.fit(ids, ids, batch_size=8, epochs=2, shuffle=True, verbose=0)
    print(json.dumps(t.seen[1:]))  # [0] is the first (checking) step, on the unshuffled peek
""")


def _order(backend):
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, KERAS_BACKEND=backend)
    out = subprocess.run([sys.executable, "-c", _ORDER_SCRIPT.format(root=root)], env=env,
                         capture_output=True, text=True, check=True, timeout=300)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_same_seed_gives_the_same_batch_order_on_every_backend():
    others = ["jax", "tensorflow", "torch"]
    other = others[(others.index(BACKEND) + 1) % 3]  # this backend, and one more in its own process
    here, there = _order(BACKEND), _order(other)
    assert here == there
    assert len(here) == 14 and sorted(sum(here[:7], [])) == list(range(50))  # a permutation per epoch
    assert here[:7] != here[7:]  # reshuffled each epoch
