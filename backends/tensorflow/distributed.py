"""Data parallelism on ``tf.distribute``: ``MirroredStrategy`` (the devices of
one machine) and ``MultiWorkerMirroredStrategy`` (several machines).

The model, its optimizers and metrics are built under ``strategy.scope()``, so
Keras creates mirrored variables (and ``SyncOnRead`` metric state). The step
runs per replica with ``strategy.run`` on that replica's shard of the batch, as
Keras's own TensorFlow trainer does, with one difference that makes a custom
step portable: inside a step a loss is the replica's own mean (Keras's
per-replica loss scaling is off) and ``value_and_grad`` all-reduces (mean) the
gradients, so every replica applies the global batch's gradient; the Keras
optimizer then updates each replica's copy with them (``prepare_optimizer``),
without its own sum over replicas.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import threading
import types
from typing import Any, Callable, Iterator, Sequence

import keras
import numpy as np
import tensorflow as tf

# Steps running now whose losses are per-replica means (see _install_loss_hook).
_local_losses = 0
_lock = threading.Lock()
_installed = False


def _install_loss_hook() -> None:
    """Keras scales every mean loss by ``1 / num_replicas`` under tf.distribute
    (and unscales its loss trackers), for an optimizer that sums gradients over
    replicas. Here gradients are averaged in ``value_and_grad`` instead, so
    inside our steps both are the identity; elsewhere Keras behaves as usual."""
    global _installed
    if _installed:
        return
    from loops._keras_private import loss_module as _loss_module

    loss_module = _loss_module()  # Keras's own hooks, wrapped (not replaced)

    scale, unscale = loss_module.scale_loss_for_distribution, loss_module.unscale_loss_for_distribution

    def scale_loss_for_distribution(value: Any) -> Any:
        return value if _local_losses else scale(value)

    def unscale_loss_for_distribution(value: Any) -> Any:
        return value if _local_losses else unscale(value)

    loss_module.scale_loss_for_distribution = scale_loss_for_distribution
    loss_module.unscale_loss_for_distribution = unscale_loss_for_distribution
    _installed = True


@contextlib.contextmanager
def _replica_losses() -> Iterator[None]:
    global _local_losses
    with _lock:
        _local_losses += 1
    try:
        yield
    finally:
        with _lock:
            _local_losses -= 1


def strategy_of(variables: Sequence[keras.Variable]) -> tf.distribute.Strategy | None:
    """The strategy the variables were created under, else the current one."""
    for v in variables:
        value = getattr(v, "value", None)
        if isinstance(value, tf.distribute.DistributedValues):
            return value._distribute_strategy  # the strategy a distributed variable belongs to
    return tf.distribute.get_strategy() if tf.distribute.has_strategy() else None


def replica_context() -> Any:
    """The replica context of a step running under ``strategy.run`` with more
    than one replica, else None."""
    if not tf.distribute.has_strategy() or tf.distribute.in_cross_replica_context():
        return None
    ctx = tf.distribute.get_replica_context()
    return ctx if ctx is not None and ctx.num_replicas_in_sync > 1 else None


def watchable(value: Any) -> Any:
    """What a tape watches for a variable: outside ``strategy.run`` (the loop's
    checking first step) a distributed variable reads its local copy."""
    if isinstance(value, tf.distribute.DistributedValues) and tf.distribute.in_cross_replica_context():
        return value._get_on_device_or_primary()  # the copy cross-replica reads return
    return value


def mean_gradients(grads: list[Any]) -> list[Any]:
    ctx = replica_context()
    if ctx is None:
        return grads
    idx = [i for i, g in enumerate(grads) if g is not None]
    if not idx:
        return grads
    reduced = ctx.all_reduce(tf.distribute.ReduceOp.MEAN, [grads[i] for i in idx])
    out = list(grads)
    for i, g in zip(idx, reduced):
        out[i] = g
    return out


# The Keras TF optimizer's updates that go through the strategy (a merge_call:
# sum the gradients over replicas, then update each mirrored copy). The
# gradients arrive averaged from value_and_grad, identical on every replica,
# so each replica applies them to its own copy instead, as Keras's
# engine-neutral optimizer does; a merge_call inside the ops.cond of gradient
# accumulation would fail.
_REPLICA_LOCAL = ("_backend_update_step", "_backend_increment_gradient_accumulators", "_apply_weight_decay")


def prepare_optimizer(optimizer: Any) -> None:
    for opt in (optimizer, getattr(optimizer, "inner_optimizer", None)):
        strategy = getattr(opt, "_distribution_strategy", None)
        if opt is None or strategy is None or strategy.num_replicas_in_sync == 1:
            continue
        base = next(c for c in type(opt).__mro__ if c.__name__ == "BaseOptimizer")
        for name in _REPLICA_LOCAL:
            if name not in vars(opt):
                setattr(opt, name, types.MethodType(getattr(base, name), opt))


def _local_value(value: Any) -> Any:
    if isinstance(value, tf.distribute.DistributedValues):
        return value.values[0]
    return value


def _synchronized(out: Any, kind: str) -> Any:
    """In a replica: logs averaged over replicas, predictions gathered (in
    replica order), so every replica returns the same values."""
    ctx = tf.distribute.get_replica_context()
    flat = tf.nest.flatten(out)
    idx = [i for i, t in enumerate(flat) if isinstance(t, (tf.Tensor, tf.Variable)) or hasattr(t, "dtype")]
    if not idx:
        return out
    tensors = [tf.convert_to_tensor(flat[i]) for i in idx]
    if kind == "predict":
        rows = [t for t in tensors if t.shape.rank]
        gathered = iter(ctx.all_gather(rows, axis=0)) if rows else iter(())
        synced = [next(gathered) if t.shape.rank else t for t in tensors]
    else:
        floats = [t for t in tensors if t.dtype.is_floating]
        averaged = iter(ctx.all_reduce(tf.distribute.ReduceOp.MEAN, floats)) if floats else iter(())
        synced = [next(averaged) if t.dtype.is_floating else t for t in tensors]
    for i, t in zip(idx, synced):
        flat[i] = t
    return tf.nest.pack_sequence_as(out, flat)


def compile_step(strategy: tf.distribute.Strategy, fn: Callable[[Any], Any], *, eager: bool, jit_compile: bool,
                 kind: str, on_trace: Callable[[Any], None] | None) -> Callable[[Any], Any]:
    """``fn`` run per replica with ``strategy.run`` on a distributed batch
    (from ``Replicas.to_native``); returns one replica's (synchronized) outputs."""
    # No XLA under tf.distribute, as Keras resolves it: the replicas' all-reduce
    # (a merge_call) cannot sit inside an XLA-compiled function.
    del jit_compile
    _install_loss_hook()

    def replica_step(batch: Any) -> Any:
        return _synchronized(fn(batch), kind)

    def distributed_step(batch: Any) -> Any:
        if on_trace is not None and not eager:
            on_trace(tf.nest.map_structure(_local_value, batch))  # once per trace, with replica 0's shard
        with _replica_losses():
            out = strategy.run(replica_step, args=(batch,))
        return tf.nest.map_structure(_local_value, out)

    if eager:
        return distributed_step
    return tf.function(distributed_step, reduce_retracing=True, autograph=False)


def _cluster(strategy: tf.distribute.Strategy) -> tuple[int, int]:
    """(this worker's index, number of workers); the chief is index 0."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not getattr(resolver, "task_type", None):
        return 0, 1
    from tensorflow.python.distribute import multi_worker_util  # TF's own ordering of the cluster's tasks

    spec = resolver.cluster_spec()
    count = sum(len(spec.as_dict().get(job, [])) for job in ("chief", "worker"))
    if count <= 1:
        return 0, 1
    return multi_worker_util.id_in_cluster(spec, resolver.task_type, resolver.task_id), count


# How a collective fails when another worker is gone.
_TF_LOST = re.compile(r"failed to connect|Connection (closed|reset|refused)|Socket closed|is unhealthy"
                      r"|heartbeat|Collective ops is aborted by: (?!Shape mismatch)")


class Replicas:
    """A ``tf.distribute`` strategy, as ``loops.backends.protocol.Replicas``."""

    def __init__(self, strategy: tf.distribute.Strategy):
        self.strategy = strategy
        self.num_replicas = int(strategy.num_replicas_in_sync)
        self.replicas_in_step = self.num_replicas  # a step sees its replica's rows only
        self.process_index, self.process_count = _cluster(strategy)
        self._local = max(1, self.num_replicas // self.process_count)
        self.key = ("tf.distribute", id(strategy))
        self.description = (f"tf.distribute.{type(strategy).__name__}, {self.num_replicas} replicas"
                            + (f", worker {self.process_index} of {self.process_count}"
                               if self.process_count > 1 else ""))

    def scope(self) -> contextlib.AbstractContextManager[None]:
        return self.strategy.scope()

    def to_native(self, batch: Any) -> Any:
        """This worker's rows to one shard per local replica, on its device."""
        local, base = self._local, self.process_index * self._local

        def shard(i: int) -> Any:
            def rows(a: Any) -> Any:
                a = np.asarray(a)
                if a.ndim == 0:
                    return a
                n = a.shape[0] // local
                return a[i * n:(i + 1) * n]

            return tf.nest.map_structure(lambda a: None if a is None else tf.convert_to_tensor(rows(a)), batch)

        shards = [shard(i) for i in range(local)]
        return self.strategy.experimental_distribute_values_from_function(
            lambda ctx: shards[ctx.replica_id_in_sync_group - base])

    def global_metric_state(self, variables: Sequence[keras.Variable]) -> contextlib.AbstractContextManager[None]:
        del variables  # SyncOnRead variables read as their aggregate in the strategy's cross-replica context
        return self.strategy.scope()

    def localize_metric_state(self, variables: Sequence[keras.Variable]) -> None:
        del variables  # assigning a SyncOnRead SUM variable across replicas splits the value among them

    def mean(self, tree: Any) -> Any:
        return tree  # the step returns logs already averaged over replicas

    def _gathered(self, value: int) -> list[int]:
        if self.process_count == 1:
            return [int(value)]
        per_replica = self.strategy.experimental_distribute_values_from_function(
            lambda ctx: tf.constant([int(value)], tf.int64))
        return [int(v) for v in np.asarray(self.strategy.gather(per_replica, axis=0))]

    def replica_index(self) -> Any:
        ctx = replica_context()  # (replica ids run over every worker's replicas, as the rows do)
        return 0 if ctx is None else ctx.replica_id_in_sync_group

    def first(self, value: int) -> int:
        return self._gathered(value)[0]

    def max(self, value: int) -> int:
        return max(self._gathered(value))


    def lost(self, error: BaseException) -> str | None:
        if self.process_count == 1:
            return None
        lost_peer = isinstance(error, (tf.errors.UnavailableError, tf.errors.DeadlineExceededError)) or (
            isinstance(error, tf.errors.OpError) and _TF_LOST.search(str(error)) is not None)
        if not lost_peer:
            return None
        lines = [line.strip() for line in str(error).splitlines() if _TF_LOST.search(line)]
        said = (lines[0] if lines else str(error).splitlines()[0])[:300]
        task = re.search(r"/job:\w+/replica:\d+/task:\d+", str(error))
        return said + (f" (from {task.group(0)})" if task else "")


def replicas(variables: Sequence[keras.Variable]) -> Replicas | None:
    strategy = strategy_of(variables)
    return None if strategy is None else Replicas(strategy)


def data_parallel(devices: Any = None, timeout: float | None = None) -> Callable[[], None]:
    """``MultiWorkerMirroredStrategy`` when ``TF_CONFIG`` names several tasks,
    else ``MirroredStrategy(devices)``, made current for the process."""
    config = json.loads(os.environ.get("TF_CONFIG", "{}") or "{}")
    cluster = config.get("cluster", {})
    if sum(len(cluster.get(job, [])) for job in ("chief", "worker")) > 1:
        if devices is not None:
            raise ValueError("With TF_CONFIG (several workers), each worker uses its local devices: pass no devices.")
        options = tf.distribute.experimental.CommunicationOptions(
            timeout_seconds=None if timeout is None else float(timeout))
        strategy: tf.distribute.Strategy = tf.distribute.MultiWorkerMirroredStrategy(communication_options=options)
    else:
        strategy = tf.distribute.MirroredStrategy(devices)
    previous = tf.distribute.get_strategy() if tf.distribute.has_strategy() else None
    tf.distribute.experimental_set_strategy(strategy)

    def undo() -> None:
        tf.distribute.experimental_set_strategy(previous)

    return undo
