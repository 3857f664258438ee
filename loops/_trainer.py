"""``Trainer``: configuration, the default steps, ``value_and_grad`` and state.

The loop itself (``fit``/``evaluate``/``predict``) is in ``loops/_loop.py``;
engines are reached only through ``backends`` (see ``backends/_protocol.py``).
"""

from __future__ import annotations

import builtins
import inspect
import sys
import warnings
from typing import Any, Callable, Sequence

import keras

import backends
from loops import _checks, _debug, _distributed, _hooks, _nans, _padding, _traps
from loops import optimizers as _optimizers
from loops._keras_private import CompileLoss, CompileMetrics, attach_compile_state, compile_state_metrics, compute_output_spec, is_ragged, is_sparse, set_model_optimizer, overrides, pending_variables
from loops._loop import LoopMixin
from loops._state import discover_variables, owned_objects
from loops._weights import WeightsMixin

_STEP_KINDS = ("train", "test", "predict")


class _RecordingScope(keras.StatelessScope):
    """A throwaway scope that remembers every variable a step assigns."""

    def __init__(self) -> None:
        # No mapping: reads see the real variables (engines key optimizer slots
        # by the real variable objects), assigns are recorded and then dropped.
        super().__init__(collect_losses=True)
        self.assigned: dict[int, keras.Variable] = {}

    def add_update(self, update: tuple[keras.Variable, Any]) -> None:
        self.assigned[id(update[0])] = update[0]
        super().add_update(update)


def _build_only(optimizer: keras.optimizers.Optimizer, building: bool = False) -> Callable[..., None]:
    def apply(grads: Sequence[Any], trainable_variables: Sequence[keras.Variable] | None = None) -> None:
        if building:
            return  # the models are still being built: the variables are not all there yet
        if not optimizer.built:
            if trainable_variables is None:
                raise ValueError(
                    f"Optimizer {optimizer.name!r} is applied before it was built and without "
                    "variables: call optimizer.apply(grads, variables).")
            optimizer.build(list(trainable_variables))

    return apply


_CREATED_IN_STEP = (
    "The step creates variable(s) {names} that the Trainer does not hold: a variable made inside "
    "train_step is made anew at every call (and under jit its state is lost). Create layers, "
    "variables and metrics in __init__ and keep them as attributes.")


def _warn_on_print(body: Callable[[Any], Any], kind: str, tracing: Callable[[], bool]) -> Callable[[Any], Any]:
    """Wraps a compiled step's Python body so that ``print`` inside it warns
    while the step is traced: the body runs then, not at every step."""

    def traced(batch: Any) -> Any:
        original = builtins.print

        def print_once(*args: Any, sep: str = " ", end: str = "\n", file: Any = None, flush: bool = False) -> None:
            if not tracing():  # an engine ran this body eagerly after all (a torch step it could not capture)
                original(*args, sep=sep, end=end, file=file, flush=flush)
                return
            warnings.warn(
                f"print() inside a compiled {kind}_step runs only while the step is traced (once), "
                "not at every step. Pass Trainer(..., run_eagerly=True) to debug with print, or "
                "return the value in the step's logs.", stacklevel=2)
            # Written out rather than calling the real print: tf.function's
            # autograph routes print back through builtins.print (recursion).
            (file or sys.stdout).write(sep.join(map(str, args)) + end)

        builtins.print = print_once  # type: ignore[assignment]
        try:
            return body(batch)
        finally:
            builtins.print = original

    return traced


def _eager_loop(step: Callable[[Any], Any]) -> Callable[[Any], Any]:
    def run(stacked: Any) -> Any:
        logs = None
        for batch in _padding.unstack(stacked):
            logs = step(batch)
        return logs

    return run


class OptimizerGroup:
    """What ``trainer.optimizer`` is (and so what callbacks see as
    ``self.model.optimizer``) when a Trainer subclass holds several optimizers
    and sets none as ``optimizer``: Keras's callbacks act on each of
    ``optimizers`` (ReduceLROnPlateau cuts every learning rate by its factor,
    LearningRateScheduler schedules each, TensorBoard logs each), as they do
    for Keras's multi-optimizer wrappers."""

    def __init__(self, optimizers: Sequence[keras.optimizers.Optimizer]):
        self.optimizers = list(optimizers)

    @property
    def name(self) -> str:
        return "+".join(o.name for o in self.optimizers)

    @property
    def iterations(self) -> Any:
        return self.optimizers[0].iterations  # the first optimizer's step count

    @property
    def built(self) -> bool:
        return all(o.built for o in self.optimizers)

    @property
    def learning_rate(self) -> Any:
        raise AttributeError(
            f"This trainer holds {len(self.optimizers)} optimizers ({self.name}), each with its own "
            "learning rate: use trainer.optimizer.optimizers[i].learning_rate.")

    def __repr__(self) -> str:
        return f"OptimizerGroup({self.name})"


class Trainer(WeightsMixin, _debug.DebugMixin, LoopMixin):
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
            ``loops/_gradstats.py``). A custom step logs them with
            ``self.log_gradient_stats(grads, variables)``.
        debug_nans: stop at the first non-finite loss or gradient and raise
            ``loops.NonFiniteError`` naming the layer (forward) or variable
            (backward) where it first appears; costs a state copy and a host
            sync per step (see ``loops/_nans.py``).

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
                resolved_jit_compile=backends.get().resolve_jit_compile(jit_compile))
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

    # ------------------------------------------------------------------ state

    @property
    def optimizer(self) -> Any:
        """The optimizer passed to ``Trainer`` (or assigned). If none was and
        a subclass holds optimizers as attributes: that one, or an
        ``OptimizerGroup`` of all of them (what Keras callbacks then adjust)."""
        if self._optimizer is not None:
            return self._optimizer
        held = self.optimizers
        if not held:
            return None
        return held[0] if len(held) == 1 else OptimizerGroup(held)

    @optimizer.setter
    def optimizer(self, value: Any) -> None:
        self._optimizer = _optimizers.get(value)  # Keras's, or optax / torch.optim behind an adapter

    @property
    def layers(self) -> list[keras.Layer]:
        """The layers of every model held (TensorBoard's weight histograms read this)."""
        out: list[keras.Layer] = []
        for model in self.models:
            out.extend(getattr(model, "layers", None) or [model])
        return out

    @property
    def built(self) -> bool:
        return all(m.built for m in self.models)

    @property
    def train_function(self) -> Any:
        return self._step_fns.get("train")

    @property
    def models(self) -> list[keras.Layer]:
        """Every Keras model/layer held as an attribute, in attribute order."""
        return [o for o in owned_objects(self) if isinstance(o, keras.Layer)]

    @property
    def optimizers(self) -> list[keras.optimizers.Optimizer]:
        return [o for o in owned_objects(self) if isinstance(o, keras.optimizers.Optimizer)]

    @property
    def metrics(self) -> list[keras.metrics.Metric]:
        """Every metric the trainer tracks; the loop resets them each epoch.

        Order as Keras: the loss tracker, the compiled metrics, per-output loss
        trackers, then metrics held as attributes and the models' own metrics.
        """
        if self._metrics_cache is not None:
            return self._metrics_cache
        found: list[keras.metrics.Metric] = []
        if self._compile_loss is not None or type(self).train_step is Trainer.train_step:
            found.append(self._loss_tracker)
        if self._compile_metrics is not None:
            found.append(self._compile_metrics)
        if self._compile_loss is not None:
            found.extend(self._compile_loss.metrics)
        for obj in owned_objects(self):
            if isinstance(obj, keras.metrics.Metric) and obj not in found and obj is not self._loss_tracker:
                found.append(obj)
        for model in self.models:
            # (not the compile state a Trainer left on the model: this one's are above, another's are not ours)
            compiled = compile_state_metrics(model)
            found.extend(m for m in model.metrics if m not in found and not any(m is c for c in compiled))
        # Walking the attributes costs; eager steps read this several times a step.
        self._metrics_cache = found
        return found

    @property
    def metrics_names(self) -> list[str]:
        return [m.name for m in self.metrics]

    def reset_metrics(self) -> None:
        self._sync()
        for m in self.metrics:
            m.reset_state()

    @property
    def trainable_variables(self) -> list[keras.Variable]:
        return [v for v in self.variables if v.trainable]

    @property
    def variables(self) -> list[keras.Variable]:
        """Every variable the trainer owns (models, optimizers, metrics, seeds)."""
        return discover_variables(self)

    def _sync(self) -> None:
        """Writes device-held state (jax) back into the variables."""
        if self._runner is not None:
            self._runner.sync()

    def jax_state_sync(self) -> None:
        # Keras callbacks call this (by name, on jax) before reading the model.
        self._sync()

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
            return out, [keras.ops.zeros_like(t) for t in [*variables, *input_list]]
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
        if self._in_first_step:
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
            if self._in_first_step:
                if not self._compile_loss.built:
                    try:
                        self._compile_loss.build(y, y_pred)
                    except (KeyError, ValueError, TypeError):
                        pass  # Keras fits y to the loss's structure first (loss=["mse", None]): its call builds
                _checks.check_loss_shapes(self._compile_loss, y, y_pred)
                _traps.check_values(self, self._compile_loss, y, y_pred)  # label range, from_logits
            loss = self._compile_loss(y, y_pred, sample_weight)
            if self._in_first_step:
                _traps.record_loss(self, loss)
            if loss is not None:
                losses.append(loss)
        for model in self.models:
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
            model.compute_metrics(x, y, y_pred, sample_weight)
            return self.get_metrics_result()
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
            loss = self._model_loss(x, y, y_pred, _padding.loss_weight(pad, sample_weight), training=True)
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
            loss = self._model_loss(x, y, y_pred, _padding.loss_weight(pad, sample_weight), training=False)
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

    def _unbuilt(self) -> list[keras.Layer]:
        return [m for m in self.models
                if not all(layer.built for layer in m._flatten_layers(include_self=True))]

    def _build_models(self, step: Callable[[Any], Any], batch: Any, kind: str) -> None:
        """Builds models that are still unbuilt (a subclassed ``keras.Model``,
        a ``Sequential`` without ``keras.Input``) on the first batch, as
        ``model.fit`` does, so that the step sees their variables.

        The default steps' model is built symbolically (``compute_output_spec``
        on the batch's shapes, Keras's own way: no computation); anything still
        unbuilt after that (the models of a custom step) by one eager pass of
        the step whose state changes are all discarded.
        """
        if not self._unbuilt():
            return
        if self.model is not None and self._uses_default(kind) and self.model in self._unbuilt():
            data, _ = _padding.unwrap(batch)
            x, _, _ = keras.utils.unpack_x_y_sample_weight(data)
            symbolic = keras.tree.map_structure(
                lambda t: None if t is None else keras.KerasTensor(
                    tuple(t.shape), keras.backend.standardize_dtype(t.dtype), sparse=is_sparse(t),
                    ragged=is_ragged(t)), x)
            compute_output_spec(self._call_model, symbolic, False)
        if not self._unbuilt():
            return
        optimizers = self.optimizers
        for opt in optimizers:
            opt.apply = _build_only(opt, building=True)
        self._building = True
        try:
            with self._engine.step_context(), keras.StatelessScope():
                step(batch)
        finally:
            self._building = False
            for opt in optimizers:
                vars(opt).pop("apply", None)
        self._metrics_cache = None

    def _first_step(self, step: Callable[[Any], Any], batch: Any, kind: str = "train") -> None:
        """Runs ``step`` once eagerly with every state change discarded.

        It builds whatever is still unbuilt (model, compiled metrics, any
        optimizer, whose variables exist only after ``build``) before the state
        is collected for compilation, and it runs the one-time checks: shapes,
        variables without a gradient, and variables the step assigns that the
        trainer cannot see (under jax.jit their updates would be lost).
        """
        _debug.prepare(self)  # grad_diagnostics' metric, before the state is collected
        self._build_models(step, batch, kind)
        self._state = discover_variables(self)
        # The Trainer's optimizer options on every optimizer it holds (custom
        # steps' too), and the engine's adaptations, before anything builds.
        _optimizers.prepare(self.optimizers, self._optimizer_options)
        # Optimizers only build here: their updates are engine-specific writes
        # (tensorflow's bypass keras.Variable) that no scope can intercept.
        optimizers = self.optimizers
        for opt in optimizers:
            opt.apply = _build_only(opt)  # instance attribute shadows the method
        self._in_first_step = True
        try:
            with self._engine.step_context(), _RecordingScope() as scope:
                try:
                    step(batch)
                except ValueError as e:
                    if "create a variable while in a stateless scope" in str(e):
                        raise ValueError(_CREATED_IN_STEP.format(names="(one from a value)")) from e
                    raise
                created = pending_variables()
        finally:
            self._in_first_step = False
            for opt in optimizers:
                vars(opt).pop("apply", None)
        known = {id(v) for v in discover_variables(self)}
        transient = [v for v in created if id(v) not in known]
        if transient:
            names = ", ".join(f"{v.path} {tuple(v.shape)}" for v in transient)
            raise ValueError(_CREATED_IN_STEP.format(names=names))
        stray = [v for i, v in scope.assigned.items() if i not in known]
        if stray:
            names = ", ".join(f"{v.path} {tuple(v.shape)}" for v in stray)
            raise ValueError(
                f"The step assigns variable(s) {names} that the Trainer cannot see. Under jax.jit the "
                "update would be lost (a SeedGenerator would give the same noise every step). Make the "
                "owner an attribute of the Trainer (self.noise = keras.random.SeedGenerator(0)) or of a "
                "layer the Trainer holds."
            )

    def _step_fn(self, kind: str, sample: Any) -> Callable[[Any], Any]:
        """The compiled function for ``kind``, built on first use (and again
        when the set of variables or the compile options change)."""
        user_step = {"train": self.train_step, "test": self.test_step, "predict": self.predict_step}[kind]

        def step(batch: Any) -> Any:
            # A step may return a keras.Variable (a metric's result()); return its value.
            return keras.tree.map_structure(
                lambda t: t.value if isinstance(t, keras.Variable) else t,
                _debug.with_gradient_stats(self, kind, user_step(batch)))

        jit = self._engine.resolve_jit_compile(self.jit_compile)
        if kind not in self._step_fns or self._runner_key != self._key(jit):
            self._sync()
            try:
                self._first_step(step, self._engine.to_native(sample), kind)
            except Exception as e:
                _checks.explain_string_inputs(sample, e)  # raises a clear error if strings were the cause
                raise
            key = self._key(jit)
            if key != self._runner_key:
                self._runner = self._engine.make_runner(self._state)
                self._runner_key = key
                self._step_fns = {}
            eager = bool(self.run_eagerly)
            body: Callable[[Any], Any] = step
            if self.steps_per_execution > 1 and kind != "predict":
                # k steps over batches stacked on a leading axis, in one call:
                # lax.scan (jax), tf.while_loop (tensorflow), a Python loop (torch, eager).
                body = _eager_loop(step) if eager else self._engine.loop_steps(step, self._state)
            if self._engine.traces(eager, jit):
                body = _warn_on_print(body, kind, self._engine.tracing)  # its Python runs only while tracing
            many = self.steps_per_execution > 1 and kind != "predict"
            # (the trace counter describes a stacked execution's shapes as they are)
            compiled = self._runner.compile(body, eager=eager, jit_compile=jit, kind=kind,
                                            on_trace=_debug.trace_counter(self, kind, False))
            self._step_fns[kind] = _nans.guard(self, kind, compiled, step, many)  # debug_nans
        return self._step_fns[kind]

    def _key(self, jit: bool) -> tuple[Any, ...]:
        self._state = discover_variables(self)
        self._metrics_cache = None  # attributes or built metrics may have changed
        return (tuple(id(v) for v in self._state), bool(self.run_eagerly), jit, self.steps_per_execution,
                _distributed.current(self).key)  # data parallel or not: steps compile differently
