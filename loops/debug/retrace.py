"""Counting how often a compiled step is traced (each trace compiles it again).

The engine calls the counter with the batch each time it traces the step
(``Runner.compile(on_trace=...)``): jax retraces ``jax.jit`` for every new
input shape or dtype; ``tf.function`` (with ``reduce_retracing``) traces a
second, shape-generic graph after the first shape change and then reuses it,
so only a new dtype or rank traces a third time (XLA's own per-shape
compilations under ``jit_compile=True`` happen below the trace and are not
counted); ``torch.compile`` is counted through its backend (a call that
compiled any graph counts once; dynamo marks a dimension dynamic after its
first change). Eager steps (torch's default, ``run_eagerly=True``) never trace.

From the third trace of a step on, a ``RetraceWarning`` (once per compiled
step) names the inputs whose shape or dtype changed since the previous trace.
``Trainer.trace_counts`` gives the counts. The loop pads ragged last batches
for the default steps, so normal training traces each step once.
"""

from __future__ import annotations

import warnings
from typing import Any

import keras

from loops.data import padding as _padding


class RetraceWarning(UserWarning):
    """A compiled step was traced (and so compiled) more than twice."""


def _leaves(prefix: str, tree: Any, out: dict[str, tuple[tuple[Any, ...], str]]) -> None:
    if tree is None:
        return
    if isinstance(tree, dict):
        for key in tree:
            _leaves(f"{prefix}[{key!r}]", tree[key], out)
    elif isinstance(tree, (list, tuple)):
        for i, item in enumerate(tree):
            _leaves(f"{prefix}[{i}]", item, out)
    elif hasattr(tree, "shape") and hasattr(tree, "dtype"):
        shape = tuple(None if d is None else int(d) for d in tuple(tree.shape))
        out[prefix] = (shape, keras.backend.standardize_dtype(tree.dtype))


def _batch_spec(batch: Any, prefix: str = "") -> dict[str, tuple[tuple[Any, ...], str]]:
    """Shape and dtype of every input of a batch, by a name the user wrote:
    ``x``, ``y``, ``sample_weight``, ``x['a']``..."""
    data, pad = _padding.unwrap(batch)
    out: dict[str, tuple[tuple[Any, ...], str]] = {}
    if isinstance(data, tuple) and 1 <= len(data) <= 3:
        for name, part in zip(("x", "y", "sample_weight"), data):
            _leaves(prefix + name, part, out)
    else:
        _leaves(prefix + "x", data, out)
    return out


def _changes(before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    out = []
    for name in after:
        if name not in before:
            out.append(f"input {name} appeared")
            continue
        (s0, d0), (s1, d1) = before[name], after[name]
        if s0 != s1:
            out.append(f"input {name} changed shape {s0} -> {s1}")
        if d0 != d1:
            out.append(f"input {name} changed dtype {d0} -> {d1}")
    out += [f"input {name} disappeared" for name in before if name not in after]
    return out


class TraceCounter:
    """``on_trace`` for one compiled step: counts traces, records input specs."""

    def __init__(self, kind: str, executes_many: bool):
        self.kind = kind
        self.executes_many = executes_many  # the step gets a tuple of batches (steps_per_execution)
        self.specs: list[dict[str, Any]] = []
        self.warned = False

    @property
    def count(self) -> int:
        return len(self.specs)

    def __call__(self, batch: Any) -> None:
        if self.executes_many and isinstance(batch, tuple):
            spec: dict[str, Any] = {"batches in the execution": ((len(batch),), "count")}
            for i, b in enumerate(batch):
                spec.update(_batch_spec(b, prefix=f"batch {i}: "))
        else:
            spec = _batch_spec(batch)
        self.specs.append(spec)
        if self.count > 2 and not self.warned:
            self.warned = True
            changes = _changes(self.specs[-2], spec)
            why = ("; ".join(changes) + " since the previous trace") if changes else (
                "the inputs' shapes and dtypes did not change, so something else the step reads changed "
                "(a Python value it closes over, or a new variable)")
            warnings.warn(
                f"The compiled {self.kind}_step has been traced {self.count} times, and each trace compiles "
                f"it again: {why}. Feed batches of one shape and dtype: a fixed batch size (the default "
                "steps pad a ragged last batch; drop_remainder=True for a dataset), sequences padded to one "
                "length (or a few buckets), one dtype per input.", RetraceWarning, stacklevel=2)


__all__ = ["RetraceWarning", "TraceCounter"]
