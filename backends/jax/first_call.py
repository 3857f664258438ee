"""The first step's checks without an eager step.

An eager jax step dispatches every operation as its own XLA program, each
compiled on first use: on a small MLP that is ~1.6 s of compiling before the
first step, against ~0.4 s for the whole step under ``jax.jit``. So the
first-step checks run in two halves that cost no eager step:

- ``trace_only``: the step is traced once by ``jax.make_jaxpr`` (shapes and
  dtypes, nothing computed or compiled). Everything the checks learn from
  structure happens there: optimizers build, shapes, variables without a
  gradient, variables the step creates or assigns behind the Trainer's back.
- ``Gate``: the checks that need values (label ranges, ``from_logits``) go
  into the compiled step itself, each a ``jax.debug.callback`` under a
  ``lax.cond`` on a flag that is true for the first call only. Their values
  come back with that call; ``Gate.run`` calls the checks then, so what they
  raise or warn comes from the caller's thread, and the runner keeps the
  variables as they were if they raise. Later calls skip the branch.
"""

from __future__ import annotations

import functools
import threading
from typing import Any, Callable, Sequence

import jax
import numpy as np

_tracing = threading.local()  # .gate: the Gate of the checked step being traced on this thread

_TRACER_ERRORS = (jax.errors.ConcretizationTypeError, jax.errors.TracerArrayConversionError,
                  jax.errors.TracerIntegerConversionError)


def trace_only(fn: Callable[[Any], Any], batch: Any) -> bool:
    """``fn(batch)`` traced with abstract array leaves; False when the step
    reads a value (a Python ``if`` on a tensor): it must then run eagerly."""
    leaves, treedef = jax.tree_util.tree_flatten(batch)
    arrays = [i for i, leaf in enumerate(leaves) if isinstance(leaf, (jax.Array, np.ndarray))]

    def traced(*values: Any) -> None:
        full = list(leaves)
        for i, value in zip(arrays, values):
            full[i] = value
        fn(jax.tree_util.tree_unflatten(treedef, full))

    try:
        jax.make_jaxpr(traced)(*[leaves[i] for i in arrays])
    except _TRACER_ERRORS:
        return False
    return True


class Gate:
    """The value checks of one compiled step, run on its first call's values."""

    def __init__(self) -> None:
        self.sites: list[Callable[..., None]] = []  # each traced host_values call's fn
        self.values: dict[int, list[np.ndarray]] = {}  # site -> values its callback delivered
        self.flag: Any = None  # the traced first-call flag while this step is traced

    def tracing(self, flag: Any) -> Any:
        gate = self

        class _Scope:
            def __enter__(self) -> None:
                self.saved = getattr(_tracing, "gate", None)
                gate.flag, _tracing.gate = flag, gate

            def __exit__(self, *exc: Any) -> None:
                _tracing.gate, gate.flag = self.saved, None

        return _Scope()

    def stage(self, fn: Callable[..., None], tensors: Sequence[Any]) -> None:
        """Stages ``fn``'s values as a callback that fires on the first call only.
        Inside ``lax.scan`` (``steps_per_execution``) it fires once per step:
        the first values are kept."""
        site = len(self.sites)
        self.sites.append(fn)
        values = self.values

        def deliver(*arrays: Any) -> None:
            values.setdefault(site, [np.asarray(a) for a in arrays])

        def fire(ts: list[Any]) -> None:
            jax.debug.callback(deliver, *ts)

        tensors = [jax.lax.stop_gradient(t) for t in tensors]  # inside value_and_grad: no tangents
        jax.lax.cond(self.flag, fire, lambda ts: None, tensors)

    def run(self) -> None:
        """Calls the checks on the first call's values, in trace order."""
        if not self.sites:
            return
        jax.effects_barrier()  # every callback of the call has delivered
        delivered = dict(self.values)
        self.values.clear()
        for site in sorted(delivered):
            self.sites[site](*delivered[site])


def current() -> Gate | None:
    """The Gate of the checked step being traced on this thread, if any."""
    gate = getattr(_tracing, "gate", None)
    return gate if gate is not None and gate.flag is not None else None


@functools.lru_cache(maxsize=None)
def flag(value: bool) -> Any:
    """The first-call flag as a device scalar (made once: no transfer per step)."""
    return jax.numpy.asarray(value)


def copies(values: list[Any]) -> list[Any]:
    """New buffers with the same contents, without a compiled copy per shape
    (``jnp.array(copy=True)`` compiles one: ~10 ms each on the first call)."""
    try:
        return [jax.device_put(v, may_alias=False) for v in values]
    except TypeError:  # jax < 0.4.31 has no may_alias
        return [jax.numpy.array(v, copy=True) for v in values]
