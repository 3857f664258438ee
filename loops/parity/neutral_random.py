"""Random numbers that are bit-identical on every backend.

Keras's ``keras.random`` draws different numbers on jax, tensorflow and torch
for the same seed, so a model with dropout cannot be compared across backends.
Here a counter-based generator is written in integer ``keras.ops`` (a 32-bit
integer hash, "lowbias32", shared with ``loops.neutral_random``): integer
arithmetic rounds nowhere, so the same ``(seed, counter)`` gives the same
numbers on every engine, eager or compiled. For Keras's own random layers and
``keras.random`` draws, ``loops.set_seed(seed, neutral_random=True)``.
"""

from __future__ import annotations

from typing import Any

import keras
import numpy as np
from keras import ops

from loops.neutral_random import _shift_right
from loops.neutral_random import hash32 as _hash32

_STREAM = 1000003  # counter stride: distinct draws of one layer do not overlap


def neutral_uniform(shape: tuple[Any, ...], seed: int, counter: Any) -> Any:
    """Uniform floats in [0, 1), identical on every backend.

    Args:
        shape: static output shape.
        seed: a Python int choosing the stream.
        counter: an int32 scalar (tensor or variable value); use a new value
            per draw, e.g. a step counter.

    Returns:
        A float32 tensor of ``shape``.

    Example:
        >>> u = neutral_uniform((32, 10), seed=0, counter=step)
    """
    if all(isinstance(d, int) for d in shape):
        n: Any = int(np.prod(shape))
    else:  # a dimension known only at run time (tf.function with reduce_retracing)
        n = 1
        for d in shape:
            n = n * ops.cast(d, "int32")
    idx = ops.arange(n, dtype="int32")
    start = ops.multiply(ops.cast(counter, "int32"), _STREAM)
    x = _hash32(ops.add(_hash32(ops.add(idx, start)), seed))
    u = ops.multiply(ops.cast(_shift_right(x, 8), "float32"), 1.0 / (1 << 24))  # 24 random bits
    return ops.reshape(u, shape)


class ParityDropout(keras.layers.Layer):
    """``keras.layers.Dropout`` whose mask is the same on every backend.

    The mask comes from ``neutral_uniform``, keyed by ``seed`` and a call
    counter held in a non-trainable int32 variable (so the Trainer threads it
    through compiled steps like any other state).

    Example:
        >>> keras.Sequential([keras.Input((784,)), keras.layers.Dense(64, activation="relu"),
        ...                   ParityDropout(0.5, seed=1), keras.layers.Dense(10)])
    """

    def __init__(self, rate: float, seed: int = 0, **kwargs: Any):
        super().__init__(**kwargs)
        if not 0.0 <= rate < 1.0:
            raise ValueError(f"ParityDropout rate must be in [0, 1), got {rate!r}.")
        self.rate = float(rate)
        self.seed = int(seed)
        self.counter = self.add_weight(shape=(), initializer="zeros", dtype="int32",
                                       trainable=False, name="counter")

    def call(self, inputs: Any, training: bool = False) -> Any:
        if not training or self.rate == 0.0:
            return inputs
        counter = self.counter.value
        u = neutral_uniform(tuple(ops.shape(inputs)), self.seed, counter)
        # Assign after drawing: on torch `counter` aliases the variable's storage.
        self.counter.assign(counter + 1)
        keep = ops.cast(u >= self.rate, inputs.dtype)
        return inputs * keep / (1.0 - self.rate)

    def compute_output_shape(self, input_shape: Any) -> Any:
        return input_shape

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "rate": self.rate, "seed": self.seed}
