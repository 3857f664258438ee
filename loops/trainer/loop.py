"""The loop contract, written once for every backend: ``fit``, ``evaluate``
and ``predict`` (and ``*_on_batch``) with Keras's arguments, callbacks in
Keras's order, History. Read ``fit`` top to bottom: it is the whole loop.

Nothing here knows which engine runs the steps: ``Trainer._step_fn`` returns a
compiled callable (``steps.py``) and ``Trainer._sync`` brings device-held
state home; how batches become executions is ``execution.py``; epoch and step
bookkeeping with checkpoints and resume is ``progress.py``.
"""

from __future__ import annotations

import warnings
from typing import Any

import keras

from loops import distributed as _distributed
from loops.checkpoint.store import Checkpointer
from loops.data import padding as _padding
from loops.data.adapters import make_source
from loops.data.sources import ArraySource, DataSource
from loops.trainer import checks as _checks
from loops.trainer.execution import (ExecutionMixin, _capped_epochs, _capped_steps, _check_steps, _concat,
                                     _host_logs, _Plan, _require_steps, _resolve_verbose, _should_eval,
                                     _to_host, _unchanged, _uses_batch_hooks)
from loops.trainer.progress import _Progress


class LoopMixin(ExecutionMixin):
    """fit / evaluate / predict; mixed into ``Trainer``."""

    _runner: Any  # the engine's Runner, built with the steps (steps.py); told each run's plan

    @_distributed.in_replica_scope
    def fit(self, x: Any = None, y: Any = None, batch_size: int | None = None, epochs: int = 1,
            verbose: Any = "auto", callbacks: Any = None, validation_split: float = 0.0,
            validation_data: Any = None, shuffle: bool = True, class_weight: dict[int, float] | None = None,
            sample_weight: Any = None, initial_epoch: int = 0, steps_per_epoch: int | None = None,
            validation_steps: int | None = None, validation_batch_size: int | None = None,
            validation_freq: Any = 1, check_inputs: bool = False, checkpoint_dir: Any = None,
            checkpoint_every: Any = "epoch", keep: int | None = 3, resume: bool = True,
            check: bool = False) -> keras.callbacks.History:
        """Trains for ``epochs`` epochs; arguments as ``keras.Model.fit``.

        ``check_inputs=True`` checks every float input for NaN and Inf (arrays
        before training starts, streamed batches as they arrive).

        ``check=True`` runs ``trainer.check`` on the first batch first (the
        table is printed unless ``verbose=0``); errors it finds stop ``fit``.

        ``checkpoint_dir`` turns on training checkpoints (see
        ``loops/checkpoint/store.py``): every ``checkpoint_every`` steps (or
        ``"epoch"``), at the end, on an exception and on SIGTERM, keeping the
        ``keep`` newest. With ``resume=True`` (the default) a directory that
        holds a checkpoint is resumed from exactly where it stopped: weights,
        optimizer, metric and seed state, epoch, step and data position.

        Returns:
            The ``keras.callbacks.History`` of epoch logs (``val_`` prefixed for
            validation).
        """
        verbose = _resolve_verbose(verbose)
        if not isinstance(epochs, int) or epochs < 0 or not isinstance(initial_epoch, int) or initial_epoch < 0:
            raise ValueError(f"epochs and initial_epoch must be non-negative integers, got {epochs!r}, {initial_epoch!r}.")
        if not isinstance(validation_split, (int, float)) or not 0.0 <= validation_split < 1.0:
            raise ValueError(
                f"validation_split must be a float in [0, 1), got {validation_split!r}. "
                "For example validation_split=0.1 holds out the last 10% of the samples."
            )
        if not (isinstance(validation_freq, int) and validation_freq >= 1) and not (
                isinstance(validation_freq, (list, tuple, set)) and all(isinstance(e, int) for e in validation_freq)):
            raise ValueError(f"validation_freq must be a positive int or a list of epochs, got {validation_freq!r}.")
        for name, value in (("steps_per_epoch", steps_per_epoch), ("validation_steps", validation_steps)):
            _check_steps(name, value)
        epochs = _capped_epochs(epochs)
        steps_per_epoch, validation_steps = _capped_steps(steps_per_epoch), _capped_steps(validation_steps)
        _checks.check_callbacks(callbacks)
        _checks.check_validation_data(validation_data)
        ckpt = Checkpointer(checkpoint_dir, checkpoint_every, keep) if checkpoint_dir is not None else None
        self._check_can_train()

        draws = type(self).epoch_data is not LoopMixin.epoch_data
        if draws:
            if x is not None or validation_split:
                raise ValueError(
                    f"{type(self).__name__} draws its own batches (it overrides epoch_data): call "
                    "fit() without x/y/validation_split.")
            self._sync()
            x = self.epoch_data(initial_epoch)  # the first epoch's batches also build the step
        train = make_source(x, y, sample_weight, batch_size=batch_size, shuffle=shuffle,
                            class_weight=class_weight, seed=_distributed.current(self).data_seed(self.seed),
                            check_inputs=check_inputs)
        _require_steps(train, steps_per_epoch, "steps_per_epoch")
        val: DataSource | None = None
        if validation_split:
            if not isinstance(train, ArraySource):
                raise ValueError(
                    f"validation_split={validation_split} needs array inputs: a {train.kind} "
                    f"({type(x).__name__}) cannot be split (Keras cannot split one either). Pass "
                    "validation_data=(x_val, y_val), or a validation dataset/generator, instead."
                )
            train, val = train.split(validation_split)
        elif validation_data is not None:
            if isinstance(validation_data, tuple) and 2 <= len(validation_data) <= 3 and all(
                    not hasattr(e, "__next__") for e in validation_data):
                vx, vy, vsw = keras.utils.unpack_x_y_sample_weight(validation_data)
                val = make_source(vx, vy, vsw, batch_size=validation_batch_size or batch_size,
                                  check_inputs=check_inputs)
            else:
                val = make_source(validation_data, batch_size=validation_batch_size or batch_size,
                                  check_inputs=check_inputs)
            _require_steps(val, validation_steps, "validation_steps")

        # Build and check everything before the first callback fires, so bad
        # input fails here and not after an epoch of work.
        train_plan = self._plan("train", train)
        if check:
            from loops.debug.diagnostics import preflight

            preflight(self, self._sample(train_plan, train), verbose)
        train_fn = self._step_fn("train", self._sample(train_plan, train))
        val_plan: _Plan = _unchanged
        if val is not None:
            val_plan = self._plan("test", val)
            self._step_fn("test", self._sample(val_plan, val))
            train_fn = self._step_fn("train", self._sample(train_plan, train))

        if ckpt is not None and _distributed.current(self).is_chief:
            ckpt.probe()  # an unwritable directory fails here, not at the first checkpoint
        progress = _Progress(self, ckpt, initial_epoch, {
            "batch_size": getattr(train, "batch_size", None), "num_batches": train.num_batches,
            "samples": getattr(train, "n", None), "shuffle": bool(shuffle), "steps_per_epoch": steps_per_epoch,
            "epochs": epochs, "draws": draws})
        resumed = progress.resume(resume, train)
        if resumed and draws:
            self._sync()  # the restored models draw the resumed epoch's batches
            train = make_source(self.epoch_data(progress.epoch), batch_size=batch_size, shuffle=shuffle,
                                seed=self.seed, check_inputs=check_inputs)
            progress.seek(train)
        steps = steps_per_epoch or train.num_batches
        cbs = self._callback_list(callbacks, verbose, epochs, steps, add_history=True)
        progress.callbacks = cbs
        batch_hooks = _uses_batch_hooks(cbs, "train")
        self.stop_training = False
        self._initial_epoch = None  # BackupAndRestore sets it in on_train_begin, as in Keras
        k = self.steps_per_execution
        # The run's plan, for engines whose compilation pays off only over many calls (torch capture).
        self._runner.expect("train", _calls(steps, k, epochs - progress.epoch))
        if val is not None:
            val_runs = sum(_should_eval(epoch, validation_freq) for epoch in range(progress.epoch, epochs))
            self._runner.expect("test", _calls(validation_steps or val.num_batches, k, val_runs))
        training_logs: dict[str, Any] | None = None
        if ckpt is not None:
            ckpt.install_signal_handler()
        try:
            cbs.on_train_begin()
            progress.restore_history()
            first_epoch = self._initial_epoch or progress.epoch
            if progress.finished:
                first_epoch = epochs  # the checkpointed run had stopped (stop_training): nothing to do
            for epoch in range(first_epoch, epochs):
                progress.start_epoch(epoch)
                if progress.step == 0:
                    self.reset_metrics()  # (a resumed epoch keeps the restored metric state)
                if draws and epoch != initial_epoch and not (resumed and epoch == first_epoch):
                    self._sync()  # the models act on their current weights
                    train = make_source(self.epoch_data(epoch), batch_size=batch_size, shuffle=shuffle,
                                        seed=self.seed, check_inputs=check_inputs)
                cbs.on_epoch_begin(epoch)
                remaining = steps_per_epoch - progress.step if steps_per_epoch else None
                if remaining and k > 1:  # as Keras: whole executions of k batches (ceil(steps / k) of them)
                    remaining = -(-remaining // k) * k
                logs = self._run_batches("train", train_fn, self._executions(train, remaining, k, train_plan),
                                         cbs, batch_hooks, progress)
                if logs is None and progress.step > 0:
                    logs = progress.last_logs  # resumed after the epoch's last step
                if logs is None:
                    warnings.warn(
                        f"Epoch {epoch + 1} got no batches: the data ran out. Training stops; for a "
                        "generator, make it loop forever and pass steps_per_epoch.", stacklevel=2)
                    self.stop_training = True
                    break
                epoch_logs = self._epoch_logs(logs)
                if val is not None and _should_eval(epoch, validation_freq):
                    val_logs = self._run_evaluate(val, cbs, validation_steps, val_plan, progress)
                    epoch_logs.update({f"val_{name}": value for name, value in val_logs.items()})
                cbs.on_epoch_end(epoch, epoch_logs)
                training_logs = epoch_logs
                progress.end_epoch(epoch, final=self.stop_training or epoch == epochs - 1)
                if self.stop_training:
                    break
            progress.end_training()
            self._finalize_optimizers(epochs)
            cbs.on_train_end(logs=training_logs)
        except BaseException as e:
            lost = progress.on_exception(e)
            if lost is not None:
                raise lost from e
            raise
        finally:
            if ckpt is not None:
                ckpt.uninstall_signal_handler()
            self._sync()
        assert self.history is not None  # set by CallbackList(add_history=True)
        return self.history

    def epoch_data(self, epoch: int) -> Any:
        """Override to draw each epoch's training batches yourself (rollouts in
        reinforcement learning) instead of passing data to ``fit``.

        Called before each epoch (before ``on_epoch_begin``), with the models'
        current weights in place so they can act. Return what ``fit`` accepts
        as ``x``: arrays, or an iterable of ``(x, y[, sample_weight])`` or other
        batches, which the epoch then trains on. Callbacks, History, validation
        and ``stop_training`` work as usual.
        """
        return None

    def _finalize_optimizers(self, epochs: int) -> None:
        # Keras swaps EMA weights in at the end of fit (use_ema=True).
        optimizer = getattr(self, "_optimizer", None)  # the default step's (a subclass finalizes its own)
        if epochs > 0 and optimizer is not None and self.model is not None:
            self._sync()
            optimizer.finalize_variable_values(self.model.trainable_variables)

    def _run_evaluate(self, source: DataSource, cbs: keras.callbacks.CallbackList,
                      steps: int | None, plan: _Plan | None = None,
                      progress: _Progress | None = None, expect: bool = False) -> dict[str, Any]:
        plan = self._plan("test", source) if plan is None else plan
        source.rewind()  # every evaluation starts at the first batch, as Keras's (where the source can)
        test_fn = self._step_fn("test", self._sample(plan, source))
        if expect:  # (fit announces all its validation passes at once)
            self._runner.expect("test", _calls(steps or source.num_batches, self.steps_per_execution))
        batch_hooks = _uses_batch_hooks(cbs, "test")
        self.stop_evaluating = False
        cbs.on_test_begin()
        self.reset_metrics()
        k = self.steps_per_execution
        if steps and k > 1:  # as Keras (and fit): whole executions of k batches, as far as the data goes
            n = source.num_batches
            steps = -(-steps // k) * k if n is None or n < steps else min(-(-steps // k) * k, n)
        logs = self._run_batches("test", test_fn, self._executions(source, steps, k, plan), cbs, batch_hooks)
        if progress is not None:
            progress.check_signal()  # SIGTERM during validation: checkpoint the training position
        host = self._epoch_logs(logs)
        cbs.on_test_end(host)
        return host

    @_distributed.in_replica_scope
    def evaluate(self, x: Any = None, y: Any = None, batch_size: int | None = None, verbose: Any = "auto",
                 sample_weight: Any = None, steps: int | None = None, callbacks: Any = None,
                 return_dict: bool = False, check_inputs: bool = False) -> Any:
        """Loss and metrics over the data; arguments as ``keras.Model.evaluate``.

        Returns:
            A dict ``{"loss": ..., "accuracy": ...}`` with ``return_dict=True``,
            else a list in ``metrics_names`` order (a float if only one).
        """
        verbose = _resolve_verbose(verbose)
        _check_steps("steps", steps)
        _checks.check_callbacks(callbacks)
        steps = _capped_steps(steps)
        source = make_source(x, y, sample_weight, batch_size=batch_size, check_inputs=check_inputs)
        _require_steps(source, steps, "steps")
        plan = self._plan("test", source)
        cbs = self._callback_list(callbacks, verbose, 1, steps or source.num_batches, add_history=False)
        try:
            logs = self._run_evaluate(source, cbs, steps, plan, expect=True)
        finally:
            self._sync()
        if return_dict:
            return logs
        return self._flatten_logs(logs)

    def _flatten_logs(self, logs: dict[str, Any]) -> Any:
        """Logs as a list in ``metrics`` order, then the rest by name (a
        float if only one), as Keras returns them without ``return_dict``."""
        names: list[str] = []
        for metric in getattr(self, "metrics", []):
            subs = getattr(metric, "metrics", None) if hasattr(metric, "_flat_metrics") else None
            names.extend(m.name for m in subs) if subs is not None else names.append(metric.name)
        values = [logs[n] for n in names if n in logs] + [logs[k] for k in sorted(logs) if k not in names]
        return values[0] if len(values) == 1 else values

    # ------------------------------------------------------- single batches

    def _one_batch(self, kind: str, x: Any, y: Any = None, sample_weight: Any = None,
                   class_weight: Any = None) -> Any:
        """Runs ``kind``'s step on ``(x, y, sample_weight)`` as one batch, as
        Keras's ``*_on_batch`` do (metrics are reset first: the result is this
        batch's)."""
        if class_weight is not None and sample_weight is not None:
            raise ValueError("Arguments `sample_weight` and `class_weight` cannot be specified at the same time.")
        self.reset_metrics()  # each call reports its own batch, as in Keras
        rows = _padding.rows(x)
        source = make_source(x, y, sample_weight, batch_size=max(rows, 1), class_weight=class_weight)
        fn = self._step_fn(kind, source.peek())
        self._runner.expect(kind, 1)
        out = None
        try:
            # with steps_per_execution > 1 the compiled step takes stacked batches: a stack of one
            k = self.steps_per_execution if kind != "predict" else 1
            for _, _, batch, _, _ in self._executions(source, 1, k):
                out = fn(batch)
        finally:
            self._sync()
        return out

    @_distributed.in_replica_scope
    def train_on_batch(self, x: Any, y: Any = None, sample_weight: Any = None, class_weight: Any = None,
                       return_dict: bool = False) -> Any:
        """One gradient update on one batch; arguments and result as
        ``keras.Model.train_on_batch`` (the loss and metrics so far)."""
        self._check_can_train()
        logs = _host_logs(self._one_batch("train", x, y, sample_weight, class_weight))
        return logs if return_dict else self._flatten_logs(logs)

    @_distributed.in_replica_scope
    def test_on_batch(self, x: Any, y: Any = None, sample_weight: Any = None, return_dict: bool = False) -> Any:
        """Loss and metrics on one batch, as ``keras.Model.test_on_batch``."""
        logs = _host_logs(self._one_batch("test", x, y, sample_weight))
        return logs if return_dict else self._flatten_logs(logs)

    @_distributed.in_replica_scope
    def predict_on_batch(self, x: Any) -> Any:
        """The model's outputs on one batch, as NumPy arrays."""
        out = self._one_batch("predict", x)
        return keras.tree.map_structure(_to_host, out)

    @_distributed.in_replica_scope
    def predict(self, x: Any, batch_size: int | None = None, verbose: Any = "auto", steps: int | None = None,
                callbacks: Any = None) -> Any:
        """Model outputs for ``x`` as NumPy arrays (same structure as the outputs)."""
        verbose = _resolve_verbose(verbose)
        _check_steps("steps", steps)
        _checks.check_callbacks(callbacks)
        steps = _capped_steps(steps)
        source = make_source(x, batch_size=batch_size)
        _require_steps(source, steps, "steps")
        plan = self._plan("predict", source)
        predict_fn = self._step_fn("predict", self._sample(plan, source))
        self._runner.expect("predict", _calls(steps or source.num_batches, 1))
        cbs = self._callback_list(callbacks, verbose, 1, steps or source.num_batches, add_history=False)
        self.stop_predicting = False
        outputs: list[Any] = []
        try:
            cbs.on_predict_begin()
            executions = self._executions(source, steps, 1, plan)
            k = self.steps_per_execution  # as Keras: the batch hooks fire once per k batches
            window: list[Any] = []

            def end_window(first: int) -> None:
                out = window[0] if len(window) == 1 else keras.tree.map_structure(_concat, *window)
                cbs.on_predict_batch_end(first + k - 1, {"outputs": out})
                window.clear()

            try:
                for first, _, batch, real, _ in executions:
                    if first % k == 0:
                        cbs.on_predict_batch_begin(first)
                    out = predict_fn(batch)
                    if real is not None:  # drop the rows that pad a ragged batch
                        out = keras.tree.map_structure(lambda t, n=real: t[:n], out)
                    host = keras.tree.map_structure(_to_host, out)
                    outputs.append(host)
                    window.append(host)
                    if first % k == k - 1:
                        end_window(first - k + 1)
                    if self.stop_predicting:
                        break
                if window:
                    end_window(len(outputs) - len(window))
            finally:
                executions.close()
            cbs.on_predict_end()
        finally:
            self._sync()
        if not outputs:
            raise ValueError("predict() got no batches: the data is empty.")
        return keras.tree.map_structure(_concat, *outputs)


def _calls(steps: int | None, k: int, runs: int = 1) -> int | None:
    """Calls of a compiled step over ``runs`` passes of ``steps`` steps, ``k``
    steps a call; None where the steps are unknown."""
    return None if not steps else -(-steps // k) * max(runs, 0)


__all__ = ["LoopMixin"]
