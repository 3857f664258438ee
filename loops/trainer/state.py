"""What a trainer holds: its models, optimizers, metrics and variables.

``discover_variables`` finds every ``keras.Variable`` a trainer owns, in a
stable order. Compiled steps on pure engines (jax) receive exactly these
values, so a variable missed here would be baked into the compiled step as a
constant. ``StateMixin`` gives the ``Trainer`` the Keras ``Model`` properties
callbacks read (``optimizer``, ``layers``, ``metrics``, ``variables``, ...).
"""

from __future__ import annotations

from typing import Any, Iterator

import keras

from loops import optimizers as _optimizers
from loops._keras_private import CompileLoss, compile_state_metrics, outside_stateless_scope
from loops.optimizers import OptimizerGroup


def _owned(value: Any) -> Iterator[Any]:
    """Yields the objects that carry state, found in one attribute value."""
    if isinstance(value, (keras.Variable, keras.Layer, keras.optimizers.Optimizer,
                          keras.metrics.Metric, keras.random.SeedGenerator, CompileLoss)):
        yield value
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _owned(item)
    elif isinstance(value, dict):
        for item in value.values():
            yield from _owned(item)


def _variables_of(obj: Any) -> list[keras.Variable]:
    if isinstance(obj, keras.Variable):
        return [obj]
    if isinstance(obj, keras.random.SeedGenerator):
        return [obj.state]
    # Layers (incl. their metrics and seed generators), optimizers (after
    # build), metrics and the compiled loss's trackers all expose `.variables`.
    if isinstance(obj, keras.Layer):
        return list(obj.variables) + _recurrent_states(obj)
    return list(obj.variables)


def _recurrent_states(layer: keras.Layer) -> list[keras.Variable]:
    """A stateful RNN's carried states (``RNN.states``): variables Keras keeps
    out of ``layer.variables`` that every step assigns."""
    return [v for sub in layer._flatten_layers() if getattr(sub, "stateful", False) is True
            for v in keras.tree.flatten(getattr(sub, "states", None) or []) if isinstance(v, keras.Variable)]


class Held:
    """A value kept on a trainer that the attribute walk (``_owned``) does not enter."""

    __slots__ = ("value",)

    def __init__(self, value: Any):
        self.value = value


def owned_objects(owner: Any) -> list[Any]:
    """Stateful objects held in ``owner``'s attributes, in attribute order."""
    found: list[Any] = []
    seen: set[int] = set()
    for value in vars(owner).values():
        for obj in _owned(value):
            if id(obj) not in seen:
                seen.add(id(obj))
                found.append(obj)
    return found


def discover_variables(owner: Any) -> list[keras.Variable]:
    """Every variable reachable from ``owner``'s attributes, deduplicated."""
    out: list[keras.Variable] = []
    seen: set[int] = set()
    for obj in owned_objects(owner):
        for v in _variables_of(obj):
            if id(v) not in seen:
                seen.add(id(v))
                out.append(v)
    return out


def _default_train_step(trainer: Any) -> bool:
    from loops.trainer.trainer import Trainer  # (the class that mixes this in)

    return type(trainer).train_step is Trainer.train_step


def build_default_optimizer(trainer: Any) -> None:
    """The default train_step's optimizer, built on the model's trainable
    variables outside any trace or stateless scope, as Keras's symbolic build
    builds it (a custom step's optimizers build at their first ``apply``).
    Built inside jax's abstract trace of the first step, its slots' zeros
    compiled their small programs again (that trace's compile cache is not
    the eager one), more of them under a distribution: 0.2-0.9 s of a first fit."""
    opt, model = getattr(trainer, "_optimizer", None), getattr(trainer, "model", None)
    if opt is None or opt.built or model is None or not _default_train_step(trainer):
        return
    variables = model.trainable_variables
    if variables:  # (a frozen model's default step applies nothing)
        with outside_stateless_scope():
            opt.build(variables)


class StateMixin:
    """The ``Trainer``'s view of what it holds, as Keras's ``Model`` exposes it."""

    # Provided by Trainer and its other parts:
    _optimizer: Any
    _runner: Any
    _step_fns: dict[str, Any]
    _metrics_cache: list[keras.metrics.Metric] | None
    _compile_loss: Any
    _compile_metrics: Any
    _loss_tracker: Any

    @property
    def optimizer(self) -> Any:
        """The optimizer passed to ``Trainer`` (or assigned). If none was and
        a subclass holds optimizers as attributes: that one, or an
        ``OptimizerGroup`` of all of them (what Keras callbacks then adjust)."""
        if self._optimizer is not None:
            return self._optimizer
        held = self.optimizers
        if not held:
            return None
        return held[0] if len(held) == 1 else OptimizerGroup(held)

    @optimizer.setter
    def optimizer(self, value: Any) -> None:
        self._optimizer = _optimizers.get(value)  # Keras's, or optax / torch.optim behind an adapter

    @property
    def layers(self) -> list[keras.Layer]:
        """The layers of every model held (TensorBoard's weight histograms read this)."""
        out: list[keras.Layer] = []
        for model in self.models:
            out.extend(getattr(model, "layers", None) or [model])
        return out

    @property
    def built(self) -> bool:
        return all(m.built for m in self.models)

    @property
    def train_function(self) -> Any:
        return self._step_fns.get("train")

    @property
    def models(self) -> list[keras.Layer]:
        """Every Keras model/layer held as an attribute, in attribute order."""
        return [o for o in owned_objects(self) if isinstance(o, keras.Layer)]

    def _step_models(self) -> list[keras.Layer]:
        """``models`` as the step's set-up (``_step_fn``, ``_key``) found them:
        walked inside a step, the attributes (every dict and list the trainer
        holds) would be guarded by torch.compile, which then recompiles when
        any of them changes."""
        held = vars(self).get("_models_cache")
        return held.value if held is not None else self.models

    @property
    def optimizers(self) -> list[keras.optimizers.Optimizer]:
        return [o for o in owned_objects(self) if isinstance(o, keras.optimizers.Optimizer)]

    @property
    def metrics(self) -> list[keras.metrics.Metric]:
        """Every metric the trainer tracks; the loop resets them each epoch.

        Order as Keras: the loss tracker, the compiled metrics, per-output loss
        trackers, then metrics held as attributes and the models' own metrics.
        """
        if self._metrics_cache is not None:
            return self._metrics_cache
        found: list[keras.metrics.Metric] = []
        if self._compile_loss is not None or _default_train_step(self):
            found.append(self._loss_tracker)
        if self._compile_metrics is not None:
            found.append(self._compile_metrics)
        if self._compile_loss is not None:
            found.extend(self._compile_loss.metrics)
        for obj in owned_objects(self):
            if isinstance(obj, keras.metrics.Metric) and obj not in found and obj is not self._loss_tracker:
                found.append(obj)
        for model in self.models:
            # (not the compile state a Trainer left on the model: this one's are above, another's are not ours)
            compiled = compile_state_metrics(model)
            found.extend(m for m in model.metrics if m not in found and not any(m is c for c in compiled))
        # Walking the attributes costs; eager steps read this several times a step.
        self._metrics_cache = found
        return found

    @property
    def metrics_names(self) -> list[str]:
        return [m.name for m in self.metrics]

    def reset_metrics(self) -> None:
        self._sync()
        for m in self.metrics:
            m.reset_state()

    @property
    def trainable_variables(self) -> list[keras.Variable]:
        return [v for v in self.variables if v.trainable]

    @property
    def variables(self) -> list[keras.Variable]:
        """Every variable the trainer owns (models, optimizers, metrics, seeds)."""
        return discover_variables(self)

    def _sync(self) -> None:
        """Writes device-held state (jax) back into the variables."""
        if self._runner is not None:
            self._runner.sync()

    def jax_state_sync(self) -> None:
        # Keras callbacks call this (by name, on jax) before reading the model.
        self._sync()
