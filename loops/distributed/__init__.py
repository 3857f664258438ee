"""Data-parallel training, written once: what the loop does differently when
the engine's distributed runtime is active (see ``loops.backends.protocol``,
``Replicas``), and the one-line switch ``loops.data_parallel()``.

Every process iterates the same global batches (array shuffling is seeded
alike on every process); each feeds its rows, which the engine splits over its
devices. The engine makes the step's results global (averaged gradients,
reduced metric state, gathered predictions); the loop makes sure that

- every batch splits evenly (a ragged last batch is padded by the default
  steps; the padding's bookkeeping uses the global batch's counts);
- only the chief (process 0) prints progress and writes files (checkpoints,
  weights, CSV and TensorBoard logs);
- epoch logs, checkpoints and the SIGTERM decision are the same on every process.

Owns: the engine-neutral half of data parallelism (the per-engine half is each
``loops.backends.<engine>.distributed``). May import: keras, numpy,
``loops.backends``, ``loops.data.padding``.
"""

from __future__ import annotations

import contextlib
import functools
from typing import Any, Callable, TypeVar, cast

import keras
import numpy as np

from loops import backends
from loops.data import padding as _padding

_F = TypeVar("_F", bound=Callable[..., Any])

# Callbacks that only write output: on processes other than the chief they are
# dropped (ModelCheckpoint and BackupAndRestore write through the trainer, which
# writes on the chief only).
_CHIEF_ONLY_CALLBACKS = ("ProgbarLogger", "CSVLogger", "TensorBoard")


class ProcessLost(RuntimeError):
    """Another process of a multi-process run died or stopped answering, so a
    collective failed: this process cannot go on alone. Relaunch the job (the
    same command) to resume from the last checkpoint; ``torchrun
    --max-restarts=N`` does that by itself."""


class Replicas:
    """The data-parallel setup a trainer runs under (inactive: one device)."""

    def __init__(self, engine: Any, native: Any = None):
        self.engine = engine
        self.native = native

    @property
    def active(self) -> bool:
        return self.native is not None

    @property
    def process_index(self) -> int:
        return int(self.native.process_index) if self.native is not None else 0

    @property
    def process_count(self) -> int:
        return int(self.native.process_count) if self.native is not None else 1

    @property
    def is_chief(self) -> bool:
        return self.process_index == 0

    @property
    def num_replicas(self) -> int:
        return int(self.native.num_replicas) if self.native is not None else 1

    @property
    def key(self) -> Any:
        return self.native.key if self.native is not None else None

    def scope(self) -> contextlib.AbstractContextManager[None]:
        return self.native.scope() if self.native is not None else contextlib.nullcontext()

    # ------------------------------------------------------------------ data

    def data_seed(self, seed: int | None) -> int | None:
        """Every process must shuffle alike: an unseeded trainer takes process 0's draw."""
        if seed is not None or self.process_count == 1:
            return seed
        return self.native.first(int(np.random.randint(2**31)))

    def converter(self, source: Any, padded: bool) -> Callable[[Any], Any]:
        """``host batch -> the step's input``: this process's rows, placed by the engine."""
        if self.native is None:
            return cast(Callable[[Any], Any], self.engine.to_step_input)
        self._check_source(source, padded)
        native = self.native
        with_totals = native.replicas_in_step > 1  # a step sees one shard: tell it the global counts

        def convert(batch: Any) -> Any:
            if with_totals and isinstance(batch, _padding.Masked):
                batch = _padding.with_totals(batch)
            return native.to_native(self._rows(batch))

        return convert

    def _check_source(self, source: Any, padded: bool) -> None:
        """Array data: fail before training if a batch cannot split evenly."""
        n, size = getattr(source, "n", None), getattr(source, "batch_size", None)
        if n is None or size is None:
            return  # a stream: checked batch by batch
        self._check_rows(int(size), "the batch size")
        ragged = int(n) % int(size)
        if ragged and not padded and ragged % self.num_replicas:
            raise ValueError(
                f"Data-parallel training over {self.num_replicas} replicas splits every batch into "
                f"{self.num_replicas} equal shards, but the last batch of {n} samples in batches of {size} "
                f"has {ragged} rows. The default train/test/predict steps pad it; with a custom step, "
                f"use a sample count that leaves a divisible remainder (e.g. x[:{int(n) - ragged}]).")

    def _check_rows(self, rows: int, what: str) -> None:
        if rows % self.num_replicas:
            raise ValueError(
                f"Data-parallel training over {self.num_replicas} replicas ({self.native.description}) "
                f"splits every batch into {self.num_replicas} equal shards, but {what} is {rows}, not a "
                f"multiple of {self.num_replicas}. Use a batch size that is a multiple of {self.num_replicas} "
                f"(batch_size is the global batch: each replica gets batch_size / {self.num_replicas} rows).")

    def _rows(self, batch: Any) -> Any:
        rows = _padding.rows(batch)
        self._check_rows(rows, "a batch's row count")
        count = self.process_count
        if count == 1:
            return batch
        share = rows // count
        lo, hi = self.process_index * share, (self.process_index + 1) * share
        return keras.tree.map_structure(
            lambda a: a if a is None or np.ndim(a) == 0 else np.asarray(a)[lo:hi], batch)

    # -------------------------------------------------------------- results

    def metric_variables(self, trainer: Any) -> list[keras.Variable]:
        return [v for m in trainer.metrics for v in m.variables]

    def global_metric_state(self, trainer: Any) -> contextlib.AbstractContextManager[None]:
        """Inside it the trainer's metrics read over all replicas' data
        (a collective on torch: every process calls it at the same point)."""
        if self.native is None:
            return contextlib.nullcontext()
        return cast(contextlib.AbstractContextManager[None],
                    self.native.global_metric_state(self.metric_variables(trainer)))

    def localize_metric_state(self, trainer: Any) -> None:
        if self.native is not None:
            self.native.localize_metric_state(self.metric_variables(trainer))

    def mean(self, logs: Any) -> Any:
        return logs if self.native is None else self.native.mean(logs)

    def first(self, value: int) -> int:
        """Process 0's ``value``, on every process (a collective: all call it)."""
        return value if self.process_count == 1 else int(self.native.first(value))

    def max(self, value: int) -> int:
        """The largest ``value`` over processes (a collective: all call it)."""
        return value if self.process_count == 1 else int(self.native.max(value))

    def signal(self, signum: int | None) -> int | None:
        """A signal any process got (so all checkpoint and stop at the same step)."""
        if self.process_count == 1:
            return signum
        return self.native.max(signum or 0) or None

    def lost(self, error: BaseException, checkpoint: str | None = None) -> ProcessLost | None:
        """A ``ProcessLost`` if ``error`` is the engine saying another process
        is gone (``checkpoint``: the newest one, to resume from); else None."""
        if self.process_count == 1 or isinstance(error, ProcessLost):
            return None
        said = self.native.lost(error)
        if said is None:
            return None
        resume = (f"The last checkpoint is {checkpoint}: run the same launch command again to resume from it"
                  if checkpoint else "Pass fit(checkpoint_dir=...) to be able to resume after this; run the "
                  "same launch command again to start over")
        other = f"process {1 - self.process_index}" if self.process_count == 2 else "another process"
        return ProcessLost(
            f"Process {self.process_index} of {self.process_count} ({self.native.description}) lost {other}: "
            f"{said}. A process of the run died or stopped answering, and this one cannot go on without it. "
            f"{resume} (under torchrun, --max-restarts=N relaunches by itself).")

    # ------------------------------------------------------------- output

    def callbacks(self, callbacks: Any, verbose: int) -> tuple[Any, int]:
        """Only the chief prints and writes logs."""
        if self.is_chief:
            return callbacks, verbose
        if isinstance(callbacks, keras.callbacks.CallbackList):
            return callbacks, verbose
        kept = [cb for cb in (callbacks or []) if type(cb).__name__ not in _CHIEF_ONLY_CALLBACKS]
        return kept, 0


def current(trainer: Any) -> Replicas:
    """The setup ``fit``/``evaluate``/``predict`` runs under (cached while it
    runs), else the one the trainer's variables are under now."""
    found = getattr(trainer, "_replicas", None)
    if found is not None:
        return cast(Replicas, found)
    engine = trainer._engine
    return Replicas(engine, engine.replicas(trainer.variables))


def in_replica_scope(method: _F) -> _F:
    """Runs a loop entry point (``fit``, ``evaluate``, ``predict``) in the
    engine's distribution scope, with the setup found once for the call."""

    @functools.wraps(method)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        if getattr(self, "_replicas", None) is not None:  # nested: a callback evaluates during fit
            return method(self, *args, **kwargs)
        replicas = current(self)
        self._replicas = replicas
        try:
            with replicas.scope():
                return method(self, *args, **kwargs)
        except Exception as e:
            lost = replicas.lost(e)
            if lost is None:
                raise
            raise lost from e
        finally:
            self._replicas = None

    return cast(_F, wrapper)


class DataParallel:
    """What ``loops.data_parallel()`` returns: already active; as a context
    manager it ends (undoes) the setup on exit."""

    def __init__(self, undo: Callable[[], None], engine: str):
        self._undo: Callable[[], None] | None = undo
        self.engine = engine

    def __enter__(self) -> DataParallel:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def stop(self) -> None:
        if self._undo is not None:
            undo, self._undo = self._undo, None
            undo()

    def __repr__(self) -> str:
        return f"loops.data_parallel() on {self.engine}"


def data_parallel(devices: Any = None, *, timeout: float | None = None) -> DataParallel:
    """Train data-parallel on the engine's own distributed runtime: one line,
    before the model is built. The same Trainer and ``train_step`` then run on
    every device, each on its shard of every batch, with global-batch results.

    - jax: ``keras.distribution.set_distribution(DataParallel(devices))``
      (jax sharding over all devices, or ``devices``); several hosts join
      first via ``keras.distribution.initialize()`` when
      ``KERAS_DISTRIBUTION_JOB_ADDRESSES`` (or ``JAX_COORDINATOR_ADDRESS``) is set.
    - tensorflow: ``tf.distribute.MirroredStrategy(devices)`` made current
      (``MultiWorkerMirroredStrategy`` when ``TF_CONFIG`` names several workers).
    - torch: ``torch.distributed.init_process_group`` from ``torchrun``'s
      environment (NCCL on GPU, each process on ``cuda:LOCAL_RANK``; gloo on
      CPU). Launch with ``torchrun --nproc-per-node=N script.py``.

    The engines' own switches work as well, unchanged: an active
    ``keras.distribution``, a ``tf.distribute`` strategy's ``scope()`` around
    building the model and trainer, an initialized ``torch.distributed``
    process group.

    When a process dies, the others do not hang: their next collective
    fails (at once where the connection drops, else after ``timeout``) and
    ``fit`` raises ``loops.ProcessLost`` naming the last checkpoint; running
    the same launch command again resumes from it (``torchrun
    --max-restarts=N`` relaunches by itself).

    Args:
        devices: the devices to split batches over (jax, tensorflow; default all).
        timeout: seconds a process waits for a silent one before giving up
            (jax: the coordination service's heartbeat, default 100;
            tensorflow: each collective, default none; torch: the process
            group's, default 30 minutes). Default: the engine's.

    Returns:
        A handle; ``with loops.data_parallel(): ...`` ends it on exit.

    Example:
        >>> loops.data_parallel()            # the one added line
        >>> model = build_model()
        >>> Trainer(model, "adam", loss).fit(x, y, batch_size=256)  # 256 = the global batch
    """
    if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0):
        raise ValueError(f"data_parallel(timeout=...) takes a positive number of seconds, got {timeout!r}.")
    engine = backends.get()
    return DataParallel(engine.data_parallel(devices, timeout), engine.NAME)


__all__ = ["DataParallel", "ProcessLost", "Replicas", "current", "data_parallel", "in_replica_scope"]
