"""Timers patched onto the library from outside (``benchmarks/first_call.py``):
nothing under ``loops/`` or ``backends/`` is edited; functions are wrapped by
name where the code looks them up, and a name that is not there (the library
changed) is listed in ``missing`` instead of failing the run.

Every wrapped call records its inclusive wall time under the path of wrapped
calls around it (per thread), so a phase's time can be asked for "under" an
ancestor; jax's compile events (``jax.monitoring``) are recorded the same way,
under the wrapped call that was running when jax traced, lowered or compiled.
"""

from __future__ import annotations

import functools
import inspect
import threading
import time
import types
from collections import defaultdict
from typing import Any, Callable

JAX_EVENTS = {"/jax/core/compile/jaxpr_trace_duration": "jax_trace",
              "/jax/core/compile/jaxpr_to_mlir_module_duration": "jax_lower",
              "/jax/core/compile/backend_compile_duration": "xla_compile"}


class Timers:
    """Inclusive times keyed by (label, path of enclosing labels)."""

    def __init__(self) -> None:
        self.records: dict[tuple[str, tuple[str, ...]], list[float]] = defaultdict(list)
        self.missing: list[str] = []
        self._local = threading.local()
        self._undo: list[Callable[[], None]] = []

    def _stack(self) -> list[str]:
        if not hasattr(self._local, "stack"):
            main = threading.current_thread() is threading.main_thread()
            self._local.stack = [] if main else [f"thread:{threading.current_thread().name}"]
        return self._local.stack

    def reset(self) -> None:
        self.records = defaultdict(list)

    def timed(self, fn: Callable[..., Any], label: str | Callable[..., str]) -> Callable[..., Any]:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            name = label(*args, **kwargs) if callable(label) else label
            stack = self._stack()
            path = tuple(stack)
            stack.append(name)
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.records[(name, path)].append(time.perf_counter() - start)
                stack.pop()

        wrapper.__wrapped_by_probe__ = True  # type: ignore[attr-defined]
        return wrapper

    def event(self, label: str, seconds: float) -> None:
        self.records[(label, tuple(self._stack()))].append(seconds)

    def wrap(self, owner: Any, attr: str, label: str | Callable[..., str],
             result: Callable[[Any], Any] | None = None) -> None:
        """Replaces ``owner.attr`` (a module function, a method, a static
        method) by a timed one; ``result`` post-processes what it returns."""
        where = f"{getattr(owner, '__name__', type(owner).__name__)}.{attr}"
        if not hasattr(owner, attr):
            self.missing.append(where)
            return
        raw = inspect.getattr_static(owner, attr) if isinstance(owner, type) else getattr(owner, attr)
        is_static = isinstance(raw, staticmethod)
        fn = raw.__func__ if is_static else raw
        if getattr(fn, "__wrapped_by_probe__", False):
            return
        timed = self.timed(fn, label)
        if result is not None:
            inner = timed

            @functools.wraps(fn)
            def timed(*args: Any, **kwargs: Any) -> Any:
                return result(inner(*args, **kwargs))

            timed.__wrapped_by_probe__ = True  # type: ignore[attr-defined]
        setattr(owner, attr, staticmethod(timed) if is_static else timed)
        self._undo.append(lambda: setattr(owner, attr, raw))

    def undo(self) -> None:
        while self._undo:
            self._undo.pop()()

    # ------------------------------------------------------------------ queries

    def total(self, label: str, under: str | None = None, first_only: bool = False) -> float:
        """Inclusive seconds of ``label`` (only where ``under`` encloses it)."""
        out = 0.0
        for (name, path), times in self.records.items():
            if name == label and (under is None or under in path):
                out += times[0] if first_only else sum(times)
        return out

    def count(self, label: str, under: str | None = None) -> int:
        return sum(len(t) for (name, path), t in self.records.items()
                   if name == label and (under is None or under in path))

    def as_json(self) -> list[dict[str, Any]]:
        return [{"label": name, "path": list(path), "calls": len(t), "seconds": sum(t), "first_s": t[0]}
                for (name, path), t in sorted(self.records.items(), key=lambda kv: -sum(kv[1]))]


_LISTENING: list[Timers | None] = []


def listen_jax(timers: Timers) -> None:
    """jax's compile events into ``timers`` (one listener per process: jax
    has no way to remove one, so a later call only redirects it)."""
    import jax.monitoring

    timers._undo.append(lambda: _LISTENING.__setitem__(0, None))
    if _LISTENING:
        _LISTENING[0] = timers
        return
    _LISTENING.append(timers)

    def listener(event: str, duration_secs: float, **kwargs: str | int) -> None:
        if event in JAX_EVENTS and _LISTENING[0] is not None:
            _LISTENING[0].event(JAX_EVENTS[event], duration_secs)

    jax.monitoring.register_event_duration_secs_listener(listener)


def install_trainer(timers: Timers, backend: str) -> None:
    """Timers on the Trainer's path from ``fit`` to the first step done."""
    import keras

    import loops
    from loops import backends, optimizers
    from loops.debug import diagnostics, hooks, traps
    from loops.trainer import checks, state, steps
    from loops.trainer import trainer as trainer_module

    mixin = steps.StepsMixin
    for attr, label in (("_step_fn", "step_fn"), ("_first_step", "first_step"),
                        ("_build_models", "build_models")):
        timers.wrap(mixin, attr, label)
    for module in (steps, trainer_module, state):
        timers.wrap(module, "discover_variables", "discover_variables")
    timers.wrap(optimizers, "prepare", "optimizer_prepare")
    timers.wrap(keras.optimizers.Adam, "build", "optimizer_build")
    timers.wrap(checks, "loss_shape_problems", "check_loss_shapes")
    timers.wrap(checks, "check_no_gradient", "check_no_gradient")
    timers.wrap(traps, "check_values", "check_traps")
    timers.wrap(traps, "record_loss", "check_record_loss")
    timers.wrap(hooks, "on_gradients", "debug_hooks")
    timers.wrap(diagnostics, "prepare", "debug_prepare")
    timers.wrap(loops.Trainer, "train_step", "train_step_body")
    engine = backends.get()
    timers.wrap(engine, "value_and_grad", "engine_value_and_grad")
    timers.wrap(engine, "make_runner", "make_runner")
    timers.wrap(engine._Runner, "compile", "runner_compile", result=lambda step: first_call_split(timers, step))
    if backend == "jax":
        timers.wrap(engine, "_live_inputs", "check_unused_liveness")
        listen_jax(timers)
    if backend == "torch":
        install_torch_capture(timers)
    if backend == "tensorflow":
        install_autograph(timers)


def install_autograph(timers: Timers) -> None:
    """autograph's source conversion (AST transforms of each function a
    ``tf.function`` calls, cached per function for the process)."""
    from tensorflow.python.autograph.impl import api

    timers.wrap(api, "_convert_actual", "tf_autograph_convert")


def first_call_split(timers: Timers, fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn`` timed as ``compiled_call``; a ``tf.function`` is traced first
    by ``get_concrete_function`` (timed as ``tf_trace_all``: autograph and
    graph building), so the call's own time is what follows: graph
    optimization (grappler), instantiation and the run."""
    if not hasattr(fn, "get_concrete_function"):
        return timers.timed(fn, "compiled_call")
    traced = [False]

    def call(*args: Any, **kwargs: Any) -> Any:
        if not traced[0]:
            traced[0] = True
            timers.timed(fn.get_concrete_function, "tf_trace_all")(*args, **kwargs)
        return fn(*args, **kwargs)

    return timers.timed(call, "compiled_call")


def install_torch_capture(timers: Timers) -> None:
    import copy

    import torch

    from loops.backends.torch import capture, executors, graph_passes

    timers.wrap(capture.CapturedStep, "_capture", "capture_total")
    timers.wrap(capture, "make_fx", "capture_make_fx",
                result=lambda tracer: timers.timed(tracer, "capture_make_fx_run"))
    timers.wrap(graph_passes, "simplify", "graph_simplify")
    timers.wrap(graph_passes, "relayout", "graph_relayout")
    timers.wrap(executors, "torchscript", "torchscript_trace")
    timers.wrap(executors, "best_times", "executor_race")
    timers.wrap(capture.CapturedStep, "_reproduces",
                lambda graph, *a, **k: "reproduce_fx" if isinstance(graph, torch.fx.GraphModule) else "reproduce_ts")
    if hasattr(capture, "copy"):
        original = capture.copy
        capture.copy = types.SimpleNamespace(deepcopy=timers.timed(copy.deepcopy, "graph_deepcopy"))
        timers._undo.append(lambda: setattr(capture, "copy", original))
    else:
        timers.missing.append("capture.copy")


def install_keras(timers: Timers, backend: str, model: Any) -> None:
    """Timers on ``model.fit``'s path to the first step done."""
    import keras
    from keras.src.trainers import trainer as keras_trainer

    timers.wrap(keras_trainer.Trainer, "_symbolic_build", "keras_symbolic_build")
    timers.wrap(keras.optimizers.Adam, "build", "optimizer_build")
    model.train_step = timers.timed(model.train_step, "train_step_body")
    make = model.make_train_function

    def make_train_function(*args: Any, **kwargs: Any) -> Any:
        out = make(*args, **kwargs)
        fn = model.train_function
        if fn is not None and not getattr(fn, "__wrapped_by_probe__", False):
            model.train_function = first_call_split(timers, fn)
        return out

    model.make_train_function = timers.timed(make_train_function, "make_train_function")
    if backend == "jax":
        listen_jax(timers)
    if backend == "tensorflow":
        install_autograph(timers)
