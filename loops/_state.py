"""State discovery: every ``keras.Variable`` a trainer owns, in a stable order.

Compiled steps on pure engines (jax) receive exactly these values, so a
variable missed here would be baked into the compiled step as a constant.
"""

from __future__ import annotations

from typing import Any, Iterator

import keras

from loops._keras_private import CompileLoss


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
    return list(obj.variables)


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
