"""``Trainer``: construction, the default steps and ``value_and_grad``.

The class is assembled by concern, one file each: ``state.py`` (what it
holds, as Keras's ``Model`` exposes it), ``steps.py`` (turning steps into
compiled functions), ``loop.py`` (``fit``/``evaluate``/``predict``, top to
bottom), ``weights.py`` (weights and saving) and ``loops/debug`` (``check``,
gradient statistics). Engines are reached only through ``loops.backends``
(see ``backends/protocol.py``).
"""

from __future__ import annotations

import inspect
import warnings
from typing import Any, Callable, Sequence

import keras

from loops import backends
from loops import optimizers as _optimizers
from loops._keras_private import CompileLoss, CompileMetrics, attach_compile_state, overrides, set_model_optimizer
from loops.data import padding as _padding
from loops.debug import diagnostics as _debug
from loops.debug import hooks as _hooks
from loops.debug import traps as _traps
from loops.optimizers import OptimizerGroup
from loops.trainer import checks as _checks
from loops.trainer.loop import LoopMixin
from loops.trainer.state import discover_variables
from loops.trainer.steps import StepsMixin, resolve_jit_compile
from loops.trainer.weights import WeightsMixin

__all__ = ["OptimizerGroup", "Trainer"]


class Trainer(StepsMixin, WeightsMixin, _debug.DebugMixin, LoopMixin):
    """A training loop written once, run by the engine ``KERAS_BACKEND`` names.

    Args:
        model: the ``keras.Model`` the default steps train; a subclass with its
            own ``train_step`` may leave it ``None`` and hold any number of
            models, optimizers, metrics and seed generators as attributes.
        optimizer, loss, metrics, loss_weights, weighted_metrics: what
            ``keras.Model.compile`` accepts (objects or string aliases).
        jit_compile: ``"auto"`` (as Keras: XLA on jax, on tensorflow only with an
            accelerator, eager torch), ``True`` or ``False``.
        run_eagerly: run steps as plain Python on every backend, so ``print``
            and a debugger work inside ``train_step``.
        steps_per_execution: batches run per compiled call.
        seed: seed for shuffling array inputs (backend-independent order).
        gradient_accumulation_steps: update every k batches with the mean of
            their gradients (training on k-times larger batches); set on every
            optimizer the trainer holds, so custom steps get it too.
        clipnorm, clipvalue, global_clipnorm: gradient clipping as Keras
            optimizers take it (at most one), set on every optimizer the
            trainer holds. The default step then logs ``grad_norm``, the
            global norm of the gradients before clipping (and unscaled).
        auto_scale_loss: wrap the optimizer in ``keras.optimizers.LossScaleOptimizer``
            when the model computes in float16 (``mixed_float16``) and the
            default ``train_step`` runs, as ``keras.Model.compile`` does. A
            custom step wraps its optimizers itself and scales its loss with
            ``optimizer.scale_loss(loss)``.
        grad_diagnostics: ``True``, or a list of ``"global_norm"``,
            ``"layer_norms"``, ``"update_ratio"``: logged as metrics
            (``grad_norm``, ``grad_norm/<layer>``, ``update_ratio``...; see
            ``loops/debug/gradstats.py``). A custom step logs them with
            ``self.log_gradient_stats(grads, variables)``.
        debug_nans: stop at the first non-finite loss or gradient and raise
            ``loops.NonFiniteError`` naming the layer (forward) or variable
            (backward) where it first appears; costs a state copy and a host
            sync per step (see ``loops/debug/nans.py``).

    ``optimizer`` may also be an engine's own: an ``optax.GradientTransformation``
    (jax) or a ``torch.optim.Optimizer`` class (torch); see ``loops.optimizers``.

    Example:
        >>> trainer = Trainer(model, optimizer="adam",
        ...                   loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        ...                   metrics=["accuracy"])
        >>> history = trainer.fit(x, y, batch_size=128, epochs=10, validation_split=0.1)
        >>> trainer.evaluate(x_test, y_test, return_dict=True)
    """

    def __init__(
        self,
        model: keras.Model | None = None,
        optimizer: Any = None,
        loss: Any = None,
        metrics: Any = None,
        *,
        loss_weights: Any = None,
        weighted_metrics: Any = None,
        jit_compile: bool | str = "auto",
        run_eagerly: bool = False,
        steps_per_execution: int = 1,
        seed: int | None = None,
        gradient_accumulation_steps: int | None = None,
        clipnorm: float | None = None,
        clipvalue: float | None = None,
        global_clipnorm: float | None = None,
        auto_scale_loss: bool = True,
        grad_diagnostics: Any = False,
        debug_nans: bool = False,
    ):
        if model is not None and not isinstance(model, keras.Layer):
            raise TypeError(
                f"Trainer(model=...) takes a keras.Model, got {type(model).__name__}. "
                "Wrap a torch.nn.Module in keras.layers.TorchModuleWrapper, or build a keras.Model."
            )
        if jit_compile not in (True, False, "auto"):
            raise ValueError(f"jit_compile must be True, False or 'auto', got {jit_compile!r}.")
        if not isinstance(steps_per_execution, int) or isinstance(steps_per_execution, bool) \
                or steps_per_execution < 1:
            raise ValueError(f"steps_per_execution must be a positive integer, got {steps_per_execution!r}.")
        if not isinstance(auto_scale_loss, bool):
            raise TypeError(f"auto_scale_loss must be True or False, got {auto_scale_loss!r}.")
        self.model = model
        _debug.setup(self, grad_diagnostics, debug_nans)
        self._optimizer_options = _optimizers.check_options(
            gradient_accumulation_steps=gradient_accumulation_steps, clipnorm=clipnorm, clipvalue=clipvalue,
            global_clipnorm=global_clipnorm)
        opt = _optimizers.get(optimizer)  # Keras's, or optax / torch.optim behind an adapter
        if opt is None and model is not None and loss is not None and type(self).train_step is Trainer.train_step:
            opt = keras.optimizers.get("rmsprop")  # as model.compile(loss=...): Keras's default optimizer
        if opt is not None:
            _optimizers.configure(opt, self._optimizer_options)
            if auto_scale_loss and type(self).train_step is Trainer.train_step \
                    and _optimizers.needs_loss_scaling(model) \
                    and not isinstance(opt, keras.optimizers.LossScaleOptimizer):
                opt = keras.optimizers.LossScaleOptimizer(opt)  # float16 gradients underflow unscaled
        self.optimizer = opt
        # With clipping on, the default step logs the pre-clip gradient norm.
        self._grad_norm_tracker = (keras.metrics.Mean(name="grad_norm")  # (grad_diagnostics logs its own)
                                   if _optimizers.clips(opt) and "global_norm" not in self._grad_diagnostics else None)
        output_names = getattr(model, "output_names", None)
        for leaf in keras.tree.flatten(loss) if loss is not None else []:
            if isinstance(leaf, str):
                keras.losses.get(leaf)  # raises Keras's error for an unknown name now
        self._compile_loss = CompileLoss(loss, loss_weights, output_names=output_names) if loss is not None else None
        self._compile_metrics = (CompileMetrics(metrics, weighted_metrics, output_names=output_names)
                                 if metrics is not None or weighted_metrics is not None else None)
        self._loss_tracker = keras.metrics.Mean(name="loss")
        if model is not None and (opt is not None or loss is not None or metrics is not None):
            attach_compile_state(
                model, optimizer=opt, loss=loss, metrics=metrics, loss_weights=loss_weights,
                weighted_metrics=weighted_metrics, compile_loss=self._compile_loss,
                compile_metrics=self._compile_metrics, loss_tracker=self._loss_tracker, run_eagerly=run_eagerly,
                steps_per_execution=steps_per_execution, jit_compile=jit_compile, auto_scale_loss=auto_scale_loss,
                resolved_jit_compile=resolve_jit_compile(backends.get(), jit_compile, [model], warn=True))
        self.jit_compile = jit_compile
        self.run_eagerly = run_eagerly
        self.steps_per_execution = steps_per_execution
        self.seed = seed
        self.stop_training = False
        self.stop_evaluating = False
        self.stop_predicting = False
        self.history: keras.callbacks.History | None = None
        self._initial_epoch: int | None = None
        self._engine = backends.get()
        self._runner: Any = None
        self._runner_key: tuple[Any, ...] | None = None
        self._step_fns: dict[str, Callable[[Any], Any]] = {}
        self._state: list[keras.Variable] = []
        self._in_first_step = False
        self._reach_known = True  # the first step's gradients tell unreached variables (None)
        self._reach_check: str | None = None  # else "pending", then "now" where the step is next traced
        self._value_checks_traced = False  # tracing a compiled step that runs the first step's value checks
        self._building = False
        self._metrics_cache: list[keras.metrics.Metric] | None = None

    def __getattr__(self, name: str) -> Any:
        """What the trainer lacks, its model has: a callback's ``self.model``
        is the trainer, and Keras callbacks (and users' own) read the model's
        layers, variables and other attributes through it."""
        if name.startswith("__") or name == "model":
            raise AttributeError(name)
        model = self.__dict__.get("model")
        if model is not None:
            try:
                return getattr(model, name)
            except AttributeError:
                pass
        raise AttributeError(
            f"{type(self).__name__!r} object has no attribute {name!r}"
            + (f", nor has its model {model.name!r}" if model is not None else ""))

    # ---------------------------------------------------------- differentiation

    def value_and_grad(self, fn: Callable[..., Any], variables: Sequence[keras.Variable] = (),
                       has_aux: bool = False, *, inputs: Any = None) -> tuple[Any, list[Any]]:
        """Differentiates ``fn`` with respect to ``variables`` (and ``inputs``), on any backend.

        Args:
            fn: returns a scalar loss, or ``(loss, aux)``. Run the forward pass
                inside it. Takes no arguments, or one per tensor in ``inputs``.
                It may nest: call ``value_and_grad`` inside ``fn`` for
                second-order gradients (a gradient penalty, for example).
            variables: trainable ``keras.Variable`` objects.
            has_aux: whether ``fn`` returns ``(loss, aux)``.
            inputs: a tensor or list of tensors to differentiate against as
                well; ``fn`` is then called as ``fn(*inputs)``.

        Returns:
            ``(loss, grads)`` or ``((loss, aux), grads)``; grads in the order of
            ``variables``, followed by one per input.

        Example:
            >>> def d_loss():
            ...     return bce(ones, self.discriminator(real, training=True))
            >>> d, grads = self.value_and_grad(d_loss, self.discriminator.trainable_variables)
            >>> self.d_opt.apply(grads, self.discriminator.trainable_variables)
            >>> # gradient with respect to data:
            >>> _, (dx,) = self.value_and_grad(lambda x: ops.sum(critic(x)), inputs=[x_hat])
        """
        variables = list(variables)
        _checks.check_variables(variables)
        # (No annotation here: tf.function's autograph cannot convert an
        # annotated name that a nested function closes over.)
        input_list = [] if inputs is None else list(inputs) if isinstance(inputs, (list, tuple)) else [inputs]
        if input_list:
            _checks.check_inputs(input_list)
        if self._building:  # the pass that builds unbuilt models: no gradients, nothing checked
            out = fn(*input_list)
            return out, [keras.ops.zeros(tuple(t.shape), dtype=t.dtype) if isinstance(t, keras.Variable)
                         else keras.ops.zeros_like(t) for t in [*variables, *input_list]]
        if not variables and not input_list:
            raise ValueError("value_and_grad needs something to differentiate: pass variables and/or inputs.")

        def checked(*args: Any) -> Any:
            out = fn(*args)
            if has_aux and not (isinstance(out, tuple) and len(out) == 2):
                raise ValueError(
                    f"value_and_grad(has_aux=True) needs fn to return (loss, aux), got {type(out).__name__}."
                )
            _checks.check_scalar_loss(out[0] if has_aux else out)
            return out

        state = self._state or discover_variables(self)
        out, grads = self._engine.value_and_grad(
            checked, variables, inputs=input_list, has_aux=has_aux, state=state,
            detect_unused=self._in_first_step)
        _hooks.on_gradients(self, variables, out[0] if has_aux else out, grads)  # check(), debug_nans
        if (self._in_first_step and self._reach_known) or self._reach_check == "now":
            _checks.check_no_gradient(variables, grads[:len(variables)])
        _checks.check_no_input_gradient(grads[len(variables):])
        return out, grads

    # ------------------------------------------------------------ default steps

    def _call_model(self, x: Any, training: bool) -> Any:
        model = self.model
        if model is None:
            raise ValueError(
                "This Trainer has no model: pass Trainer(model, ...) or override the step methods."
            )
        has_training = getattr(model, "_call_has_training_arg", None)
        if has_training is None:
            params = inspect.signature(model.call).parameters
            has_training = "training" in params or any(p.kind is p.VAR_KEYWORD for p in params.values())
        return model(x, training=training) if has_training else model(x)

    def compute_loss(self, x: Any = None, y: Any = None, y_pred: Any = None, sample_weight: Any = None,
                     training: bool = True) -> Any:
        """The configured loss plus the models' ``losses`` (``add_loss``, regularizers)."""
        del x
        losses = []
        if self._compile_loss is not None and y is not None:
            if self._in_first_step and not self._compile_loss.built:
                try:
                    self._compile_loss.build(y, y_pred)
                except (KeyError, ValueError, TypeError):
                    pass  # Keras fits y to the loss's structure first (loss=["mse", None]): its call builds
            problems = _checks.loss_shape_problems(self._compile_loss, y, y_pred) if self._in_first_step else []
            if (self._in_first_step and not problems) or self._value_checks_traced:
                _traps.check_values(self, self._compile_loss, y, y_pred)  # label range, from_logits
            loss = _checks.shape_checked_loss(self._compile_loss, y, y_pred, sample_weight, problems)
            if self._in_first_step:
                _traps.record_loss(self, loss)
            if loss is not None:
                losses.append(loss)
        for model in self._step_models():
            for extra in model.losses:
                if not keras.backend.is_float_dtype(extra.dtype):
                    extra = keras.ops.cast(extra, keras.backend.floatx())
                losses.append(keras.ops.sum(extra))
        if not losses:
            if training:
                raise ValueError(
                    "There is no loss to minimise: pass Trainer(model, loss=...) (and labels y), or "
                    "add losses to the model with add_loss()."
                    if self._compile_loss is None else
                    "A loss is configured but the data has no labels: pass y to fit(), or yield (x, y) batches."
                )
            return keras.ops.zeros(())
        return losses[0] if len(losses) == 1 else keras.ops.sum(keras.ops.stack(losses))

    def _model_loss(self, x: Any, y: Any, y_pred: Any, sample_weight: Any, training: bool) -> Any:
        """``compute_loss``: the model's own override if it has one (Keras's
        backend-neutral customisation point), else the Trainer's."""
        model: Any = self.model
        if type(self).compute_loss is Trainer.compute_loss and overrides(model, "compute_loss"):
            if "training" in inspect.signature(model.compute_loss).parameters:
                return model.compute_loss(x=x, y=y, y_pred=y_pred, sample_weight=sample_weight, training=training)
            return model.compute_loss(x=x, y=y, y_pred=y_pred, sample_weight=sample_weight)
        return self.compute_loss(x, y, y_pred, sample_weight, training=training)

    def _model_metrics(self, x: Any, y: Any, y_pred: Any, sample_weight: Any) -> dict[str, Any]:
        model: Any = self.model
        if type(self).compute_metrics is Trainer.compute_metrics and overrides(model, "compute_metrics"):
            logs = model.compute_metrics(x, y, y_pred, sample_weight)  # (Keras's steps return what it returns)
            return dict(logs) if isinstance(logs, dict) else self.get_metrics_result()
        return self.compute_metrics(x, y, y_pred, sample_weight)

    def compute_metrics(self, x: Any, y: Any, y_pred: Any, sample_weight: Any = None) -> dict[str, Any]:
        del x
        if self._compile_metrics is not None and y is not None:
            self._compile_metrics.update_state(y, y_pred, sample_weight)
        return self.get_metrics_result()

    def get_metrics_result(self) -> dict[str, Any]:
        results: dict[str, Any] = {}
        for metric in self.metrics:
            result = metric.result()
            if isinstance(result, dict):
                results.update(result)
            else:
                results[metric.name] = result
        return results

    @staticmethod
    def _batch_size(x: Any) -> Any:
        return keras.ops.shape(next(t for t in keras.tree.flatten(x) if t is not None))[0]

    def train_step(self, batch: Any) -> dict[str, Any]:
        """One optimisation step on ``batch``; returns the logs. Override freely:
        written in ``keras.ops`` and ``self.value_and_grad``, it runs compiled on
        every backend."""
        batch, pad = _padding.unwrap(batch)  # pad: set when the loop padded a ragged batch
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(batch)
        optimizer = self._optimizer
        if optimizer is None or self.model is None:
            raise ValueError("The default train_step needs Trainer(model, optimizer=..., loss=...).")
        variables = self.model.trainable_variables

        def loss_fn() -> tuple[Any, tuple[Any, Any]]:
            y_pred = self._call_model(x, training=True)
            loss = self._model_loss(x, y, y_pred, _padding.loss_weight(pad, sample_weight, y_pred), training=True)
            return optimizer.scale_loss(loss), (loss, y_pred)

        if not variables:  # Keras trains a frozen or weightless model too: loss and metrics, no update
            if self._in_first_step:
                warnings.warn(f"Model {self.model.name!r} has no trainable variables: fit() computes its "
                              "loss and metrics but updates nothing.", stacklevel=3)
            with _padding.real_samples_only(pad, self._compile_loss):
                _, (loss, y_pred) = loss_fn()
        else:
            with _padding.real_samples_only(pad, self._compile_loss):
                (_, (loss, y_pred)), grads = self.value_and_grad(loss_fn, variables, has_aux=True)
            if self._grad_norm_tracker is not None:  # clipping is on: log the norm before it
                _optimizers.track_grad_norm(self._grad_norm_tracker, grads, optimizer)
            with _debug.gradient_stats(self, grads, variables, optimizer):  # grad_diagnostics
                optimizer.apply(grads, variables)
        self._loss_tracker.update_state(loss, sample_weight=self._batch_size(x) if pad is None else pad.count)
        if pad is not None:
            return pad.metrics(self, y, y_pred, sample_weight)
        return self._model_metrics(x, y, y_pred, sample_weight)

    def test_step(self, batch: Any) -> dict[str, Any]:
        batch, pad = _padding.unwrap(batch)  # pad: set when the loop padded a ragged batch
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(batch)
        y_pred = self._call_model(x, training=False)
        with _padding.real_samples_only(pad, self._compile_loss):
            loss = self._model_loss(x, y, y_pred, _padding.loss_weight(pad, sample_weight, y_pred), training=False)
        self._loss_tracker.update_state(loss, sample_weight=self._batch_size(x) if pad is None else pad.count)
        logs = pad.metrics(self, y, y_pred, sample_weight) if pad is not None \
            else self._model_metrics(x, y, y_pred, sample_weight)
        if self._grad_norm_tracker is not None:
            logs.pop(self._grad_norm_tracker.name, None)  # a training quantity: no val_grad_norm
        for name in _debug.training_only_logs(self):
            logs.pop(name, None)
        return logs

    def predict_step(self, batch: Any) -> Any:
        x, _, _ = keras.utils.unpack_x_y_sample_weight(batch)
        return self._call_model(x, training=False)

    # ------------------------------------------------------------- compilation

    def _check_can_train(self) -> None:
        if type(self).train_step is not Trainer.train_step:
            return  # a custom step brings its own models and optimizers
        if self.model is None:
            raise ValueError("fit() needs a model: pass Trainer(model, optimizer=..., loss=...).")
        if self._optimizer is None:
            # As model.compile(loss=...): Keras's default optimizer is RMSprop.
            opt = keras.optimizers.get("rmsprop")
            _optimizers.configure(opt, self._optimizer_options)
            self.optimizer = opt
            set_model_optimizer(self.model, opt)
