"""The first step's checks without an eager step.

An eager jax step dispatches every operation as its own XLA program, each
compiled on first use: on a small MLP that is ~1.6 s of compiling before the
first step, against ~0.4 s for the whole step under ``jax.jit``. So the
first-step checks run in two halves that cost no eager step:

- ``trace_only``: the step is traced once by ``jax.make_jaxpr`` (shapes and
  dtypes, nothing computed or compiled). Everything the checks learn from
  structure happens there: optimizers build, shapes, variables without a
  gradient, variables the step creates or assigns behind the Trainer's back.
- ``Gate``: the checks that need values (label ranges, ``from_logits``)
  take the labels and the predictions (a leading slice where they are wide)
  that the compiled step returns as extra outputs at every call. After the
  first call ``Gate.run`` calls the checks on them, so what they raise or
  warn comes from the caller's thread, and the runner keeps the variables
  as they were if they raise. Later calls ignore those outputs. Under a
  distribution they stay split as computed; a multi-process run gathers
  them once, so every process checks (and fails) alike.
"""

from __future__ import annotations

import contextlib
import threading
from typing import Any, Callable, Iterator, Sequence

import jax
import numpy as np

_tracing = threading.local()  # .gate: the Gate of the checked step being traced on this thread

_TRACER_ERRORS = (jax.errors.ConcretizationTypeError, jax.errors.TracerArrayConversionError,
                  jax.errors.TracerIntegerConversionError,
                  jax.errors.UnexpectedTracerError)  # (a step keeping value_and_grad's inner values)


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

    _tracing.abstract = True
    try:
        jax.make_jaxpr(traced)(*[leaves[i] for i in arrays])
    except _TRACER_ERRORS:
        return False
    finally:
        _tracing.abstract = False
    return True


def abstract() -> bool:
    """Whether this thread is in ``trace_only``'s trace, where nothing is computed."""
    return bool(getattr(_tracing, "abstract", False))


def forward_only(pure: Callable[..., Any], *args: Any) -> tuple[Any, list[Any], list[bool]]:
    """``value_and_grad`` in ``trace_only``'s trace: ``(pure(*args), zero
    gradients for args[0] and args[1], which leaves of them the loss uses)``.
    ``pure`` is traced forward only, once (its Python runs as in a real step),
    and its jaxpr is replayed into the enclosing trace; that jaxpr also gives
    the liveness. Nothing in this trace is computed, and the optimizers only
    build, so the gradients' shapes are all that matters; the differentiation
    itself is traced once, by ``jax.jit``. (Half the cost of the checks'
    trace: forward with tangents, then a second forward trace for liveness.)"""
    _tracing.abstract = False  # a value_and_grad inside (second order) differentiates for real
    try:
        closed, shape = jax.make_jaxpr(pure, return_shape=True)(*args)
    finally:
        _tracing.abstract = True
    out = jax.core.eval_jaxpr(closed.jaxpr, closed.consts, *jax.tree_util.tree_leaves(args))
    out = jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(shape), out)
    zeros = lambda t: jax.numpy.zeros(np.shape(t), jax.numpy.result_type(t))  # noqa: E731
    grads = [jax.tree_util.tree_map(zeros, v) for v in list(args[0]) + list(args[1])]
    n = len(jax.tree_util.tree_leaves(args[:2]))
    return out, grads, live_inputs(closed.jaxpr, 1)[:n]


def live_inputs(jaxpr: Any, outputs: int) -> list[bool]:
    """Which inputs of ``jaxpr`` its first ``outputs`` outputs depend on (a
    backward walk; a call into a sub-jaxpr counts as using all of its inputs,
    so this may miss an unused input but never invents one)."""
    live = {id(v) for v in jaxpr.outvars[:outputs] if not hasattr(v, "val")}
    for eqn in reversed(jaxpr.eqns):
        if any(id(o) in live for o in eqn.outvars):
            live.update(id(v) for v in eqn.invars if not hasattr(v, "val"))
    return [id(v) in live for v in jaxpr.invars]


class Gate:
    """The value checks of one compiled step, run on its first call's values.

    ``host_values`` inside the step stages its tensors here; they leave the
    step as extra outputs (``value_and_grad`` carries those staged inside its
    function out through its aux), so the compiled program has no host
    callback: a callback, even one never taken, would cost jax's fast C++
    dispatch path (~0.4 ms a step on a small MLP). The extra outputs are the
    labels and predictions of each probabilistic loss: arrays the step computes
    anyway, which cost XLA no extra kernel (reductions would: ~20 ms of compile each)."""

    def __init__(self) -> None:
        self.sites: list[Callable[..., None]] = []  # each traced host_values call's fn
        self.levels: list[list[tuple[int, list[Any]]]] = []  # staged (site, tensors), per nesting
        self.layout: list[tuple[int, int]] = []  # the last trace's outputs: (site, tensor count)

    @contextlib.contextmanager
    def tracing(self) -> Iterator[list[tuple[int, list[Any]]]]:
        """While the step is traced: host_values stages here; yields what was staged."""
        saved = getattr(_tracing, "gate", None)
        _tracing.gate = self
        if not self.levels:  # a new trace (a retrace for new shapes): its own sites
            self.sites = []
        self.levels.append([])
        try:
            yield self.levels[-1]
        finally:
            self.levels.pop()
            _tracing.gate = saved

    def stage(self, fn: Callable[..., None], tensors: Sequence[Any]) -> None:
        self.sites.append(fn)
        self.levels[-1].append((len(self.sites) - 1, list(tensors)))

    def outputs(self, staged: list[tuple[int, list[Any]]]) -> list[Any]:
        """The staged tensors as a flat output list (the layout kept for ``run``)."""
        self.layout = [(site, len(tensors)) for site, tensors in staged]
        return [t for _, tensors in staged for t in tensors]

    def run(self, values: list[Any]) -> None:
        """Calls the checks on the first call's values, in trace order."""
        it = iter(values)
        for site, n in self.layout:
            self.sites[site](*[np.asarray(next(it)) for _ in range(n)])


@contextlib.contextmanager
def inner() -> Iterator[list[tuple[int, list[Any]]]]:
    """Around a nested trace (``value_and_grad``'s function): what it stages
    is yielded, to be carried out of it and handed to ``restage``."""
    gate = current()
    if gate is None:
        yield []
        return
    gate.levels.append([])
    try:
        yield gate.levels[-1]
    finally:
        gate.levels.pop()


def restage(staged: list[tuple[int, list[Any]]], tensors: list[Any]) -> None:
    """Stages ``tensors`` (the carried-out values of ``staged``) at the outer level."""
    gate = current()
    if gate is None or not staged:
        return
    it = iter(tensors)
    for site, ts in staged:
        gate.levels[-1].append((site, [next(it) for _ in ts]))


def current() -> Gate | None:
    """The Gate of the checked step being traced on this thread, if any."""
    gate = getattr(_tracing, "gate", None)
    return gate if gate is not None and gate.levels else None


def first_call(jitted: Callable[..., Any], before: list[Any], batch: Any, gate: Gate) -> tuple[Any, list[Any]]:
    """A checked step's first call: ``(outputs, new state)``, the value checks
    run. It does not consume the variables' buffers (copies are donated), so
    a check that raises leaves the model as it was; after it passes, the old
    buffers are deleted, as donation would have."""
    out, after, staged = jitted(copies(before), batch)
    try:
        gate.run(_readable(staged))
    except BaseException:
        for value in after:
            value.delete()
        raise
    for value in before:
        value.delete()
    return out, after


def _readable(values: list[Any]) -> list[Any]:
    """The staged values as this process can read them: where they span
    processes (a multi-process run), gathered whole, the same on every
    process, so the checks decide alike everywhere (a collective: every
    process's first call gets here, in the same order). Once per run: the
    compiled step leaves them split, as computed."""
    if jax.process_count() == 1:
        return values
    from .distributed import everywhere

    return everywhere(values)


def copies(values: list[Any]) -> list[Any]:
    """New buffers with the same contents, without a compiled copy per shape
    (``jnp.array(copy=True)`` compiles one: ~10 ms each on the first call)."""
    try:
        # Each value's own sharding where it is committed (a global array spans
        # processes), none where it is not: a copy committed to its device would
        # change the compiled step's cache key (jit keys on committedness), and
        # the next epoch, whose metrics reset to uncommitted zeros, compiled the
        # step again (a whole second XLA compile at every fit's second epoch).
        return [jax.device_put(v, v.sharding if _committed(v) else None, may_alias=False) for v in values]
    except TypeError:  # jax < 0.4.31 has no may_alias
        return [jax.numpy.array(v, copy=True) for v in values]


def _committed(value: Any) -> bool:
    return bool(getattr(value, "committed", getattr(value, "_committed", True)))
