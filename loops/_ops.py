"""Gradient utilities written in ``keras.ops``: they run inside compiled steps
on every backend."""

from __future__ import annotations

from typing import Any, Sequence

from keras import ops


def global_norm(grads: Sequence[Any]) -> Any:
    """The L2 norm of all gradients together, ignoring ``None`` entries.

    Example:
        >>> norm = loops.global_norm(grads)      # scalar tensor
    """
    squares = [ops.sum(ops.square(ops.cast(g, "float32"))) for g in grads if g is not None]
    if not squares:
        return ops.zeros((), dtype="float32")
    return ops.sqrt(ops.sum(ops.stack(squares)))


def clip_by_global_norm(grads: Sequence[Any], max_norm: float) -> tuple[list[Any], Any]:
    """Scales ``grads`` so their global norm is at most ``max_norm``.

    Returns:
        ``(clipped, norm)``: the clipped gradients (``None`` kept in place) and
        the norm *before* clipping, for logging.

    Example:
        >>> grads, norm = loops.clip_by_global_norm(grads, 1.0)
    """
    if not max_norm > 0:
        raise ValueError(f"clip_by_global_norm needs max_norm > 0, got {max_norm!r}.")
    norm = global_norm(grads)
    # min(1, max_norm / norm); the maximum() keeps a zero norm finite.
    scale = ops.minimum(1.0, max_norm / ops.maximum(norm, 1e-12))
    clipped = [None if g is None else g * ops.cast(scale, g.dtype) for g in grads]
    return clipped, norm
