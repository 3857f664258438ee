"""Factories for the parity tool's tests (imported by each backend's process)."""

import keras
import numpy as np

from loops import Trainer
from loops.parity import ParityCase, ParityDropout

PLANT_ON = "torch"  # the backend that gets a different weight in `planted_mlp`


def _digits(n, image=False):
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.images[:n] / 16.0).astype("float32")
    return (x[..., None] if image else x), d.target[:n].astype("int32")


def _batches(x, y, batch_size):
    return [(x[i:i + batch_size], y[i:i + batch_size]) for i in range(0, len(x), batch_size)]


def _trainer(model):
    return Trainer(model, optimizer=keras.optimizers.Adam(1e-3),
                   loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                   metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")])


def classic_mlp():
    """The README's recipe, one epoch of 1536 digits (12 steps of 128)."""
    model = keras.Sequential(name="mlp", layers=[keras.Input((8, 8)), keras.layers.Flatten(),
                              keras.layers.Dense(256, activation="relu", name="hidden1"),
                              keras.layers.Dense(128, activation="relu", name="hidden2"),
                              keras.layers.Dense(10, name="logits")])
    return ParityCase(_trainer(model), _batches(*_digits(1536), 128))


def cnn_bn_dropout():
    """Conv + BatchNorm + ParityDropout (identical masks on every backend)."""
    model = keras.Sequential(name="cnn", layers=[keras.Input((8, 8, 1)),
                              keras.layers.Conv2D(8, 3, name="conv"),
                              keras.layers.BatchNormalization(name="bn"),
                              keras.layers.ReLU(),
                              keras.layers.Flatten(),
                              ParityDropout(0.25, seed=3, name="drop"),
                              keras.layers.Dense(10, name="logits")])
    return ParityCase(_trainer(model), _batches(*_digits(1536, image=True), 128))


def neutral_dropout_mlp():
    """Keras's own Dropout and GaussianNoise after set_seed(neutral_random=True):
    the same masks and noise on every backend, with no ParityDropout."""
    import loops

    loops.set_seed(0, neutral_random=True)
    model = keras.Sequential(name="mlp", layers=[keras.Input((8, 8)), keras.layers.Flatten(),
                              keras.layers.GaussianNoise(0.05, name="noise"),
                              keras.layers.Dense(128, activation="relu", name="hidden"),
                              keras.layers.Dropout(0.3, name="drop"),
                              keras.layers.Dense(10, name="logits")])
    return ParityCase(_trainer(model), _batches(*_digits(1536), 128))


def _plant(trainer, always=False):
    if always or keras.backend.backend() == PLANT_ON:
        layer = trainer.model.get_layer("hidden2")
        kernel = np.array(keras.ops.convert_to_numpy(layer.kernel))
        kernel *= 1.05  # every unit of the layer, so the loss moves too
        layer.kernel.assign(kernel)


def planted_mlp():
    """The classic MLP with one weight of layer 'hidden2' changed on PLANT_ON."""
    case = classic_mlp()
    case.prepare = _plant
    return case


def planted_here():
    """``planted_mlp`` that plants on whatever backend runs it (in-process tests)."""
    case = classic_mlp()
    case.prepare = lambda trainer: _plant(trainer, always=True)
    return case
