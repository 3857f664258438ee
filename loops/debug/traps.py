"""Traps that train silently, caught on the values of the first batch.

The labels and predictions a loss receives in the first step of each kind
reach the host through ``host_values``: at once where that step runs eagerly
(``Trainer._first_step``), after the compiled step's first call where it was
only traced (jax). Two checks use them:

- ``from_logits``: a probabilistic loss with ``from_logits=False`` fed logits
  (values outside [0, 1], or rows that do not sum to 1), or with
  ``from_logits=True`` fed probabilities (every row already sums to 1). Both
  train badly without an error; a ``FromLogitsWarning`` names the fix, once per
  loss. Keras on tensorflow quietly reads the pre-softmax logits off a softmax
  output, so the second case trains there and not on jax or torch: the warning
  fires on all three alike.
- labels out of range: class ids outside ``0..C-1`` for a sparse categorical
  loss over an output of width ``C`` (jax gives garbage, torch and tensorflow
  fail deep inside the loss), or labels outside [0, 1] for binary
  cross-entropy: an error naming the rows and the fix.

Later batches are not inspected (that would be a host sync per step);
``Trainer.check`` and ``fit(check_inputs=True)`` are the tools for data.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from typing import Any

import keras
import numpy as np

_CATEGORICAL = ("categorical_crossentropy", "categorical_focal_crossentropy")
_SPARSE = ("sparse_categorical_crossentropy",)
_BINARY = ("binary_crossentropy", "binary_focal_crossentropy")


class FromLogitsWarning(UserWarning):
    """A probabilistic loss's ``from_logits`` does not match what the model outputs."""


@dataclasses.dataclass
class LossInputs:
    """What one loss received on the checked batch (``Trainer.check`` reports it)."""

    loss: str
    output: str
    kind: str  # "categorical", "sparse" or "binary"
    from_logits: bool
    width: int  # classes: the output's last dimension (binary: 2)
    label_min: float
    label_max: float
    pred_min: float
    pred_max: float
    row_sum_min: float | None  # sums over the class axis (None for binary losses)
    row_sum_max: float | None

    @property
    def expected_loss(self) -> float:
        """The loss of random guessing (uniform predictions): ``ln C``."""
        return math.log(self.width)


def _describe(loss_fn: Any) -> tuple[str, str | None, bool, int | None]:
    """``(name, kind, from_logits, ignore_class)`` of a compiled loss entry."""
    fn = getattr(loss_fn, "fn", loss_fn)
    name = getattr(fn, "__name__", "") or getattr(loss_fn, "name", "") or type(loss_fn).__name__
    kwargs = dict(getattr(loss_fn, "_fn_kwargs", None) or {})
    kind = ("categorical" if name in _CATEGORICAL else "sparse" if name in _SPARSE
            else "binary" if name in _BINARY else None)
    return name, kind, bool(kwargs.get("from_logits", False)), kwargs.get("ignore_class")


def _output_name(path: tuple[Any, ...], output_name: str | None) -> str:
    if not path:
        return "the model output"  # (one output: Keras names the entry after the loss)
    if output_name:
        return f"model output {output_name!r}"
    return f"model output {'.'.join(map(str, path))!r}" if path else "the model output"


def _rows(indices: np.ndarray) -> str:
    shown = ", ".join(str(int(i)) for i in indices[:5])
    return f"[{shown}{', ...' if len(indices) > 5 else ''}]"


def _check_labels(name: str, kind: str, output: str, width: int, ignore_class: Any, y: np.ndarray) -> None:
    if y.size == 0:
        return
    if kind == "sparse":
        ids = y.reshape(-1)
        if ignore_class is not None:
            ids = ids[ids != ignore_class]
        odd = ids[np.mod(ids, 1) != 0]  # fractions, NaN, Inf
        if odd.size:
            raise ValueError(
                f"Labels for loss {name!r} must be integer class ids, got values such as "
                f"{odd[:3].tolist()}. Pass integer labels, or use CategoricalCrossentropy for "
                "probabilities.")
        if np.any((ids < 0) | (ids >= width)):
            out = (y < 0) | (y >= width)
            if ignore_class is not None:
                out &= y != ignore_class
            rows = np.nonzero(np.any(out.reshape(len(y), -1), axis=1))[0]
            lo, hi = int(ids.min()), int(ids.max())
            fix = ("remove the negative ids, or pass ignore_class=<id> to the loss for a padding id" if lo < 0
                   else f"give the output layer {hi + 1} units (one per class), or map the labels to "
                        f"0..{width - 1} (labels counted from 1: y - 1)")
            raise ValueError(
                f"Labels for loss {name!r} range over {lo}..{hi}, but {output} has width {width}, so "
                f"class ids must lie in 0..{width - 1} (rows {_rows(rows)} of the batch are out of range). "
                f"Fix: {fix}.")
    elif kind == "binary":
        if np.any((y < 0) | (y > 1)):
            rows = np.nonzero(np.any(((y < 0) | (y > 1)).reshape(len(y), -1), axis=1))[0]
            raise ValueError(
                f"Labels for loss {name!r} must lie in [0, 1], got {float(y.min()):g}..{float(y.max()):g} "
                f"(rows {_rows(rows)}). For labels -1/+1 use (y + 1) / 2; for several classes use "
                "SparseCategoricalCrossentropy.")


def _trap(info: LossInputs, n_values: int) -> str | None:
    """The warning for a ``from_logits`` that does not match the values, or None."""
    tol = 5e-3
    probabilities = info.pred_min >= 0.0 and info.pred_max <= 1.0
    sums_to_one = (info.row_sum_min is not None and info.row_sum_max is not None
                   and abs(info.row_sum_min - 1.0) <= tol and abs(info.row_sum_max - 1.0) <= tol)
    cls = "BinaryCrossentropy" if info.kind == "binary" else (
        "SparseCategoricalCrossentropy" if info.kind == "sparse" else "CategoricalCrossentropy")
    head = f"Loss {info.loss!r} with from_logits={info.from_logits} gets {info.output}"
    if not info.from_logits:
        if info.kind == "binary":
            if probabilities:
                return None
            seen = f"values in [{info.pred_min:.3g}, {info.pred_max:.3g}], outside [0, 1]"
        else:
            if probabilities and sums_to_one:
                return None
            seen = (f"values in [{info.pred_min:.3g}, {info.pred_max:.3g}] and rows summing to "
                    f"[{info.row_sum_min:.3g}, {info.row_sum_max:.3g}]; probabilities lie in [0, 1] and sum to 1")
        return (f"{head} with {seen}: these look like logits, which the loss reads as probabilities "
                "(clipped), so training is poor and no error is raised. Fix: "
                f"keras.losses.{cls}(from_logits=True) (or end the model with a "
                f"{'sigmoid' if info.kind == 'binary' else 'softmax'}).")
    if info.kind == "binary":
        # A freshly initialised logit layer is negative about half the time:
        # every value of a large enough batch strictly inside (0, 1) is a sigmoid.
        if not (n_values >= 16 and info.pred_min > 0.0 and info.pred_max < 1.0):
            return None
        seen = f"values all in ({info.pred_min:.3g}, {info.pred_max:.3g})"
        act = "sigmoid"
    else:
        if info.width < 2 or not (probabilities and sums_to_one):
            return None
        seen = "rows that already sum to 1 (values in [0, 1])"
        act = "softmax"
    return (f"{head} with {seen}: these look like {act} probabilities, which the loss squashes "
            f"again as if they were logits, so training is slow and poor (on tensorflow only, Keras "
            f"silently reads the pre-{act} logits instead, so the backends disagree). Fix: remove the final "
            f"{act} (activation=None; from_logits=True on logits is the portable, stable choice) or pass "
            f"keras.losses.{cls}(from_logits=False).")


def check_values(trainer: Any, compile_loss: Any, y: Any, y_pred: Any) -> None:
    """Label ranges (errors) and ``from_logits`` traps (warned once per loss)
    of every probabilistic loss in ``compile_loss``; records what each loss
    got for ``Trainer.check``. Called in the first step only (eager, or the
    compiled step's first call)."""
    engine = trainer._engine
    sink = getattr(trainer, "_debug_sink", None)
    warned: set[str] = trainer.__dict__.setdefault("_from_logits_warned", set())
    for path, loss_fn, _, output_name in getattr(compile_loss, "_flat_losses", None) or []:
        try:
            y_t, y_p = y, y_pred
            for key in path:
                y_t, y_p = y_t[key], y_p[key]
        except (KeyError, IndexError, TypeError):
            continue
        if y_t is None or y_p is None or keras.tree.is_nested(y_t) or keras.tree.is_nested(y_p):
            continue
        name, kind, from_logits, ignore_class = _describe(loss_fn)
        if kind is None or len(y_p.shape) == 0:
            continue
        output = _output_name(path, output_name)
        width = 2 if kind == "binary" else int(y_p.shape[-1])

        def inspect(labels: np.ndarray, sample: np.ndarray, name: str = name, kind: str = kind,
                    from_logits: bool = from_logits, ignore_class: Any = ignore_class,
                    output: str = output, width: int = width, size: int = _size(y_p)) -> None:
            labels = labels.astype("float64")
            _check_labels(name, kind, output, width, ignore_class, labels)
            pred_min, pred_max, n_finite, sum_min, sum_max = _summary(sample)
            sums = kind != "binary" and math.isfinite(sum_min)  # (all-NaN rows: no row sum;
            info = LossInputs(                                  # debug_nans says where NaN came from)
                loss=name, output=output, kind=kind, from_logits=from_logits, width=width,
                label_min=float(labels.min()) if labels.size else math.nan,
                label_max=float(labels.max()) if labels.size else math.nan,
                pred_min=pred_min if n_finite else math.nan, pred_max=pred_max if n_finite else math.nan,
                row_sum_min=sum_min if sums else None, row_sum_max=sum_max if sums else None)
            if sink is not None:
                sink.loss_inputs.append(info)
            message = _trap(info, size) if n_finite else None
            if message is not None and f"{output}:{name}" not in warned:
                warned.add(f"{output}:{name}")
                warnings.warn(message, FromLogitsWarning, stacklevel=2)

        # On jax the labels and the sample are outputs of the compiled step
        # (see host_values): the whole predictions unless they are wide.
        engine.host_values(inspect, [y_t, _sample(y_p)])


def _size(t: Any) -> int:
    return int(np.prod([d for d in t.shape if d is not None]))


#: Prediction values the checks read: all of them unless the outputs are wide
#: (a language model's vocabulary); then the first rows, up to this many values.
SAMPLE_VALUES = 65536


def _sample(preds: Any) -> Any:
    """The predictions the value checks read, as float32: all of them, or the
    first rows (over the last axis) up to ``SAMPLE_VALUES`` values. A slice
    rather than reductions on purpose: on jax it is an output of the compiled
    step, and each reduction would be a kernel of its own for XLA to compile
    (five of them cost ~0.1 s of compile per step program on CPU; returning
    the array, or a leading slice of it, costs nothing measurable)."""
    ops = keras.ops
    if _size(preds) > SAMPLE_VALUES:
        width = max(1, int(preds.shape[-1] or 1))
        preds = ops.reshape(preds, (-1, width))[:max(1, SAMPLE_VALUES // width)]
    return ops.cast(preds, "float32")


def _summary(sample: np.ndarray) -> tuple[float, float, int, float, float]:
    """``(min, max, count)`` of the finite predictions and ``(min, max)`` of
    the row sums over the last axis, ignoring NaN rows (``inf`` where there
    are none)."""
    p = np.asarray(sample, dtype=np.float32)
    finite = np.isfinite(p)
    n_finite = int(finite.sum())
    values = p[finite]
    sums = p.sum(axis=-1) if p.ndim else p
    sums = np.asarray(sums)[~np.isnan(sums)]
    return (float(values.min()) if n_finite else math.inf, float(values.max()) if n_finite else -math.inf,
            n_finite, float(sums.min()) if sums.size else math.inf, float(sums.max()) if sums.size else -math.inf)


def record_loss(trainer: Any, loss: Any) -> None:
    """Hands the configured loss's value to ``Trainer.check`` when it is listening."""
    sink = getattr(trainer, "_debug_sink", None)
    if sink is not None and loss is not None:
        trainer._engine.host_values(lambda value: sink.losses.append(float(value)), [loss])


__all__ = ["FromLogitsWarning", "LossInputs", "check_values", "record_loss"]
