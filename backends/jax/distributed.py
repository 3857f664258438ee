"""Data (and model) parallelism on ``keras.distribution``, i.e. jax sharding.

With a distribution active (``keras.distribution.set_distribution(DataParallel())``,
its ``scope()``, or ``loops.data_parallel()``) variables carry their layouts
(replicated for ``DataParallel``, split by a ``LayoutMap`` for
``ModelParallel``) and batches are placed with the distribution's data layout
(split along the batch axis). The step keeps its global view: the one
``jax.jit`` over all state partitions the computation, and XLA inserts the
collectives, so losses, gradients and metrics are those of the global batch.
Several processes (hosts) join with ``keras.distribution.initialize()``
(``jax.distributed.initialize``); each then feeds its own rows of every batch.
"""

from __future__ import annotations

import contextlib
import os
import re
from typing import Any, Callable, Sequence

import jax
import keras
import numpy as np


def current() -> Any:
    """The active ``keras.distribution`` (thread-local in Keras), or None."""
    return keras.distribution.distribution()


def replicated(distribution: Any) -> jax.sharding.NamedSharding:
    return jax.sharding.NamedSharding(distribution.device_mesh.backend_mesh, jax.sharding.PartitionSpec())


def variable_shardings(distribution: Any, variables: Sequence[keras.Variable]) -> list[Any]:
    return [distribution.get_variable_layout(v).backend_layout for v in variables]


def place(distribution: Any, variables: Sequence[keras.Variable], values: list[Any]) -> list[Any]:
    """State values laid out as the distribution says (a no-op where they are)."""
    return [keras.distribution.distribute_tensor(value, distribution.get_variable_layout(v))
            for v, value in zip(variables, values)]


def _mesh() -> jax.sharding.Mesh:
    distribution = current()
    if distribution is not None:
        return distribution.device_mesh.backend_mesh
    return jax.sharding.Mesh(np.array(jax.devices()), ("all",))


def everywhere(tensors: Sequence[Any]) -> list[Any]:
    """Values of global arrays (which span several processes) as every process
    can read them: concrete arrays gathered to NumPy, traced ones (an eager
    ``value_and_grad``) made replicated and then process-local, so a
    ``jax.debug.callback`` on them sees the whole value, the same on every
    process (and the decisions taken on it agree)."""
    from jax.experimental import multihost_utils

    mesh = _mesh()
    whole = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    out = []
    for t in tensors:
        if isinstance(t, jax.core.Tracer):
            t = jax.lax.with_sharding_constraint(t, whole)
            t = multihost_utils.global_array_to_host_local_array(t, mesh, jax.sharding.PartitionSpec())
        elif isinstance(t, jax.Array) and not t.is_fully_addressable:
            t = multihost_utils.process_allgather(t, tiled=True)
        out.append(t)
    return out


# How a collective fails when another process is gone: gloo's TCP pair (CPU),
# the coordination service's heartbeat (any platform).
_JAX_LOST = re.compile(r"Connection (closed|reset) by peer|Broken pipe|heartbeat timeout|stopped sending heartbeats"
                       r"|tasks? (has|have) (failed|crashed)|DEADLINE_EXCEEDED|UNAVAILABLE")


def _peer_gone(error: BaseException, pattern: re.Pattern[str]) -> str | None:
    for line in str(error).splitlines():
        if pattern.search(line):
            return line.strip()[:300]
    return None


class Replicas:
    """A ``keras.distribution`` on jax, as ``loops.backends.protocol.Replicas``."""

    def __init__(self, distribution: Any):
        self.distribution = distribution
        mesh = distribution.device_mesh
        self.num_replicas = int(mesh.shape[list(mesh.axis_names).index(distribution.batch_dim_name)])
        self.replicas_in_step = 1  # the step sees the global batch; XLA partitions it
        self.process_index, self.process_count = jax.process_index(), jax.process_count()
        self.key = ("keras.distribution", id(distribution))
        self.description = (f"keras.distribution.{type(distribution).__name__} over {mesh.devices.size} jax "
                            f"devices (mesh {dict(zip(mesh.axis_names, mesh.shape))})"
                            + (f", process {self.process_index} of {self.process_count}"
                               if self.process_count > 1 else ""))
        self._replicated = replicated(distribution)

    def scope(self) -> contextlib.AbstractContextManager[None]:
        return self.distribution.scope()

    def to_native(self, batch: Any) -> Any:
        """This process's rows to global arrays split along the batch axis
        (runs on the prefetch thread: the distribution is passed, not looked up)."""

        def put(a: Any) -> Any:
            a = np.asarray(a)
            if a.ndim == 0:
                return jax.device_put(a, self._replicated)
            layout = self.distribution.get_data_layout(a.shape).backend_layout
            return jax.make_array_from_process_local_data(layout, a)

        return jax.tree.map(put, batch)

    def global_metric_state(self, variables: Sequence[keras.Variable]) -> contextlib.AbstractContextManager[None]:
        del variables  # metric state is global already
        return contextlib.nullcontext()

    def localize_metric_state(self, variables: Sequence[keras.Variable]) -> None:
        del variables

    def mean(self, tree: Any) -> Any:
        return tree  # logs are global already

    def replica_index(self) -> int:
        return 0  # the step sees the global batch

    def first(self, value: int) -> int:
        if self.process_count == 1:
            return int(value)
        from jax.experimental import multihost_utils

        return int(multihost_utils.broadcast_one_to_all(np.asarray(value, np.int64)))

    def max(self, value: int) -> int:
        if self.process_count == 1:
            return int(value)
        from jax.experimental import multihost_utils

        return int(np.max(multihost_utils.process_allgather(np.asarray([value], np.int64))))


    def lost(self, error: BaseException) -> str | None:
        if self.process_count == 1:
            return None
        return _peer_gone(error, _JAX_LOST)


def replicas(variables: Sequence[keras.Variable]) -> Replicas | None:
    del variables  # the distribution is Keras's (thread-local) global state
    distribution = current()
    return None if distribution is None else Replicas(distribution)


def _initialize(timeout: int) -> None:
    """``keras.distribution.initialize()`` (from the same environment variables)
    with the coordination service's heartbeat timeout set: a process silent
    that long counts as dead, and the others stop."""
    from loops._keras_private import jax_initialize_rng

    addresses = os.environ.get("KERAS_DISTRIBUTION_JOB_ADDRESSES")
    count = os.environ.get("KERAS_DISTRIBUTION_NUM_PROCESSES")
    index = os.environ.get("KERAS_DISTRIBUTION_PROCESS_ID")
    jax.distributed.initialize(coordinator_address=addresses.split(",")[0] if addresses else None,
                               num_processes=int(count) if count else None,
                               process_id=int(index) if index else None,
                               heartbeat_timeout_seconds=timeout)
    jax_initialize_rng()


def data_parallel(devices: Any = None, timeout: float | None = None) -> Callable[[], None]:
    """``keras.distribution.DataParallel`` over ``devices`` (default: all,
    across every process), made the distribution of this thread. With
    ``KERAS_DISTRIBUTION_JOB_ADDRESSES`` (or ``JAX_COORDINATOR_ADDRESS``) set,
    joins the other processes first (``keras.distribution.initialize``)."""
    launched = os.environ.get("KERAS_DISTRIBUTION_JOB_ADDRESSES") or os.environ.get("JAX_COORDINATOR_ADDRESS")
    if launched and not jax.distributed.is_initialized():
        if timeout is None:
            keras.distribution.initialize()
        else:
            _initialize(int(timeout))
    previous = current()
    keras.distribution.set_distribution(keras.distribution.DataParallel(devices=devices))

    def undo() -> None:
        keras.distribution.set_distribution(previous)

    return undo
