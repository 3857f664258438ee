"""The parity tool: backend-neutral random numbers, the known-divergence
warnings, and divergence localization (in this process on every backend;
across all three backends in subprocesses, only in the jax run to keep the
suite's cost at one cross-backend pass)."""

import os
import subprocess
import sys

import keras
import numpy as np
import pytest

import _parity_cases
from conftest import BACKEND, every_backend
from loops import Trainer
from loops.parity import ParityDropout, compare, compare_runs, known_divergence_sources, neutral_uniform, run_backend

HERE = os.path.dirname(os.path.abspath(__file__))


def _numpy_uniform(n, seed, counter):
    """Reference for neutral_uniform in uint32 NumPy arithmetic."""
    def h(x):
        x = x ^ (x >> 16); x = x * np.uint32(0x7FEB352D)
        x = x ^ (x >> 15); x = x * np.uint32(0x846CA68B)
        return x ^ (x >> 16)

    with np.errstate(over="ignore"):
        idx = np.arange(n, dtype=np.uint32) + np.uint32(counter * 1000003)
        x = h(h(idx) + np.uint32(seed))
    return (x >> 8).astype(np.float32) / np.float32(1 << 24)


def test_neutral_uniform_is_the_numpy_reference_bit_for_bit():
    got = keras.ops.convert_to_numpy(neutral_uniform((3, 7), seed=11, counter=keras.ops.convert_to_tensor(5, "int32")))
    np.testing.assert_array_equal(got.ravel(), _numpy_uniform(21, 11, 5))
    assert 0.0 <= got.min() and got.max() < 1.0


def test_parity_dropout_draws_a_new_reference_mask_each_call():
    layer = ParityDropout(0.5, seed=2)
    x = np.ones((4, 8), "float32")
    first = keras.ops.convert_to_numpy(layer(x, training=True))
    second = keras.ops.convert_to_numpy(layer(x, training=True))
    np.testing.assert_array_equal(first.ravel(), (_numpy_uniform(32, 2, 0) >= 0.5) * 2.0)
    np.testing.assert_array_equal(second.ravel(), (_numpy_uniform(32, 2, 1) >= 0.5) * 2.0)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(layer(x, training=False)), x)


def test_warns_about_softmax_probability_loss_backend_rng_and_xla():
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dropout(0.5, name="drop"),
                              keras.layers.Dense(3, activation="softmax")])
    trainer = Trainer(model, "adam", keras.losses.CategoricalCrossentropy())
    trainer.noise = keras.random.SeedGenerator(0)
    found = " | ".join(known_divergence_sources(trainer, ["jax", "torch"]))
    assert "from_logits=False" in found and "'drop'" in found and "trainer.noise" in found and "XLA" in found
    clean = Trainer(keras.Sequential([keras.Input((4,)), ParityDropout(0.5), keras.layers.Dense(3)]), "adam",
                    keras.losses.CategoricalCrossentropy(from_logits=True), jit_compile=False)
    assert known_divergence_sources(clean, ["jax", "torch"]) == []


def test_in_process_rerun_agrees_and_a_planted_weight_is_localized(tmp_path):
    path = str(tmp_path / "init.weights.h5")
    first = run_backend(_parity_cases.classic_mlp, 3, path, write_weights=True)
    again = run_backend(_parity_cases.classic_mlp, 3, path, write_weights=False)
    report = compare_runs([first, again])
    assert report.ok, report.format()
    assert set(first["logs"]) == {"loss", "accuracy"} and len(first["logs"]["loss"]) == 3

    planted = run_backend(_parity_cases.planted_here, 3, path, write_weights=False)
    report = compare_runs([first, planted])
    assert not report.ok
    (d,) = report.divergences
    assert (d.weight_step, d.layer) == (0, "mlp/hidden2"), report.format()
    assert d.step is not None and d.metric == "loss"


@every_backend()
@pytest.mark.parametrize("factory", ["classic_mlp", "cnn_bn_dropout", "neutral_dropout_mlp"])
def test_one_epoch_agrees_on_all_three_backends(factory, monkeypatch):
    monkeypatch.syspath_prepend(HERE)
    # The CNN's tensorflow run is not bitwise reproducible from run to run on CPU (oneDNN's threaded
    # convolutions): in one of four runs this session its 12-step losses parted from jax's by 2.1e-5 (step 5
    # on), against <1e-6 in the others. Until the parity worker runs with deterministic ops, the CNN
    # is held to 5e-5; the MLP to 1e-5.
    rtol = 5e-5 if factory == "cnn_bn_dropout" else 1e-5
    report = compare(f"_parity_cases:{factory}", ["jax", "tensorflow", "torch"], steps=12, rtol=rtol)
    assert report.ok, report.format()
    assert report.max_rel_diff < rtol
    losses = report.logs["torch"]["loss"]
    assert losses[-1] < losses[0]  # it trained: the agreement is not between constants


@every_backend()
def test_cli_names_the_planted_layer_and_exits_1():
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([HERE, os.path.dirname(HERE)]))
    proc = subprocess.run([sys.executable, "-m", "loops.parity", "_parity_cases:planted_mlp",
                           "--backends", f"jax,{_parity_cases.PLANT_ON}", "--steps", "2"],
                          cwd=HERE, env=env, capture_output=True, text=True)
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert f"DIVERGENCE {_parity_cases.PLANT_ON}:" in proc.stdout
    assert "in the initial weights, most in layer 'mlp/hidden2'" in proc.stdout
