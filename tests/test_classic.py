"""The seeds' classic recipe, end to end through the public API."""

import keras
import numpy as np

from conftest import classic_mlp
from loops import Trainer


def test_classic_recipe_reaches_95_percent_on_digits(digits):
    x, y, xt, yt = digits
    trainer = Trainer(classic_mlp(), optimizer=keras.optimizers.Adam(1e-3),
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                      metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")])
    history = trainer.fit(x, y, batch_size=128, epochs=40, validation_split=0.15, verbose=0,
                          callbacks=[keras.callbacks.EarlyStopping(monitor="val_loss", patience=5,
                                                                   restore_best_weights=True)])
    assert isinstance(history, keras.callbacks.History)
    assert set(history.history) == {"loss", "accuracy", "val_loss", "val_accuracy"}
    assert history.history["loss"][-1] < history.history["loss"][0] / 5

    result = trainer.evaluate(xt, yt, return_dict=True, verbose=0)
    assert set(result) == {"loss", "accuracy"}
    assert result["accuracy"] >= 0.95, result

    probs = trainer.predict(xt, batch_size=100, verbose=0)
    assert isinstance(probs, np.ndarray) and probs.shape == (len(xt), 10)
    # predict and evaluate agree with each other
    assert abs(np.mean(np.argmax(probs, axis=1) == yt) - result["accuracy"]) < 1e-6
    # evaluate's list form follows metrics_names
    as_list = trainer.evaluate(xt, yt, verbose=0)
    assert trainer.metrics_names == ["loss", "compile_metrics"]  # as Keras names them
    np.testing.assert_allclose(as_list, [result["loss"], result["accuracy"]], rtol=1e-6)


def test_string_aliases_as_in_compile(digits):
    x, y, xt, yt = digits
    trainer = Trainer(classic_mlp(), optimizer="adam",
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                      metrics=["accuracy"])
    h = trainer.fit(x, y, batch_size=64, epochs=3, verbose=0)
    assert "accuracy" in h.history and h.history["accuracy"][-1] > 0.8


def test_verbose_1_and_2_print_keras_progress(digits, capsys):
    x, y, _, _ = digits
    trainer = Trainer(classic_mlp(), "adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    trainer.fit(x[:256], y[:256], batch_size=128, epochs=2, verbose=2)
    out = capsys.readouterr().out
    assert out.count("Epoch 1/2") == 1 and out.count("Epoch 2/2") == 1
    assert out.count("2/2 - ") == 2  # one line per epoch with verbose=2
    trainer.fit(x[:256], y[:256], batch_size=128, epochs=1, verbose=1)
    assert "2/2" in capsys.readouterr().out
