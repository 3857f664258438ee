"""One suite, run once per backend: KERAS_BACKEND is fixed for the process
(``bash .ci/run`` runs it three times)."""

import os

os.environ.setdefault("KERAS_BACKEND", "jax")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

BACKEND = keras.backend.backend()
KERAS_VERSION = tuple(int(p) for p in keras.__version__.split(".")[:2])


def requires(module):
    """Skips a test whose other engine (tensorflow, torch) this environment lacks
    (the floor-version CI step installs jax only)."""
    import importlib.util

    return pytest.mark.skipif(importlib.util.find_spec(module) is None, reason=f"{module} is not installed")


def every_backend():
    """Marks a test that runs jax, tensorflow and torch in subprocesses: it runs
    once per CI run (in the jax suite's), where all three engines are installed."""
    import importlib.util

    missing = [m for m in ("jax", "tensorflow", "torch") if importlib.util.find_spec(m) is None]
    return pytest.mark.skipif(BACKEND != "jax" or bool(missing),
                              reason="runs every backend in subprocesses: once per CI run (the jax suite's), "
                                     "with all three engines installed")


def pytest_report_header(config):
    return f"keras backend: {BACKEND} (keras {keras.__version__})"


@pytest.fixture(autouse=True)
def _seed():
    keras.utils.set_random_seed(1234)
    yield


@pytest.fixture
def capture_first(monkeypatch):
    """torch captures compiled steps at their first call (``LOOPS_TORCH_CAPTURE=first``),
    not when its policy would (``backends/torch/policy.py``): for tests about
    capture itself, whose runs are too short to be captured otherwise. Other
    engines ignore it."""
    monkeypatch.setenv("LOOPS_TORCH_CAPTURE", "first")


@pytest.fixture(scope="session")
def digits():
    """scikit-learn's digits (shipped with the package, no download): a fixed
    stratified split, pixels scaled to [0, 1]."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    x = (d.images / 16.0).astype("float32")  # (1797, 8, 8)
    y = d.target.astype("int32")
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=0.2, random_state=0, stratify=y)
    return x_train, y_train, x_test, y_test


def classic_mlp(input_shape=(8, 8)):
    """Flatten -> Dense 256 -> Dense 128 -> Dense 10 logits (the seeds' recipe)."""
    return keras.Sequential([
        keras.Input(input_shape),
        keras.layers.Flatten(),
        keras.layers.Dense(256, activation="relu"),
        keras.layers.Dense(128, activation="relu"),
        keras.layers.Dense(10),
    ])


def numpy_weights(model, seed=0):
    """Backend-independent initial weights: the same numbers on every engine."""
    rng = np.random.default_rng(seed)
    return [rng.normal(0.0, 0.1, size=w.shape).astype("float32") for w in model.get_weights()]
