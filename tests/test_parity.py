"""Parity seed: from one weights file and one batch order, Trainer.fit gives the
per-step losses of a hand-written loop on this backend, of keras.Model.fit, and
of a float64 NumPy reference shared by all three backends."""

import keras
import numpy as np
import pytest

from conftest import classic_mlp, numpy_weights
from loops import Trainer
from _native import native_losses, numpy_mlp_losses

STEPS, BATCH, LR = 20, 32, 1e-3


class StepLosses(keras.callbacks.Callback):
    """Per-step losses from the running mean that fit reports per batch."""

    def on_train_begin(self, logs=None):
        self.means = []

    def on_train_batch_end(self, batch, logs=None):
        self.means.append(float(logs["loss"]))

    @property
    def losses(self):
        k = np.arange(1, len(self.means) + 1, dtype=np.float64)
        total = np.asarray(self.means, np.float64) * k
        return np.diff(total, prepend=0.0)


@pytest.fixture(scope="module")
def setup(digits, tmp_path_factory):
    x, y = digits[0][: STEPS * BATCH], digits[1][: STEPS * BATCH]
    path = str(tmp_path_factory.mktemp("parity") / "init.weights.h5")
    model = classic_mlp()
    model.set_weights(numpy_weights(model))
    model.save_weights(path)  # the one weights file every arm starts from
    return x, y, path


def _fresh(path):
    model = classic_mlp()
    model.load_weights(path)
    return model


def _loss():
    return keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def test_trainer_matches_native_loop_model_fit_and_numpy(setup):
    x, y, path = setup
    batches = [(x[i:i + BATCH], y[i:i + BATCH]) for i in range(0, len(x), BATCH)]

    model = _fresh(path)
    rec = StepLosses()
    Trainer(model, keras.optimizers.Adam(LR), _loss()).fit(
        x, y, batch_size=BATCH, epochs=1, shuffle=False, verbose=0, callbacks=[rec])
    trainer_losses, trainer_weights = rec.losses, model.get_weights()

    native_model = _fresh(path)
    native = native_losses(native_model, batches, LR)

    keras_model = _fresh(path)
    keras_model.compile(keras.optimizers.Adam(LR), _loss())
    krec = StepLosses()
    keras_model.fit(x, y, batch_size=BATCH, epochs=1, shuffle=False, verbose=0, callbacks=[krec])

    reference, ref_weights = numpy_mlp_losses(_fresh(path).get_weights(), batches, LR)

    assert len(trainer_losses) == STEPS
    np.testing.assert_allclose(trainer_losses, native, rtol=1e-5)
    np.testing.assert_allclose(trainer_losses, krec.losses, rtol=1e-5)
    # float32 engines against float64 NumPy: the same curve on every backend.
    np.testing.assert_allclose(trainer_losses, reference, rtol=1e-4)
    for a, b in zip(trainer_weights, native_model.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
    for a, b in zip(trainer_weights, ref_weights):
        np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-5)
    # and the loss really moved: the comparison is not between constants
    assert trainer_losses[-1] < 0.7 * trainer_losses[0]
