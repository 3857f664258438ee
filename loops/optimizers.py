"""Optimizers for the Trainer: Keras's, or an engine's own behind a Keras adapter,
and the Trainer-level options (gradient accumulation, clipping, loss scaling)
that configure them.

Native optimizers (their adapters live in ``backends/``; state is held in
``keras.Variable`` objects, so ``jax.jit`` threads it and checkpoints of
``optimizer.variables`` hold it):

- jax: an ``optax.GradientTransformation`` (``Trainer(model, optax.adam(1e-3), ...)``
  or ``from_optax(optax.adam(1e-3))`` for a custom step);
- torch: a ``torch.optim.Optimizer`` class (``from_torch(torch.optim.Adam, lr=1e-3)``,
  or ``Trainer(model, functools.partial(torch.optim.Adam, lr=1e-3), ...)``).

Example:
    >>> import optax, loops
    >>> trainer = loops.Trainer(model, optax.adam(1e-3), loss)      # KERAS_BACKEND=jax
    >>> opt = loops.optimizers.from_torch(torch.optim.AdamW, lr=1e-3, weight_decay=1e-2)
"""

from __future__ import annotations

import functools
import math
from typing import Any, Sequence, cast

import keras
from keras import ops

from loops import backends
from loops._ops import global_norm

__all__ = ["OptimizerGroup", "from_optax", "from_torch", "get"]

#: The Trainer arguments that configure its optimizers (names as Keras's).
OPTION_NAMES = ("gradient_accumulation_steps", "clipnorm", "clipvalue", "global_clipnorm")
_CLIP_NAMES = ("clipnorm", "clipvalue", "global_clipnorm")


def _native_kind(obj: Any) -> str | None:
    """Which engine's optimizer ``obj`` looks like, without importing any engine."""
    target = obj.func if isinstance(obj, functools.partial) else obj
    classes = target.__mro__ if isinstance(target, type) else type(target).__mro__
    if any(c.__module__.startswith("torch.optim") for c in classes):
        return "torch"
    if isinstance(obj, tuple) and callable(getattr(obj, "init", None)) and callable(getattr(obj, "update", None)):
        return "optax"
    return None


_WRONG_ENGINE = {
    "optax": ("an optax.GradientTransformation", "jax"),
    "torch": ("a torch.optim optimizer", "torch"),
}


def _wrong_engine(kind: str) -> TypeError:
    what, needs = _WRONG_ENGINE[kind]
    return TypeError(
        f"{what} runs only with KERAS_BACKEND={needs}; this process uses {keras.backend.backend()!r}. "
        "Use a Keras optimizer (keras.optimizers.Adam(1e-3)), which runs on every backend, or set "
        f"KERAS_BACKEND={needs} before importing keras.")


def _wrap_native(kind: str, native: Any, options: dict[str, Any], shown: str) -> keras.optimizers.Optimizer:
    """``from_optax`` / ``from_torch``: the engine's adapter, or an error naming what is wrong."""
    if _native_kind(native) != kind:
        needs = {"optax": "an optax.GradientTransformation", "torch": "a torch.optim.Optimizer class"}[kind]
        raise TypeError(f"from_{kind} needs {needs}, got {shown}.")
    wrapped = backends.get().wrap_native_optimizer(native, options)
    if wrapped is None:
        raise _wrong_engine(kind)
    return cast(keras.optimizers.Optimizer, wrapped)


def get(identifier: Any, **options: Any) -> keras.optimizers.Optimizer | None:
    """What ``Trainer(optimizer=...)`` accepts, as a Keras optimizer.

    Args:
        identifier: a Keras optimizer or its name/config (as
            ``keras.optimizers.get``), an ``optax.GradientTransformation``
            (jax), a ``torch.optim.Optimizer`` class or
            ``functools.partial`` of one (torch), or ``None``.
        **options: for a native optimizer, the adapter's options (Keras
            options such as ``clipnorm``; torch arguments such as ``lr``).

    Raises:
        TypeError: a native optimizer of another engine than ``KERAS_BACKEND``.
    """
    if identifier is None:
        return None
    if isinstance(identifier, keras.optimizers.Optimizer):
        if options:
            raise TypeError(f"Options {sorted(options)} apply to native optimizers only; set them on "
                            f"the Keras optimizer itself.")
        return identifier
    wrapped = backends.get().wrap_native_optimizer(identifier, options)
    if wrapped is not None:
        return wrapped
    kind = _native_kind(identifier)
    if kind is not None:
        raise _wrong_engine(kind)
    return keras.optimizers.get(identifier)


def from_optax(transformation: Any, **options: Any) -> keras.optimizers.Optimizer:
    """An ``optax.GradientTransformation`` as a Keras optimizer (``KERAS_BACKEND=jax``).

    Args:
        transformation: ``optax.adam(1e-3)``, an ``optax.chain(...)``, ...
        **options: Keras options (``name``, ``clipnorm``, ``use_ema``,
            ``gradient_accumulation_steps``, ...). Wrap the transformation in
            ``optax.inject_hyperparams`` to expose ``learning_rate`` to
            callbacks such as ``ReduceLROnPlateau``.
    """
    return _wrap_native("optax", transformation, options, type(transformation).__name__)


def from_torch(optimizer_class: Any, **kwargs: Any) -> keras.optimizers.Optimizer:
    """A ``torch.optim.Optimizer`` class as a Keras optimizer (``KERAS_BACKEND=torch``).

    Args:
        optimizer_class: ``torch.optim.Adam``, ``torch.optim.SGD``, ... (the
            class: it is created over the variables the optimizer is built with).
        **kwargs: ``lr`` (a float or a ``keras.optimizers.schedules`` schedule),
            Keras options (``name``, ``clipnorm``, ``use_ema``,
            ``gradient_accumulation_steps``, ...) and the class's own arguments
            (``betas``, ``eps``, ``weight_decay``, ``momentum``, ...).
    """
    return _wrap_native("torch", optimizer_class, kwargs, repr(optimizer_class))


# ----------------------------------------------------- Trainer-level options


def check_options(**options: Any) -> dict[str, Any]:
    """Validates the Trainer's optimizer options; returns the ones that are set."""
    out: dict[str, Any] = {}
    steps = options.get("gradient_accumulation_steps")
    if steps is not None:
        if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
            raise ValueError(
                f"gradient_accumulation_steps must be a positive integer (the number of micro-batches per "
                f"update; 1 means no accumulation), got {steps!r}.")
        if steps > 1:
            out["gradient_accumulation_steps"] = steps
    for name in _CLIP_NAMES:
        value = options.get(name)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
            raise ValueError(f"{name} must be a positive number, got {value!r}. For example {name}=1.0.")
        out[name] = float(value)
    clips = [n for n in _CLIP_NAMES if n in out]
    if len(clips) > 1:
        raise ValueError(
            "Set only one of clipnorm, clipvalue and global_clipnorm (as Keras optimizers allow), got "
            + ", ".join(f"{n}={out[n]}" for n in clips) + ".")
    return out


def _base(optimizer: keras.optimizers.Optimizer) -> keras.optimizers.Optimizer:
    # A LossScaleOptimizer rejects these options: its inner optimizer takes them.
    inner = getattr(optimizer, "inner_optimizer", None)
    return inner if isinstance(inner, keras.optimizers.Optimizer) else optimizer


def configure(optimizer: keras.optimizers.Optimizer, options: dict[str, Any]) -> None:
    """Sets the Trainer's ``options`` on ``optimizer`` (its inner optimizer for
    a ``LossScaleOptimizer``).

    Raises:
        ValueError: ``optimizer`` already has a different value for one of them,
            another clipping option, or is built without gradient accumulators.
    """
    target = _base(optimizer)
    for name, value in options.items():
        current = getattr(target, name, None)
        if current is not None and current != value:
            raise ValueError(
                f"Trainer({name}={value!r}) conflicts with {name}={current!r} already set on optimizer "
                f"{target.name!r}: set it in one place (the Trainer argument or the optimizer).")
        if name in _CLIP_NAMES:
            others = {n: getattr(target, n, None) for n in _CLIP_NAMES if n != name}
            clash = {n: v for n, v in others.items() if v is not None}
            if clash:
                n, v = next(iter(clash.items()))
                raise ValueError(
                    f"Trainer({name}={value!r}) conflicts with {n}={v!r} already set on optimizer "
                    f"{target.name!r}: Keras optimizers take only one of clipnorm, clipvalue and "
                    "global_clipnorm. Drop one of them.")
        if current is None:
            if name == "gradient_accumulation_steps" and target.built:
                raise ValueError(
                    f"Trainer(gradient_accumulation_steps={value}) needs optimizer {target.name!r} unbuilt "
                    "(its gradient accumulators are created when it is built). Pass a fresh optimizer, or "
                    f"create it with gradient_accumulation_steps={value}.")
            setattr(target, name, value)


def clips(optimizer: keras.optimizers.Optimizer | None) -> bool:
    """Whether ``optimizer`` (or its inner optimizer) clips gradients."""
    if optimizer is None:
        return False
    target = _base(optimizer)
    return any(getattr(target, n, None) is not None for n in _CLIP_NAMES)


def needs_loss_scaling(model: Any) -> bool:
    """Whether ``model`` computes in float16 (a ``mixed_float16`` policy),
    where gradients underflow without loss scaling."""
    if model is None:
        return False
    layers = [model] + list(model._flatten_layers()) if hasattr(model, "_flatten_layers") else [model]
    return any(getattr(getattr(layer, "dtype_policy", None), "compute_dtype", None) == "float16"
               for layer in layers)


def prepare(optimizers: list[keras.optimizers.Optimizer], options: dict[str, Any]) -> None:
    """Before a step is built: the Trainer's options on every optimizer it
    owns (so custom steps get them too), and the engine's adaptations."""
    engine = backends.get()
    for opt in optimizers:
        configure(opt, options)
        engine.prepare_optimizer(opt)


def track_grad_norm(tracker: keras.metrics.Metric, grads: list[Any], optimizer: keras.optimizers.Optimizer) -> None:
    """Adds the pre-clip global norm of ``grads`` to ``tracker``, undoing loss
    scaling; a non-finite norm (a step a LossScaleOptimizer skips) is left out."""
    scale = ops.cast(optimizer.scale_loss(ops.ones((), dtype="float32")), "float32")
    norm = global_norm(grads) / scale
    finite = ops.isfinite(norm)
    tracker.update_state(ops.where(finite, norm, ops.zeros_like(norm)), sample_weight=ops.cast(finite, "float32"))


class OptimizerGroup:
    """What ``trainer.optimizer`` is (and so what callbacks see as
    ``self.model.optimizer``) when a Trainer subclass holds several optimizers
    and sets none as ``optimizer``: Keras's callbacks act on each of
    ``optimizers`` (ReduceLROnPlateau cuts every learning rate by its factor,
    LearningRateScheduler schedules each, TensorBoard logs each), as they do
    for Keras's multi-optimizer wrappers."""

    def __init__(self, optimizers: Sequence[keras.optimizers.Optimizer]):
        self.optimizers = list(optimizers)

    @property
    def name(self) -> str:
        return "+".join(o.name for o in self.optimizers)

    @property
    def iterations(self) -> Any:
        return self.optimizers[0].iterations  # the first optimizer's step count

    @property
    def built(self) -> bool:
        return all(o.built for o in self.optimizers)

    @property
    def learning_rate(self) -> Any:
        raise AttributeError(
            f"This trainer holds {len(self.optimizers)} optimizers ({self.name}), each with its own "
            "learning rate: use trainer.optimizer.optimizers[i].learning_rate.")

    def __repr__(self) -> str:
        return f"OptimizerGroup({self.name})"
