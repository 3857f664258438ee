"""The public surface: exports, gradient utilities, nested value_and_grad."""

import keras
import numpy as np
import pytest

from loops import backends
import loops


def test_all_is_the_public_api():
    assert sorted(loops.__all__) == sorted(["Trainer", "clip_by_global_norm", "global_norm", "__version__",
                                            "optimizers", "set_seed", "Checkpoint", "CheckpointError",
                                            "OptimizerGroup", "latest_checkpoint", "CheckReport",
                                            "FromLogitsWarning", "LabelShapeWarning", "NonFiniteError", "NonFiniteReport",
                                            "RetraceWarning", "UnusedVariableWarning", "data_parallel", "ProcessLost", "compilation_cache"])
    for name in loops.__all__:
        assert hasattr(loops, name)


def test_registry_lists_names_on_a_bad_name():
    with pytest.raises(ValueError, match=r"\['jax', 'tensorflow', 'torch'\]"):
        backends.get("mlx")
    assert backends.get().NAME == keras.backend.backend()


def test_loops_package_imports_no_engine_directly():
    import pathlib

    for path in pathlib.Path(loops.__file__).parent.glob("*.py"):
        text = path.read_text()
        for engine in ("import jax", "import tensorflow", "import torch", "from jax", "from torch"):
            assert engine not in text, f"{path.name} imports an engine: {engine}"


def test_global_norm_and_clip_match_numpy():
    a = np.array([[3.0, 0.0], [0.0, 4.0]], "float32")
    b = np.array([12.0], "float32")
    grads = [keras.ops.convert_to_tensor(a), None, keras.ops.convert_to_tensor(b)]
    norm = float(keras.ops.convert_to_numpy(loops.global_norm(grads)))
    assert norm == pytest.approx(13.0)
    clipped, pre = loops.clip_by_global_norm(grads, 1.0)
    assert float(keras.ops.convert_to_numpy(pre)) == pytest.approx(13.0)
    assert clipped[1] is None
    np.testing.assert_allclose(keras.ops.convert_to_numpy(clipped[0]), a / 13.0, rtol=1e-6)
    kept, _ = loops.clip_by_global_norm(grads, 100.0)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(kept[2]), b, rtol=1e-6)
    with pytest.raises(ValueError, match="max_norm > 0"):
        loops.clip_by_global_norm(grads, 0.0)


class _Holder(loops.Trainer):
    def __init__(self):
        super().__init__()
        self.w = keras.Variable(np.array([1.0, 2.0], "float32"), name="w")


def test_value_and_grad_eager_and_has_aux():
    t = _Holder()
    loss, (g,) = t.value_and_grad(lambda: keras.ops.sum(t.w ** 3), [t.w])
    assert float(keras.ops.convert_to_numpy(loss)) == pytest.approx(9.0)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(g), [3.0, 12.0], rtol=1e-6)
    (loss, aux), (g,) = t.value_and_grad(lambda: (keras.ops.sum(t.w ** 2), t.w * 2), [t.w], has_aux=True)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(aux), [2.0, 4.0])


def test_nested_value_and_grad_gives_second_order():
    # h(w) = |d/dw sum(w^3)|^2 = sum((3 w^2)^2) = 9 sum(w^4); dh/dw = 36 w^3
    t = _Holder()

    def outer():
        _, (g,) = t.value_and_grad(lambda: keras.ops.sum(t.w ** 3), [t.w])
        return keras.ops.sum(g ** 2)

    h, (dh,) = t.value_and_grad(outer, [t.w])
    assert float(keras.ops.convert_to_numpy(h)) == pytest.approx(9 * (1 + 16))
    np.testing.assert_allclose(keras.ops.convert_to_numpy(dh), [36.0, 288.0], rtol=1e-5)


def test_value_and_grad_rejects_non_scalar_and_non_variables():
    t = _Holder()
    with pytest.raises(ValueError, match=r"scalar loss, got shape \(2,\)"):
        t.value_and_grad(lambda: t.w * 2, [t.w])
    with pytest.raises(TypeError, match="keras.Variable"):
        t.value_and_grad(lambda: keras.ops.sum(t.w), [np.zeros(2)])


def test_gradient_with_respect_to_inputs_and_nested_penalty():
    t = _Holder()
    x = keras.ops.convert_to_tensor(np.array([1.0, -2.0], "float32"))
    # d/dx sum(w * x^2) = 2 w x ; d/dw = x^2
    loss, (gw, gx) = t.value_and_grad(lambda x: keras.ops.sum(t.w * x ** 2), [t.w], inputs=[x])
    np.testing.assert_allclose(keras.ops.convert_to_numpy(gx), [2.0, -8.0], rtol=1e-6)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(gw), [1.0, 4.0], rtol=1e-6)

    # a gradient penalty: p(w) = |d/dx sum(w * x^2)|^2 = sum(4 w^2 x^2); dp/dw = 8 w x^2
    def penalty():
        _, (gx,) = t.value_and_grad(lambda x: keras.ops.sum(t.w * x ** 2), inputs=x)
        return keras.ops.sum(gx ** 2)

    p, (dp,) = t.value_and_grad(penalty, [t.w])
    assert float(keras.ops.convert_to_numpy(p)) == pytest.approx(4 * (1 * 1 + 4 * 4))
    np.testing.assert_allclose(keras.ops.convert_to_numpy(dp), [8.0, 64.0], rtol=1e-5)
    with pytest.raises(ValueError, match="float tensors"):
        t.value_and_grad(lambda x: keras.ops.sum(x), inputs=keras.ops.convert_to_tensor(np.array([1, 2])))
