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
