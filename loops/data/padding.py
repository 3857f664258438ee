"""Padding the ragged last batch to the batch size, and masking it out.

A ragged last batch has a new shape, which under ``jax.jit`` (and
``torch.compile``) means a second compilation. Instead the loop pads it to the
batch size by repeating real rows and hands the default steps a ``Masked``
batch: the sample weights of padding rows are zero and ``mask`` marks the real
rows. The default steps then compute exactly what the unpadded batch gives:

- the loss gets the weights scaled by ``batch_size / real_count`` (what Keras
  does for masked entries), so a ``"sum_over_batch_size"`` loss averages over
  the real rows only;
- the loss trackers count ``real_count`` samples, not the padded batch size;
- every compiled metric sees the mask (unweighted metrics) or
  ``sample_weight * mask`` (weighted metrics).

Only the default steps get ``Masked`` batches; a custom step sees the batches
as the data gives them.

Under data parallelism a step may see one replica's shard of the padded batch
(tensorflow, torch): a shard can hold only padding. The batch then carries the
global batch's counts (``MaskedShard.totals``), and the weights above use them,
so that the replicas' averaged gradients, and the summed loss trackers, equal
those of the whole batch.
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator, NamedTuple

import keras
import numpy as np

from loops._keras_private import keras_own


class Masked(NamedTuple):
    """A batch padded to the batch size: ``data`` is ``(x, y, sample_weight)``
    (padding rows weigh zero), ``mask`` is 1.0 for real rows, 0.0 for padding."""

    data: Any
    mask: Any


class MaskedShard(NamedTuple):
    """A ``Masked`` batch whose step may see only some of its rows:
    ``totals`` holds, on every row, (real rows, rows) of the whole batch."""

    data: Any
    mask: Any
    totals: Any


def with_totals(batch: Masked) -> MaskedShard:
    """Host side: the whole batch's counts, on every row (rows may be split)."""
    mask = np.asarray(batch.mask)
    totals = np.empty((len(mask), 2), keras.backend.floatx())
    totals[:, 0], totals[:, 1] = mask.sum(), len(mask)
    return MaskedShard(batch.data, batch.mask, totals)


def rows(tree: Any) -> int:
    """Leading dimension of the first array leaf."""
    return int(next(np.shape(leaf)[0] for leaf in keras.tree.flatten(tree) if leaf is not None))


def unstack(stacked: Any) -> tuple[Any, ...]:
    """Batches stacked on a leading axis (``steps_per_execution``), one by one."""
    return tuple(keras.tree.map_structure(lambda t, i=i: None if t is None else t[i], stacked)
                 for i in range(rows(stacked)))


def pad_rows(tree: Any, size: int) -> Any:
    """Pads every leaf to ``size`` rows by repeating its rows from the start."""
    n = rows(tree)
    if n >= size:
        return tree
    idx = np.resize(np.arange(n), size)
    return keras.tree.map_structure(lambda a: None if a is None else np.take(a, idx, axis=0), tree)


def mask_batch(batch: Any, size: int) -> Masked:
    """Host side: ``(x, y[, sw])`` to a ``Masked`` batch of ``size`` rows."""
    x, y, sw = keras.utils.unpack_x_y_sample_weight(batch)
    n = rows((x, y, sw))  # (x may hold only None: optional inputs left out)
    mask = np.zeros((max(size, n),), keras.backend.floatx())
    mask[:n] = 1.0
    x, y, sw = pad_rows((x, y, sw), size) if n < size else (x, y, sw)

    def weigh(w: Any) -> Any:
        w = np.asarray(w)
        return (w * mask.reshape((-1,) + (1,) * (w.ndim - 1))).astype(keras.backend.floatx())

    # No weights given: none made here. The step weighs the loss by the mask
    # shaped to each output's rank (Pad.loss_weight), which Keras's losses
    # broadcast against any per-sample loss; a (rows,) weight they broadcast
    # only against a loss of rank 1 or 2 (not an image-shaped one).
    sw = None if sw is None else keras.tree.map_structure(weigh, sw)
    return Masked((x, y, sw), mask)


class Pad:
    """Step side: what the default steps do differently with a ``Masked`` batch."""

    def __init__(self, mask: Any, totals: Any = None):
        self.mask = mask
        self.count = keras.ops.sum(mask)  # real samples in the batch (the loss trackers' weight)
        self.size = keras.ops.cast(keras.ops.shape(mask)[0], self.count.dtype)
        self.total = self.count  # real samples in the whole batch
        if totals is not None:  # a shard: the whole batch's counts, and this shard's share of its samples
            self.total = totals[0, 0]
            whole = totals[0, 1]
            self.count = self.total * self.size / whole
            self.size = whole

    def loss_weight(self, sample_weight: Any, y_pred: Any = None) -> Any:
        """Weights scaled by ``size / count``: a mean over the batch becomes
        the mean over its real rows (Keras scales masked losses the same way).
        Without weights: the mask, shaped ``(rows, 1, ..., 1)`` to each output
        of ``y_pred`` (one array when the outputs' ranks agree)."""
        scale = self.size / keras.ops.maximum(self.total, 1.0)
        if sample_weight is None:
            mask = self.mask * keras.ops.cast(scale, self.mask.dtype)
            leaves = [t for t in keras.tree.flatten(y_pred) if t is not None]
            ranks = {len(t.shape) for t in leaves}

            def shaped(rank: int) -> Any:
                return keras.ops.reshape(mask, (-1,) + (1,) * max(rank - 1, 0))

            if len(ranks) <= 1:
                return shaped(ranks.pop() if ranks else 1)
            return keras.tree.map_structure(lambda t: None if t is None else shaped(len(t.shape)), y_pred)
        return keras.tree.map_structure(lambda w: w * keras.ops.cast(scale, w.dtype), sample_weight)

    @contextlib.contextmanager
    def count_real_samples(self, compile_loss: Any) -> Iterator[None]:
        """Per-output loss trackers (Keras weighs them by the static batch
        size): scales what the enclosed code adds to them by ``count / size``."""
        trackers = [m for m in (getattr(compile_loss, "metrics", None) or [])
                    if hasattr(m, "total") and hasattr(m, "count")]
        # copies: torch assigns in place, so a bare `.value` would follow the update
        before = [(keras.ops.copy(m.total.value), keras.ops.copy(m.count.value)) for m in trackers]
        yield
        frac = self.total / self.size
        for m, (total, count) in zip(trackers, before):
            m.total.assign(total + (m.total.value - total) * keras.ops.cast(frac, m.total.dtype))
            m.count.assign(count + (m.count.value - count) * keras.ops.cast(frac, m.count.dtype))

    def metrics(self, trainer: Any, y: Any, y_pred: Any, sample_weight: Any) -> dict[str, Any]:
        """``compute_metrics`` for a padded batch: every compiled metric
        counts the real rows only. Returns the trainer's metric results."""
        compile_metrics = getattr(trainer, "_compile_metrics", None)
        if compile_metrics is not None and y is not None:
            from loops._keras_private import update_metrics_masked

            update_metrics_masked(compile_metrics, y, y_pred, sample_weight, self.mask)
        return dict(trainer.get_metrics_result())


def unwrap(batch: Any) -> tuple[Any, Pad | None]:
    """``(batch, None)``, or for a ``Masked`` batch ``((x, y, sw), Pad)``."""
    if isinstance(batch, Masked):
        return batch.data, Pad(batch.mask)
    if isinstance(batch, MaskedShard):
        return batch.data, Pad(batch.mask, batch.totals)
    return batch, None


# Keras layers that run user code, or another engine's module, on the batch.
_USER_CODE = ("Lambda", "TorchModuleWrapper", "JaxLayer", "FlaxLayer", "TFSMLayer")


def rows_stay_apart(models: list[Any], training: bool) -> str | None:
    """Why padding a batch could change the real rows' results, or None when
    it cannot: every layer Keras's own (a user's layer or model may mix rows:
    a batch mean, an in-batch loss), none regularizing its activity (averaged
    over the batch's rows); in training also none with batch statistics
    (BatchNormalization) or random draws (Dropout: a padded batch draws
    another mask for its real rows)."""
    for layer in _layers(models):
        kind = type(layer)
        if not keras_own(kind) or kind.__name__ in _USER_CODE:
            return f"{kind.__name__} is not Keras's own layer"
        if getattr(layer, "activity_regularizer", None) is not None:
            return f"{layer.name} has an activity regularizer"
        if training and isinstance(layer, keras.layers.BatchNormalization):
            return f"{layer.name} has batch statistics"
        if training and any(isinstance(v, keras.random.SeedGenerator) for v in vars(layer).values()):
            return f"{layer.name} draws random numbers"
    return None


def makes_masks(models: list[Any]) -> bool:
    """Whether a layer starts a Keras mask (Masking, Embedding(mask_zero=True)):
    Keras's losses then average over the mask's valid entries in the whole
    batch, which a padded batch's repeated rows would add to."""
    return any(isinstance(layer, keras.layers.Masking) or getattr(layer, "mask_zero", False)
               for layer in _layers(models))


def _layers(models: list[Any]) -> Iterator[Any]:
    for model in models:
        yield model
        yield from model._flatten_layers(include_self=False)


def loss_weight(pad: Pad | None, sample_weight: Any, y_pred: Any = None) -> Any:
    return sample_weight if pad is None else pad.loss_weight(sample_weight, y_pred)


@contextlib.contextmanager
def real_samples_only(pad: Pad | None, compile_loss: Any) -> Iterator[None]:
    if pad is None:
        yield
    else:
        with pad.count_real_samples(compile_loss):
            yield


__all__ = ["Masked", "MaskedShard", "Pad", "loss_weight", "mask_batch", "pad_rows", "real_samples_only", "rows",
           "makes_masks", "rows_stay_apart",
           "unwrap", "with_totals"]
