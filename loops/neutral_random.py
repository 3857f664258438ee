"""One random stream for every backend: ``loops.set_seed(seed, neutral_random=True)``.

Keras draws random numbers with each engine's own generator (``jax.random``,
``tf.random``, ``torch.Generator``), so the same seed gives different numbers
on jax, tensorflow and torch: a model with ``Dropout`` trains differently on
each, initializers start it from different weights. With neutral random on,
every ``keras.random`` draw (``uniform``, ``normal``, ``truncated_normal``,
``randint``, ``dropout``, ``shuffle``, ``categorical``) and so every
initializer and every random layer (Dropout and its variants, GaussianNoise,
the random augmentation layers, any layer holding a ``SeedGenerator``) comes
from one counter-based generator written in integer ``keras.ops``: the same
``(seed state, position)`` gives the same bits on every engine, eager or
compiled.

It is keyed by what Keras already threads through steps and checkpoints: the
``SeedGenerator``'s state variable (``draw_seed`` advances it as Keras does),
an integer seed, or Keras's global generator for ``seed=None``. Nothing reads
a value back into Python, so a torch step that draws stays captured.

Floats are made from 24 random bits each (uniform: exact; normal and
truncated normal through ``log``/``cos``/``erfinv``, whose last bits differ
between engines by an ulp or so). ``gamma``, ``binomial``, ``beta`` and
``keras.ops.image.elastic_transform`` have no neutral form here: they warn
once and draw from the engine's generator.
"""

from __future__ import annotations

import contextlib
import threading
import warnings
from typing import Any, Callable, Iterator

import keras
import numpy as np
from keras import ops

from loops import _keras_private

_M1 = 0x7FEB352D
_M2 = 0x846CA68B - (1 << 32)  # as a signed int32
_GOLDEN = 0x9E3779B9 - (1 << 32)
# Draws with no neutral form here: they warn once and use the engine's generator.
_NOT_NEUTRAL = ("gamma", "binomial", "beta", "image.elastic_transform")


def _shift_right(x: Any, k: int) -> Any:
    """Logical right shift of int32 (``>>`` is arithmetic on negative numbers)."""
    return ops.bitwise_and(ops.right_shift(x, k), (1 << (32 - k)) - 1)


def hash32(x: Any) -> Any:
    """"lowbias32": an int32 -> int32 mixing function; int32 multiplication
    wraps modulo 2**32 on all three engines, so it is bit-identical."""
    x = ops.bitwise_xor(x, _shift_right(x, 16))
    x = ops.multiply(x, ops.convert_to_tensor(_M1, "int32"))
    x = ops.bitwise_xor(x, _shift_right(x, 15))
    x = ops.multiply(x, ops.convert_to_tensor(_M2, "int32"))
    return ops.bitwise_xor(x, _shift_right(x, 16))


def _count(shape: Any) -> Any:
    if all(isinstance(d, int) for d in shape):
        return int(np.prod(shape)) if len(shape) else 1
    n: Any = 1
    for d in shape:  # a dimension known only at run time (tf.function)
        n = n * ops.cast(d, "int32")
    return n


def _static(shape: Any) -> tuple[Any, ...]:
    return tuple(int(d) if isinstance(d, (int, np.integer)) else d for d in shape)


_position = threading.local()  # (tensorflow runs each replica's step on a thread of its own)


@contextlib.contextmanager
def replica_shard(index: Any, count: int, rows: int) -> Iterator[None]:
    """Inside a data-parallel step that sees shard ``index`` (of ``count``,
    ``rows`` rows each) of the global batch: a draw whose leading dimension is
    ``rows`` takes this shard's rows of the draw the global batch would get,
    so the run equals one device's. Other draws are the same on every replica."""
    saved = getattr(_position, "value", None)
    _position.value = (index, count, rows)
    try:
        yield
    finally:
        _position.value = saved


def _shard(shape: tuple[Any, ...]) -> tuple[Any, int] | None:
    position = getattr(_position, "value", None)
    if position is None or not shape or not isinstance(shape[0], int) or shape[0] != position[2]:
        return None
    return position[0], position[1]


def bits(shape: Any, seed: Any, streams: int = 1) -> Any:
    """int32 random bits of ``shape`` (``(streams, *shape)`` with ``streams > 1``)
    from a Keras seed (``SeedGenerator``, int or None), advancing a
    ``SeedGenerator`` once, as Keras's own draws do. Element ``j`` of stream
    ``s`` is counter ``s * total + j`` of the draw: inside a data-parallel
    shard (``replica_shard``) the counters of this shard's rows of the global one."""
    s = ops.cast(_keras_private.draw_seed(seed), "int32")
    k1 = hash32(ops.bitwise_xor(s[0], hash32(s[1])))
    k2 = hash32(ops.add(k1, _GOLDEN))
    shape = _static(shape)
    n = _count(shape)
    idx = ops.arange(n, dtype="int32")
    total: Any = n
    shard = _shard(shape)
    if shard is not None:
        idx = ops.add(idx, ops.multiply(ops.cast(shard[0], "int32"), n))
        total = n * shard[1]
    if streams > 1:
        idx = ops.add(idx[None, :], ops.multiply(ops.arange(streams, dtype="int32")[:, None], total))
    out = hash32(ops.add(hash32(ops.bitwise_xor(idx, k1)), k2))
    return ops.reshape(out, ((streams,) if streams > 1 else ()) + tuple(shape))


def _unit(shape: Any, seed: Any, streams: int = 1) -> Any:
    """float32 in [0, 1), 24 bits each: exact, so identical everywhere."""
    return ops.multiply(ops.cast(_shift_right(bits(shape, seed, streams), 8), "float32"), 1.0 / (1 << 24))


def _open_unit(shape: Any, seed: Any, streams: int = 1) -> Any:
    """float32 in (0, 1), never 0 or 1 (safe under ``log``): ``(2k + 1) / 2**24``
    for a 23-bit ``k``, exact in float32."""
    k = ops.cast(_shift_right(bits(shape, seed, streams), 9), "float32")
    return ops.multiply(ops.add(ops.multiply(k, 2.0), 1.0), 1.0 / (1 << 24))


def _dtype(dtype: Any) -> str:
    return keras.backend.standardize_dtype(dtype or keras.config.floatx())


def uniform(shape: Any, minval: Any = 0.0, maxval: Any = 1.0, dtype: Any = None, seed: Any = None) -> Any:
    u = _unit(shape, seed)
    return ops.cast(ops.add(ops.multiply(u, ops.subtract(maxval, minval)), minval), _dtype(dtype))


def _standard_normal(shape: Any, seed: Any) -> Any:
    """Box-Muller over two streams of one draw."""
    u = _open_unit(shape, seed, streams=2)
    return ops.sqrt(-2.0 * ops.log(u[0])) * ops.cos(2.0 * np.pi * u[1])


def normal(shape: Any, mean: Any = 0.0, stddev: Any = 1.0, dtype: Any = None, seed: Any = None) -> Any:
    return ops.cast(ops.add(ops.multiply(_standard_normal(shape, seed), stddev), mean), _dtype(dtype))


def truncated_normal(shape: Any, mean: Any = 0.0, stddev: Any = 1.0, dtype: Any = None, seed: Any = None) -> Any:
    """Normal truncated at two standard deviations (Keras's), by inverting the CDF."""
    lo, hi = 0.022750131948179195, 0.9772498680518208  # Phi(-2), Phi(2)
    u = ops.add(ops.multiply(_open_unit(shape, seed), hi - lo), lo)
    z = ops.multiply(ops.erfinv(ops.subtract(ops.multiply(u, 2.0), 1.0)), np.sqrt(2.0))
    z = ops.clip(z, -2.0, 2.0)
    return ops.cast(ops.add(ops.multiply(z, stddev), mean), _dtype(dtype))


def randint(shape: Any, minval: Any, maxval: Any, dtype: Any = "int32", seed: Any = None) -> Any:
    dtype = dtype or "int32"
    span = ops.cast(ops.subtract(maxval, minval), "int32")
    r = ops.mod(_shift_right(bits(shape, seed), 1), ops.maximum(span, 1))  # 31 bits, non-negative
    return ops.cast(ops.add(r, ops.cast(minval, "int32")), dtype)


def dropout(inputs: Any, rate: Any, noise_shape: Any = None, seed: Any = None) -> Any:
    if isinstance(rate, (int, float)) and rate >= 1.0:  # (as Keras: everything dropped, no NaN)
        return ops.zeros_like(inputs)
    shape = ops.shape(inputs)
    if noise_shape is not None:
        shape = tuple(shape[i] if d is None else d for i, d in enumerate(noise_shape))
    keep = ops.greater_equal(_unit(shape, seed), rate)
    scaled = ops.divide(inputs, ops.cast(1.0 - rate, inputs.dtype))
    return ops.where(ops.broadcast_to(keep, ops.shape(inputs)), scaled, ops.zeros_like(inputs))


def shuffle(x: Any, axis: int = 0, seed: Any = None) -> Any:
    """A permutation along ``axis`` by sorting random keys made unique (the
    low bits hold the index), so engines' sorts cannot break ties apart."""
    n = ops.shape(x)[axis]
    if not isinstance(n, int):
        raise ValueError("neutral_random: keras.random.shuffle needs the shuffled axis' length to be static.")
    low = max(1, int(np.ceil(np.log2(max(n, 2)))))
    key = ops.bitwise_or(ops.left_shift(_shift_right(bits((n,), seed), low + 1), low),
                         ops.arange(n, dtype="int32"))
    return ops.take(x, ops.argsort(key), axis=axis)


def categorical(logits: Any, num_samples: int, dtype: Any = "int32", seed: Any = None) -> Any:
    """Gumbel-max: ``argmax(logits + Gumbel noise)`` per sample."""
    logits = ops.convert_to_tensor(logits)
    batch, classes = ops.shape(logits)[0], ops.shape(logits)[1]
    u = _open_unit((batch, num_samples, classes), seed)
    gumbel = ops.cast(-ops.log(-ops.log(u)), logits.dtype)
    return ops.cast(ops.argmax(ops.add(ops.expand_dims(logits, 1), gumbel), axis=-1), dtype)


NEUTRAL: dict[str, Callable[..., Any]] = {
    "uniform": uniform, "normal": normal, "truncated_normal": truncated_normal, "randint": randint,
    "dropout": dropout, "shuffle": shuffle, "categorical": categorical,
}


def _warn_once(name: str, original: Callable[..., Any]) -> Callable[..., Any]:
    warned: list[bool] = []

    def draw(*args: Any, **kwargs: Any) -> Any:
        if not warned:
            warned.append(True)
            what = "keras.ops." + name if "." in name else "keras.random." + name
            warnings.warn(
                f"neutral_random is on, but {what} has no backend-neutral form: it draws "
                f"from the {keras.backend.backend()} generator, so its numbers differ between backends.",
                stacklevel=2)
        return original(*args, **kwargs)

    return draw


def enable(on: bool = True) -> None:
    """Routes every ``keras.random`` draw of this process through the neutral
    generator (``on``), or back to the engine's own (``not on``)."""
    if not on:
        _keras_private.restore_random_backend()
        return
    replacements = dict(NEUTRAL)
    for name in _NOT_NEUTRAL:
        original = _keras_private.original_random_function(name)
        if original is not None:
            replacements[name] = _warn_once(name, original)
    _keras_private.replace_random_backend(replacements)


def enabled() -> bool:
    """Whether neutral random is on in this process."""
    return _keras_private.random_backend_replaced()
