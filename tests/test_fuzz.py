"""Differential fuzzing of ``Trainer.fit`` against ``model.fit`` (Hypothesis).

Valid configurations, drawn at random from the data path's independent
choices, train as ``model.fit`` trains them: per-step losses, epoch logs and
final weights equal on the same backend to 1e-5. Invalid ones (one mistake
drawn into a valid configuration) are refused before the first step with a
``ValueError``/``TypeError``/``KeyError`` naming the argument, never an
engine's exception, and with nothing written to ``checkpoint_dir``.

CI runs a bounded, derandomized number of examples per backend
(``LOOPS_FUZZ_EXAMPLES``, default 12 valid and 30 invalid). ``scripts/fuzz.sh``
runs many more with fresh randomness; a failure it finds, shrunk, becomes a
plain regression test at the bottom of this file.
"""

from __future__ import annotations

import importlib.util
import os
import re

import keras
import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from loops import Trainer  # noqa: E402

# sources drawn only where their library is installed
SOURCES = [("tf.data", importlib.util.find_spec("tensorflow")), ("dataloader", importlib.util.find_spec("torch"))]
EXAMPLES = int(os.environ.get("LOOPS_FUZZ_EXAMPLES", "12"))
FRESH = os.environ.get("LOOPS_FUZZ_FRESH") == "1"  # scripts/fuzz.sh: new randomness each run
SETTINGS = dict(deadline=None, derandomize=not FRESH, database=None, print_blob=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
ENGINE_MODULES = ("jax", "jaxlib", "tensorflow", "torch", "tf_keras")
RTOL, ATOL = 1e-5, 1e-6


# ------------------------------------------------------------------ configs

@st.composite
def valid_configs(draw):
    c = {}
    c["n"] = draw(st.integers(12, 48))
    c["batch_size"] = draw(st.integers(1, c["n"] + 4))  # ragged tails; one batch when >= n
    c["dtype"] = draw(st.sampled_from(["float32", "float64", "float16", "int32"]))
    c["source"] = draw(st.sampled_from(["arrays", "arrays"] + [name for name, module in SOURCES if module]))
    c["inputs"] = "array" if c["source"] == "dataloader" else draw(st.sampled_from(["array", "dict"]))
    # (a DataLoader of a TensorDataset holds one label tensor: no dict of outputs)
    c["outputs"] = draw(st.sampled_from(["regression", "classification"] + (["two"] if c["source"] != "dataloader" else [])))
    weights = [None, "sample"] + (["class"] if c["outputs"] == "classification" and c["source"] == "arrays" else [])
    c["weights"] = draw(st.sampled_from(weights))
    c["validation"] = draw(st.sampled_from([None, "data"] + (["split"] if c["source"] == "arrays" else [])))
    c["steps_per_execution"] = draw(st.integers(1, 3))
    c["epochs"] = draw(st.integers(1, 3))
    c["initial_epoch"] = draw(st.integers(0, c["epochs"] - 1))
    c["optimizer"] = draw(st.sampled_from(["sgd", "adam"]))
    c["seed"] = draw(st.integers(0, 2**16))
    n_train = c["n"] - int(c["n"] * 0.25) if c["validation"] == "split" else c["n"]
    # Shuffled order is each loop's own draw; with one batch per epoch it changes only the summation order.
    c["shuffle"] = draw(st.booleans()) if c["source"] == "arrays" and c["batch_size"] >= n_train else False
    return c


def _arrays(c):
    rng = np.random.default_rng(c["seed"])
    n = c["n"]

    def features(d):
        a = rng.normal(size=(n, d)) * 2
        return (np.round(a) if c["dtype"] == "int32" else a).astype(c["dtype"])

    x = features(3) if c["inputs"] == "array" else {"a": features(3), "b": features(2)}
    reg = rng.normal(size=(n, 1)).astype("float32")
    cls = rng.integers(0, 3, size=(n,)).astype("int32")
    y = {"regression": reg, "classification": cls, "two": {"reg": reg, "cls": cls}}[c["outputs"]]
    sw = rng.uniform(0.2, 2.0, size=(n,)).astype("float32") if c["weights"] == "sample" else None
    return x, y, sw


def _model(c):
    keras.utils.set_random_seed(c["seed"])
    if c["inputs"] == "array":
        inputs = keras.Input((3,), name="x")
        h = inputs
    else:
        inputs = {"a": keras.Input((3,), name="a"), "b": keras.Input((2,), name="b")}
        h = keras.layers.Concatenate()([inputs["a"], inputs["b"]])
    h = keras.layers.Dense(8, activation="tanh")(h)
    reg = keras.layers.Dense(1, name="reg")
    cls = keras.layers.Dense(3, name="cls")
    outputs = {"regression": reg(h), "classification": cls(h), "two": {"reg": reg(h), "cls": cls(h)}}[c["outputs"]]
    return keras.Model(inputs, outputs)


def _compile_args(c):
    sce = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    loss = {"regression": "mse", "classification": sce, "two": {"reg": "mse", "cls": sce}}[c["outputs"]]
    metrics = {"regression": ["mae"], "classification": ["accuracy"],
               "two": {"reg": ["mae"], "cls": ["accuracy"]}}[c["outputs"]]
    optimizer = keras.optimizers.SGD(0.05) if c["optimizer"] == "sgd" else keras.optimizers.Adam(0.01)
    return {"optimizer": optimizer, "loss": loss, "metrics": metrics}


def _source(c, x, y, sw, batch_size):
    if c["source"] == "arrays":
        return {"x": x, "y": y, "sample_weight": sw, "batch_size": batch_size}
    if c["source"] == "tf.data":
        import tensorflow as tf

        parts = (x, y) if sw is None else (x, y, sw)
        return {"x": tf.data.Dataset.from_tensor_slices(parts).batch(batch_size)}
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    tensors = [torch.from_numpy(np.asarray(x)), torch.from_numpy(np.asarray(y))]
    if sw is not None:
        tensors.append(torch.from_numpy(sw))
    return {"x": DataLoader(TensorDataset(*tensors), batch_size=batch_size, shuffle=False)}


class _Steps(keras.callbacks.Callback):
    """Every train step's logs (per execution, as Keras calls the hooks)."""

    def __init__(self):
        super().__init__()
        self.losses = []
        self.began = False

    def on_train_begin(self, logs=None):
        self.began = True

    def on_train_batch_end(self, batch, logs=None):
        self.losses.append(float(np.asarray(logs["loss"])))


def _fit_args(c, x, y, sw):
    args = _source(c, x, y, sw, c["batch_size"])
    args.update(epochs=c["epochs"], initial_epoch=c["initial_epoch"], shuffle=c["shuffle"], verbose=0)
    if c["weights"] == "class":
        args["class_weight"] = {0: 0.5, 1: 2.0, 2: 1.0}
    if c["validation"] == "split":
        args["validation_split"] = 0.25
    elif c["validation"] == "data":
        vx, vy, _ = _arrays({**c, "seed": c["seed"] + 1, "weights": None})
        args["validation_data"] = (vx, vy)
    return args


def _run_both(c, perturb=False):
    x, y, sw = _arrays(c)
    ref = _model(c)
    # Keras's compiled tensorflow step logs per-output losses ("reg_loss") of a
    # partial batch as if it were full: CompileLoss weighs its trackers by the
    # static batch size (keras/src/trainers/compile_utils.py), unknown (None,
    # weight 1) inside tf.function. Keras on jax and torch, and eager Keras on
    # tensorflow, weigh by rows, as the Trainer does on every backend: that is
    # the reference here (found by this fuzzer; see REGRESSIONS).
    eager = keras.backend.backend() == "tensorflow" and c["outputs"] == "two"
    # Keras on torch refuses steps_per_execution > 1; the Trainer runs it: the
    # reference then runs one step per execution (same steps, same results;
    # only the batch hooks differ, so per-step logs are not compared).
    spe = 1 if keras.backend.backend() == "torch" else c["steps_per_execution"]
    ref.compile(steps_per_execution=spe, run_eagerly=eager, **_compile_args(c))
    keras_steps = _Steps()
    hk = ref.fit(**_fit_args(c, x, y, sw), callbacks=[keras_steps])

    model = _model(c)  # same seed: the same initial weights
    for a, b in zip(model.get_weights(), _model(c).get_weights()):
        np.testing.assert_array_equal(a, b)
    args = _compile_args(c)
    if perturb:  # (test_the_fuzzer_can_fail: a 2% larger learning rate)
        args["optimizer"].learning_rate = float(args["optimizer"].learning_rate) * 1.02
    t = Trainer(model, steps_per_execution=c["steps_per_execution"], **args)
    loops_steps = _Steps()
    h = t.fit(**_fit_args(c, x, y, sw), callbacks=[loops_steps])
    return (hk, ref, keras_steps), (h, t, loops_steps)


def check_same_as_model_fit(c, perturb=False):
    (hk, ref, ks), (h, t, ls) = _run_both(c, perturb)
    if not (keras.backend.backend() == "torch" and c["steps_per_execution"] > 1):
        np.testing.assert_allclose(ls.losses, ks.losses, rtol=RTOL, atol=ATOL, err_msg=f"per-step losses, {c}")
    assert sorted(h.history) == sorted(hk.history), (c, sorted(h.history), sorted(hk.history))
    for key in hk.history:
        np.testing.assert_allclose(h.history[key], hk.history[key], rtol=RTOL, atol=ATOL, err_msg=f"{key}, {c}")
    assert len(ref.get_weights()) == len(t.get_weights())
    for a, b in zip(ref.get_weights(), t.get_weights()):
        np.testing.assert_allclose(b, a, rtol=RTOL, atol=ATOL, err_msg=f"final weights, {c}")


@settings(max_examples=EXAMPLES, **SETTINGS)
@given(valid_configs())
def test_valid_configurations_train_as_model_fit_trains_them(c):
    check_same_as_model_fit(c)


# ------------------------------------------------------------------ mistakes

def _string_features(c, args):
    args["x"] = np.array([["a", "b", "c"]] * c["n"])


MISTAKES = {
    # name: (what the message must name, how to apply it to (config, fit args))
    "batch_size_zero": ("batch_size", lambda c, a: a.update(batch_size=0)),
    "batch_size_negative": ("batch_size", lambda c, a: a.update(batch_size=-4)),
    "batch_size_float": ("batch_size", lambda c, a: a.update(batch_size=2.5)),
    "batch_size_string": ("batch_size", lambda c, a: a.update(batch_size="16")),
    "validation_split_one": ("validation_split", lambda c, a: a.update(validation_split=1.0)),
    "validation_split_negative": ("validation_split", lambda c, a: a.update(validation_split=-0.2)),
    "y_rows": ("y", lambda c, a: a.update(y=keras.tree.map_structure(lambda t: t[:-3], a["y"]))),
    "sample_weight_rows": ("sample_weight", lambda c, a: a.update(sample_weight=np.ones(c["n"] - 2, "float32"))),
    "class_weight_list": ("class_weight", lambda c, a: a.update(class_weight=[1.0, 2.0, 3.0])),
    "validation_data_x_only": ("validation_data", lambda c, a: a.update(validation_data=(a["x"],))),
    "callback_object": ("callbacks", lambda c, a: a.update(callbacks=[object()])),
    "string_features": ("strings", _string_features),
    "validation_freq_zero": ("validation_freq", lambda c, a: a.update(validation_freq=0)),
    "steps_per_epoch_zero": ("steps_per_epoch", lambda c, a: a.update(steps_per_epoch=0)),
    "checkpoint_every_zero": ("checkpoint_every", lambda c, a: a.update(checkpoint_every=0)),
    "keep_zero": ("keep", lambda c, a: a.update(keep=0)),
    "x_missing": ("x", lambda c, a: a.update(x=None)),
}


@st.composite
def invalid_configs(draw):
    c = draw(valid_configs())
    c.update(source="arrays", validation=None, initial_epoch=0, epochs=min(c["epochs"], 2))
    if c["weights"] == "class" and c["outputs"] != "classification":
        c["weights"] = None
    return c, draw(st.sampled_from(sorted(MISTAKES)))


def _from_an_engine(e):
    return type(e).__module__.split(".")[0] in ENGINE_MODULES


@settings(max_examples=int(EXAMPLES * 2.5), **SETTINGS)
@given(invalid_configs())
def test_mistakes_are_refused_before_the_first_step_naming_the_argument(tmp_path_factory, case):
    c, mistake = case
    names, apply = MISTAKES[mistake]
    x, y, sw = _arrays(c)
    args = _fit_args(c, x, y, sw)
    steps = _Steps()
    args["callbacks"] = [steps]
    apply(c, args)
    ckpt = tmp_path_factory.mktemp("ckpt") / "run"
    t = Trainer(_model(c), steps_per_execution=c["steps_per_execution"], **_compile_args(c))
    with pytest.raises((ValueError, TypeError, KeyError)) as info:
        t.fit(checkpoint_dir=str(ckpt), **args)
    e = info.value
    assert not _from_an_engine(e), f"{mistake}: an engine's {type(e).__module__}.{type(e).__name__}: {e}"
    named = re.search(rf"(?<![A-Za-z_]){re.escape(names)}(?![A-Za-z])", str(e))
    assert named, f"{mistake}: the message does not name {names!r}: {e}"
    assert not steps.began and not steps.losses, f"{mistake}: raised after training began"
    assert not ckpt.exists() or not os.listdir(ckpt), f"{mistake}: wrote {os.listdir(ckpt)}"


# ------------------------------------------------ shrunk examples, kept as regressions

REGRESSIONS = [
    # Each: a configuration the fuzzer once found failing, shrunk; kept exactly as found.
    # torch: Keras refuses steps_per_execution > 1 there (the reference now runs one step per execution).
    {"n": 12, "batch_size": 1, "dtype": "float32", "source": "dataloader", "inputs": "array",
     "outputs": "regression", "weights": None, "validation": None, "steps_per_execution": 2, "epochs": 1,
     "initial_epoch": 0, "optimizer": "sgd", "seed": 0, "shuffle": False},
    # tensorflow: per-output loss logs of a ragged last batch (12 rows in batches of 5) differed from
    # compiled Keras's, which weighs them by a static batch size tf.function does not know (see _run_both).
    {"n": 12, "batch_size": 5, "dtype": "float32", "source": "arrays", "inputs": "array", "outputs": "two",
     "weights": None, "validation": None, "steps_per_execution": 1, "epochs": 1, "initial_epoch": 0,
     "optimizer": "sgd", "seed": 0, "shuffle": False},
]


@pytest.mark.parametrize("c", REGRESSIONS)
def test_shrunk_examples_stay_fixed(c):
    check_same_as_model_fit(c)


def test_the_fuzzer_can_fail():
    """A check that cannot fail proves nothing: the same comparison fails for
    a Trainer whose learning rate is 2% off."""
    c = {"n": 16, "batch_size": 5, "dtype": "float32", "source": "arrays", "inputs": "array",
         "outputs": "regression", "weights": None, "validation": None, "steps_per_execution": 1, "epochs": 1,
         "initial_epoch": 0, "optimizer": "sgd", "seed": 0, "shuffle": False}
    check_same_as_model_fit(c)
    with pytest.raises(AssertionError):
        check_same_as_model_fit(c, perturb=True)
