"""Gradient diagnostics as metrics: ``Trainer(..., grad_diagnostics=True)``.

Logged, as epoch means, to History, the progress bar and TensorBoard (which
reads the logs), under these names:

- ``grad_norm``: the global L2 norm of the gradients (before clipping,
  unscaled when a ``LossScaleOptimizer`` scales the loss);
- ``grad_norm/<layer>``: the norm over each top-level layer's variables;
- ``update_ratio`` and ``update_ratio/<layer>``: ``|w_after - w_before| /
  |w_before|`` for the optimizer's update (about 1e-3 is healthy for Adam; far
  above means a learning rate too high, far below a stalled layer).

``grad_diagnostics`` takes ``True`` (all) or a list of ``"global_norm"``,
``"layer_norms"``, ``"update_ratio"``. The default ``train_step`` computes them
inside the compiled step: a norm per variable, and for the update ratio a copy
of the trainable weights before the update. A custom step opts in with
``self.log_gradient_stats(grads, variables)`` (and, for update ratios, wraps
its ``optimizer.apply`` in it: ``with self.log_gradient_stats(grads, vs): opt.apply(grads, vs)``).
A step a ``LossScaleOptimizer`` skips (non-finite gradients) is left out of
the means; with gradient accumulation the values are per micro-batch.
"""

from __future__ import annotations

from typing import Any, Sequence

import keras
from keras import ops

KINDS = ("global_norm", "layer_norms", "update_ratio")


def parse(value: Any) -> frozenset[str]:
    """``grad_diagnostics=`` to the set of requested kinds."""
    if value is None or value is False:
        return frozenset()
    if value is True:
        return frozenset(KINDS)
    items = [value] if isinstance(value, str) else list(value)
    unknown = [k for k in items if k not in KINDS]
    if unknown:
        raise ValueError(f"grad_diagnostics takes True or a list of {list(KINDS)}, got {unknown}.")
    return frozenset(items)


def _groups(models: Sequence[Any]) -> list[tuple[str, Any, bool]]:
    """``(name, layer, own)`` per top-level layer of each model, then each
    model itself for the variables it owns directly (``own``)."""
    entries = [(model, layer, False) for model in models for layer in (getattr(model, "layers", None) or [])]
    entries += [(model, model, True) for model in models]
    names = [layer.name for _, layer, _ in entries]
    dup = {n for n in names if names.count(n) > 1}  # e.g. a "dense" in two models: qualify by model
    return [(f"{model.name}.{layer.name}" if layer.name in dup and not own else layer.name, layer, own)
            for model, layer, own in entries]


class GradientStats(keras.metrics.Metric):
    """Epoch means of gradient norms and update ratios, globally and per layer."""

    def __init__(self, models: Sequence[Any], kinds: frozenset[str]):
        super().__init__(name="gradient_stats")
        self.kinds = kinds
        self._groups = _groups(models)
        n = len(self._groups) + 1  # column 0: global
        # rows: 0 gradient norms, 1 update ratios
        self.totals = self.add_variable(shape=(2, n), initializer="zeros", name="totals")
        self.counts = self.add_variable(shape=(2, n), initializer="zeros", name="counts")
        self._index: dict[tuple[int, ...], list[int | None]] = {}

    def _columns(self, variables: Sequence[Any]) -> list[int | None]:
        """The group column (1-based) of each variable, None if in no group."""
        key = tuple(id(v) for v in variables)
        if key not in self._index:
            owner: dict[int, int] = {}
            for col, (_, layer, own) in enumerate(self._groups, start=1):
                if not own:
                    for v in layer.trainable_variables:
                        owner.setdefault(id(v), col)
            for col, (_, layer, own) in enumerate(self._groups, start=1):
                if own:
                    for v in layer.trainable_variables:
                        owner.setdefault(id(v), col)
            self._index[key] = [owner.get(id(v)) for v in variables]
        return self._index[key]

    def _add(self, row: int, squares: Sequence[Any | None], variables: Sequence[Any],
             denominators: Sequence[Any | None] | None, weight: Any) -> None:
        """Adds sqrt(sum squares) (divided by sqrt(sum denominators)) per group and globally."""
        cols = self._columns(variables)
        n = len(self._groups) + 1
        num: list[list[Any]] = [[] for _ in range(n)]
        den: list[list[Any]] = [[] for _ in range(n)]
        for i, (sq, col) in enumerate(zip(squares, cols)):
            if sq is None:
                continue
            for c in (0, col) if col is not None else (0,):
                num[c].append(sq)
                if denominators is not None and denominators[i] is not None:
                    den[c].append(denominators[i])
        values, counts = [], []
        for c in range(n):
            if not num[c]:
                values.append(ops.zeros((), "float32"))
                counts.append(ops.zeros((), "float32"))
                continue
            value = ops.sqrt(ops.sum(ops.stack(num[c])))
            if denominators is not None:
                value = value / ops.maximum(ops.sqrt(ops.sum(ops.stack(den[c]))), 1e-12)
            finite = ops.isfinite(value)
            values.append(ops.where(finite, value, ops.zeros_like(value)) * weight)
            counts.append(ops.cast(finite, "float32") * weight)
        one_hot = ops.cast(ops.arange(2) == row, "float32")[:, None]  # (2, 1)
        self.totals.assign_add(one_hot * ops.stack(values)[None, :])
        self.counts.assign_add(one_hot * ops.stack(counts)[None, :])

    def update_grads(self, grads: Sequence[Any], variables: Sequence[Any], optimizer: Any = None) -> None:
        if not ({"global_norm", "layer_norms"} & self.kinds):
            return
        scale = ops.ones((), "float32")
        if optimizer is not None and hasattr(optimizer, "scale_loss"):
            scale = ops.cast(optimizer.scale_loss(ops.ones((), dtype="float32")), "float32")
        squares = [None if g is None else ops.sum(ops.square(ops.cast(g, "float32") / scale))
                   for g in grads[:len(variables)]]
        self._add(0, squares, variables, None, ops.ones((), "float32"))

    def update_ratio(self, before: Sequence[Any], variables: Sequence[Any]) -> None:
        diffs = [ops.sum(ops.square(ops.cast(v.value, "float32") - ops.cast(b, "float32")))
                 for v, b in zip(variables, before)]
        norms = [ops.sum(ops.square(ops.cast(b, "float32"))) for b in before]
        self._add(1, diffs, variables, norms, ops.ones((), "float32"))

    def update_state(self, *args: Any, **kwargs: Any) -> None:
        raise TypeError("GradientStats is updated through Trainer.log_gradient_stats(grads, variables).")

    def _active(self) -> list[tuple[int, str]]:
        """``(column, name)`` of the groups that hold trainable variables."""
        out = []
        for col, (name, layer, own) in enumerate(self._groups, start=1):
            variables = layer.trainable_variables
            if own:  # only what the model holds outside its layers
                inner = {id(v) for sub in (getattr(layer, "layers", None) or []) for v in sub.trainable_variables}
                variables = [v for v in variables if id(v) not in inner]
            if variables:
                out.append((col, name))
        return out

    def keys(self) -> list[tuple[str, int, int]]:
        """``(log name, row, column)`` of every value ``result`` returns."""
        out = []
        for row, prefix, kind in ((0, "grad_norm", "layer_norms"), (1, "update_ratio", "update_ratio")):
            if (row == 0 and "global_norm" in self.kinds) or (row == 1 and "update_ratio" in self.kinds):
                out.append((prefix, row, 0))
            if kind in self.kinds:
                out += [(f"{prefix}/{name}", row, col) for col, name in self._active()]
        return out

    def result(self) -> dict[str, Any]:  # type: ignore[override]
        means = self.totals.value / ops.maximum(self.counts.value, 1.0)  # (2, groups + 1)
        return {name: means[row, col] for name, row, col in self.keys()}

    def reset_state(self) -> None:
        self.totals.assign(ops.zeros_like(self.totals.value))
        self.counts.assign(ops.zeros_like(self.counts.value))


class UpdateRatio:
    """What ``Trainer.log_gradient_stats`` returns: used as a context manager
    around ``optimizer.apply``, it also logs the update/weight ratios."""

    def __init__(self, stats: GradientStats | None, variables: Sequence[Any]):
        self.stats = stats if stats is not None and "update_ratio" in stats.kinds else None
        self.variables = list(variables)
        self.before: list[Any] = []

    def __enter__(self) -> UpdateRatio:
        if self.stats is not None:
            # copies: torch updates in place; on tensorflow the read is ordered before the update
            self.before = [ops.copy(v.value) for v in self.variables]
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.stats is not None and exc[0] is None:
            self.stats.update_ratio(self.before, self.variables)


__all__ = ["GradientStats", "KINDS", "UpdateRatio", "parse"]
