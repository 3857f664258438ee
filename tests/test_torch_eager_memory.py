"""torch's eager steps free their cyclic garbage (``executors.collect_cycles``):
Keras's torch tree utilities leave reference cycles that hold a step's
activations until Python's cyclic collector runs, several steps later; an
eager step long enough for it to matter collects them when it ends (the
realistic ResNet's eager peak RSS: 253 -> 174 MB, ``model.fit`` 216)."""

import gc
import weakref

import keras
import numpy as np
import pytest

from loops import Trainer

BACKEND = keras.backend.backend()
pytestmark = pytest.mark.skipif(BACKEND != "torch", reason="torch's eager steps")


class Cyclic(keras.layers.Layer):
    """Leaves its output in a reference cycle, as Keras's tree utilities do."""

    def __init__(self):
        super().__init__()
        self.refs = []

    def call(self, x):
        y = x * 2.0
        holder = [y]
        holder.append(holder)  # garbage only Python's cyclic collector frees
        self.refs.append(weakref.ref(y))
        return y


@pytest.mark.parametrize("run_eagerly", [False, True])
def test_an_eager_step_frees_the_activations_its_cycles_hold(monkeypatch, run_eagerly):
    from loops.backends.torch import executors

    x = np.random.default_rng(0).normal(size=(32, 4)).astype("float32")
    y = x.sum(axis=1, keepdims=True)

    def alive_after_each_step(threshold):
        monkeypatch.setattr(executors, "CYCLES_AFTER_S", threshold)
        layer = Cyclic()
        model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(8), layer, keras.layers.Dense(1)])
        seen = []

        class Check(keras.callbacks.Callback):
            def on_train_batch_end(self, batch, logs=None):
                seen.append(sum(r() is not None for r in layer.refs))

        gc.disable()  # the automatic collector would free them at a time of its own
        try:
            Trainer(model, "sgd", "mse", run_eagerly=run_eagerly).fit(
                x, y, batch_size=8, epochs=1, shuffle=False, verbose=0, callbacks=[Check()])
        finally:
            gc.enable()
        return seen

    assert alive_after_each_step(0.0) == [0, 0, 0, 0]  # (a 4-step fit stays eager: nothing captured)
    assert alive_after_each_step(float("inf"))[-1] >= 4  # never collected: every step's activation held
