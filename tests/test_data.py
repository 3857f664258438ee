"""Inputs the core takes: arrays, lists/dicts of arrays (multi-input and
multi-output), generators and iterables; sample and class weights; modes."""

import keras
import numpy as np
import pytest

from conftest import classic_mlp
from loops import Trainer

SCE = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def _data(n=96, seed=0):
    rng = np.random.default_rng(seed)
    return rng.random((n, 8, 8), dtype=np.float32), rng.integers(0, 10, n).astype("int32")


def _trainer(**kw):
    model = classic_mlp()
    model.set_weights([np.full(w.shape, 0.01, "float32") * (i + 1) for i, w in enumerate(model.get_weights())])
    return Trainer(model, keras.optimizers.SGD(0.1), SCE, metrics=["accuracy"], **kw)


def test_generator_with_steps_per_epoch_carries_over_between_epochs():
    x, y = _data()
    seen = []

    def forever():
        i = 0
        while True:
            seen.append(i)
            yield x[i % 3 * 32:(i % 3 + 1) * 32], y[i % 3 * 32:(i % 3 + 1) * 32]
            i += 1

    t = _trainer()
    h = t.fit(forever(), steps_per_epoch=2, epochs=3, verbose=0)
    assert len(h.history["loss"]) == 3
    assert seen[:6] == [0, 1, 2, 3, 4, 5]  # epoch 2 continued where epoch 1 stopped

    # the same batches as arrays give the same result
    ref = _trainer()
    ref.fit(np.concatenate([x] * 2), np.concatenate([y] * 2), batch_size=32, shuffle=False,
            steps_per_epoch=2, epochs=3, verbose=0)
    for a, b in zip(t.get_weights(), ref.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


def test_finite_iterable_restarts_each_epoch_and_evaluate_predict_take_it():
    x, y = _data()
    batches = [(x[i:i + 32], y[i:i + 32]) for i in range(0, 96, 32)]
    t = _trainer()
    h = t.fit(batches, epochs=2, verbose=0)
    assert len(h.history["loss"]) == 2
    by_list = t.evaluate(batches, return_dict=True, verbose=0)
    by_array = t.evaluate(x, y, batch_size=32, return_dict=True, verbose=0)
    assert by_list == pytest.approx(by_array, rel=1e-6)
    preds = t.predict((b[0] for b in batches), verbose=0)
    np.testing.assert_allclose(preds, t.predict(x, verbose=0), rtol=1e-5, atol=1e-6)


def test_exhausted_generator_stops_training_with_a_warning():
    x, y = _data()
    gen = ((x[i:i + 32], y[i:i + 32]) for i in range(0, 96, 32))
    t = _trainer()
    with pytest.warns(UserWarning, match="ran out"):
        h = t.fit(gen, epochs=3, verbose=0)
    assert len(h.history["loss"]) == 1


def test_inconsistent_generator_structure_is_an_error():
    x, y = _data()

    def bad():
        yield x[:32], y[:32]
        yield x[:32], y[:32].astype("float32")

    t = _trainer()
    with pytest.raises(ValueError, match="inconsistent structure"):
        t.fit(bad(), epochs=1, verbose=0)


def test_multi_input_multi_output_dicts_by_name():
    rng = np.random.default_rng(0)
    a_in, b_in = keras.Input((3,), name="a"), keras.Input((2,), name="b")
    h = keras.layers.Dense(8, activation="relu")(keras.layers.Concatenate()([a_in, b_in]))
    model = keras.Model({"a": a_in, "b": b_in},
                        {"cls": keras.layers.Dense(4, name="cls")(h), "reg": keras.layers.Dense(1, name="reg")(h)})
    x = {"b": rng.random((64, 2), dtype=np.float32), "a": rng.random((64, 3), dtype=np.float32)}
    y = {"cls": rng.integers(0, 4, 64).astype("int32"), "reg": rng.random((64, 1), dtype=np.float32)}
    t = Trainer(model, "adam", {"cls": SCE, "reg": "mse"}, loss_weights={"cls": 1.0, "reg": 0.5},
                metrics={"cls": ["accuracy"]})
    hist = t.fit(x, y, batch_size=16, epochs=2, verbose=0)
    assert {"loss", "cls_loss", "reg_loss", "cls_accuracy"} <= set(hist.history)
    res = t.evaluate(x, y, return_dict=True, verbose=0)
    np.testing.assert_allclose(res["loss"], res["cls_loss"] + 0.5 * res["reg_loss"], rtol=1e-5)
    out = t.predict(x, verbose=0)
    assert out["cls"].shape == (64, 4) and out["reg"].shape == (64, 1)


def test_sample_weight_and_class_weight_match_keras():
    x, y = _data()
    sw = np.linspace(0.1, 2.0, len(y)).astype("float32")
    cw = {k: 1.0 + k / 10 for k in range(10)}
    for kwargs in ({"sample_weight": sw}, {"class_weight": cw}):
        ours = _trainer()
        h = ours.fit(x, y, batch_size=32, epochs=2, shuffle=False, verbose=0, **kwargs)
        ref = classic_mlp()
        ref.set_weights(_trainer().model.get_weights())  # the same fixed start
        ref.compile(keras.optimizers.SGD(0.1), SCE, metrics=["accuracy"])
        hk = ref.fit(x, y, batch_size=32, epochs=2, shuffle=False, verbose=0, **kwargs)
        np.testing.assert_allclose(h.history["loss"], hk.history["loss"], rtol=1e-5)
    # A dict that lists only some classes: the others weigh 1.0, as in Keras.
    partial = {0: 0.5, 2: 3.0}
    ours = _trainer()
    h = ours.fit(x, y, batch_size=32, epochs=1, shuffle=False, verbose=0, class_weight=partial)
    ref = classic_mlp()
    ref.set_weights(_trainer().model.get_weights())
    ref.compile(keras.optimizers.SGD(0.1), SCE, metrics=["accuracy"])
    hk = ref.fit(x, y, batch_size=32, epochs=1, shuffle=False, verbose=0, class_weight=partial)
    np.testing.assert_allclose(h.history["loss"], hk.history["loss"], rtol=1e-5)
    with pytest.raises(ValueError, match="integer class indices"):
        _trainer().fit(x, y, class_weight={"cat": 1.0}, verbose=0)


def test_shuffle_order_is_seeded_and_backend_independent():
    from loops.data.sources import ArraySource

    src = ArraySource(np.arange(10, dtype="float32")[:, None], batch_size=4, shuffle=True, seed=3)
    first = [b[:, 0].tolist() for b in src.batches()]
    # NumPy's generator only, never the engine's: this order is the same on every backend
    order = np.random.default_rng(3).permutation(10).astype(float).tolist()
    assert first == [order[:4], order[4:8], order[8:]]
    again = ArraySource(np.arange(10, dtype="float32")[:, None], batch_size=4, shuffle=True, seed=3)
    assert [b[:, 0].tolist() for b in again.batches()] == first


@pytest.mark.parametrize("options", [
    {"run_eagerly": True},
    {"steps_per_execution": 3},
    {"jit_compile": True},  # XLA on tensorflow, torch.compile on torch (~30 s to compile on CPU)
])
def test_execution_modes_give_the_same_training(options):
    x, y = _data()
    base = _trainer()
    hb = base.fit(x, y, batch_size=16, epochs=2, shuffle=False, verbose=0)
    other = _trainer(**options)
    ho = other.fit(x, y, batch_size=16, epochs=2, shuffle=False, verbose=0)
    np.testing.assert_allclose(hb.history["loss"], ho.history["loss"], rtol=1e-5)
    np.testing.assert_allclose(hb.history["accuracy"], ho.history["accuracy"], rtol=1e-6)
    for a, b in zip(base.get_weights(), other.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
    assert other.evaluate(x, y, return_dict=True, verbose=0) == pytest.approx(
        base.evaluate(x, y, return_dict=True, verbose=0), rel=1e-5)
    if "jit_compile" in options:
        # Compiled once per kind, however many calls (torch.compile once guarded on a clock
        # read in the step's wrapper and recompiled at every call); a second fit compiles nothing.
        other.fit(x, y, batch_size=16, epochs=1, shuffle=False, verbose=0)
        assert other.trace_counts == {"train": 1, "test": 1}, other.trace_counts
