"""``loops.set_seed``: one call seeds Python, NumPy and the engine, and
optionally switches the engine to deterministic ops."""

from __future__ import annotations

import keras

from loops import backends


def set_seed(seed: int, deterministic: bool = False) -> None:
    """Seeds Python's ``random``, NumPy, Keras (its global ``SeedGenerator``, so
    initializers and ``keras.random`` without a seed) and the engine.

    With ``deterministic=True`` it also turns on the engine's deterministic
    ops, so two runs of the same program on the same machine give bitwise-equal
    weights: ``tf.config.experimental.enable_op_determinism()`` on tensorflow;
    ``torch.use_deterministic_algorithms(True)`` and cuDNN's deterministic mode
    on torch (and ``CUBLAS_WORKSPACE_CONFIG`` for CUDA); on jax, XLA on CPU is
    deterministic already and ``--xla_gpu_deterministic_ops=true`` is added to
    ``XLA_FLAGS`` for GPUs, read when jax starts, so call this first.
    ``deterministic=False`` turns those modes off again. Deterministic ops can
    be slower, and torch raises for an op that has no deterministic version.

    Array shuffling in ``fit`` follows ``Trainer(seed=...)``, or NumPy's global
    generator (seeded here) when that is ``None``.

    Example:
        >>> loops.set_seed(0, deterministic=True)    # before building models
    """
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**32:
        raise ValueError(f"set_seed needs an integer seed in [0, 2**32), got {seed!r}. For example set_seed(0).")
    if not isinstance(deterministic, bool):
        raise TypeError(f"set_seed(deterministic=...) must be True or False, got {deterministic!r}.")
    keras.utils.set_random_seed(seed)  # random, numpy, tf.random, torch.manual_seed, Keras's SeedGenerator
    from loops._keras_private import reset_global_seed_generator

    reset_global_seed_generator()  # (Keras < 3.13's set_random_seed keeps the old SeedGenerator)
    backends.get().set_deterministic(deterministic)
