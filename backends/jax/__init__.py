"""JAX engine: the whole step under one ``jax.jit``, made pure with
``keras.StatelessScope``; state is donated and stays on device between steps.

Owns everything jax: this module (the protocol functions), ``distributed.py``
(``keras.distribution`` data parallelism) and ``optax.py`` (an optax
transformation as a Keras optimizer). May import jax, keras, numpy and
``loops._keras_private``.
"""

from __future__ import annotations

import contextlib
import functools
import os
import warnings
from typing import Any, Callable, Sequence

import jax
import keras
import numpy as np

from . import distributed as _dp
from . import first_call as _first_call
from .distributed import data_parallel, replicas  # noqa: F401  (protocol functions)

NAME = "jax"


class _Runner:
    def __init__(self, variables: Sequence[keras.Variable]):
        self.variables = list(variables)
        # Current values while compiled steps run; None means "the variables
        # hold the truth" (after a sync, or before the first step).
        self._values: list[Any] | None = None
        self._held: list[Any] = []  # the arrays the variables held when the values were read

    def compile(self, fn: Callable[[Any], Any], *, eager: bool, jit_compile: bool,
                on_trace: Callable[[Any], None] | None = None, kind: str = "train",
                checks: bool = False) -> Callable[[Any], Any]:
        del kind  # outputs are global arrays with or without a distribution
        distribution = _dp.current()  # keras.distribution (the loop runs in its scope)
        if eager or not jit_compile:
            def eager_step(batch: Any) -> Any:
                self.sync()
                return fn(to_native(batch))  # to_step_input may have left host arrays

            return eager_step

        variables = self.variables

        gate = _first_call.Gate() if checks else None

        def pure(values: list[Any], batch: Any) -> tuple[Any, ...]:
            if on_trace is not None:
                on_trace(batch)  # this Python runs only while jax.jit traces
            mapping = list(zip(variables, values))
            with contextlib.ExitStack() as stack:
                staged = stack.enter_context(gate.tracing()) if gate is not None else []
                scope = stack.enter_context(keras.StatelessScope(state_mapping=mapping, collect_losses=True))
                out = fn(batch)
            new = [scope.get_current_value(v) for v in variables]
            # With checks: what host_values staged, as extra outputs (Gate).
            return (out, new) if gate is None else (out, new, gate.outputs(staged))

        # Donated: the old state buffers are dead after each call, so nothing
        # may keep a reference to them (see sync()).
        if distribution is None:
            jitted = jax.jit(pure, donate_argnums=0)
        else:
            # State keeps its layout (replicated, or split by a LayoutMap); logs and
            # predictions come back replicated (readable on every host). The checks'
            # labels and predictions (Gate) as XLA lays them out (None: split as computed,
            # no all-gather per call; a fixed batch split would refuse the leading rows of
            # a wide output): the first call's checks read (gather) them once.
            shardings = (_dp.replicated(distribution), _dp.variable_shardings(distribution, variables))
            jitted = jax.jit(pure, donate_argnums=0, out_shardings=shardings if gate is None else shardings + (None,))

        def step(batch: Any) -> Any:
            if self._values is None:
                self._held = [v._value for v in variables]
                self._values = _distinct([v.value for v in variables])
                if distribution is not None:  # e.g. an optimizer built outside the distribution
                    self._values = _dp.place(distribution, variables, self._values)
            else:
                # A variable assigned since the last step (a callback holding a
                # layer, without reading `self.model`, which would sync) now holds
                # a new array: the next step starts from it, as on other engines.
                held = self._held
                for i, v in enumerate(variables):
                    if v._value is not held[i]:
                        self._values[i] = held[i] = v._value
            if gate is not None and not checked:
                return first_step(batch)
            out, self._values, *_ = jitted(self._values, batch)
            return out

        checked = False

        def first_step(batch: Any) -> Any:
            nonlocal checked
            assert gate is not None and self._values is not None
            try:
                out, self._values = _first_call.first_call(jitted, self._values, batch, gate)
            except BaseException:
                self._values = None  # the variables still hold the state before the call
                raise
            checked = True
            return out

        return step

    def expect(self, kind: str, calls: int | None) -> None:
        del kind, calls  # jax.jit compiles once, whatever the run's length

    def sync(self) -> None:
        if self._values is None:
            return
        for v, value in zip(self.variables, self._values):
            v.assign(value)
        # The variables now hold the live buffers; the next step re-reads them
        # (so a callback may also assign new values in between).
        self._values = None


def _distinct(values: list[Any]) -> list[Any]:
    """Copies a buffer that more than one variable holds: ``a.assign(b)``
    makes both hold ``b``'s array (keras.callbacks.SwapEMAWeights does), and
    one buffer cannot be donated twice."""
    seen: set[int] = set()
    out = []
    for value in values:
        if id(value) in seen:
            value = jax.numpy.array(value, copy=True)
        seen.add(id(value))
        out.append(value)
    return out


def make_runner(variables: Sequence[keras.Variable]) -> _Runner:
    return _Runner(variables)


def _live_inputs(fn: Callable[..., Any], *args: Any) -> list[bool]:
    """Which leaves of ``args`` the scalar output of ``fn`` depends on."""
    return _first_call.live_inputs(jax.make_jaxpr(fn)(*args).jaxpr, 1)


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

    carried: list[Any] = []  # what host_values staged inside fn (a checked step being traced)

    def pure(wrt_values: list[Any], input_values: list[Any],
             other_values: list[Any]) -> tuple[Any, tuple[Any, list[Any], list[Any]]]:
        mapping = list(zip(wrt, wrt_values)) + list(zip(others, other_values))
        with _first_call.inner() as staged, \
                keras.StatelessScope(state_mapping=mapping, collect_losses=True) as scope:
            out = fn(*input_values)
        loss, aux = out if has_aux else (out, None)
        carried[:] = staged
        return loss, (aux, [scope.get_current_value(v) for v in others],
                      [t for _, ts in staged for t in ts])

    args = ([v.value for v in wrt], list(inputs), [v.value for v in others])
    if _first_call.abstract():  # the first step's checks, only traced: forward only
        (loss, (aux, new_others, staged)), grads, live = _first_call.forward_only(pure, *args)
    else:
        (loss, (aux, new_others, staged)), (var_grads, input_grads) = jax.value_and_grad(
            pure, argnums=(0, 1), has_aux=True)(*args)
        grads = list(var_grads) + list(input_grads)
        live = _live_inputs(lambda w, i: pure(w, i, args[2])[0], *args[:2]) if detect_unused else []
    _first_call.restage(carried, staged)
    for v, value in zip(others, new_others):
        v.assign(value)
    if detect_unused:
        grads = [g if used else None for g, used in zip(grads, live)]
    return ((loss, aux) if has_aux else loss), grads


def traces(eager: bool, jit_compile: bool) -> bool:
    return not eager and jit_compile


def tracing() -> bool:
    return True  # a compiled step's Python runs only under jax.jit's trace


def host_values(fn: Callable[..., None], tensors: Sequence[Any]) -> None:
    tensors = list(tensors)
    traced = any(isinstance(t, jax.core.Tracer) for t in tensors)
    gate = _first_call.current() if traced else None
    if gate is not None:  # a checked step being compiled: fn runs after its first call
        gate.stage(fn, tensors)  # (as laid out: the first call's values are gathered once, see Gate)
        return
    if traced and _first_call.abstract():
        return  # the checks' abstract trace: nothing to read (the compiled first call is checked)
    if jax.process_count() > 1:  # global arrays span processes: every process sees all of each value
        tensors = _dp.everywhere(tensors)  # (tracers stay tracers: an eager value_and_grad's)
    if not traced:
        fn(*[np.asarray(t) for t in tensors])
        return
    # Inside jax.value_and_grad (eager) the values are tracers; a debug callback
    # receives their concrete values at once. Its exceptions are re-raised here.
    errors: list[BaseException] = []

    def callback(*arrays: Any) -> None:
        try:
            fn(*[np.asarray(a) for a in arrays])
        except Exception as e:  # noqa: BLE001 - re-raised below
            errors.append(e)

    jax.debug.callback(callback, *tensors)
    if errors:
        raise errors[0]


def _sparse_to_jax(batch: Any) -> Any:
    """SciPy / tf.SparseTensor leaves as jax BCOO (Keras's sparse input on jax)."""
    from loops._keras_private import is_sparse, sparse_to_jax

    leaves = keras.tree.flatten(batch)
    if not any(is_sparse(leaf) and not isinstance(leaf, jax.Array) for leaf in leaves):
        return batch
    return keras.tree.map_structure(lambda t: sparse_to_jax(t) if is_sparse(t) else t, batch)


def to_native(batch: Any) -> Any:
    # Steps see jax arrays (as on the other engines they see their tensors);
    # on the prefetch thread, so the copy overlaps the running step.
    return jax.device_put(_sparse_to_jax(batch))


@functools.cache
def _cpu_only() -> bool:
    return all(d.platform == "cpu" for d in jax.local_devices())


def compilation_cache(directory: str) -> str | None:
    # jax's persistent compilation cache, for every program: the compiled
    # steps and the op-by-op programs of eager code (each too quick to pass
    # jax's default one-second threshold).
    jax.config.update("jax_compilation_cache_dir", directory)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    if hasattr(jax.config, "jax_persistent_cache_min_entry_size_bytes"):
        jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return "XLA executables (jax's persistent compilation cache)"


def to_step_input(batch: Any) -> Any:
    # On CPU a compiled step takes the NumPy batch itself: jax.jit converts
    # its arguments in C++, ~75 us/step cheaper than jax.device_put's Python
    # path (tiny MLP, 2 cores). On an accelerator the copy is started here,
    # on the prefetch thread, to overlap the running step.
    if _cpu_only() and all(isinstance(leaf, (np.ndarray, jax.Array)) for leaf in jax.tree_util.tree_leaves(batch)):
        return batch
    return jax.device_put(_sparse_to_jax(batch))


def trace_only(fn: Callable[[Any], Any], batch: Any) -> bool:
    return _first_call.trace_only(fn, batch)


def outside_trace() -> contextlib.AbstractContextManager[None]:
    return jax.ensure_compile_time_eval()


def step_context() -> contextlib.AbstractContextManager[None]:
    return contextlib.nullcontext()


def checks_only() -> contextlib.AbstractContextManager[bool]:
    return contextlib.nullcontext(True)  # (trace_only's trace is forward only already)


def resolve_jit_compile(value: bool | str) -> bool:
    # As Keras: JAX compiles by default.
    return True if value == "auto" else bool(value)


def set_deterministic(enabled: bool) -> None:
    # XLA on CPU is deterministic already; on GPU the flag below makes
    # reductions and scatters deterministic. XLA reads it when jax first
    # initializes its backends, so it must be set before the first jax
    # computation (loops.set_seed at the top of the script).
    flag = "--xla_gpu_deterministic_ops=true"
    flags = [f for f in os.environ.get("XLA_FLAGS", "").split() if f != flag]
    if enabled:
        flags.append(flag)
    os.environ["XLA_FLAGS"] = " ".join(flags)
    try:
        from jax._src import xla_bridge

        initialized = xla_bridge.backends_are_initialized()
    except (ImportError, AttributeError):  # private API moved: cannot tell
        initialized = False
    if enabled and initialized and any(d.platform != "cpu" for d in jax.devices()):
        warnings.warn(
            "loops.set_seed(deterministic=True) was called after jax initialized its GPU backend, so "
            "XLA_FLAGS=--xla_gpu_deterministic_ops=true may not take effect. Call it at the start of "
            "the program, before any jax computation.", stacklevel=3)


def _loss_scale_apply(optimizer: Any, grads: Sequence[Any],
                      trainable_variables: Sequence[keras.Variable] | None = None) -> None:
    """``LossScaleOptimizer.apply`` without stateful branches: its ``cond``
    over assigning functions would leak tracers out of ``jax.jit``, so it goes
    through ``stateless_apply`` (what Keras's own JAX trainer calls)."""
    # The inner optimizer's variable list and index: the wrapper's own are the
    # same from Keras 3.12 on, and empty before (its build() skipped super().build)
    inner = optimizer.inner_optimizer
    built = inner._trainable_variables
    if trainable_variables is None:
        full = list(grads)
    else:
        full = [None] * len(built)
        for g, v in zip(grads, trainable_variables):
            full[inner._get_variable_index(v)] = g
    opt_vars = optimizer.variables
    new_trainable, new_opt = optimizer.stateless_apply(
        [v.value for v in opt_vars], full, [v.value for v in built])
    for v, value in zip(built, new_trainable):
        v.assign(value)
    for v, value in zip(opt_vars, new_opt):
        v.assign(value)


def prepare_optimizer(optimizer: Any) -> None:
    if isinstance(optimizer, keras.optimizers.LossScaleOptimizer) and "_common_apply" not in vars(optimizer):
        optimizer._common_apply = functools.partial(_loss_scale_apply, optimizer)


def wrap_native_optimizer(native: Any, options: dict[str, Any]) -> Any:
    from . import optax as _optax

    if _optax.is_transformation(native):
        return _optax.OptaxOptimizer(native, **options)
    return None


def loop_steps(step: Callable[[Any], Any], variables: Sequence[keras.Variable]) -> Callable[[Any], Any]:
    variables = list(variables)

    def run(stacked: Any) -> Any:
        carried: list[Any] = []  # what the first step's value checks staged in the body (Gate)

        # Runs inside the compiled step's StatelessScope: the carry starts from
        # (and ends in) the values that scope maps the variables to.
        def body(values: list[Any], batch: Any) -> tuple[list[Any], Any]:
            with _first_call.inner() as staged, \
                    keras.StatelessScope(state_mapping=list(zip(variables, values)), collect_losses=True) as scope:
                logs = step(batch)
            carried[:] = staged
            return [scope.get_current_value(v) for v in variables], (logs, [t for _, ts in staged for t in ts])

        values, (logs, staged) = jax.lax.scan(body, [v.value for v in variables], stacked)
        for v, value in zip(variables, values):
            v.assign(value)
        # A checked step: the checks read the loop's first step (its batch is the one traced for them).
        _first_call.restage(carried, [t[0] for t in staged])
        return jax.tree_util.tree_map(lambda t: t[-1], logs)

    return run


def prefetch_default() -> int:
    # On CPU the prefetch thread's device_put is a host copy that competes
    # with XLA's own threads (measured: ~5% slower per MLP step on 2 cores);
    # on an accelerator it overlaps the transfer with the running step.
    return 0 if _cpu_only() else 1


def rng_state() -> dict[str, Any]:
    return {}  # Keras on jax draws only from SeedGenerator variables (saved with the state)


def set_rng_state(state: dict[str, Any]) -> None:
    del state


def take_rows(leaf: Any, index: Any) -> Any:
    return leaf[index]


def concat_rows(parts: Sequence[Any]) -> Any:
    return np.concatenate(parts, axis=0)
