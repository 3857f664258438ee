"""Every callback hook fires in the order Keras's own model.fit fires them."""

import keras
import numpy as np

from conftest import classic_mlp
from loops import Trainer

HOOKS = ["on_train_begin", "on_train_end", "on_epoch_begin", "on_epoch_end",
         "on_train_batch_begin", "on_train_batch_end", "on_test_begin", "on_test_end",
         "on_test_batch_begin", "on_test_batch_end", "on_predict_begin", "on_predict_end",
         "on_predict_batch_begin", "on_predict_batch_end"]


class Recorder(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.calls = []
        for hook in HOOKS:
            setattr(self, hook, self._make(hook))

    def _make(self, hook):
        def record(*args, logs=None, **kwargs):
            self.calls.append((hook,) + tuple(a for a in args if isinstance(a, int)))
        return record


def _data(n):
    rng = np.random.default_rng(0)
    return rng.random((n, 8, 8), dtype=np.float32), rng.integers(0, 10, n).astype("int32")


def _run(fit_owner, evaluate_owner):
    x, y = _data(96)
    xv, yv = _data(40)
    rec = Recorder()
    fit_owner.fit(x, y, batch_size=32, epochs=3, validation_data=(xv, yv), validation_freq=2,
                  verbose=0, callbacks=[rec])
    evaluate_owner.evaluate(xv, yv, batch_size=32, verbose=0, callbacks=[rec])
    evaluate_owner.predict(xv, batch_size=16, verbose=0, callbacks=[rec])
    return rec.calls


def test_hook_order_equals_keras_model_fit():
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    model = classic_mlp()
    trainer = Trainer(model, "adam", loss, metrics=["accuracy"])
    ours = _run(trainer, trainer)
    reference = classic_mlp()
    reference.compile("adam", loss, metrics=["accuracy"])
    theirs = _run(reference, reference)
    assert ours == theirs
    assert ("on_test_begin",) in ours and ours.count(("on_epoch_end", 1)) == 1
    assert ours[0] == ("on_train_begin",) and ours[-1] == ("on_predict_end",)


def test_stop_training_is_honoured_after_the_batch():
    class StopAt(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            if batch == 1:
                self.model.stop_training = True

    rec = Recorder()
    x, y = _data(96)
    trainer = Trainer(classic_mlp(), "adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    h = trainer.fit(x, y, batch_size=32, epochs=5, verbose=0, callbacks=[StopAt(), rec])
    assert [c for c in rec.calls if c[0] == "on_train_batch_end"] == [("on_train_batch_end", 0),
                                                                      ("on_train_batch_end", 1)]
    assert len(h.history["loss"]) == 1


def test_early_stopping_restores_best_weights():
    x, y = _data(96)
    xv, yv = _data(40)
    trainer = Trainer(classic_mlp(), keras.optimizers.Adam(0.05),
                      keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    snapshots = {}

    class Snap(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            snapshots[epoch] = self.model.get_weights()

    stop = keras.callbacks.EarlyStopping(monitor="val_loss", patience=2, restore_best_weights=True)
    h = trainer.fit(x, y, batch_size=32, epochs=30, validation_data=(xv, yv), verbose=0,
                    callbacks=[Snap(), stop])
    best = int(np.argmin(h.history["val_loss"]))
    assert len(h.history["val_loss"]) < 30  # random labels: validation loss rises, it stops
    for a, b in zip(trainer.get_weights(), snapshots[best]):
        np.testing.assert_array_equal(a, b)


def test_initial_epoch_and_validation_freq():
    x, y = _data(64)
    trainer = Trainer(classic_mlp(), "adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    epochs = []

    class Epochs(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            epochs.append((epoch, "val_loss" in logs))

    trainer.fit(x, y, epochs=5, initial_epoch=2, validation_data=(x, y), validation_freq=[3, 5],
                verbose=0, callbacks=[Epochs()])
    assert epochs == [(2, True), (3, False), (4, True)]


def test_batch_hooks_are_skipped_when_no_callback_uses_them(monkeypatch):
    """Keras turns logs into Python floats at every batch hook (a host sync per
    step); the loop calls the hooks only when some callback overrides them."""
    calls = []
    original = keras.callbacks.CallbackList.on_train_batch_end

    def counting(self, batch, logs=None):
        calls.append(batch)
        return original(self, batch, logs)

    monkeypatch.setattr(keras.callbacks.CallbackList, "on_train_batch_end", counting)
    x, y = _data(96)
    trainer = Trainer(classic_mlp(), "adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    h = trainer.fit(x, y, batch_size=32, epochs=2, verbose=0,
                    callbacks=[keras.callbacks.LambdaCallback(on_epoch_end=lambda e, logs: None)])
    assert calls == [] and len(h.history["loss"]) == 2
    trainer.fit(x, y, batch_size=32, epochs=1, verbose=0, callbacks=[Recorder()])
    assert calls == [0, 1, 2]
