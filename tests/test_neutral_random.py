"""``loops.set_seed(seed, neutral_random=True)``: one random stream for every backend.

Models that draw random numbers (Dropout and its variants, GaussianNoise,
augmentation layers, a VAE's sampling layer, a GAN's latents), built after the
call with no ``set_weights``, train to the same per-step losses on jax,
tensorflow and torch (each in a subprocess, once: in the jax suite's run).
In-process tests check the draws themselves.
"""

import json
import os
import subprocess
import sys
import warnings

import keras
import numpy as np
import pytest

import loops
from conftest import BACKEND, every_backend
from loops import Trainer
from loops import neutral_random

HERE = os.path.dirname(os.path.abspath(__file__))
ENGINES = ("jax", "tensorflow", "torch")


@pytest.fixture(autouse=True)
def _engine_random_afterwards():
    yield
    loops.set_seed(1234, neutral_random=False)


def _cases(backend):
    env = dict(os.environ, KERAS_BACKEND=backend, OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, os.path.join(HERE, "_neutral_case.py")], env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("NEUTRAL-JSON "))
    return json.loads(line[len("NEUTRAL-JSON "):])


@every_backend()
def test_random_models_train_the_same_on_every_backend():
    runs = {backend: _cases(backend) for backend in ENGINES}
    here = runs["jax"]
    assert sorted(here) == ["augmentation_cnn", "dropout_mlp", "gan", "noise_and_augmentation_cnn", "vae"]
    for other in ("tensorflow", "torch"):
        assert sorted(runs[other]) == sorted(here)
        for case in here:
            np.testing.assert_allclose(here[case]["losses"], runs[other][case]["losses"], rtol=1e-5, atol=1e-6,
                                       err_msg=f"{case}: jax vs {other}")
            for a, b in zip(here[case]["weights"], runs[other][case]["weights"]):
                np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5, err_msg=f"{case} final weights, jax vs {other}")


@every_backend()
def test_without_neutral_random_the_backends_differ():
    """The check above can fail: with each engine's generator the same cases part."""
    env_script = (
        "import json, sys; sys.path.insert(0, %r)\n"
        "import loops, _neutral_case as c\n"
        "loops.set_seed = (lambda f: (lambda s, **k: f(s)))(loops.set_seed)\n"  # neutral_random ignored
        "print('NEUTRAL-JSON ' + json.dumps(c.run(['dropout_mlp'])))\n" % HERE)
    outs = []
    for backend in ("jax", "torch"):
        proc = subprocess.run([sys.executable, "-c", env_script], env=dict(os.environ, KERAS_BACKEND=backend),
                              capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
        line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("NEUTRAL-JSON "))
        outs.append(json.loads(line[len("NEUTRAL-JSON "):])["dropout_mlp"]["losses"])
    assert not np.allclose(outs[0], outs[1], rtol=1e-3)


def test_draws_follow_the_seed_generator_state_as_keras_does():
    loops.set_seed(0, neutral_random=True)
    assert neutral_random.enabled()
    gen = keras.random.SeedGenerator(42)
    start = keras.ops.convert_to_numpy(gen.state.value).copy()
    a = keras.ops.convert_to_numpy(keras.random.uniform((1000,), seed=gen))
    assert keras.ops.convert_to_numpy(gen.state.value)[1] == start[1] + 1  # advanced once, as Keras's draws
    b = keras.ops.convert_to_numpy(keras.random.uniform((1000,), seed=gen))
    assert not np.array_equal(a, b)
    gen.state.assign(start)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(keras.random.uniform((1000,), seed=gen)), a)
    assert 0.0 <= a.min() and a.max() < 1.0 and abs(a.mean() - 0.5) < 0.05
    z = keras.ops.convert_to_numpy(keras.random.normal((4000,), seed=gen))
    assert abs(z.mean()) < 0.08 and abs(z.std() - 1.0) < 0.08
    t = keras.ops.convert_to_numpy(keras.random.truncated_normal((4000,), seed=gen))
    assert np.abs(t).max() <= 2.0 and abs(t.std() - 0.88) < 0.05  # a normal truncated at 2 sigma
    r = keras.ops.convert_to_numpy(keras.random.randint((4000,), 3, 7, seed=gen))
    assert set(np.unique(r)) == {3, 4, 5, 6}
    s = keras.ops.convert_to_numpy(keras.random.shuffle(np.arange(50), seed=gen))
    assert sorted(s.tolist()) == list(range(50)) and s.tolist() != list(range(50))
    kept = keras.ops.convert_to_numpy(keras.random.dropout(np.ones((4000,), "float32"), 0.25, seed=gen))
    assert set(np.unique(kept)) <= {0.0, np.float32(1 / 0.75)} and abs((kept > 0).mean() - 0.75) < 0.03
    c = keras.ops.convert_to_numpy(keras.random.categorical(np.log([[0.7, 0.2, 0.1]]), 3000, seed=gen))
    np.testing.assert_allclose(np.bincount(c[0], minlength=3) / 3000, [0.7, 0.2, 0.1], atol=0.03)
    # an int seed is a fixed stream, as in Keras
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(keras.random.uniform((5,), seed=7)),
                                  keras.ops.convert_to_numpy(keras.random.uniform((5,), seed=7)))


def test_a_model_built_after_set_seed_starts_from_the_same_weights_each_time():
    def build():
        loops.set_seed(3, neutral_random=True)
        return keras.Sequential([keras.Input((5,)), keras.layers.Dense(4),
                                 keras.layers.Dense(2, kernel_initializer="orthogonal")]).get_weights()

    for a, b in zip(build(), build()):
        np.testing.assert_array_equal(a, b)


def test_turning_it_off_gives_the_engine_generators_back():
    from keras.src.backend import random as engine_random  # (what _keras_private patches)

    original = engine_random.uniform
    loops.set_seed(0, neutral_random=True)
    assert engine_random.uniform is neutral_random.uniform
    loops.set_seed(0, neutral_random=False)
    assert engine_random.uniform is original and not neutral_random.enabled()
    loops.set_seed(0)  # None: left as it is
    assert not neutral_random.enabled()


def test_draws_without_a_neutral_form_warn_once_naming_the_function():
    loops.set_seed(0, neutral_random=True)
    with pytest.warns(UserWarning, match=r"keras\.random\.gamma has no backend-neutral form"):
        keras.random.gamma((3,), alpha=2.0, seed=1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        keras.random.gamma((3,), alpha=2.0, seed=1)  # once only


def test_bad_switch_is_a_clear_error():
    with pytest.raises(TypeError, match="neutral_random=.*True, False or None"):
        loops.set_seed(0, neutral_random="yes")


@pytest.mark.skipif(BACKEND != "torch", reason="graph capture is torch's compiled mode")
def test_a_torch_step_that_draws_stays_captured(capture_first):
    loops.set_seed(0, neutral_random=True)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(8), keras.layers.Dropout(0.5),
                              keras.layers.GaussianNoise(0.1), keras.layers.Dense(1)])
    t = Trainer(model, optimizer="sgd", loss="mse")
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*eager.*")
        t.fit(np.ones((32, 4), "float32"), np.ones((32, 1), "float32"), batch_size=8, epochs=2, verbose=0)
    assert t.trace_counts == {"train": 1}


def test_elastic_transform_warns_that_it_is_not_neutral():
    loops.set_seed(0, neutral_random=True)
    images = np.random.default_rng(0).uniform(size=(1, 8, 8, 1)).astype("float32")
    with pytest.warns(UserWarning, match=r"keras\.ops\.image\.elastic_transform has no backend-neutral form"):
        keras.ops.image.elastic_transform(images, seed=1)
