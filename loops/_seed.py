"""``loops.set_seed``: one call seeds Python, NumPy and the engine, and
optionally switches the engine to deterministic ops."""

from __future__ import annotations

import keras

from loops import backends


def set_seed(seed: int, deterministic: bool = False, neutral_random: bool | None = None) -> None:
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

    With ``neutral_random=True`` every ``keras.random`` draw of the process
    (initializers, Dropout and the other random layers, ``keras.random.*``
    with a ``SeedGenerator`` or an int seed in a custom step) comes from one
    counter-based generator that gives the same numbers on jax, tensorflow
    and torch (``loops/neutral_random.py``): a model built after this call
    starts from the same weights and trains the same on every backend.
    ``False`` turns it off again; ``None`` (default) leaves it as it is.

    Array shuffling in ``fit`` follows ``Trainer(seed=...)``, or NumPy's global
    generator (seeded here) when that is ``None``.

    Example:
        >>> loops.set_seed(0, deterministic=True)    # before building models
        >>> loops.set_seed(0, neutral_random=True)   # the same random numbers on every backend
    """
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**32:
        raise ValueError(f"set_seed needs an integer seed in [0, 2**32), got {seed!r}. For example set_seed(0).")
    if not isinstance(deterministic, bool):
        raise TypeError(f"set_seed(deterministic=...) must be True or False, got {deterministic!r}.")
    if neutral_random is not None and not isinstance(neutral_random, bool):
        raise TypeError(f"set_seed(neutral_random=...) must be True, False or None, got {neutral_random!r}.")
    keras.utils.set_random_seed(seed)  # random, numpy, tf.random, torch.manual_seed, Keras's SeedGenerator
    from loops._keras_private import reset_global_seed_generator

    reset_global_seed_generator()  # (Keras < 3.13's set_random_seed keeps the old SeedGenerator)
    backends.get().set_deterministic(deterministic)
    if neutral_random is not None:
        from loops import neutral_random as _neutral

        _neutral.enable(neutral_random)
