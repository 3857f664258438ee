"""Debugging built in: the seeds' debugging tips as tools on the Trainer.

- ``trainer.check(x, y)`` / ``fit(..., check=True)``: a pre-flight table per
  layer (``loops/debug/check.py``);
- ``from_logits`` traps and label ranges, on the first batch (``loops/debug/traps.py``);
- ``Trainer(debug_nans=True)``: stop at the first NaN/Inf and name where it
  appears (``loops/debug/nans.py``);
- ``Trainer(grad_diagnostics=True)``: gradient norms and update ratios as
  metrics (``loops/debug/gradstats.py``);
- ``trainer.trace_counts`` and a ``RetraceWarning`` (``loops/debug/retrace.py``).

``DebugMixin`` is mixed into ``Trainer``; the functions below are the hooks
``Trainer`` calls, each a no-op when its feature is off.
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Sequence

import keras

from loops.debug import gradstats as _gradstats
from loops.debug.check import CheckReport, run
from loops.debug.retrace import TraceCounter


def setup(trainer: Any, grad_diagnostics: Any, debug_nans: bool) -> None:
    """``Trainer.__init__``'s part: options checked, the NaN flag created."""
    if not isinstance(debug_nans, bool):
        raise TypeError(f"debug_nans must be True or False, got {debug_nans!r}.")
    trainer._grad_diagnostics = _gradstats.parse(grad_diagnostics)
    trainer._grad_stats = None  # a GradientStats metric, made before the first step (prepare)
    trainer._debug_sink = None  # a Recorder while check() or a NaN replay listens
    trainer._trace_counters = {}
    # Set by every value_and_grad call when the loss or a gradient is not
    # finite; threaded through jit as state, read after each step.
    trainer._nan_flag = (keras.Variable(0.0, dtype="float32", trainable=False, name="nonfinite_flag")
                         if debug_nans else None)


def prepare(trainer: Any) -> None:
    """Before the first step builds anything: the gradient-statistics metric
    (its variables must exist before the step is traced)."""
    if trainer._grad_diagnostics and trainer._grad_stats is None:
        models = [trainer.model] if trainer.model is not None and trainer._uses_default("train") else trainer.models
        trainer._grad_stats = _gradstats.GradientStats(models, trainer._grad_diagnostics)
        trainer._metrics_cache = None


def gradient_stats(trainer: Any, grads: Sequence[Any], variables: Sequence[Any],
                   optimizer: Any) -> contextlib.AbstractContextManager[Any]:
    """The default train_step's diagnostics around ``optimizer.apply``."""
    if trainer._grad_stats is None:
        return contextlib.nullcontext()
    return trainer.log_gradient_stats(grads, variables, optimizer=optimizer)


def training_only_logs(trainer: Any) -> list[str]:
    """Names the test step drops from its logs (no ``val_grad_norm``)."""
    stats = trainer._grad_stats
    return [name for name, _, _ in stats.keys()] if stats is not None else []


def with_gradient_stats(trainer: Any, kind: str, logs: Any) -> Any:
    """A training step's logs with the gradient statistics added (a custom
    step returns its own dict; the default step's has them already)."""
    stats = trainer._grad_stats
    if stats is None or kind != "train" or not isinstance(logs, dict) \
            or all(name in logs for name, _, _ in stats.keys()):
        return logs
    return {**logs, **{k: v for k, v in stats.result().items() if k not in logs}}


def trace_counter(trainer: Any, kind: str, executes_many: bool) -> TraceCounter:
    counter = TraceCounter(kind, executes_many)
    trainer._trace_counters[kind] = counter
    return counter


def preflight(trainer: Any, batch: Any, verbose: int) -> CheckReport:
    """``fit(..., check=True)``: the check on the first training batch; its
    errors stop ``fit`` before anything trains."""
    report = run(trainer, trainer._engine.to_native(batch), trainer.train_step,
                 print if verbose else None)
    if report.errors:
        raise ValueError("fit(check=True) found errors before training:\n  - " + "\n  - ".join(report.errors))
    return report


class DebugMixin:
    """``check``, ``log_gradient_stats`` and ``trace_counts``; mixed into ``Trainer``."""

    _grad_stats: Any
    _grad_diagnostics: frozenset[str]
    _trace_counters: dict[str, TraceCounter]
    _engine: Any
    train_step: Callable[[Any], Any]

    def check(self, x: Any = None, y: Any = None, sample_weight: Any = None, *, batch_size: int | None = None,
              verbose: int = 1, print_fn: Callable[[str], Any] | None = None) -> CheckReport:
        """Runs one training step eagerly on the first batch of the data and
        reports per layer: output shape, parameter count, gradient norm,
        gradients that are None, zero or non-finite; whether the loss is finite
        and how it compares with random guessing (``ln C``); the label range
        against the output width; ``from_logits`` traps. Nothing is updated
        (weights, optimizer, metrics and seeds are as before).

        Args:
            x, y, sample_weight, batch_size: what ``fit`` takes (only the first
                batch is used; a generator loses that batch).
            verbose: 0 prints nothing.
            print_fn: where the table goes (default ``print``).

        Returns:
            A ``CheckReport``: ``.layers``, ``.loss``, ``.expected_loss``,
            ``.gradient_sets``, ``.findings`` (``.errors``, ``.warnings``, ``.ok``).

        Example:
            >>> report = trainer.check(x_train, y_train)
            >>> assert not report.errors, report
        """
        from loops.data.adapters import make_source

        source = make_source(x, y, sample_weight, batch_size=batch_size)
        batch = self._engine.to_native(source.peek())
        return run(self, batch, self.train_step, (print_fn or print) if verbose else None)

    def log_gradient_stats(self, grads: Sequence[Any], variables: Sequence[Any],
                           optimizer: Any = None) -> _gradstats.UpdateRatio:
        """Logs gradient norms (global and per layer) from a custom
        ``train_step``; used as a context manager around ``optimizer.apply``
        it also logs update/weight ratios. Needs ``Trainer(grad_diagnostics=...)``.

        Args:
            grads: gradients, as ``value_and_grad`` returned them.
            variables: the variables they belong to.
            optimizer: pass it when it scales the loss (``LossScaleOptimizer``),
                so the norms are of the unscaled gradients.

        Example:
            >>> loss, grads = self.value_and_grad(loss_fn, vs)
            >>> with self.log_gradient_stats(grads, vs):
            ...     self.opt.apply(grads, vs)
        """
        stats = self._grad_stats
        if stats is None:
            raise ValueError(
                "log_gradient_stats needs the metrics it logs to: pass Trainer(..., grad_diagnostics=True) "
                "(or a list of 'global_norm', 'layer_norms', 'update_ratio').")
        stats.update_grads(list(grads), list(variables), optimizer)
        return _gradstats.UpdateRatio(stats, variables)

    @property
    def trace_counts(self) -> dict[str, int]:
        """How many times each compiled step (``"train"``, ``"test"``,
        ``"predict"``) has been traced, i.e. compiled, since it was built.
        Eager steps (``run_eagerly=True``, torch without ``jit_compile``) stay at 0."""
        return {kind: counter.count for kind, counter in self._trace_counters.items()}


__all__ = ["DebugMixin", "gradient_stats", "preflight", "prepare", "setup", "trace_counter",
           "training_only_logs", "with_gradient_stats"]
