"""TensorFlow engine: the step under ``tf.function`` (XLA on request),
gradients from ``tf.GradientTape``. Variables are stateful: nothing to sync.

Owns everything tensorflow: this module (the protocol functions) and
``distributed.py`` (``tf.distribute`` strategies). May import tensorflow,
keras, numpy and ``loops._keras_private``.
"""

from __future__ import annotations

import contextlib
import threading
from typing import Any, Callable, Iterator, Sequence

import keras
import numpy as np
import tensorflow as tf

from . import distributed as _dp
from .distributed import data_parallel, replicas  # noqa: F401  (protocol functions)

NAME = "tensorflow"

# Depth of value_and_grad calls on this thread (replicas run on threads of their
# own): only the outermost call's gradients are averaged over replicas.
_nesting = threading.local()


class _Runner:
    def __init__(self, variables: Sequence[keras.Variable]):
        self.variables = list(variables)

    def compile(self, fn: Callable[[Any], Any], *, eager: bool, jit_compile: bool,
                on_trace: Callable[[Any], None] | None = None, kind: str = "train",
                checks: bool = False) -> Callable[[Any], Any]:
        del checks  # trace_only never takes the first step here: its checks ran eagerly
        if tf.distribute.has_strategy():  # data parallel: the loop runs in the strategy's scope
            return _dp.compile_step(
                tf.distribute.get_strategy(), fn, eager=eager, jit_compile=bool(jit_compile), kind=kind,
                on_trace=None if on_trace is None else tf.autograph.experimental.do_not_convert(on_trace))
        if eager:
            return fn
        if on_trace is not None:
            fn = _calling_on_trace(fn, on_trace)
        # reduce_retracing: a ragged last batch gets one shape-generic trace
        # instead of one trace per distinct shape.
        return tf.function(fn, jit_compile=bool(jit_compile), reduce_retracing=True, autograph=False)

    def expect(self, kind: str, calls: int | None) -> None:
        del kind, calls  # a traced step pays its tracing once, whatever the run's length

    def sync(self) -> None:
        return None


def _calling_on_trace(fn: Callable[[Any], Any], on_trace: Callable[[Any], None]) -> Callable[[Any], Any]:
    def traced(batch: Any) -> Any:
        # This Python runs only while tf.function traces; autograph leaves
        # the callback as plain Python.
        tf.autograph.experimental.do_not_convert(on_trace)(batch)
        return fn(batch)

    return traced


def make_runner(variables: Sequence[keras.Variable]) -> _Runner:
    return _Runner(variables)


def value_and_grad(
    fn: Callable[..., Any],
    variables: Sequence[keras.Variable],
    *,
    inputs: Sequence[Any] = (),
    has_aux: bool,
    state: Sequence[keras.Variable],
    detect_unused: bool = False,
) -> tuple[Any, list[Any]]:
    del state, detect_unused  # stateful engine; the tape reports None itself
    # `v.value` is the tf.Variable, or inside a StatelessScope the mapped
    # tensor that every read of `v` returns: watching it covers both.
    targets = [_dp.watchable(v.value) for v in variables] + list(inputs)
    depth = getattr(_nesting, "depth", 0)
    if depth == 0 and getattr(_nesting, "checks_only", False):
        _nesting.depth = 1  # nested calls still differentiate, on their own tapes
        try:
            out = fn(*inputs)
        finally:
            _nesting.depth = depth
        return out, [tf.zeros_like(t) for t in targets]
    _nesting.depth = depth + 1
    try:
        with tf.GradientTape(watch_accessed_variables=False) as tape:
            for t in targets:
                tape.watch(t)
            out = fn(*inputs)
    finally:
        _nesting.depth = depth
    loss = out[0] if has_aux else out
    grads = list(tape.gradient(loss, targets, unconnected_gradients=tf.UnconnectedGradients.NONE))
    if depth == 0:  # data parallel: the global batch's gradient
        grads[:len(variables)] = _dp.mean_gradients(grads[:len(variables)])
    return out, grads


def traces(eager: bool, jit_compile: bool) -> bool:
    return not eager


def tracing() -> bool:
    return not tf.executing_eagerly()  # inside tf.function's trace


def trace_only(fn: Callable[[Any], Any], batch: Any) -> bool:
    del fn, batch
    return False  # an eager step is cheap here: the first-step checks run on values


def outside_trace() -> contextlib.AbstractContextManager[None]:
    return contextlib.nullcontext()


def host_values(fn: Callable[..., None], tensors: Sequence[Any]) -> None:
    if not tf.executing_eagerly():
        return  # a graph being traced: no values yet
    fn(*[t.numpy() if hasattr(t, "numpy") else t for t in tensors])


def _tensor(value: Any) -> Any:
    from loops._keras_private import is_sparse, sparse_to_tf

    if value is None:
        return None
    if is_sparse(value):  # SciPy / jax BCOO as tf.SparseTensor (Keras's sparse input on tensorflow)
        return sparse_to_tf(value)
    if isinstance(value, tf.RaggedTensor):
        return value
    return tf.convert_to_tensor(value)


def to_native(batch: Any) -> Any:
    return keras.tree.map_structure(_tensor, batch)


def to_step_input(batch: Any) -> Any:
    return to_native(batch)


def step_context() -> contextlib.AbstractContextManager[None]:
    return contextlib.nullcontext()


@contextlib.contextmanager
def checks_only() -> Iterator[bool]:
    # value_and_grad above: no tape, zeros for every target (reach unknown).
    # The tape's held activations and the backward pass of this discarded
    # step cost more memory than model.fit's whole first call (+157 MB on
    # the realistic LSTM against +94).
    previous = getattr(_nesting, "checks_only", False)
    _nesting.checks_only = True
    try:
        yield False
    finally:
        _nesting.checks_only = previous


def resolve_jit_compile(value: bool | str) -> bool:
    if value != "auto":
        return bool(value)
    # As Keras: XLA only when an accelerator is present.
    return any(d.device_type != "CPU" for d in tf.config.list_physical_devices())


def set_deterministic(enabled: bool) -> None:
    if enabled:
        tf.config.experimental.enable_op_determinism()
        return
    # TensorFlow has no public switch back; its private one is this.
    from tensorflow.python.framework import config

    if getattr(config, "is_op_determinism_enabled", lambda: False)():
        config.disable_op_determinism()


def prepare_optimizer(optimizer: Any) -> None:
    # Keras optimizers run inside tf.function as they are; under a strategy
    # they get averaged gradients from value_and_grad (no second sum).
    _dp.prepare_optimizer(optimizer)


def wrap_native_optimizer(native: Any, options: dict[str, Any]) -> Any:
    del native, options  # no native optimizer type: Keras optimizers are TensorFlow's
    return None


def loop_steps(step: Callable[[Any], Any], variables: Sequence[keras.Variable]) -> Callable[[Any], Any]:
    del variables  # tf.Variables are updated in place inside the loop

    def run(stacked: Any) -> Any:
        n = tf.shape(next(t for t in tf.nest.flatten(stacked) if t is not None))[0]
        pick = lambda i: keras.tree.map_structure(lambda t: None if t is None else t[i], stacked)  # noqa: E731
        logs = step(pick(0))  # the first step outside: it fixes the loop's output structure
        _, logs = tf.while_loop(lambda i, _: i < n, lambda i, _: (i + 1, step(pick(i))), (tf.constant(1), logs))
        return logs

    return run


def prefetch_default() -> int:
    return 1  # tensor conversion overlaps the running step (~9% per MLP step on CPU)


def rng_state() -> dict[str, Any]:
    return {}  # Keras's tensorflow ops draw from SeedGenerator variables (saved with the state)


def set_rng_state(state: dict[str, Any]) -> None:
    del state


def take_rows(leaf: Any, index: Any) -> Any:
    if isinstance(leaf, tf.RaggedTensor) and not isinstance(index, slice):
        return tf.gather(leaf, index)  # (a RaggedTensor slices rows, but gathers only through tf.gather)
    return leaf[index]


def concat_rows(parts: Sequence[Any]) -> Any:
    if isinstance(parts[0], tf.RaggedTensor):
        return tf.concat(list(parts), axis=0)  # ragged predict outputs stay ragged, as in Keras
    shapes = [np.shape(p)[1:] for p in parts]
    if len(set(shapes)) == 1:
        return np.concatenate(parts, axis=0)
    if len({len(s) for s in shapes}) > 1:
        raise ValueError("outputs of different ranks")
    # Outputs that differ past the batch axis: one tf.RaggedTensor, as Keras's
    # predict joins them (the trailing dimensions all batches share stay uniform).
    same = [len({s[i] for s in shapes}) == 1 for i in range(len(shapes[0]))]
    inner = same[::-1].index(False)
    return tf.ragged.constant([np.asarray(p) for p in parts],  # (dtype inferred: strings too)
                              inner_shape=tuple(shapes[0][len(shapes[0]) - inner:]) if inner else None
                              ).merge_dims(0, 1)


def compilation_cache(directory: str) -> str | None:
    del directory  # (tf.function graphs are traced per process; nothing to keep)
    return None
