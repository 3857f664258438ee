"""Fails loudly if the private Keras APIs loops relies on move."""

import inspect

from loops import _keras_private


def test_compile_containers_still_exist_with_the_used_signature():
    loss_params = inspect.signature(_keras_private.CompileLoss.__init__).parameters
    metric_params = inspect.signature(_keras_private.CompileMetrics.__init__).parameters
    assert {"loss", "loss_weights", "output_names"} <= set(loss_params)
    assert {"metrics", "weighted_metrics", "output_names"} <= set(metric_params)
    for attr in ("build", "metrics", "variables", "_flat_losses"):
        assert hasattr(_keras_private.CompileLoss(loss="mse"), attr), attr


def test_compile_loss_flat_losses_layout():
    import numpy as np

    cl = _keras_private.CompileLoss(loss="mse")
    cl.build(np.zeros((2, 3), "float32"), np.zeros((2, 3), "float32"))
    path, fn, weight, name = cl._flat_losses[0]  # (path, loss, loss_weights, name)
    assert path == () and callable(fn)


def test_pending_variables_lists_variables_created_in_a_stateless_scope():
    import keras

    with keras.StatelessScope():
        v = keras.Variable(initializer="zeros", shape=(2,), name="made_inside")
        assert any(p is v for p in _keras_private.pending_variables())
    assert not _keras_private.pending_variables()  # initialized at the scope's exit


def test_pydataset_adapter_and_metric_internals_used_for_data():
    import keras
    import numpy as np

    class DS(keras.utils.PyDataset):
        def __len__(self):
            return 2

        def __getitem__(self, i):
            return np.full((3, 1), i, "float32"), np.zeros((3,), "float32")

    adapter = _keras_private.PyDatasetAdapter(DS(), shuffle=False)
    assert adapter.num_batches == 2
    adapter.on_epoch_begin()
    batches = list(adapter.get_numpy_iterator())
    adapter.on_epoch_end()
    assert [b[0][0, 0] for b in batches] == [0.0, 1.0]
    # update_metrics_masked reads these CompileMetrics / CompileLoss internals
    cm = _keras_private.CompileMetrics(["mae"], ["mse"])
    cm.build(np.zeros((2, 1), "float32"), np.zeros((2, 1), "float32"))
    for attr in ("_flatten_y", "_flat_metrics", "_flat_weighted_metrics", "_user_metrics", "_user_weighted_metrics"):
        assert hasattr(cm, attr), attr
    assert hasattr(_keras_private.CompileLoss(loss="mse"), "_user_loss")
    mask = np.array([1.0, 0.0], "float32")
    _keras_private.update_metrics_masked(cm, np.array([[0.0], [0.0]], "float32"),
                                         np.array([[1.0], [9.0]], "float32"), mask, mask)
    assert {k: float(v) for k, v in cm.result().items()} == {"mae": 1.0, "mse": 1.0}


def test_private_hooks_the_backends_rely_on_still_exist():
    """backends/tensorflow/distributed.py wraps Keras's per-replica loss scaling and
    runs three optimizer internals per replica; backends/jax/__init__.py reads
    ``Variable._value`` to see a callback's assignment between steps."""
    import keras
    from keras.src.losses import loss as loss_module

    assert callable(loss_module.scale_loss_for_distribution)
    assert callable(loss_module.unscale_loss_for_distribution)
    base = next(c for c in type(keras.optimizers.SGD()).__mro__ if c.__name__ == "BaseOptimizer")
    for name in ("_backend_update_step", "_backend_increment_gradient_accumulators", "_apply_weight_decay"):
        assert callable(getattr(base, name, None)), name
    v = keras.Variable(initializer="zeros", shape=(2,))
    before = v._value
    v.assign([1.0, 2.0])
    assert v._value is not before or keras.backend.backend() != "jax"  # a new array on jax


def test_compile_state_internals_used_for_the_keras_contract():
    """attach_compile_state writes the attributes Keras's Trainer.compile
    writes (the model's metrics, compute_loss and saving read them)."""
    import keras

    assert issubclass(keras.Model, _keras_private.KerasTrainer)
    compile_src = inspect.getsource(_keras_private.KerasTrainer.compile)
    for attr in ("self._compile_loss", "self._compile_metrics", "self._loss_tracker", "self._compile_config",
                 "self.compiled", "self.optimizer"):
        assert attr in compile_src, attr
    assert "_compile_config" in inspect.getsource(_keras_private.KerasTrainer.get_compile_config)
    with _keras_private.DotNotTrackScope():
        pass
    assert _keras_private.SerializableDict(a=1).config == {"a": 1}
    assert callable(_keras_private.compute_output_spec)
    m = keras.Sequential([keras.layers.Dense(2)])
    assert _keras_private.overrides(m, "compute_loss") is False


def test_sparse_converters_used_for_sparse_inputs():
    import numpy as np
    import scipy.sparse

    x = scipy.sparse.random(4, 3, density=0.5, format="csr", dtype="float32", random_state=0)
    assert _keras_private.is_sparse(x) and not _keras_private.is_sparse(np.zeros(3))
    np.testing.assert_array_equal(_keras_private.sparse_to_host(x).toarray(), x.toarray())
    for name in ("scipy_sparse_to_tf_sparse", "scipy_sparse_to_jax_sparse", "tf_sparse_to_jax_sparse",
                 "jax_sparse_to_tf_sparse", "is_scipy_sparse", "is_tensorflow_sparse", "is_jax_sparse"):
        assert callable(getattr(_keras_private._adapter_utils, name)), name


def test_engine_internals_the_backends_use_still_exist():
    import keras

    loss = _keras_private.loss_module()
    assert callable(loss.scale_loss_for_distribution) and callable(loss.unscale_loss_for_distribution)
    assert callable(_keras_private.backend_update_step())
    if keras.backend.backend() == "jax":  # (importing it needs jax)
        from keras.src.backend.jax import distribution_lib

        assert callable(distribution_lib.initialize_rng)
    if keras.backend.backend() == "torch":
        core = _keras_private.torch_core(capture=True)  # the installed Keras is in the verified range
        assert callable(core.cond) and callable(core.get_device)


def test_torch_capture_refuses_an_unverified_keras_with_the_fix(monkeypatch):
    import pytest

    monkeypatch.setattr(_keras_private, "_keras_version", lambda: (3, 99))
    with pytest.raises(RuntimeError, match=r"verified on Keras 3\.\d+ to 3\.\d+.*run_eagerly=True"):
        _keras_private.torch_core(capture=True)


def test_the_engine_random_functions_neutral_random_replaces_still_exist():
    """loops.neutral_random replaces these in Keras's active backend modules."""
    from loops import neutral_random

    for name in [*neutral_random.NEUTRAL, *neutral_random._NOT_NEUTRAL]:
        assert callable(_keras_private.original_random_function(name)), name
    import keras

    seed = keras.ops.convert_to_numpy(_keras_private.draw_seed(7))
    assert seed.ravel().tolist() == [7, 0]


def test_keras_own_counts_keras_code_and_not_code_in_keras_test_files():
    """Padding and the label-shape check trust only Keras's own losses,
    metrics and layers; a function in one of Keras's test files (its trainer
    tests, run as conformance) is user code: it may return one value per batch."""
    import types

    import keras

    assert _keras_private.keras_own(keras.losses.mean_squared_error)
    assert _keras_private.keras_own(keras.metrics.MeanSquaredError())
    assert _keras_private.keras_own(keras.layers.Dense)

    def metric(y_true, y_pred):
        return 0.0

    assert not _keras_private.keras_own(metric)
    metric.__module__ = "keras.src.trainers.trainer_test"
    assert not _keras_private.keras_own(metric)
    assert not _keras_private.keras_own(keras.metrics.MeanMetricWrapper(metric))
    kind = types.new_class("ExampleModel", (keras.Model,))
    kind.__module__ = "keras.src.trainers.trainer_test"
    assert not _keras_private.keras_own(kind)
