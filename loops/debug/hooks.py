"""Watching one eager run of a step: every layer call and every
``value_and_grad`` call, with values (finiteness, norms) on every backend.

``Trainer.check`` and the NaN replay (``loops/debug/nans.py``) install a
``Recorder`` for one step. Values reach the host through the engine's
``host_values`` (on jax inside ``value_and_grad`` that is a debug callback that
runs at once; what jax only stages, while it re-traces for liveness, is never
recorded), so the records are the step's real numbers, in execution order.
"""

from __future__ import annotations

import contextlib
import dataclasses
from typing import Any, Callable, Iterator

import keras
import numpy as np
from keras import ops


@dataclasses.dataclass
class LayerCall:
    """One call of a layer, recorded when it returned (inner layers first)."""

    layer: Any
    input_shapes: list[tuple[int, ...]]
    output_shapes: list[tuple[int, ...]]
    inputs_finite: bool
    outputs_finite: bool


@dataclasses.dataclass
class GradientSet:
    """What one ``value_and_grad`` call returned (nested calls come first)."""

    variables: list[Any]
    norms: list[float | None]  # None: no gradient reaches the variable
    finite: list[bool]
    loss: float

    def global_norm(self, ids: set[int] | None = None) -> float:
        return float(np.sqrt(sum(n * n for v, n in zip(self.variables, self.norms)
                                 if n is not None and (ids is None or id(v) in ids))))


@dataclasses.dataclass
class LayerFailure:
    layer: Any
    input_shapes: list[tuple[int, ...]]
    error: BaseException


def _float_tensors(tree: Any) -> list[Any]:
    out = []
    for leaf in keras.tree.flatten(tree):
        dtype = getattr(leaf, "dtype", None)
        if dtype is None or not hasattr(leaf, "shape") or isinstance(leaf, keras.Variable):
            continue
        if keras.backend.is_float_dtype(keras.backend.standardize_dtype(dtype)):
            out.append(leaf)
    return out


def _shapes(tree: Any) -> list[tuple[int, ...]]:
    return [tuple(leaf.shape) for leaf in keras.tree.flatten(tree)
            if hasattr(leaf, "shape") and hasattr(leaf, "dtype") and not isinstance(leaf, keras.Variable)]


def _all_finite(tensors: list[Any]) -> Any:
    flags = [ops.all(ops.isfinite(t)) for t in tensors]
    return flags[0] if len(flags) == 1 else ops.all(ops.stack(flags))


def model_layers(trainer: Any) -> list[Any]:
    """Every layer of every model the trainer holds, models included, once."""
    out: list[Any] = []
    seen: set[int] = set()
    for model in trainer.models:
        for layer in model._flatten_layers(include_self=True, recursive=True):
            if id(layer) not in seen:
                seen.add(id(layer))
                out.append(layer)
    return out


class Recorder:
    """Collects layer calls, gradient sets and loss inputs of one eager step."""

    def __init__(self, engine: Any):
        self.engine = engine
        self.layer_calls: list[LayerCall] = []
        self.gradient_sets: list[GradientSet] = []
        self.loss_inputs: list[Any] = []  # _traps.LossInputs, one per probabilistic loss call
        self.losses: list[float] = []  # the configured loss's values (compute_loss)
        self.failure: LayerFailure | None = None

    # ------------------------------------------------------------ layers

    def _wrap(self, layer: Any, call: Callable[..., Any]) -> Callable[..., Any]:
        def watched(*args: Any, **kwargs: Any) -> Any:
            try:
                out = call(*args, **kwargs)
            except Exception as e:
                if self.failure is None:  # the innermost layer raising is the one to name
                    self.failure = LayerFailure(layer, _shapes(args), e)
                raise
            self._record_call(layer, args, out)
            return out

        return watched

    def _record_call(self, layer: Any, args: Any, out: Any) -> None:
        ins, outs = _float_tensors(args), _float_tensors(out)
        in_shapes, out_shapes = _shapes(args), _shapes(out)
        flags = [_all_finite(ins) if ins else None, _all_finite(outs) if outs else None]
        tensors = [f for f in flags if f is not None]

        def record(*values: np.ndarray) -> None:
            it = iter(values)
            fin = [bool(next(it)) if f is not None else True for f in flags]
            self.layer_calls.append(LayerCall(layer, in_shapes, out_shapes, fin[0], fin[1]))

        if tensors:
            self.engine.host_values(record, tensors)
        else:
            record()

    # ----------------------------------------------------------- gradients

    def on_gradients(self, variables: list[Any], loss: Any, grads: list[Any]) -> None:
        """Called by ``Trainer.value_and_grad`` before its own checks."""
        variables = list(variables)
        present = [(i, g) for i, g in enumerate(grads[:len(variables)]) if g is not None]
        norms = [ops.sqrt(ops.sum(ops.square(ops.cast(g, "float32")))) for _, g in present]
        finite = [ops.all(ops.isfinite(g)) for _, g in present]

        def record(loss_value: np.ndarray, *values: np.ndarray) -> None:
            n = len(present)
            out_norms: list[float | None] = [None] * len(variables)
            out_finite = [True] * len(variables)
            for (i, _), norm, fin in zip(present, values[:n], values[n:]):
                out_norms[i] = float(norm)
                out_finite[i] = bool(fin)
            self.gradient_sets.append(GradientSet(variables, out_norms, out_finite, float(loss_value)))

        self.engine.host_values(record, [ops.cast(loss, "float32")] + norms + finite)

    # -------------------------------------------------------------- install

    @contextlib.contextmanager
    def installed(self, trainer: Any) -> Iterator[Recorder]:
        """Watches every layer of the trainer's models and its
        ``value_and_grad``/``compute_loss`` calls while the block runs."""
        wrapped: list[tuple[Any, Any]] = []
        try:
            for layer in model_layers(trainer):
                previous = vars(layer).get("call")
                # An instance attribute shadows the method; object.__setattr__
                # keeps Keras's (and torch's) attribute tracking out of it.
                object.__setattr__(layer, "call", self._wrap(layer, layer.call))
                wrapped.append((layer, previous))
            trainer._debug_sink = self
            yield self
        finally:
            trainer._debug_sink = None
            for layer, previous in wrapped:
                if previous is None:
                    vars(layer).pop("call", None)
                else:
                    object.__setattr__(layer, "call", previous)


def on_gradients(trainer: Any, variables: list[Any], loss: Any, grads: list[Any]) -> None:
    """``Trainer.value_and_grad``'s hook: the recorder (when one listens) and
    the non-finite flag (``debug_nans=True``)."""
    sink = getattr(trainer, "_debug_sink", None)
    if sink is not None:
        sink.on_gradients(variables, loss, grads)
    flag = getattr(trainer, "_nan_flag", None)
    if flag is not None:
        tensors = [loss] + [g for g in grads if g is not None]
        bad = ops.cast(ops.logical_not(_all_finite(tensors)), flag.dtype)
        flag.assign(ops.maximum(flag.value, bad))


__all__ = ["GradientSet", "LayerCall", "LayerFailure", "Recorder", "model_layers", "on_gradients"]
