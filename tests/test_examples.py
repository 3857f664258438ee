"""The examples learn (numbers, not "it ran"), compiled and eager, on every
backend, from sources that never name an engine."""

import pathlib
import re
import sys
import warnings

import keras
import numpy as np
import pytest

import loops
from conftest import BACKEND

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from examples import dcgan_digits, grad_clipping, second_order, wgan_gp  # noqa: E402


def test_example_sources_are_backend_neutral():
    sources = sorted((ROOT / "examples").glob("*.py"))
    assert len(sources) >= 3
    for path in sources:
        text = path.read_text()
        assert not re.search(r"^\s*(import|from)\s+(jax|tensorflow|torch)\b", text, re.M), path.name
        assert "backend()" not in text, f"{path.name} branches on the backend"


def _run_twice(main, epochs_eager, **kwargs):
    keras.utils.set_random_seed(0)
    compiled = main(verbose=0, **kwargs)
    keras.utils.set_random_seed(0)
    eager = main(verbose=0, run_eagerly=True, epochs=epochs_eager)
    return compiled, eager


def test_grad_clipping_logs_a_falling_pre_clip_norm():
    (h, result), (he, _) = _run_twice(grad_clipping.main, 2)
    norms = h.history["grad_norm"]
    assert norms[0] > 1.0, norms           # clipping is active early...
    assert min(norms[-3:]) < 0.6 * max(norms[:3]), norms  # ...and the norm falls
    assert len(norms) == len(h.history["val_loss"])  # EarlyStopping ran alongside
    assert result["accuracy"] >= 0.93, result
    np.testing.assert_allclose(he.history["grad_norm"], norms[:2], rtol=1e-4)
    np.testing.assert_allclose(he.history["loss"], h.history["loss"][:2], rtol=1e-4)


def test_second_order_nested_value_and_grad_learns():
    (h, result), (he, _) = _run_twice(second_order.main, 2, epochs=12)
    assert result["accuracy"] >= 0.9, result
    assert all(n > 1.0 for n in h.history["d2_norm"])  # a real second-order term
    np.testing.assert_allclose(he.history["loss"], h.history["loss"][:2], rtol=1e-4)


@pytest.fixture(autouse=True)
def _engine_random_afterwards():
    yield
    loops.set_seed(1234, neutral_random=False)  # the GAN examples turn neutral random on


@pytest.mark.skipif(BACKEND != "torch", reason="graph capture is torch's compiled mode")
@pytest.mark.parametrize("example", ["wgan_gp", "dcgan_digits"])
def test_gan_examples_draw_noise_in_a_captured_torch_step(example, capture_first):
    """Their SeedGenerator draws are neutral (main() turns it on), so torch
    captures the step instead of running it eagerly with a warning."""
    loops.set_seed(0, neutral_random=True)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*runs eagerly.*")
        if example == "wgan_gp":
            gan = wgan_gp.WGANGP()
            gan.fit(wgan_gp.sample_mixture(2 * 640), batch_size=640, epochs=1, verbose=0)
        else:
            from examples._digits import load_digits_split

            x, y, _, _ = load_digits_split()
            gan = dcgan_digits.ConditionalGAN()
            gan.fit(x[:128, ..., None] * 2 - 1, y[:128], batch_size=64, epochs=1, verbose=0)
    assert gan.trace_counts["train"] == 1


def test_wgan_gp_covers_the_modes_of_8_gaussians():
    keras.utils.set_random_seed(0)
    gan, covered = wgan_gp.main(epochs=10, verbose=0)  # 1000 generator steps, 5000 critic steps
    assert covered >= 7, covered
    assert wgan_gp.modes_covered(wgan_gp.sample_mixture(4000)) == 8  # the measure itself works
    assert wgan_gp.modes_covered(np.zeros((4000, 2), "float32")) == 0
    logs = gan.get_metrics_result()
    assert 0.0 < float(keras.ops.convert_to_numpy(logs["gradient_penalty"])) < 5.0


def test_wgan_gp_step_compiled_equals_eager():
    histories = []
    for eager in (False, True):
        keras.utils.set_random_seed(0)
        gan = wgan_gp.WGANGP(run_eagerly=eager)
        histories.append(gan.fit(wgan_gp.sample_mixture(2 * 640), batch_size=640, epochs=1,
                                 shuffle=False, verbose=0).history)
    # 12 optimizer updates with double backprop: XLA's fused kernels and op-by-op
    # dispatch round differently, and Adam amplifies it a little.
    for key in ("critic_loss", "gradient_penalty", "generator_loss"):
        np.testing.assert_allclose(histories[0][key], histories[1][key], rtol=2e-3, atol=1e-4)


def test_conditional_dcgan_draws_the_digit_it_is_asked_for():
    keras.utils.set_random_seed(0)
    gan, accuracy = dcgan_digits.main(epochs=40, verbose=0)
    # a digits classifier reads the requested class in most generated images (chance: 10%)
    assert accuracy >= 0.8, accuracy
    images = gan.generate(np.arange(10, dtype="int32"))
    assert images.shape == (10, 8, 8) and 0.0 <= images.min() and images.max() <= 1.0


def test_conditional_dcgan_compiled_equals_eager():
    from examples._digits import load_digits_split

    x, y, _, _ = load_digits_split()
    histories = []
    for eager in (False, True):
        keras.utils.set_random_seed(0)
        gan = dcgan_digits.ConditionalGAN(run_eagerly=eager)
        histories.append(gan.fit(x[:192, ..., None] * 2 - 1, y[:192], batch_size=64, epochs=2,
                                 shuffle=False, verbose=0).history)
    for key in ("d_loss", "g_loss"):
        np.testing.assert_allclose(histories[0][key], histories[1][key], rtol=1e-3, atol=1e-5)
