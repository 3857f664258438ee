"""The loop contract, written once for every backend: ``fit``, ``evaluate``
and ``predict`` with Keras's arguments, callbacks in Keras's order, History.

Nothing here knows which engine runs the steps: ``Trainer._step_fn`` returns a
compiled callable and ``Trainer._sync`` brings device-held state home.
"""

from __future__ import annotations

import itertools
import warnings
from typing import Any, Callable, Iterator

import keras
import numpy as np

from loops._data import ArraySource, DataSource, make_source


def _host_logs(logs: dict[str, Any] | None) -> dict[str, Any]:
    """Engine tensors to Python floats (a host sync: only at epoch end)."""
    out: dict[str, Any] = {}
    for name, value in (logs or {}).items():
        arr = np.asarray(keras.ops.convert_to_numpy(value))
        out[name] = arr.item() if arr.ndim == 0 else arr
    return out


def _resolve_verbose(verbose: Any) -> int:
    if verbose == "auto":
        return 1
    if verbose not in (0, 1, 2):
        raise ValueError(f"verbose must be 'auto', 0, 1 or 2, got {verbose!r}.")
    return int(verbose)


def _check_steps(name: str, value: Any) -> None:
    if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
        raise ValueError(f"{name} must be a positive integer or None, got {value!r}.")


def _should_eval(epoch: int, validation_freq: Any) -> bool:
    epoch += 1
    if isinstance(validation_freq, int):
        return epoch % validation_freq == 0
    return epoch in validation_freq


class LoopMixin:
    """fit / evaluate / predict; mixed into ``Trainer``, which provides these."""

    _engine: Any
    seed: int | None
    steps_per_execution: int
    stop_training: bool
    stop_evaluating: bool
    stop_predicting: bool
    history: keras.callbacks.History | None
    optimizer: keras.optimizers.Optimizer | None
    model: keras.Model | None

    def _step_fn(self, kind: str, sample: Any) -> Callable[[Any], Any]:
        raise NotImplementedError

    def _sync(self) -> None:
        raise NotImplementedError

    def _check_can_train(self) -> None:
        raise NotImplementedError

    def reset_metrics(self) -> None:
        raise NotImplementedError

    def get_metrics_result(self) -> dict[str, Any]:
        raise NotImplementedError

    def _callback_list(self, callbacks: Any, verbose: int, epochs: int, steps: int | None,
                       add_history: bool) -> keras.callbacks.CallbackList:
        if isinstance(callbacks, keras.callbacks.CallbackList):
            return callbacks
        return keras.callbacks.CallbackList(
            callbacks, add_history=add_history, add_progbar=verbose != 0, model=self,
            verbose=verbose, epochs=epochs, steps=steps)

    def _executions(self, source: DataSource, steps: int | None, k: int) -> Iterator[tuple[int, int, Any]]:
        """(first step, last step, native batch or tuple of k batches)."""
        to_native = self._engine.to_native
        it = source.batches(steps)
        step = 0
        while True:
            group = list(itertools.islice(it, k))
            if not group:
                return
            native = [to_native(b) for b in group]
            yield step, step + len(group) - 1, (tuple(native) if k > 1 else native[0])
            step += len(group)

    def _epoch_logs(self, last_logs: dict[str, Any] | None) -> dict[str, Any]:
        """Metric results if the step returned exactly the metrics (the usual
        case), else the last step's logs (custom steps), as Keras does."""
        self._sync()
        metric_logs = self.get_metrics_result()
        if isinstance(last_logs, dict) and set(last_logs) == set(metric_logs):
            return _host_logs(metric_logs)
        return _host_logs(last_logs)

    def fit(self, x: Any = None, y: Any = None, batch_size: int | None = None, epochs: int = 1,
            verbose: Any = "auto", callbacks: Any = None, validation_split: float = 0.0,
            validation_data: Any = None, shuffle: bool = True, class_weight: dict[int, float] | None = None,
            sample_weight: Any = None, initial_epoch: int = 0, steps_per_epoch: int | None = None,
            validation_steps: int | None = None, validation_batch_size: int | None = None,
            validation_freq: Any = 1) -> keras.callbacks.History:
        """Trains for ``epochs`` epochs; arguments as ``keras.Model.fit``.

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
        self._check_can_train()

        train = make_source(x, y, sample_weight, batch_size=batch_size, shuffle=shuffle,
                            class_weight=class_weight, seed=self.seed)
        val: DataSource | None = None
        if validation_split:
            if not isinstance(train, ArraySource):
                raise ValueError(
                    f"validation_split={validation_split} needs array inputs; it cannot split a "
                    f"{type(x).__name__}. Pass validation_data=(x_val, y_val) (or a generator) instead."
                )
            train, val = train.split(validation_split)
        elif validation_data is not None:
            if isinstance(validation_data, tuple) and 2 <= len(validation_data) <= 3 and all(
                    not hasattr(e, "__next__") for e in validation_data):
                vx, vy, vsw = keras.utils.unpack_x_y_sample_weight(validation_data)
                val = make_source(vx, vy, vsw, batch_size=validation_batch_size or batch_size)
            else:
                val = make_source(validation_data, batch_size=validation_batch_size or batch_size)

        # Build and check everything before the first callback fires, so bad
        # input fails here and not after an epoch of work.
        train_fn = self._step_fn("train", train.peek())
        if val is not None:
            self._step_fn("test", val.peek())
            train_fn = self._step_fn("train", train.peek())

        steps = steps_per_epoch or train.num_batches
        cbs = self._callback_list(callbacks, verbose, epochs, steps, add_history=True)
        self.stop_training = False
        k = self.steps_per_execution
        training_logs: dict[str, Any] | None = None
        try:
            cbs.on_train_begin()
            for epoch in range(initial_epoch, epochs):
                self.reset_metrics()
                cbs.on_epoch_begin(epoch)
                logs: dict[str, Any] | None = None
                for first, last, batch in self._executions(train, steps_per_epoch, k):
                    cbs.on_train_batch_begin(first)
                    logs = train_fn(batch)
                    cbs.on_train_batch_end(last, logs)
                    if self.stop_training:
                        break
                if logs is None:
                    warnings.warn(
                        f"Epoch {epoch + 1} got no batches: the data ran out. Training stops; for a "
                        "generator, make it loop forever and pass steps_per_epoch.", stacklevel=2)
                    self.stop_training = True
                    break
                epoch_logs = self._epoch_logs(logs)
                if val is not None and _should_eval(epoch, validation_freq):
                    val_logs = self._run_evaluate(val, cbs, validation_steps)
                    epoch_logs.update({f"val_{name}": value for name, value in val_logs.items()})
                cbs.on_epoch_end(epoch, epoch_logs)
                training_logs = epoch_logs
                if self.stop_training:
                    break
            self._finalize_optimizers(epochs)
            cbs.on_train_end(logs=training_logs)
        finally:
            self._sync()
        assert self.history is not None  # set by CallbackList(add_history=True)
        return self.history

    def _finalize_optimizers(self, epochs: int) -> None:
        # Keras swaps EMA weights in at the end of fit (use_ema=True).
        if epochs > 0 and self.optimizer is not None and self.model is not None:
            self._sync()
            self.optimizer.finalize_variable_values(self.model.trainable_variables)

    def _run_evaluate(self, source: DataSource, cbs: keras.callbacks.CallbackList,
                      steps: int | None) -> dict[str, Any]:
        test_fn = self._step_fn("test", source.peek())
        self.stop_evaluating = False
        cbs.on_test_begin()
        self.reset_metrics()
        logs: dict[str, Any] | None = None
        for first, last, batch in self._executions(source, steps, self.steps_per_execution):
            cbs.on_test_batch_begin(first)
            logs = test_fn(batch)
            cbs.on_test_batch_end(last, logs)
            if self.stop_evaluating:
                break
        host = self._epoch_logs(logs)
        cbs.on_test_end(host)
        return host

    def evaluate(self, x: Any = None, y: Any = None, batch_size: int | None = None, verbose: Any = "auto",
                 sample_weight: Any = None, steps: int | None = None, callbacks: Any = None,
                 return_dict: bool = False) -> Any:
        """Loss and metrics over the data; arguments as ``keras.Model.evaluate``.

        Returns:
            A dict ``{"loss": ..., "accuracy": ...}`` with ``return_dict=True``,
            else a list in ``metrics_names`` order (a float if only one).
        """
        verbose = _resolve_verbose(verbose)
        _check_steps("steps", steps)
        source = make_source(x, y, sample_weight, batch_size=batch_size)
        cbs = self._callback_list(callbacks, verbose, 1, steps or source.num_batches, add_history=False)
        try:
            logs = self._run_evaluate(source, cbs, steps)
        finally:
            self._sync()
        if return_dict:
            return logs
        values = list(logs.values())
        return values[0] if len(values) == 1 else values

    def predict(self, x: Any, batch_size: int | None = None, verbose: Any = "auto", steps: int | None = None,
                callbacks: Any = None) -> Any:
        """Model outputs for ``x`` as NumPy arrays (same structure as the outputs)."""
        verbose = _resolve_verbose(verbose)
        _check_steps("steps", steps)
        source = make_source(x, batch_size=batch_size)
        predict_fn = self._step_fn("predict", source.peek())
        cbs = self._callback_list(callbacks, verbose, 1, steps or source.num_batches, add_history=False)
        self.stop_predicting = False
        outputs: list[Any] = []
        try:
            cbs.on_predict_begin()
            for first, _, batch in self._executions(source, steps, 1):
                cbs.on_predict_batch_begin(first)
                out = predict_fn(batch)
                outputs.append(keras.tree.map_structure(keras.ops.convert_to_numpy, out))
                cbs.on_predict_batch_end(first, {"outputs": out})
                if self.stop_predicting:
                    break
            cbs.on_predict_end()
        finally:
            self._sync()
        if not outputs:
            raise ValueError("predict() got no batches: the data is empty.")
        return keras.tree.map_structure(lambda *parts: np.concatenate(parts, axis=0), *outputs)


__all__ = ["LoopMixin"]
