"""``check_inputs=True``: NaN or Inf in the data is an error naming where."""

from __future__ import annotations

from typing import Any

import numpy as np


def check_finite(tree: Any, where: str) -> None:
    """``check_inputs=True``: NaN or Inf in any float leaf is an error."""
    for path, leaf in _paths(tree):
        arr = np.asarray(leaf)
        if isinstance(arr, np.ndarray) and arr.dtype.kind in "fc" and arr.size and not np.isfinite(arr).all():
            bad: Any = np.argwhere(~np.isfinite(arr.reshape(len(arr), -1)).all(axis=1)).ravel() if arr.ndim else []
            what = "NaN" if np.isnan(arr).any() else "Inf"
            raise ValueError(
                f"{where}: {path} contains {what} (first bad rows {list(map(int, bad[:5]))}). Clean or "
                "impute the data before training, or pass check_inputs=False to skip this check.")


def _paths(tree: Any, prefix: str = "") -> list[tuple[str, Any]]:
    if tree is None:
        return []
    if isinstance(tree, dict):
        return [p for k, v in tree.items() for p in _paths(v, f"{prefix}[{k!r}]")]
    if isinstance(tree, (list, tuple)):
        names = ("x", "y", "sample_weight") if not prefix and len(tree) <= 3 else None
        return [p for i, v in enumerate(tree)
                for p in _paths(v, names[i] if names else f"{prefix}[{i}]")]
    return [(prefix or "x", tree)]
