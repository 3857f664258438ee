"""TensorFlow engine: the step under ``tf.function`` (XLA on request),
gradients from ``tf.GradientTape``. Variables are stateful: nothing to sync.
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Sequence

import keras
import tensorflow as tf

NAME = "tensorflow"


class _Runner:
    def __init__(self, variables: Sequence[keras.Variable]):
        self.variables = list(variables)

    def compile(self, fn: Callable[[Any], Any], *, eager: bool, jit_compile: bool) -> Callable[[Any], Any]:
        if eager:
            return fn
        # reduce_retracing: a ragged last batch gets one shape-generic trace
        # instead of one trace per distinct shape.
        return tf.function(fn, jit_compile=bool(jit_compile), reduce_retracing=True)

    def sync(self) -> None:
        return None


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
    targets = [v.value for v in variables] + list(inputs)
    with tf.GradientTape(watch_accessed_variables=False) as tape:
        for t in targets:
            tape.watch(t)
        out = fn(*inputs)
    loss = out[0] if has_aux else out
    grads = tape.gradient(loss, targets, unconnected_gradients=tf.UnconnectedGradients.NONE)
    return out, list(grads)


def traces(eager: bool, jit_compile: bool) -> bool:
    return not eager


def to_native(batch: Any) -> Any:
    return tf.nest.map_structure(tf.convert_to_tensor, batch)


def step_context() -> contextlib.AbstractContextManager[None]:
    return contextlib.nullcontext()


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
    del optimizer  # Keras optimizers run inside tf.function as they are


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


def rng_state() -> dict[str, Any]:
    return {}  # Keras's tensorflow ops draw from SeedGenerator variables (saved with the state)


def set_rng_state(state: dict[str, Any]) -> None:
    del state
