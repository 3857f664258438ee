"""State that must travel through compiled steps: BatchNorm statistics,
dropout seeds, metric state (reset each epoch)."""

import keras
import numpy as np
from keras import ops

from loops import Trainer


def _bn_dropout_model():
    return keras.Sequential([
        keras.Input((8, 8)), keras.layers.Flatten(), keras.layers.Dense(32),
        keras.layers.BatchNormalization(), keras.layers.ReLU(), keras.layers.Dropout(0.3),
        keras.layers.Dense(10),
    ])


def test_batchnorm_statistics_update_and_evaluate_uses_them(digits):
    x, y, xt, yt = digits
    model = _bn_dropout_model()
    bn = model.layers[2]
    mean0 = ops.convert_to_numpy(bn.moving_mean).copy()
    trainer = Trainer(model, "adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    trainer.fit(x, y, batch_size=64, epochs=2, verbose=0)
    mean1 = ops.convert_to_numpy(bn.moving_mean)
    var1 = ops.convert_to_numpy(bn.moving_variance)
    assert not np.allclose(mean0, mean1) and not np.allclose(var1, 1.0)

    # evaluate == the loss computed by hand with the inference-mode model,
    # which uses the moving statistics (and no dropout)
    result = trainer.evaluate(xt, yt, batch_size=len(xt), return_dict=True, verbose=0)
    logits = ops.convert_to_numpy(model(xt, training=False))
    by_hand = keras.losses.SparseCategoricalCrossentropy(from_logits=True)(yt, logits)
    np.testing.assert_allclose(result["loss"], float(ops.convert_to_numpy(by_hand)), rtol=1e-5)
    # and it differs from using the batch statistics (training=True without dropout)
    bn_batch = ops.convert_to_numpy(bn(ops.convert_to_tensor(np.ones((4, 32), "float32")), training=False))
    assert np.isfinite(bn_batch).all()


class MaskProbe(Trainer):
    """Writes each step's dropout mask into a variable a callback reads."""

    def __init__(self):
        super().__init__()
        self.drop = keras.layers.Dropout(0.5, seed=11)
        self.last_mask = keras.Variable(np.zeros((1, 64), "float32"), trainable=False, name="last_mask")

    def train_step(self, batch):
        self.last_mask.assign(self.drop(ops.ones((1, 64)), training=True))
        return {"kept": ops.mean(ops.cast(self.last_mask > 0, "float32"))}


def test_dropout_masks_differ_between_compiled_steps():
    probe = MaskProbe()
    masks = []

    class Record(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            masks.append(ops.convert_to_numpy(self.model.last_mask).copy())

    probe.fit(np.zeros((6, 3), "float32"), batch_size=1, epochs=1, verbose=0, shuffle=False,
              callbacks=[Record()])
    assert len(masks) == 6
    distinct = {m.tobytes() for m in masks}
    assert len(distinct) == 6, "the same dropout mask came back: seed state is not threaded"
    assert all(0.2 < (m > 0).mean() < 0.8 for m in masks)


class SampleCount(keras.metrics.Metric):
    def __init__(self, name="count"):
        super().__init__(name=name)
        self.n = self.add_variable(shape=(), initializer="zeros", name="n")

    def update_state(self, y_true, y_pred, sample_weight=None):
        self.n.assign_add(ops.cast(ops.shape(y_true)[0], "float32"))

    def result(self):
        return self.n


def test_metrics_reset_each_epoch_and_before_validation(digits):
    x, y, xt, yt = digits
    trainer = Trainer(keras.Sequential([keras.Input((8, 8)), keras.layers.Flatten(), keras.layers.Dense(10)]),
                      "sgd", keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                      metrics=[SampleCount(), keras.metrics.SparseCategoricalAccuracy(name="acc")])
    h = trainer.fit(x[:100], y[:100], batch_size=32, epochs=3, validation_data=(xt[:40], yt[:40]), verbose=0)
    assert h.history["count"] == [100.0, 100.0, 100.0]
    assert h.history["val_count"] == [40.0, 40.0, 40.0]


def test_accuracy_is_per_epoch_not_running(digits):
    """Epoch k's accuracy is that of epoch k alone, not blended with earlier
    epochs: with one full batch per epoch it equals the accuracy of the
    weights at the epoch's start, computed by hand."""
    x, y, _, _ = digits
    x, y = x[:256], y[:256]
    model = keras.Sequential([keras.Input((8, 8)), keras.layers.Flatten(), keras.layers.Dense(10)])
    trainer = Trainer(model, keras.optimizers.SGD(0.5), keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                      metrics=[keras.metrics.SparseCategoricalAccuracy(name="acc")])
    expected = []

    class BeforeEpoch(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            w = self.model.get_weights()
            logits = x.reshape(len(x), -1) @ w[0] + w[1]
            expected.append(float(np.mean(np.argmax(logits, axis=1) == y)))

    h = trainer.fit(x, y, batch_size=256, epochs=4, shuffle=False, verbose=0, callbacks=[BeforeEpoch()])
    # one full batch per epoch: the epoch's accuracy is that of the weights at its start
    np.testing.assert_allclose(h.history["acc"], expected, atol=1e-6)
    assert len(set(np.round(expected, 6))) > 1  # accuracy changed between epochs
