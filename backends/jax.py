"""JAX engine: the whole step under one ``jax.jit``, made pure with
``keras.StatelessScope``; state is donated and stays on device between steps.
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Sequence

import jax
import keras

NAME = "jax"


class _Runner:
    def __init__(self, variables: Sequence[keras.Variable]):
        self.variables = list(variables)
        # Current values while compiled steps run; None means "the variables
        # hold the truth" (after a sync, or before the first step).
        self._values: list[Any] | None = None

    def compile(self, fn: Callable[[Any], Any], *, eager: bool, jit_compile: bool) -> Callable[[Any], Any]:
        if eager or not jit_compile:
            def eager_step(batch: Any) -> Any:
                self.sync()
                return fn(batch)

            return eager_step

        variables = self.variables

        def pure(values: list[Any], batch: Any) -> tuple[Any, list[Any]]:
            mapping = list(zip(variables, values))
            with keras.StatelessScope(state_mapping=mapping, collect_losses=True) as scope:
                out = fn(batch)
            return out, [scope.get_current_value(v) for v in variables]

        # Donated: the old state buffers are dead after each call, so nothing
        # may keep a reference to them (see sync()).
        jitted = jax.jit(pure, donate_argnums=0)

        def step(batch: Any) -> Any:
            if self._values is None:
                self._values = [v.value for v in variables]
            out, self._values = jitted(self._values, batch)
            return out

        return step

    def sync(self) -> None:
        if self._values is None:
            return
        for v, value in zip(self.variables, self._values):
            v.assign(value)
        # The variables now hold the live buffers; the next step re-reads them
        # (so a callback may also assign new values in between).
        self._values = None


def make_runner(variables: Sequence[keras.Variable]) -> _Runner:
    return _Runner(variables)


def _live_inputs(fn: Callable[..., Any], *args: Any) -> list[bool]:
    """Which leaves of ``args`` the scalar output of ``fn`` depends on (a
    backward liveness walk over the jaxpr; calls into sub-jaxprs count as using
    all of their inputs, so this may miss an unused input but never invents one)."""
    jaxpr = jax.make_jaxpr(fn)(*args).jaxpr
    live = {id(v) for v in jaxpr.outvars if not hasattr(v, "val")}
    for eqn in reversed(jaxpr.eqns):
        if any(id(o) in live for o in eqn.outvars):
            live.update(id(v) for v in eqn.invars if not hasattr(v, "val"))
    return [id(v) in live for v in jaxpr.invars]


def value_and_grad(
    fn: Callable[..., Any],
    variables: Sequence[keras.Variable],
    *,
    inputs: Sequence[Any] = (),
    has_aux: bool,
    state: Sequence[keras.Variable],
    detect_unused: bool = False,
) -> tuple[Any, list[Any]]:
    wrt = list(variables)
    wrt_ids = {id(v) for v in wrt}
    # Every other variable is threaded through too: scopes do not chain, so an
    # inner scope mapping only `wrt` would read stale values of the rest, and
    # assigning to an outer scope from inside the traced function leaks tracers.
    others = [v for v in state if id(v) not in wrt_ids]

    def pure(wrt_values: list[Any], input_values: list[Any],
             other_values: list[Any]) -> tuple[Any, tuple[Any, list[Any]]]:
        mapping = list(zip(wrt, wrt_values)) + list(zip(others, other_values))
        with keras.StatelessScope(state_mapping=mapping, collect_losses=True) as scope:
            out = fn(*input_values)
        loss, aux = out if has_aux else (out, None)
        return loss, (aux, [scope.get_current_value(v) for v in others])

    wrt_values = [v.value for v in wrt]
    input_values = list(inputs)
    other_values = [v.value for v in others]
    (loss, (aux, new_others)), (var_grads, input_grads) = jax.value_and_grad(
        pure, argnums=(0, 1), has_aux=True)(wrt_values, input_values, other_values)
    for v, value in zip(others, new_others):
        v.assign(value)
    grads = list(var_grads) + list(input_grads)
    if detect_unused:
        live = _live_inputs(lambda w, i: pure(w, i, other_values)[0], wrt_values, input_values)
        grads = [g if used else None for g, used in zip(grads, live)]
    return ((loss, aux) if has_aux else loss), grads


def traces(eager: bool, jit_compile: bool) -> bool:
    return not eager and jit_compile


def to_native(batch: Any) -> Any:
    # Steps see jax arrays (as on the other engines they see their tensors);
    # on the prefetch thread, so the copy overlaps the running step.
    return jax.device_put(batch)


def step_context() -> contextlib.AbstractContextManager[None]:
    return contextlib.nullcontext()


def resolve_jit_compile(value: bool | str) -> bool:
    # As Keras: JAX compiles by default.
    return True if value == "auto" else bool(value)
