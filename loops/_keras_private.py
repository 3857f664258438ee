"""The one place that imports private ``keras.src`` APIs.

Keras keeps ``compile()``'s loss and metric containers private; using them
gives string aliases, multi-output structures, ``loss_weights`` and the
``"accuracy"`` alias resolution exactly as ``model.compile`` does.
``tests/test_keras_private.py`` fails loudly if they move.
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator

from keras.src.backend import compute_output_spec
from keras.src.backend.common import global_state
from keras.src.saving.serialization_lib import SerializableDict
from keras.src.trainers.trainer import Trainer as KerasTrainer
from keras.src.utils.tracking import DotNotTrackScope
from keras.src.trainers import compile_utils as _compile_utils
from keras.src.trainers.compile_utils import CompileLoss, CompileMetrics
from keras.src.trainers.data_adapters import data_adapter_utils as _adapter_utils
from keras.src.trainers.data_adapters.py_dataset_adapter import PyDatasetAdapter

__all__ = ["TORCH_CAPTURE_VERIFIED", "backend_update_step", "loss_module", "torch_core", "compile_state_metrics", "is_ragged", "is_sparse", "keras_own", "sparse_to_host", "sparse_to_jax", "sparse_to_tf", "CompileLoss", "CompileMetrics", "compute_output_spec", "KerasTrainer", "PyDatasetAdapter", "SerializableDict",
           "attach_compile_state", "overrides", "losses_average_over_batch", "metrics_take_sample_weight",
           "outside_stateless_scope", "pending_variables", "reset_global_seed_generator",
           "update_metrics_masked"]


def pending_variables() -> list[Any]:
    """Variables created inside the current ``StatelessScope`` (Keras defers
    their initialization to the scope's exit and lists them here)."""
    return list(global_state.get_global_attribute("uninitialized_variables", None) or [])


@contextlib.contextmanager
def outside_stateless_scope() -> Iterator[None]:
    """No ``StatelessScope`` for the enclosed code (restored after): variables
    made there get their values at once (an optimizer's ``build`` may make
    ``backend.Variable(0)``, which a stateless scope refuses)."""
    scope = global_state.get_global_attribute("stateless_scope")
    global_state.set_global_attribute("stateless_scope", None)
    try:
        yield
    finally:
        global_state.set_global_attribute("stateless_scope", scope)


def reset_global_seed_generator() -> None:
    """Drops Keras's global ``SeedGenerator`` (what ``keras.random`` uses without
    a seed) so its next use recreates it from the seed just set: Keras 3.13+'s
    ``set_random_seed`` does this itself, 3.10-3.12 kept the old generator."""
    global_state.set_global_attribute("global_seed_generator", None)


# --- data: Keras's PyDataset machinery (workers, multiprocessing, epoch hooks)
_MEAN_REDUCTIONS = ("sum_over_batch_size", "mean", "mean_with_sample_weight", "auto", None)


def keras_own(obj: Any) -> bool:
    """Whether ``obj`` (a loss/metric object, class or function) is Keras's own
    code, with any function it wraps (``LossFunctionWrapper.fn``,
    ``MeanMetricWrapper._fn``)."""
    import inspect

    for attribute in ("fn", "_fn"):
        wrapped = getattr(obj, attribute, None)
        if callable(wrapped) and wrapped is not obj and not keras_own(wrapped):
            return False
    owner = obj if inspect.isfunction(obj) or inspect.isclass(obj) or inspect.isbuiltin(obj) else type(obj)
    module = str(getattr(owner, "__module__", None) or "")
    # Keras's test files (``keras.src.trainers.trainer_test``) hold user code.
    return module.startswith("keras.") and not module.rpartition(".")[2].endswith("_test")


def losses_average_over_batch(compile_loss: CompileLoss | None, keras_only: bool = False) -> bool:
    """Whether every configured loss averages over the batch (Keras's default
    ``"sum_over_batch_size"``): only then is a padded, masked batch exact.
    With ``keras_only``: and is Keras's own (a user's loss function or
    ``Loss.call`` may reduce over the rows itself, counting the padding)."""
    if compile_loss is None:
        return True
    import keras

    for leaf in keras.tree.flatten(getattr(compile_loss, "_user_loss", None)):
        if leaf is None:
            continue
        if isinstance(leaf, str):
            leaf = keras.losses.get(leaf)
        if getattr(leaf, "reduction", None) not in _MEAN_REDUCTIONS:
            return False
        if keras_only and not keras_own(leaf):
            return False
    return True


def metrics_take_sample_weight(compile_metrics: CompileMetrics | None) -> bool:
    """Whether every compiled metric is one whose handling of sample weights is
    known (Keras's own, or a function Keras wraps in a weighted mean): a
    user-written ``Metric`` may ignore the weights and count padding rows."""
    if compile_metrics is None:
        return True
    import keras

    user = [getattr(compile_metrics, "_user_metrics", None), getattr(compile_metrics, "_user_weighted_metrics", None)]
    # (a function of the user's may return one value per batch, not per sample)
    return all(keras_own(leaf) for leaf in keras.tree.flatten(user) if leaf is not None and not isinstance(leaf, str))


def update_metrics_masked(compile_metrics: CompileMetrics, y: Any, y_pred: Any, sample_weight: Any,
                          mask: Any) -> None:
    """``CompileMetrics.update_state`` for a padded batch: unweighted metrics
    get ``mask`` as their weights, weighted metrics ``sample_weight`` (already
    zero on padding rows)."""
    if not compile_metrics.built:
        compile_metrics.build(y, y_pred)
    import keras

    # Keras 3.14.0 alone dropped CompileMetrics._flatten_y (3.14.1 restored it); it flattened with keras.tree
    flatten_y = getattr(compile_metrics, "_flatten_y", keras.tree.flatten)
    ys, ps = flatten_y(y), flatten_y(y_pred)
    for m, y_t, y_p in zip(compile_metrics._flat_metrics, ys, ps):
        if m:
            m.update_state(y_t, y_p, mask)
    if sample_weight is not None:
        sws = flatten_y(sample_weight)
        if len(sws) < len(ys):
            sws = [sws[0] for _ in ys]
    else:
        sws = [mask for _ in ys]
    for m, y_t, y_p, s_w in zip(compile_metrics._flat_weighted_metrics, ys, ps, sws):
        if m:
            m.update_state(y_t, y_p, s_w)


# --- the model's compile state: what keras.Model.compile leaves on a model
def attach_compile_state(model: Any, *, optimizer: Any, loss: Any, metrics: Any, loss_weights: Any,
                         weighted_metrics: Any, compile_loss: Any, compile_metrics: Any, loss_tracker: Any,
                         run_eagerly: bool, steps_per_execution: int, jit_compile: Any,
                         auto_scale_loss: bool, resolved_jit_compile: bool) -> None:
    """Leaves on ``model`` what ``model.compile`` would, as the Trainer's own
    objects: ``model.optimizer``, ``model.metrics``, the compiled loss (which a
    model's ``compute_loss`` override reaches through ``super()``), and the
    compile config, so a ``.keras`` file the model writes loads compiled."""
    if not isinstance(model, KerasTrainer):
        return  # a bare keras.Layer has no compile state
    with DotNotTrackScope():  # as model.compile: these are not the model's own metrics
        model.optimizer = optimizer
        model._compile_loss = compile_loss
        model._compile_metrics = compile_metrics
        model._loss_tracker = loss_tracker
        model.loss = loss
        model.compiled = True
        model.stop_training = False
        model.run_eagerly = run_eagerly
        model.steps_per_execution = steps_per_execution
        model.jit_compile = resolved_jit_compile  # as model.compile: "auto" resolved for this engine
        if not _serializable(optimizer):
            # An optax / torch.optim adapter has no Keras config: the file then
            # loads uncompiled (its weights and optimizer variables are still saved).
            model.__dict__.pop("_compile_config", None)
            return
        model._compile_config = SerializableDict(
            optimizer=optimizer, loss=loss, metrics=metrics, weighted_metrics=weighted_metrics,
            loss_weights=loss_weights, run_eagerly=run_eagerly, steps_per_execution=steps_per_execution,
            jit_compile=jit_compile, auto_scale_loss=auto_scale_loss)


def overrides(model: Any, name: str) -> bool:
    """Whether ``model``'s class overrides Keras's ``Trainer.<name>`` (its
    ``compute_loss`` or ``compute_metrics``, Keras's backend-neutral hooks)."""
    if not isinstance(model, KerasTrainer):
        return False
    return getattr(type(model), name) is not getattr(KerasTrainer, name)


# --- sparse inputs: SciPy matrices, tf.SparseTensor, jax BCOO (Keras's converters)
def is_sparse(value: Any) -> bool:
    return bool(_adapter_utils.is_scipy_sparse(value) or _adapter_utils.is_tensorflow_sparse(value)
                or _adapter_utils.is_jax_sparse(value))


def sparse_to_host(value: Any) -> Any:
    """A 2-D sparse leaf as a SciPy CSR matrix (rows can be sliced into
    batches); other ranks stay as they are."""
    import scipy.sparse

    if _adapter_utils.is_scipy_sparse(value):
        return value.tocsr()
    if len(value.shape) != 2:
        return value
    import numpy as np

    if _adapter_utils.is_tensorflow_sparse(value):
        indices, data = np.asarray(value.indices), np.asarray(value.values)
    else:  # jax BCOO (batched layouts keep per-row indices: flattened first)
        value = value.update_layout(n_batch=0, n_dense=0) if value.n_batch or value.n_dense else value
        indices, data = np.asarray(value.indices), np.asarray(value.data)
        kept = (indices < np.asarray(value.shape)).all(axis=1)  # (BCOO pads with out-of-range indices)
        indices, data = indices[kept], data[kept]
    return scipy.sparse.coo_matrix((data, (indices[:, 0], indices[:, 1])), shape=tuple(value.shape)).tocsr()


def sparse_to_jax(value: Any) -> Any:
    if _adapter_utils.is_scipy_sparse(value):
        return _adapter_utils.scipy_sparse_to_jax_sparse(value)
    if _adapter_utils.is_tensorflow_sparse(value):
        return _adapter_utils.tf_sparse_to_jax_sparse(value)
    return value


def sparse_to_tf(value: Any) -> Any:
    if _adapter_utils.is_scipy_sparse(value):
        return _adapter_utils.scipy_sparse_to_tf_sparse(value)
    if _adapter_utils.is_jax_sparse(value):
        return _adapter_utils.jax_sparse_to_tf_sparse(value)
    return value


def set_model_optimizer(model: Any, optimizer: Any) -> None:
    """The optimizer chosen after construction (Keras's default RMSprop), on
    a model whose compile state the Trainer holds."""
    if isinstance(model, KerasTrainer) and getattr(model, "compiled", False):
        with DotNotTrackScope():
            model.optimizer = optimizer
        config = getattr(model, "_compile_config", None)
        if config is not None:
            config.config["optimizer"] = optimizer


def is_ragged(value: Any) -> bool:
    return bool(_adapter_utils.is_tensorflow_ragged(value))


def _serializable(optimizer: Any) -> bool:
    if optimizer is None:
        return True
    import keras

    inner = getattr(optimizer, "inner_optimizer", optimizer)  # a LossScaleOptimizer's
    return type(inner).__module__.startswith("keras.") and isinstance(inner, keras.optimizers.Optimizer)


def compile_state_metrics(model: Any) -> list[Any]:
    """The metric objects compile state put on ``model`` (a loss tracker, the
    compiled metrics and the per-output loss trackers)."""
    if not isinstance(model, KerasTrainer) or not getattr(model, "compiled", False):
        return []
    out = [getattr(model, "_loss_tracker", None), getattr(model, "_compile_metrics", None)]
    compile_loss = getattr(model, "_compile_loss", None)
    if compile_loss is not None:
        out.extend(compile_loss.metrics)
    return [m for m in out if m is not None]


# --- engine internals the backends patch or call (imported lazily: each one
# loads its engine). The torch graph capture replaces ``cond`` in Keras's torch
# core while a step is captured; it was verified on the Keras versions below.
TORCH_CAPTURE_VERIFIED = ((3, 10), (3, 15))  # first and last minor version verified


def _keras_version() -> tuple[int, int]:
    import keras

    major, minor = (int(p) for p in keras.__version__.split(".")[:2])
    return major, minor


def torch_core(capture: bool = False) -> Any:
    """``keras.src.backend.torch.core``, checked for what the torch backend
    calls (``get_device``) and the graph capture patches (``cond``). With
    ``capture``, a Keras outside the versions the capture was verified on is
    a clear error (eager torch steps do not patch anything)."""
    import keras

    lo, hi = TORCH_CAPTURE_VERIFIED
    if capture and not lo <= _keras_version() <= hi:
        raise RuntimeError(
            f"loops' torch graph capture patches Keras's private torch backend (keras.src.backend.torch.core."
            f"cond) and was verified on Keras {lo[0]}.{lo[1]} to {hi[0]}.{hi[1]}; this is Keras "
            f"{keras.__version__}. Install a verified Keras (pip install 'keras>={lo[0]}.{lo[1]},"
            f"<{hi[0]}.{hi[1] + 1}') or run the steps eagerly: Trainer(..., run_eagerly=True).")
    import keras.src.backend.torch.core as core

    missing = [name for name in ("cond", "get_device") if not callable(getattr(core, name, None))]
    if missing:
        raise RuntimeError(
            f"Keras {keras.__version__} moved keras.src.backend.torch.core.{missing[0]}, which loops' torch "
            "backend uses: install a verified Keras or pass Trainer(..., run_eagerly=True).")
    return core


def backend_update_step() -> Any:
    """``BaseOptimizer._backend_update_step`` (Keras's per-variable update loop)."""
    from keras.src.optimizers.base_optimizer import BaseOptimizer

    return BaseOptimizer._backend_update_step


def jax_initialize_rng() -> None:
    """What ``keras.distribution.initialize`` does after ``jax.distributed.initialize``:
    one global seed for every process (``keras.src.backend.jax.distribution_lib.initialize_rng``)."""
    from keras.src.backend.jax.distribution_lib import initialize_rng

    initialize_rng()


def loss_module() -> Any:
    """``keras.src.losses.loss``: its ``(un)scale_loss_for_distribution`` hooks."""
    from keras.src.losses import loss

    return loss


# --- keras.random's engine functions (loops.neutral_random replaces them)
_RANDOM_ORIGINALS: dict[str, Any] = {}


def draw_seed(seed: Any) -> Any:
    """Keras's own seed drawing: a ``SeedGenerator`` advances, an int is
    ``[seed, 0]``, None uses Keras's global generator (advanced in order, so
    the same on every engine)."""
    from keras.src.random import seed_generator

    if seed is None:
        return seed_generator.global_seed_generator().next(ordered=True)
    return seed_generator.draw_seed(seed)


def _engine_function(name: str) -> tuple[Any, str]:
    """``"uniform"`` -> (the active engine's ``keras.src.backend.random``, "uniform");
    ``"image.elastic_transform"`` -> (its ``keras.src.backend.image``, ...):
    the modules ``keras.random`` / ``keras.ops.image`` call into at every call."""
    from keras.src.backend import image, random

    module, _, attr = name.rpartition(".")
    return (image if module == "image" else random), attr


def original_random_function(name: str) -> Any:
    module, attr = _engine_function(name)
    return _RANDOM_ORIGINALS.get(name, getattr(module, attr, None))


def replace_random_backend(functions: dict[str, Any]) -> None:
    missing = [name for name in functions if not hasattr(*_engine_function(name))]
    if missing:  # (checked first: never a half-replaced module)
        raise RuntimeError(f"Keras {__import__('keras').__version__} has no keras.src.backend.{missing[0]}: "
                           "loops' neutral random cannot replace it; set_seed(..., neutral_random=False).")
    for name, fn in functions.items():
        module, attr = _engine_function(name)
        _RANDOM_ORIGINALS.setdefault(name, getattr(module, attr))
        setattr(module, attr, fn)


def restore_random_backend() -> None:
    for name, fn in _RANDOM_ORIGINALS.items():
        module, attr = _engine_function(name)
        setattr(module, attr, fn)
    _RANDOM_ORIGINALS.clear()


def random_backend_replaced() -> bool:
    return bool(_RANDOM_ORIGINALS)
