"""From data to executions: how the loop feeds batches to a compiled step.

``ExecutionMixin`` (under ``LoopMixin``) decides per pass how host batches are
prepared (``_plan``: padding a ragged last batch for the default steps),
groups them into executions (``_executions``: ``steps_per_execution`` batches
stacked into one call, converted ahead on a prefetch thread), runs them with
the batch hooks (``_run_batches``) and turns the last logs into an epoch's
(``_epoch_logs``). The small helpers ``loop.py`` shares live here too.
"""

from __future__ import annotations

import warnings
from typing import Any, Callable, Generator, Iterator

import keras
import numpy as np

from loops import distributed as _distributed
from loops.data import padding as _padding
from loops.data.prefetch import Inline, Prefetcher
from loops.data.adapters import check_input_names
from loops.data.sources import ArraySource, DataSource
from loops.trainer.progress import _Progress

_Plan = Callable[[Any], tuple[Any, Any]]
_DEFAULT_METHODS = {"train": ("train_step", "compute_loss", "compute_metrics"),
                    "test": ("test_step", "compute_loss", "compute_metrics"),
                    "predict": ("predict_step",)}


def _host_logs(logs: dict[str, Any] | None) -> dict[str, Any]:
    """Engine tensors to Python floats (a host sync: only at epoch end)."""
    out: dict[str, Any] = {}
    for name, value in (logs or {}).items():
        arr = np.asarray(keras.ops.convert_to_numpy(value))
        out[name] = arr.item() if arr.ndim == 0 else arr
    return out


def _to_host(t: Any) -> Any:
    """A step's output on the host: NumPy, or a tf.RaggedTensor as it is (as Keras's predict)."""
    from loops._keras_private import is_ragged

    return t if is_ragged(t) else keras.ops.convert_to_numpy(t)


def _concat(*parts: Any) -> Any:
    if isinstance(parts[0], np.ndarray) and len({np.shape(p)[1:] for p in parts}) == 1:
        return np.concatenate(parts, axis=0)
    from loops import backends

    if not isinstance(parts[0], np.ndarray):
        return backends.get().concat_rows(parts)  # an engine's own output type (ragged, on tensorflow)
    try:  # outputs that differ past the batch axis: tensorflow makes them ragged, as Keras's predict
        return backends.get().concat_rows(parts)
    except ValueError:
        shapes = sorted({tuple(np.shape(p)[1:]) for p in parts})
        raise ValueError(
            f"predict's batches gave outputs of different shapes past the batch axis ({shapes[:4]}): they "
            "cannot be joined into one array (on jax and torch Keras's predict cannot either; tensorflow joins "
            "outputs of one rank into a tf.RaggedTensor). Feed batches whose outputs agree (resize or pad the "
            "inputs), or call predict_on_batch (or the model) on each batch.") from None


def _resolve_verbose(verbose: Any) -> int:
    if verbose == "auto":
        return 1
    if verbose not in (0, 1, 2):
        raise ValueError(f"verbose must be 'auto', 0, 1 or 2, got {verbose!r}.")
    return int(verbose)


def _check_steps(name: str, value: Any) -> None:
    if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
        raise ValueError(f"{name} must be a positive integer or None, got {value!r}.")


def _require_steps(source: DataSource, steps: int | None, name: str) -> None:
    if steps is None and source.infinite:
        raise ValueError(
            f"The {source.kind} is infinite, so an epoch never ends: pass {name}=N (the number of "
            "batches per epoch).")


def _unchanged(batch: Any) -> tuple[Any, Any]:
    return batch, None


def _uses_batch_hooks(cbs: keras.callbacks.CallbackList, kind: str) -> bool:
    """Whether any callback overrides a per-batch hook of ``kind``. When none
    does, the loop skips those calls: Keras's CallbackList would otherwise turn
    the logs into Python floats every batch, a host sync per step."""
    names = [f"on_{kind}_batch_begin", f"on_{kind}_batch_end"]
    if kind == "train":
        names += ["on_batch_begin", "on_batch_end"]
    base = keras.callbacks.Callback
    return any(getattr(getattr(cb, name), "__func__", getattr(cb, name)) is not getattr(base, name)
               for cb in cbs.callbacks for name in names)


def _stack(hosts: list[Any]) -> Any:
    return keras.tree.map_structure(lambda *xs: None if xs[0] is None else np.stack(xs), *hosts)


def _shapes(batch: Any) -> list[Any]:
    return [None if a is None else np.shape(a) for a in keras.tree.flatten(batch)]


def _same_shape_groups(batches: Iterator[Any], k: int) -> Iterator[tuple[list[Any], bool]]:
    """Windows of ``k`` consecutive batches, each split into runs of one shape
    (a ragged batch that is not padded: its own run): ``(run, closes)``,
    ``closes`` when the run ends its window. A window is one execution for the
    callbacks, as Keras's (its jax step loops over a window of any shapes)."""
    group: list[Any] = []
    taken = 0  # batches of the current window
    for batch in batches:
        if group and _shapes(batch) != _shapes(group[0]):
            yield group, False
            group = []
        group.append(batch)
        taken += 1
        if taken == k:
            yield group, True
            group, taken = [], 0
    if group:
        yield group, True


def _capped_epochs(epochs: int) -> int:
    """``keras.config.set_max_epochs``: a global cap, as ``model.fit`` honours it."""
    cap = keras.config.max_epochs()
    if cap and cap < epochs:
        warnings.warn(f"Limiting epochs to {cap} (keras.config.max_epochs()).", stacklevel=3)
        return int(cap)
    return epochs


def _capped_steps(steps: int | None) -> int | None:
    """``keras.config.set_max_steps_per_epoch``: caps every pass's batches."""
    cap = keras.config.max_steps_per_epoch()
    if cap and (not steps or cap < steps):
        warnings.warn(f"Limiting steps_per_epoch to {cap} (keras.config.max_steps_per_epoch()).", stacklevel=3)
        return int(cap)
    return steps


def _should_eval(epoch: int, validation_freq: Any) -> bool:
    epoch += 1
    if isinstance(validation_freq, int):
        return epoch % validation_freq == 0
    return epoch in validation_freq


def _check_lr_callbacks(trainer: Any, callbacks: Any) -> None:
    """Keras < 3.15's learning-rate callbacks act on ``model.optimizer`` alone:
    with several optimizers they would fail with Keras's 'must have a
    "learning_rate" attribute'; say why instead."""
    from loops._keras_private import _keras_version
    from loops.optimizers import OptimizerGroup

    if _keras_version() >= (3, 15):
        return

    if not isinstance(getattr(trainer, "optimizer", None), OptimizerGroup):
        return
    lr_kinds = (keras.callbacks.LearningRateScheduler, keras.callbacks.ReduceLROnPlateau)
    for cb in callbacks or []:
        if isinstance(cb, lr_kinds):
            raise ValueError(
                f"{type(cb).__name__} adjusts each of several optimizers ({trainer.optimizer.name}) from "
                f"Keras 3.15 on; Keras {keras.__version__} is installed: upgrade Keras, or schedule each "
                "optimizer's learning rate yourself (a keras.optimizers.schedules schedule per optimizer).")


class ExecutionMixin:
    """Batches into executions; mixed into ``Trainer`` (under ``LoopMixin``)."""

    _engine: Any
    seed: int | None
    steps_per_execution: int
    stop_training: bool
    stop_evaluating: bool
    stop_predicting: bool
    history: keras.callbacks.History | None
    optimizer: Any
    model: keras.Model | None
    _initial_epoch: int | None

    #: Pad a ragged last batch to the batch size and mask it (default steps
    #: only), so it does not compile a second step. ``"auto"``: only where
    #: the padding cannot change the results (Keras's own layers and losses,
    #: no batch statistics or random draws in training; and under data
    #: parallelism, where shards must split evenly); ``True``: wherever the
    #: default steps can weigh the padding out; ``False``: never (Keras's
    #: ragged batches).
    pad_ragged_batches: bool | str = "auto"
    #: Batches prepared (and sent to the device) ahead on a background thread; 0 turns it off.
    #: ``None``: the engine decides (``backends.*.prefetch_default``: on where
    #: it overlaps host work with the device; jax on CPU runs faster without).
    prefetch_batches: int | None = None

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
        callbacks, verbose = _distributed.current(self).callbacks(callbacks, verbose)  # the chief prints
        _check_lr_callbacks(self, callbacks)
        return keras.callbacks.CallbackList(
            callbacks, add_history=add_history, add_progbar=verbose != 0, model=self,
            verbose=verbose, epochs=epochs, steps=steps)

    def _uses_default(self, kind: str) -> bool:
        """Whether ``kind``'s step is the Trainer's own (only those get padded batches)."""
        base = next((c for c in type(self).__mro__
                     if c.__name__ == "Trainer" and c.__module__ == "loops.trainer.trainer"), None)
        if base is None or any(getattr(type(self), name) is not getattr(base, name)
                               for name in _DEFAULT_METHODS[kind]):
            return False
        from loops._keras_private import overrides  # a model's own compute_loss / compute_metrics

        return not any(overrides(getattr(self, "model", None), name) for name in _DEFAULT_METHODS[kind][1:])

    def _plan(self, kind: str, source: DataSource) -> _Plan:
        """How each host batch of ``source`` is prepared for ``kind``'s step:
        ``batch -> (batch for the step, real rows or None)``."""
        sample = source.peek()
        if self._uses_default(kind):
            check_input_names(self.model, keras.utils.unpack_x_y_sample_weight(sample)[0])
        if self.pad_ragged_batches not in (True, False, "auto"):
            raise ValueError(f"pad_ragged_batches must be True, False or 'auto', got {self.pad_ragged_batches!r}.")
        if not self.pad_ragged_batches or not self._uses_default(kind):
            return _unchanged
        exact_only = self.pad_ragged_batches == "auto" and not _distributed.current(self).num_replicas > 1
        from loops._keras_private import is_ragged, is_sparse

        if any(is_sparse(leaf) or is_ragged(leaf) for leaf in keras.tree.flatten(sample)):
            return _unchanged  # sparse and ragged rows are not padded
        size: int
        if isinstance(source, ArraySource):
            size = int(source.batch_size or 1)
            if source.n % size == 0:
                return _unchanged  # no ragged batch: the batches go as they are
        else:
            size = _padding.rows(sample)  # a stream's first batch sets the size
        models = getattr(self, "models", [])
        if exact_only and _padding.rows_stay_apart(models, training=kind == "train") is not None:
            return _unchanged  # the real rows' results could change (rows_stay_apart says why)
        if kind == "predict":
            return lambda batch: (_padding.pad_rows(batch, size), _padding.rows(batch))
        from loops._keras_private import losses_average_over_batch, metrics_take_sample_weight

        _, y, _ = keras.utils.unpack_x_y_sample_weight(sample)
        if y is None or not losses_average_over_batch(getattr(self, "_compile_loss", None), keras_only=exact_only) \
                or not metrics_take_sample_weight(getattr(self, "_compile_metrics", None)):
            return _unchanged  # a summed loss, or a metric or loss of the user's, would count the padding
        if _padding.makes_masks(models):
            return _unchanged  # a masked loss averages over the valid entries of all rows, padding's too
        if kind == "train" and any(isinstance(layer, keras.layers.BatchNormalization)
                                   for model in models for layer in model._flatten_layers()):
            return _unchanged  # batch statistics would see the padding rows
        return lambda batch: (_padding.mask_batch(batch, size), None)

    def _sample(self, plan: _Plan, source: DataSource) -> Any:
        return plan(source.peek())[0]

    def _executions(self, source: DataSource, steps: int | None, k: int,
                    plan: _Plan = _unchanged) -> Generator[tuple[int, int, Any, Any, bool], None, None]:
        """(first step, last step, native batch, real rows of the last batch
        or None, whether it closes its execution window). With ``k > 1`` the
        batch is up to k host batches stacked on a new leading axis (one
        transfer, one compiled call); batches of another shape in the window
        (an unpadded ragged batch) are a call of their own in the same window.
        Batches are prepared one ahead on a thread."""
        replicas = _distributed.current(self)
        if k > 1 and replicas.native is not None:
            raise ValueError(
                f"steps_per_execution={k} is not supported with data-parallel training yet: pass "
                "Trainer(..., steps_per_execution=1).")
        to_native = replicas.converter(source, padded=plan is not _unchanged)
        if k > 1:
            from loops._keras_private import is_ragged, is_sparse

            if any(is_sparse(leaf) or is_ragged(leaf) for leaf in keras.tree.flatten(source.peek())):
                raise ValueError(
                    f"steps_per_execution={k} stacks k batches into one array, which sparse and ragged "
                    "inputs cannot be: pass Trainer(..., steps_per_execution=1) for them.")

        def prepare(batch: Any) -> tuple[Any, Any, int, bool]:
            host, real = plan(batch)
            return to_native(host), real, 1, True

        def prepare_group(run: tuple[list[Any], bool]) -> tuple[Any, Any, int, bool]:
            hosts, closes = run
            return to_native(_stack(hosts)), None, len(hosts), closes

        if k == 1:
            it: Iterator[Any] = source.batches(steps)
            fn: Callable[[Any], Any] = prepare
        else:  # (all of this runs on the prefetch thread)
            it = _same_shape_groups((plan(b)[0] for b in source.batches(steps)), k)
            fn = prepare_group
        prefetch = self.prefetch_batches
        if prefetch is None:
            prefetch = self._engine.prefetch_default()
        fetch = Prefetcher(it, fn) if prefetch else Inline(it, fn)
        try:
            step = 0
            for native, real, n, closes in fetch:
                yield step, step + n - 1, native, real, closes
                step += n
        finally:
            fetch.close()

    def _run_batches(self, kind: str, step_fn: Callable[[Any], Any],
                     executions: Generator[tuple[int, int, Any, Any, bool], None, None],
                     cbs: keras.callbacks.CallbackList, batch_hooks: bool,
                     progress: _Progress | None = None) -> dict[str, Any] | None:
        """Runs ``step_fn`` over one pass of ``executions`` with the ``kind``
        ("train" or "test") batch hooks; returns the last step's logs. Stops
        after the batch that sets ``stop_training`` / ``stop_evaluating``.
        ``progress`` (training only) counts steps and writes checkpoints."""
        begin = getattr(cbs, f"on_{kind}_batch_begin")
        end = getattr(cbs, f"on_{kind}_batch_end")
        stop_flag = "stop_training" if kind == "train" else "stop_evaluating"
        offset = progress.step if progress is not None else 0  # a resumed epoch starts mid-way
        logs: dict[str, Any] | None = None
        window: int | None = None  # the first step of the open execution window
        try:
            for first, last, batch, _, closes in executions:
                if window is None:  # (a checkpoint falls between executions, not inside one)
                    if progress is not None:
                        progress.before_step()
                    window = first
                    if batch_hooks:
                        begin(offset + first)
                logs = step_fn(batch)
                if progress is not None:
                    progress.after_step(last - first + 1, logs)
                if not closes:
                    continue  # the window goes on with batches of another shape
                if batch_hooks:
                    # As Keras: an execution of k steps ends at first + k - 1, a short last one too.
                    end(offset + window + self.steps_per_execution - 1, logs)
                window = None
                if progress is not None:
                    progress.check_signal()  # SIGTERM: checkpoint this step and exit
                if getattr(self, stop_flag):
                    break
        finally:
            executions.close()
        return logs

    def _epoch_logs(self, last_logs: dict[str, Any] | None) -> dict[str, Any]:
        """Metric results if the step returned exactly the metrics (the usual
        case), else the last step's logs (custom steps), as Keras does."""
        self._sync()
        replicas = _distributed.current(self)
        with replicas.global_metric_state(self):  # data parallel: over every replica's data
            metric_logs = self.get_metrics_result()
            if isinstance(last_logs, dict) and set(last_logs) == set(metric_logs):
                return _host_logs(metric_logs)
        return _host_logs(replicas.mean(last_logs))
