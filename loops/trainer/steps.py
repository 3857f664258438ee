"""Compiling steps: building unbuilt models, the first-step checks, the step cache.

``StepsMixin._step_fn(kind, sample)`` is where a ``train_step``/``test_step``/
``predict_step`` (the default ones or a subclass's) becomes the function the
loop calls: on first use the models are built (symbolically for the default
steps, by one discarded eager pass for a custom step), the step runs once
eagerly with every state change discarded (optimizers build, checks on
shapes, gradients and stray variables run), the variables are collected, and
the engine compiles the step (``Runner.compile``; ``loop_steps`` for
``steps_per_execution``); it compiles again only when the variables or the
compile options change.

May import: keras, ``loops.backends`` (through ``self._engine``), the debug,
data and distributed packages, ``loops._keras_private``.
"""

from __future__ import annotations

import builtins
import contextlib
import os
import sys
import warnings
from typing import Any, Callable, Iterator, Sequence

import keras

from loops import distributed as _distributed
from loops import neutral_random
from loops import optimizers as _optimizers
from loops._keras_private import (compute_output_spec, is_ragged, is_sparse, outside_stateless_scope,
                                  pending_variables)
from loops.data import padding as _padding
from loops.debug import diagnostics as _debug
from loops.debug import nans as _nans
from loops.trainer import checks as _checks
from loops.trainer.state import Held, StateMixin, build_default_optimizer, discover_variables


class _ReadThroughScope(keras.StatelessScope):
    """A throwaway scope whose reads of variables not assigned in it see the
    variables' values. Keras's own scope answers None for them, which
    ``Layer.losses`` hands to weight regularizers as the weight."""

    def __init__(self, collect_losses: bool = False) -> None:
        super().__init__(collect_losses=collect_losses)
        self._reading = False

    def get_current_value(self, variable: Any) -> Any:
        value = self.state_mapping.get(id(variable))
        if value is not None or self._reading:
            return value  # (re-entered from variable.value below: its own storage)
        self._reading = True
        try:
            return variable.value
        finally:
            self._reading = False


class _RecordingScope(_ReadThroughScope):
    """A throwaway scope that remembers every variable a step assigns."""

    def __init__(self) -> None:
        # No mapping: reads see the real variables (engines key optimizer slots
        # by the real variable objects), assigns are recorded and then dropped.
        super().__init__(collect_losses=True)
        self.assigned: dict[int, keras.Variable] = {}

    def add_update(self, update: tuple[keras.Variable, Any]) -> None:
        self.assigned[id(update[0])] = update[0]
        super().add_update(update)


_LOOPS_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@contextlib.contextmanager
def _own_warnings_only() -> Iterator[None]:
    """A discarded pass runs the user's code once more than Keras does: the
    warnings it raises come again from the real step. Only the Trainer's own
    (its checks', raised in this pass alone) are passed on."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield
    for w in caught:
        if w.category.__module__.startswith("loops.") or os.path.abspath(w.filename).startswith(_LOOPS_DIR):
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno, source=w.source)


def _build_only(optimizer: keras.optimizers.Optimizer, building: bool = False,
                outside_trace: Callable[[], Any] = contextlib.nullcontext) -> Callable[..., None]:
    def apply(grads: Sequence[Any], trainable_variables: Sequence[keras.Variable] | None = None) -> None:
        if building:
            return  # the models are still being built: the variables are not all there yet
        if not optimizer.built:
            if trainable_variables is None:
                raise ValueError(
                    f"Optimizer {optimizer.name!r} is applied before it was built and without "
                    "variables: call optimizer.apply(grads, variables).")
            # (its slots get values even while the first step is only traced, or runs in a throwaway scope)
            with outside_trace(), outside_stateless_scope():
                optimizer.build(list(trainable_variables))

    return apply


_CREATED_IN_STEP = (
    "The step creates variable(s) {names} that the Trainer does not hold: a variable made inside "
    "train_step is made anew at every call (and under jit its state is lost). Create layers, "
    "variables and metrics in __init__ and keep them as attributes.")


def _warn_on_print(body: Callable[[Any], Any], kind: str, tracing: Callable[[], bool]) -> Callable[[Any], Any]:
    """Wraps a compiled step's Python body so that ``print`` inside it warns
    while the step is traced: the body runs then, not at every step."""

    def traced(batch: Any) -> Any:
        original = builtins.print

        def print_once(*args: Any, sep: str = " ", end: str = "\n", file: Any = None, flush: bool = False) -> None:
            if not tracing():  # an engine ran this body eagerly after all (a torch step it could not capture)
                original(*args, sep=sep, end=end, file=file, flush=flush)
                return
            warnings.warn(
                f"print() inside a compiled {kind}_step runs only while the step is traced (once), "
                "not at every step. Pass Trainer(..., run_eagerly=True) to debug with print, or "
                "return the value in the step's logs.", stacklevel=2)
            # Written out rather than calling the real print: tf.function's
            # autograph routes print back through builtins.print (recursion).
            (file or sys.stdout).write(sep.join(map(str, args)) + end)

        builtins.print = print_once  # type: ignore[assignment]
        try:
            return body(batch)
        finally:
            builtins.print = original

    return traced


def _eager_loop(step: Callable[[Any], Any]) -> Callable[[Any], Any]:
    def run(stacked: Any) -> Any:
        logs = None
        for batch in _padding.unstack(stacked):
            logs = step(batch)
        return logs

    return run


def _in_shard(body: Callable[[Any], Any], native: Any) -> Callable[[Any], Any]:
    """A data-parallel step that sees one shard of the global batch: tells
    neutral random draws which shard (``neutral_random.replica_shard``)."""

    def run(batch: Any) -> Any:
        data, _ = _padding.unwrap(batch)
        leaves = [t for t in keras.tree.flatten(data) if t is not None and len(getattr(t, "shape", ())) > 0]
        rows = leaves[0].shape[0] if leaves else None
        if not isinstance(rows, int):
            return body(batch)
        with neutral_random.replica_shard(native.replica_index(), native.replicas_in_step, rows):
            return body(batch)

    return run


def resolve_jit_compile(engine: Any, value: bool | str, models: Sequence[Any], warn: bool = False) -> bool:
    """``jit_compile`` as Keras resolves it: the engine's default for "auto", but none (True too, warned)
    where a layer has ``supports_jit=False`` (lookups run TensorFlow on host arrays; jax: uncompiled)."""
    resolved = bool(engine.resolve_jit_compile(value))
    if resolved and not all(getattr(layer, "supports_jit", True) for m in models
                            for layer in m._flatten_layers(include_self=True)):
        if warn and value is True:
            warnings.warn("A layer of the model has supports_jit=False (the lookup layers): the steps run with "
                          "jit_compile=False, as Keras runs them.", stacklevel=3)
        return False
    return resolved


class StepsMixin(StateMixin):
    """Turns the trainer's steps into compiled functions (see the module docstring)."""

    # Provided by Trainer and its other parts:
    _engine: Any
    _optimizer_options: dict[str, Any]
    _runner_key: Any
    _state: list[keras.Variable]
    _building: bool
    _in_first_step: bool
    _reach_known: bool
    _reach_check: str | None
    _value_checks_traced: bool
    model: keras.Model | None
    jit_compile: Any
    run_eagerly: bool
    steps_per_execution: int
    train_step: Callable[[Any], Any]
    test_step: Callable[[Any], Any]
    predict_step: Callable[[Any], Any]
    _call_model: Callable[..., Any]
    _uses_default: Callable[[str], bool]

    def _unbuilt(self) -> list[keras.Layer]:
        return [m for m in self.models
                if not all(layer.built for layer in m._flatten_layers(include_self=True))]

    def _build_models(self, step: Callable[[Any], Any], batch: Any, kind: str, abstract: bool = False) -> None:
        """Builds models that are still unbuilt (a subclassed ``keras.Model``,
        a ``Sequential`` without ``keras.Input``) on the first batch, as
        ``model.fit`` does, so that the step sees their variables.

        The default steps' model is built symbolically (``compute_output_spec``
        on the batch's shapes, Keras's own way: no computation); anything still
        unbuilt after that (the models of a custom step) by one eager pass of
        the step whose state changes are all discarded.
        """
        if not self._unbuilt():
            return
        if self.model is not None and self._uses_default(kind) and self.model in self._unbuilt():
            data, _ = _padding.unwrap(batch)
            x, _, _ = keras.utils.unpack_x_y_sample_weight(data)
            symbolic = keras.tree.map_structure(
                lambda t: None if t is None else keras.KerasTensor(
                    tuple(t.shape), keras.backend.standardize_dtype(t.dtype), sparse=is_sparse(t),
                    ragged=is_ragged(t)), x)
            compute_output_spec(self._call_model, symbolic, False)
        if not self._unbuilt():
            return
        optimizers = self.optimizers
        for opt in optimizers:
            opt.apply = _build_only(opt, building=True)
        self._building = True
        try:
            with self._engine.step_context(), _ReadThroughScope(), _own_warnings_only():
                try:
                    if not (abstract and self._engine.trace_only(step, batch)):
                        step(batch)
                except Exception:
                    # The step failed on this pass's stand-ins (zero gradients; no
                    # variables yet when it listed them): built is all it is for,
                    # and the checked first step runs it again on the real ones.
                    if self._unbuilt():
                        raise
        finally:
            self._building = False
            for opt in optimizers:
                vars(opt).pop("apply", None)
        self._metrics_cache = None

    def _first_step(self, step: Callable[[Any], Any], batch: Any, kind: str = "train",
                    abstract: bool = False, forward_only: bool = False) -> bool:
        """Runs ``step`` once with every state change discarded: eagerly, or
        with ``abstract`` only traced where the engine can (``trace_only``;
        jax, whose eager step costs more than compiling the step). Returns
        whether it was only traced: the checks on values (label ranges,
        ``from_logits``) then go into the compiled step's first call. With
        ``forward_only`` an eager run skips the backward pass where the engine
        can (``checks_only``: torch); a step that fails on the zero gradients
        it then gets runs again, differentiated.

        It builds whatever is still unbuilt (model, compiled metrics, any
        optimizer, whose variables exist only after ``build``) before the state
        is collected for compilation, and it runs the one-time checks: shapes,
        variables without a gradient, and variables the step assigns that the
        trainer cannot see (under jax.jit their updates would be lost).
        """
        _debug.prepare(self)  # grad_diagnostics' metric, before the state is collected
        self._build_models(step, batch, kind, abstract)
        self._state = discover_variables(self)
        # The Trainer's optimizer options on every optimizer (custom steps' too), before anything builds.
        _optimizers.prepare(self.optimizers, self._optimizer_options)
        if kind == "train":
            build_default_optimizer(self)  # outside any trace, as Keras's symbolic build
        # Optimizers only build here: their updates are engine-specific writes no scope can intercept.
        optimizers = self.optimizers
        for opt in optimizers:
            opt.apply = _build_only(opt, outside_trace=self._engine.outside_trace)  # shadows the method
        self._in_first_step = True

        def attempt(zero_grads: bool) -> tuple[bool, _RecordingScope, list[keras.Variable]]:
            checks = self._engine.checks_only() if zero_grads else contextlib.nullcontext(True)
            with self._engine.step_context(), checks as reach_known, _RecordingScope() as scope, \
                    _own_warnings_only():
                self._reach_known = reach_known
                try:
                    traced = abstract and self._engine.trace_only(step, batch)
                    if not traced:
                        step(batch)
                except ValueError as e:
                    if "create a variable while in a stateless scope" in str(e):
                        raise ValueError(_CREATED_IN_STEP.format(names="(one from a value)")) from e
                    raise
                return traced, scope, pending_variables()

        try:
            try:
                traced, scope, created = attempt(forward_only)
            except Exception:
                if not forward_only:
                    raise
                # (a step that cannot take zero gradients: a Cholesky of their outer product)
                traced, scope, created = attempt(False)
        finally:
            self._in_first_step = False
            for opt in optimizers:
                vars(opt).pop("apply", None)
        # Zero gradients for every target (tensorflow's checks_only): which variables
        # the loss reaches is checked where the step is next traced or run.
        self._reach_check = None if self._reach_known else "pending"
        self._reach_known = True
        known = {id(v) for v in discover_variables(self)}
        transient = [v for v in created if id(v) not in known]
        if transient:
            names = ", ".join(f"{v.path} {tuple(v.shape)}" for v in transient)
            raise ValueError(_CREATED_IN_STEP.format(names=names))
        stray = [v for i, v in scope.assigned.items() if i not in known]
        if stray:
            names = ", ".join(f"{v.path} {tuple(v.shape)}" for v in stray)
            raise ValueError(
                f"The step assigns variable(s) {names} that the Trainer cannot see. Under jax.jit the "
                "update would be lost (a SeedGenerator would give the same noise every step). Make the "
                "owner an attribute of the Trainer (self.noise = keras.random.SeedGenerator(0)) or of a "
                "layer the Trainer holds."
            )
        return traced

    def _step_fn(self, kind: str, sample: Any) -> Callable[[Any], Any]:
        """The compiled function for ``kind``, built on first use (and again
        when the set of variables or the compile options change)."""
        user_step = {"train": self.train_step, "test": self.test_step, "predict": self.predict_step}[kind]
        self._models_cache = Held(self.models)  # (a model may have been replaced since the last run)

        value_checks = [False]  # the first step was only traced: its value checks go in the compiled step

        def run(batch: Any) -> Any:
            # A step may return a keras.Variable (a metric's result()); return its value.
            return keras.tree.map_structure(
                lambda t: t.value if isinstance(t, keras.Variable) else t,
                _debug.with_gradient_stats(self, kind, user_step(batch)))

        def step(batch: Any) -> Any:
            reach = self._reach_check == "pending"
            if not value_checks[0] and not reach:
                return run(batch)  # (eager torch steps take this path at every call)
            self._value_checks_traced = value_checks[0]
            if reach:
                self._reach_check = "now"
            try:
                return run(batch)
            finally:
                self._value_checks_traced = False
                if reach:
                    self._reach_check = None

        jit = self._resolve_jit_compile()
        if kind not in self._step_fns or self._runner_key != self._key(jit):
            self._sync()
            eager = bool(self.run_eagerly)
            try:
                # (steps_per_execution: the loop's first step carries the value
                # checks' tensors out of the loop: loop_steps)
                value_checks[0] = self._first_step(step, self._engine.to_native(sample), kind,
                                                   abstract=not eager and jit, forward_only=True)
            except Exception as e:
                _checks.explain_string_inputs(sample, e)  # raises a clear error if strings were the cause
                raise
            key = self._key(jit)
            if key != self._runner_key:
                self._runner = self._engine.make_runner(self._state)
                self._runner_key = key
                self._step_fns = {}
            body: Callable[[Any], Any] = step
            if self.steps_per_execution > 1 and kind != "predict":
                # k steps over batches stacked on a leading axis, in one call:
                # lax.scan (jax), tf.while_loop (tensorflow), a Python loop (torch, eager).
                # (a step the engine does not trace, jax uncompiled, loops in Python, as Keras's)
                body = (_eager_loop(step) if eager or not self._engine.traces(eager, jit)
                        else self._engine.loop_steps(step, self._state))
            if self._engine.traces(eager, jit):
                body = _warn_on_print(body, kind, self._engine.tracing)  # its Python runs only while tracing
            replicas = _distributed.current(self)
            if replicas.native is not None and replicas.native.replicas_in_step > 1:
                body = _in_shard(body, replicas.native)  # neutral random draws: the global batch's
            many = self.steps_per_execution > 1 and kind != "predict"
            # (the trace counter describes a stacked execution's shapes as they are)
            compiled = self._runner.compile(body, eager=eager, jit_compile=jit, kind=kind,
                                            on_trace=_debug.trace_counter(self, kind, False),
                                            checks=value_checks[0])
            self._step_fns[kind] = _nans.guard(self, kind, compiled, step, many)  # debug_nans
        return self._step_fns[kind]

    def _resolve_jit_compile(self) -> bool:
        return resolve_jit_compile(self._engine, self.jit_compile, self.models)

    def _key(self, jit: bool) -> tuple[Any, ...]:
        self._state = discover_variables(self)
        self._metrics_cache = None  # attributes or built metrics may have changed
        self._models_cache = Held(self.models)
        return (tuple(id(v) for v in self._state), bool(self.run_eagerly), jit, self.steps_per_execution,
                _distributed.current(self).key)  # data parallel or not: steps compile differently
