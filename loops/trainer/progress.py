"""Where a ``fit`` is (epoch, step, data position), and the checkpoints that
record it: written at step boundaries, on SIGTERM and on an exception, and
read back to resume exactly."""

from __future__ import annotations

import contextlib
import os
import warnings
from typing import Any

import keras
import numpy as np

from loops.checkpoint import store as _checkpoint
from loops import distributed as _distributed
from loops.checkpoint.store import CheckpointError, Checkpointer
from loops.data.sources import ArraySource, DataSource

# Fit arguments that decide which batches come next: a resumed run must match.
_DATA_KEYS = ("batch_size", "num_batches", "samples", "shuffle", "steps_per_epoch", "draws")


def _host(logs: Any) -> dict[str, Any] | None:
    if not isinstance(logs, dict):
        return None
    out = {}
    for name, value in logs.items():
        arr = np.asarray(keras.ops.convert_to_numpy(value))
        out[name] = arr.item() if arr.ndim == 0 else arr.tolist()
    return out


class _Progress:
    """Counts a fit's steps and, with a ``Checkpointer``, saves and resumes them."""

    def __init__(self, trainer: Any, ckpt: Checkpointer | None, initial_epoch: int, fit_meta: dict[str, Any]):
        self.trainer = trainer
        self.ckpt = ckpt
        self.epoch = initial_epoch
        self.step = 0          # train steps done in the current epoch
        self.global_step = 0   # train steps done since the run began (across resumes)
        self.consumed = 0      # batches drawn from the training data since the run began
        self.finished = False  # the run ended by stop_training
        self.fit_meta = fit_meta
        self.callbacks: keras.callbacks.CallbackList | None = None
        self.last_logs: Any = None
        self._data_seed: int | None = None
        self._history: dict[str, Any] | None = None

    # ---------------------------------------------------------------- resume

    def resume(self, enabled: bool, train: DataSource) -> bool:
        """Restores the newest usable checkpoint, if any; True if it did."""
        self._data_seed = getattr(train, "seed", None)
        if self.ckpt is None or not enabled:
            return False
        found = _checkpoint.latest(self.ckpt.directory)
        if _distributed.current(self.trainer).process_count > 1:
            found = self._agreed(found)
        if found is None:
            return False
        info, arrays, extra = found
        saved = info.manifest.get("fit", {})
        diffs = [f"{key}={saved.get(key)!r} then, {self.fit_meta.get(key)!r} now"
                 for key in _DATA_KEYS if saved.get(key) != self.fit_meta.get(key)]
        if diffs:
            raise CheckpointError(
                f"checkpoint_dir {self.ckpt.directory!r} holds a run with different data ("
                + "; ".join(diffs) + "), so it cannot resume exactly. Pass the same data and batch size, "
                "or resume=False (or a new checkpoint_dir) to start afresh.")
        self.trainer._sync()
        _checkpoint.restore(self.trainer.variables, info, arrays)
        _distributed.current(self.trainer).localize_metric_state(self.trainer)  # saved as the replicas' aggregate
        _checkpoint.restore_rng(self.trainer._engine, extra, info.manifest.get("rng", {}))
        pos = info.manifest["position"]
        self.epoch, self.step = int(pos["epoch"]), int(pos["step"])
        self.global_step, self.consumed = int(pos["global_step"]), int(pos["consumed"])
        self.finished = bool(pos.get("finished", False))
        self._data_seed = pos.get("data_seed")
        self.last_logs = info.manifest.get("last_logs")
        self._history = info.manifest.get("history")
        self.ckpt.saved_at = self.global_step
        self.seek(train)
        return True

    def _agreed(self, found: Any) -> Any:
        """Every process resumes from the checkpoint the chief found (else one
        could start over while the others resume: different steps, a hang).
        A process that cannot read it fails, and so do all the others."""
        assert self.ckpt is not None
        replicas = _distributed.current(self.trainer)
        mine = found[0].seq if found is not None else -1
        chosen = replicas.first(mine)
        problem = ""
        if chosen != mine:
            path = os.path.join(self.ckpt.directory, f"ckpt-{chosen:06d}")
            if chosen < 0:
                found = None  # the chief starts afresh: so does everyone
            else:
                try:
                    found = _checkpoint.read(path)
                except CheckpointError as e:
                    problem = f"process {replicas.process_index} cannot read it ({e})"
        if replicas.max(1 if problem else 0):
            raise CheckpointError(
                f"The run resumes from the checkpoint the chief (process 0) found in {self.ckpt.directory!r} "
                f"(number {chosen}), but " + (problem or "another process cannot read it") + ". Only the chief "
                "writes checkpoints, so checkpoint_dir must be a directory every process sees (a shared "
                "filesystem), at the same path.")
        return found

    def seek(self, train: DataSource) -> None:
        if isinstance(train, ArraySource) and self._data_seed is not None:
            train.seed = int(self._data_seed)
        if self.consumed or self.step:
            # A source drawn per epoch (epoch_data) starts fresh each epoch.
            train.seek(self.step if self.fit_meta.get("draws") else self.consumed, self.step)

    def restore_history(self) -> None:
        if not self._history:
            return
        history = self._history_callback()
        if history is not None:
            history.epoch = list(self._history.get("epoch", []))
            history.history = {k: list(v) for k, v in self._history.get("history", {}).items()}
            self.trainer.history = history

    def _history_callback(self) -> keras.callbacks.History | None:
        cbs = self.callbacks.callbacks if self.callbacks is not None else []
        return next((cb for cb in cbs if isinstance(cb, keras.callbacks.History)), None)

    # ---------------------------------------------------------------- steps

    def start_epoch(self, epoch: int) -> None:
        if epoch != self.epoch:
            self.epoch, self.step = epoch, 0

    def before_step(self) -> None:
        if self.ckpt is not None and self.ckpt.due:
            self.save()  # written here, not after the step: a later step of this epoch follows

    def after_step(self, n: int, logs: Any) -> None:
        before = self.global_step
        self.step += n
        self.global_step += n
        self.consumed += n
        self.last_logs = logs
        if self.ckpt is not None:
            self.ckpt.stepped(before, self.global_step)

    def check_signal(self) -> None:
        if self.ckpt is None:
            return
        # Data parallel over processes: all stop at the same step if any was signalled.
        signum = _distributed.current(self.trainer).signal(self.ckpt.signalled)
        if signum is not None:
            self.save()
            raise SystemExit(128 + signum)  # the conventional status of a run killed by signum

    def end_epoch(self, epoch: int, final: bool) -> None:
        self.epoch, self.step = epoch + 1, 0
        self.finished = bool(self.trainer.stop_training)
        if self.ckpt is not None and (self.ckpt.every == "epoch" or self.ckpt.due or final):
            self.save()

    def end_training(self) -> None:
        if self.ckpt is not None and self.ckpt.saved_at != self.global_step:
            self.save()

    def on_exception(self, error: BaseException) -> Exception | None:
        """An exception (or Ctrl-C) stops fit: keep the steps done so far.
        Another process gone (a collective failed): write nothing (the step
        in flight may be half done) and return the ``ProcessLost`` to raise."""
        replicas = _distributed.current(self.trainer)
        if replicas.process_count > 1 and isinstance(error, Exception):
            newest = _checkpoint.latest_checkpoint(self.ckpt.directory) if self.ckpt is not None else None
            lost = replicas.lost(error, None if newest is None else
                                 f"{newest.path} (epoch {newest.epoch + 1}, global step {newest.global_step})")
            if lost is not None:
                return lost
        if self.ckpt is None or self.ckpt.saved_at == self.global_step:
            return None
        try:
            # (one process may fail alone: no collective, the chief's own metric state)
            self.save(collective=_distributed.current(self.trainer).process_count == 1)
        except Exception as e:  # the state itself may be what failed; say so, keep the original error
            warnings.warn(f"Could not write a checkpoint after the error: {e!r}", stacklevel=2)
        return None

    # ---------------------------------------------------------------- write

    def save(self, collective: bool = True) -> str | None:
        """Writes a checkpoint (data parallel: the chief writes it, with the
        replicas' aggregate metric state; every process must call this)."""
        assert self.ckpt is not None
        trainer = self.trainer
        trainer._sync()  # device-held state (jax) into the variables
        replicas = _distributed.current(trainer)
        with replicas.global_metric_state(trainer) if collective else contextlib.nullcontext():
            # Every process reads the state (a read can be a collective: tf.distribute's
            # multi-worker metric state); the chief alone writes it.
            values = [_checkpoint.host_value(v) for v in trainer.variables]
            if not replicas.is_chief:
                self.ckpt.skip(self.global_step)
                return None
            return self._write(values)

    def _write(self, values: list[Any]) -> str:
        assert self.ckpt is not None
        trainer = self.trainer
        history = self._history_callback()
        position = {"epoch": self.epoch, "step": self.step, "global_step": self.global_step,
                    "consumed": self.consumed, "data_seed": self._data_seed, "finished": self.finished}
        meta = {
            "trainer": {"class": f"{type(trainer).__module__}.{type(trainer).__qualname__}",
                        "jit_compile": trainer.jit_compile, "run_eagerly": trainer.run_eagerly,
                        "steps_per_execution": trainer.steps_per_execution, "seed": trainer.seed},
            "fit": self.fit_meta,
            "history": {"epoch": list(history.epoch) if history is not None and hasattr(history, "epoch") else [],
                        "history": history.history if history is not None else {}},
            "last_logs": _host(self.last_logs),
        }
        rng_arrays, meta["rng"] = _checkpoint.capture_rng(trainer._engine)
        return self.ckpt.write(trainer.variables, values, position, meta, extra=rng_arrays)
