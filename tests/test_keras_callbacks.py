"""Keras's own callbacks, given the Trainer as ``self.model``, on every backend:
each one acts (numbers checked), not merely runs."""

import csv
import glob
import os

import keras
import numpy as np
import pytest

from conftest import KERAS_VERSION, classic_mlp, numpy_weights, requires
from loops import OptimizerGroup, Trainer

SCE = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def _trainer(lr=0.05, optimizer=None, **kwargs):
    model = classic_mlp()
    model.set_weights(numpy_weights(model))
    return Trainer(model, optimizer or keras.optimizers.SGD(lr), SCE, metrics=["accuracy"], seed=0, **kwargs)


class Snapshots(keras.callbacks.Callback):
    """The weights at each epoch end (what restore_best_weights must bring back)."""

    def __init__(self):
        super().__init__()
        self.weights = {}

    def on_epoch_end(self, epoch, logs=None):
        self.weights[epoch] = self.model.get_weights()


def _event_tensors(logdir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.util import tensor_util

    acc = EventAccumulator(logdir, size_guidance={"tensors": 0})
    acc.Reload()
    return {tag: [(e.step, tensor_util.make_ndarray(e.tensor_proto)) for e in acc.Tensors(tag)]
            for tag in acc.Tags()["tensors"]}


@requires("tensorflow")  # keras.callbacks.TensorBoard writes through tf.summary
def test_seed_recipe_early_stop_checkpoint_reduce_lr_tensorboard(digits, tmp_path):
    x, y, xt, yt = digits
    x, y = x[:120], y[:120]  # a small training set: it overfits, val_loss turns up
    trainer = _trainer(lr=0.3, optimizer=keras.optimizers.SGD(0.3, momentum=0.9))
    best_path = str(tmp_path / "best.keras")
    snaps = Snapshots()
    callbacks = [
        snaps,
        keras.callbacks.EarlyStopping(monitor="val_loss", patience=4, restore_best_weights=True),
        keras.callbacks.ModelCheckpoint(best_path, monitor="val_loss", save_best_only=True),
        keras.callbacks.ReduceLROnPlateau(monitor="val_loss", factor=0.5, patience=1),
        keras.callbacks.TensorBoard(str(tmp_path / "tb"), histogram_freq=1, update_freq="batch"),
    ]
    h = trainer.fit(x, y, batch_size=32, epochs=40, validation_data=(xt, yt), verbose=0, callbacks=callbacks)
    epochs_run = len(h.epoch)
    assert epochs_run < 40, "EarlyStopping should have fired"
    best = int(np.argmin(h.history["val_loss"]))
    for a, b in zip(trainer.get_weights(), snaps.weights[best]):
        np.testing.assert_array_equal(a, b)  # best weights restored
    lrs = h.history["learning_rate"]
    assert lrs[0] == pytest.approx(0.3) and min(lrs) <= 0.15 + 1e-7  # the LR cut is in History
    # The checkpoint is a plain Keras file holding the best epoch's weights.
    plain = keras.models.load_model(best_path)
    for a, b in zip(plain.get_weights(), snaps.weights[best]):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(plain.predict(xt[:8], verbose=0), trainer.predict(xt[:8], verbose=0), atol=1e-5)
    # TensorBoard wrote event files TensorBoard reads: per-epoch and per-batch
    # scalars, the learning rate, and weight histograms.
    train = _event_tensors(str(tmp_path / "tb" / "train"))
    val = _event_tensors(str(tmp_path / "tb" / "validation"))
    np.testing.assert_allclose([float(v) for _, v in train["epoch_loss"]], h.history["loss"], rtol=1e-6)
    np.testing.assert_allclose([float(v) for _, v in val["epoch_loss"]], h.history["val_loss"], rtol=1e-6)
    # (TensorBoard, last in the list, logs the rate after ReduceLROnPlateau's cut at that epoch end)
    np.testing.assert_allclose([float(v) for _, v in train["epoch_learning_rate"]][:-1], lrs[1:], rtol=1e-6)
    assert len(train["batch_loss"]) == epochs_run * 4  # 120 samples / 32 = 4 batches per epoch
    # One kernel histogram per layer per epoch (Keras 3.10 tags them all "kernel/histogram", later
    # Keras by the layer's path: count events, not tags).
    hist = [tag for tag in train if tag.endswith("kernel/histogram")]
    assert sum(len(train[t]) for t in hist) == 3 * epochs_run, sorted(train)


def test_csv_logger_lambda_scheduler_and_progbar(tmp_path, capsys):
    x, y = np.random.default_rng(0).random((96, 8, 8), dtype=np.float32), np.arange(96) % 10
    seen = []
    trainer = _trainer(lr=0.1)
    h = trainer.fit(x, y, batch_size=32, epochs=3, verbose=1, callbacks=[
        keras.callbacks.CSVLogger(str(tmp_path / "log.csv")),
        keras.callbacks.LambdaCallback(on_epoch_end=lambda epoch, logs: seen.append((epoch, logs["loss"]))),
        keras.callbacks.LearningRateScheduler(lambda epoch, lr: 0.1 * 0.5 ** epoch),
    ])
    with open(tmp_path / "log.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["epoch"]) for r in rows] == [0, 1, 2]
    np.testing.assert_allclose([float(r["loss"]) for r in rows], h.history["loss"], rtol=1e-6)
    assert [e for e, _ in seen] == [0, 1, 2] and [v for _, v in seen] == h.history["loss"]
    np.testing.assert_allclose(h.history["learning_rate"], [0.1, 0.05, 0.025], rtol=1e-6)
    assert float(keras.ops.convert_to_numpy(trainer.optimizer.learning_rate)) == pytest.approx(0.025)
    out = capsys.readouterr().out
    assert "Epoch 3/3" in out and "3/3" in out and "loss:" in out  # Keras's progress bar


def test_model_checkpoint_every_n_batches_weights_only_mode_max(tmp_path):
    x, y = np.random.default_rng(0).random((96, 8, 8), dtype=np.float32), np.arange(96) % 10
    trainer = _trainer()
    pattern = str(tmp_path / "w-{epoch:02d}-{batch:02d}.weights.h5")
    trainer.fit(x, y, batch_size=16, epochs=2, verbose=0, callbacks=[
        keras.callbacks.ModelCheckpoint(pattern, save_weights_only=True, save_freq=4, monitor="accuracy", mode="max")])
    files = sorted(os.path.basename(p) for p in glob.glob(str(tmp_path / "*.weights.h5")))
    assert len(files) == 3, files  # 12 batches, every 4th
    last = classic_mlp()
    last.load_weights(str(tmp_path / files[-1]))  # loads in plain Keras
    for a, b in zip(last.get_weights(), trainer.get_weights()):
        np.testing.assert_array_equal(a, b)  # the last one is the final step's weights


def test_terminate_on_nan_stops_at_the_bad_batch():
    x, y = np.random.default_rng(0).random((96, 8, 8), dtype=np.float32), np.arange(96) % 10
    # A NaN sample weight in batch 2 (batch size 32) makes that loss NaN. (A NaN
    # *input* would not do on every engine: tensorflow's graph optimizer fuses
    # matmul+bias+relu, and that kernel's relu maps NaN to 0.)
    sw = np.ones(96, "float32")
    sw[70] = np.nan
    trainer = _trainer()
    batches = []
    h = trainer.fit(x, y, sample_weight=sw, batch_size=32, epochs=3, shuffle=False, verbose=0, callbacks=[
        keras.callbacks.LambdaCallback(on_train_batch_end=lambda b, logs: batches.append(b)),
        keras.callbacks.TerminateOnNaN()])
    assert batches == [0, 1, 2] and trainer.stop_training
    assert len(h.epoch) <= 1


def test_early_stopping_start_from_epoch():
    x, y = np.random.default_rng(0).random((64, 8, 8), dtype=np.float32), np.arange(64) % 10
    stopper = keras.callbacks.EarlyStopping(monitor="loss", patience=0, min_delta=100.0, start_from_epoch=3)
    h = _trainer().fit(x, y, batch_size=32, epochs=10, verbose=0, callbacks=[stopper])
    assert len(h.epoch) == 5  # epochs 0-2 are grace; 3 sets the baseline; 4 fails min_delta and stops


def test_backup_and_restore_resumes_at_the_failed_epoch(tmp_path):
    x, y = np.random.default_rng(0).random((64, 8, 8), dtype=np.float32), np.arange(64) % 10

    class FailAt(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            if epoch == 2:
                raise RuntimeError("preempted")

    backup = str(tmp_path / "backup")
    trainer = _trainer()
    with pytest.raises(RuntimeError, match="preempted"):
        trainer.fit(x, y, batch_size=32, epochs=4, verbose=0,
                    callbacks=[keras.callbacks.BackupAndRestore(backup), FailAt()])
    after_two = trainer.get_weights()
    fresh = _trainer()
    started = []
    h = fresh.fit(x, y, batch_size=32, epochs=4, verbose=0, callbacks=[
        keras.callbacks.BackupAndRestore(backup),
        keras.callbacks.LambdaCallback(on_epoch_begin=lambda e, logs: started.append(
            (e, [w.copy() for w in fresh.get_weights()])))])
    assert [e for e, _ in started] == [2, 3] and h.epoch == [2, 3]
    for a, b in zip(started[0][1], after_two):
        np.testing.assert_array_equal(a, b)  # it restarted from the backed-up weights


def test_swap_ema_weights_evaluates_on_the_ema_weights():
    x, y = np.random.default_rng(0).random((64, 8, 8), dtype=np.float32), np.arange(64) % 10
    xv, yv = x[:32], y[:32]
    trainer = _trainer(optimizer=keras.optimizers.SGD(0.1, use_ema=True, ema_momentum=0.9, ema_overwrite_frequency=None))

    class Probe(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.raw, self.tested = [], []

        def on_train_batch_end(self, batch, logs=None):
            self.raw = self.model.get_weights()

        def on_test_begin(self, logs=None):
            self.tested.append(self.model.get_weights())

    probe = Probe()
    h = trainer.fit(x, y, batch_size=32, epochs=2, validation_data=(xv, yv), verbose=0,
                    callbacks=[keras.callbacks.SwapEMAWeights(swap_on_epoch=True), probe])
    assert any(not np.array_equal(a, b) for a, b in zip(probe.tested[-1], probe.raw))  # EMA != raw
    reference = classic_mlp()
    reference.set_weights(probe.tested[-1])
    reference.compile(loss=SCE)
    val = reference.evaluate(xv, yv, verbose=0)
    assert h.history["val_loss"][-1] == pytest.approx(val, rel=1e-5)  # validation ran on the EMA weights


class TwoModels(Trainer):
    """Two models with two optimizers (as a GAN has) and no ``optimizer``."""

    def __init__(self):
        super().__init__()
        self.a = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
        self.b = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
        self.opt_a = keras.optimizers.SGD(0.1, name="opt_a")
        self.opt_b = keras.optimizers.SGD(0.02, name="opt_b")
        self.loss_tracker = keras.metrics.Mean(name="loss")

    def train_step(self, batch):
        x, y = batch
        total = 0.0
        for model, opt in ((self.a, self.opt_a), (self.b, self.opt_b)):
            loss, grads = self.value_and_grad(
                lambda m=model: keras.ops.mean((m(x) - y) ** 2), model.trainable_variables)
            opt.apply(grads, model.trainable_variables)
            total = total + loss
        self.loss_tracker.update_state(total)
        return {"loss": self.loss_tracker.result()}


@pytest.mark.skipif(KERAS_VERSION < (3, 15), reason="Keras's LR callbacks act on each of model.optimizer.optimizers from 3.15")
def test_lr_callbacks_adjust_every_optimizer_of_a_multi_optimizer_trainer():
    x = np.random.default_rng(0).random((32, 4), dtype=np.float32)
    y = x.sum(axis=1, keepdims=True)
    trainer = TwoModels()
    assert isinstance(trainer.optimizer, OptimizerGroup)
    assert [o.name for o in trainer.optimizer.optimizers] == ["opt_a", "opt_b"]
    h = trainer.fit(x, y, batch_size=8, epochs=3, verbose=0, callbacks=[
        keras.callbacks.LearningRateScheduler(lambda epoch, lr: lr * 0.5 if epoch else lr),
        keras.callbacks.ReduceLROnPlateau(monitor="loss", factor=0.1, patience=0, min_delta=1e9)])
    # The scheduler halves each rate from epoch 1 on; the plateau (never an
    # improvement after epoch 0) cuts each by 10 at the end of epoch 1.
    np.testing.assert_allclose(h.history["learning_rate_opt_a"], [0.1, 0.05, 0.0025], rtol=1e-5)
    np.testing.assert_allclose(h.history["learning_rate_opt_b"], [0.02, 0.01, 0.0005], rtol=1e-5)
    with pytest.raises(AttributeError, match="2 optimizers"):
        trainer.optimizer.learning_rate


@pytest.mark.skipif(KERAS_VERSION >= (3, 15), reason="Keras 3.15+ adjusts each optimizer")
def test_lr_callbacks_on_several_optimizers_are_refused_clearly_before_keras_3_15():
    x = np.random.default_rng(0).random((32, 4), dtype=np.float32)
    with pytest.raises(ValueError, match="from Keras 3.15 on"):
        TwoModels().fit(x, x.sum(axis=1, keepdims=True), batch_size=8, verbose=0,
                        callbacks=[keras.callbacks.LearningRateScheduler(lambda epoch, lr: lr)])


def test_callbacks_see_the_current_step_state():
    """jax keeps state on device during an epoch: a callback that reads the
    model gets it written back first (so it sees every step), on every backend."""
    x, y = np.random.default_rng(0).random((64, 8, 8), dtype=np.float32), np.arange(64) % 10
    trainer = _trainer()
    seen = []

    class Read(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            seen.append((int(keras.ops.convert_to_numpy(self.model.optimizer.iterations)),
                         self.model.get_weights()[-2].tobytes()))

    trainer.fit(x, y, batch_size=16, epochs=2, verbose=0, callbacks=[Read()])
    assert [i for i, _ in seen] == list(range(1, 9))
    assert len({w for _, w in seen}) == 8  # new weights after every step
