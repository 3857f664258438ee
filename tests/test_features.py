"""Training features (issue #9), each on every backend, inside the compiled
step, with the default step and a custom one, against a reference computed
another way: a larger batch, a float64 NumPy replay, or plain Keras."""

import functools
import math
import os

import keras
import numpy as np
import pytest
from conftest import BACKEND
from keras import ops

import loops
from loops import Trainer

N, LR = 64, 0.1


# ------------------------------------------------------------------ helpers


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(N, 4)).astype("float32")
    y = (x @ np.array([[1.0], [-2.0], [0.5], [3.0]], "float32") + 0.3
         + 0.1 * rng.normal(size=(N, 1))).astype("float32")
    return x, y


def linear():
    """Dense(1) with fixed weights: its MSE gradient is easy to write in NumPy."""
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
    model.set_weights([np.array([[0.2], [0.1], [-0.3], [0.4]], "float32"), np.array([0.05], "float32")])
    return model


def mlp():
    """A tanh MLP with fixed weights (the same numbers on every backend)."""
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(8, activation="tanh"), keras.layers.Dense(1)])
    rng = np.random.default_rng(0)
    model.set_weights([rng.normal(0, 0.5, w.shape).astype("float32") for w in model.get_weights()])
    return model


def fit(trainer, data, batch_size, epochs=1, **kwargs):
    x, y = data
    return trainer.fit(x, y, batch_size=batch_size, epochs=epochs, shuffle=False, verbose=0, **kwargs)


def assert_weights_close(a, b, tol=1e-5):
    wa = a.get_weights() if hasattr(a, "get_weights") else a
    wb = b.get_weights() if hasattr(b, "get_weights") else b
    assert len(wa) == len(wb)
    for u, v in zip(wa, wb):
        np.testing.assert_allclose(u, v, rtol=tol, atol=tol)


def numpy_linear_sgd(data, batch_size, lrs, clip=None, epochs=1):
    """Float64 SGD replay of ``linear()`` on MSE. ``lrs[t]`` is step t's rate;
    ``clip`` is ``(name, value)`` as Keras clips. Returns the weights after every
    step and the pre-clip global norms."""
    x, y = (np.asarray(a, np.float64) for a in data)
    w, b = (np.asarray(a, np.float64) for a in linear().get_weights())
    trajectory, norms, t = [], [], 0
    for _ in range(epochs):
        for i in range(0, len(x), batch_size):
            xb, yb = x[i:i + batch_size], y[i:i + batch_size]
            err = xb @ w + b - yb
            grads = [2 * xb.T @ err / len(xb), 2 * err.sum(0) / len(xb)]
            norm = math.sqrt(sum(float((g ** 2).sum()) for g in grads))
            norms.append(norm)
            if clip is not None:
                kind, c = clip
                if kind == "global_clipnorm":
                    grads = [g * min(1.0, c / norm) for g in grads]
                elif kind == "clipnorm":
                    grads = [g * c / max(np.sqrt((g ** 2).sum()), c) for g in grads]
                else:
                    grads = [np.clip(g, -c, c) for g in grads]
            w, b = w - lrs[t] * grads[0], b - lrs[t] * grads[1]
            trajectory.append([w.copy(), b.copy()])
            t += 1
    return trajectory, norms


class CustomStep(Trainer):
    """A hand-written step: its own model and optimizer attributes, MSE by hand,
    ``optimizer.scale_loss`` (a no-op unless loss scaling is on)."""

    def __init__(self, model, optimizer, **kwargs):
        super().__init__(**kwargs)
        self.net = model
        self.opt = optimizer
        self.loss_tracker = keras.metrics.Mean(name="loss")

    def train_step(self, batch):
        x, y = batch

        def loss_fn():
            loss = ops.mean(ops.square(ops.cast(self.net(x, training=True), "float32") - y))
            return self.opt.scale_loss(loss), loss

        (_, loss), grads = self.value_and_grad(loss_fn, self.net.trainable_variables, has_aux=True)
        self.opt.apply(grads, self.net.trainable_variables)
        self.loss_tracker.update_state(loss)
        return {"loss": self.loss_tracker.result()}


# ------------------------------------------------------ gradient accumulation


def test_gradient_accumulation_equals_a_k_times_larger_batch(data):
    accumulated = mlp()
    trainer = Trainer(accumulated, keras.optimizers.SGD(LR), "mse", gradient_accumulation_steps=4)
    fit(trainer, data, batch_size=4, epochs=2)
    large = mlp()
    fit(Trainer(large, keras.optimizers.SGD(LR), "mse"), data, batch_size=16, epochs=2)
    assert_weights_close(accumulated, large)
    assert int(ops.convert_to_numpy(trainer.optimizer.iterations)) == 8  # 32 micro-batches, 8 updates
    assert not np.allclose(large.get_weights()[0], mlp().get_weights()[0])  # it did train


def test_gradient_accumulation_in_a_custom_step_with_its_own_optimizer(data):
    accumulated = mlp()
    trainer = CustomStep(accumulated, keras.optimizers.SGD(LR), gradient_accumulation_steps=4)
    fit(trainer, data, batch_size=4)
    assert trainer.opt.gradient_accumulation_steps == 4  # set on the optimizer the step uses
    large = mlp()
    fit(Trainer(large, keras.optimizers.SGD(LR), "mse"), data, batch_size=16)
    assert_weights_close(accumulated, large)


# ------------------------------------------------------------------- clipping


@pytest.mark.parametrize("kind,value", [("global_clipnorm", 1.0), ("clipnorm", 0.8), ("clipvalue", 0.3)])
def test_clipping_matches_a_numpy_replay_and_logs_the_pre_clip_norm(data, kind, value):
    model = linear()
    trainer = Trainer(model, keras.optimizers.SGD(LR), "mse", **{kind: value})
    assert getattr(trainer.optimizer, kind) == value
    history = fit(trainer, data, batch_size=16, epochs=2, validation_data=data)
    trajectory, norms = numpy_linear_sgd(data, 16, [LR] * 8, clip=(kind, value), epochs=2)
    assert_weights_close(model, trajectory[-1])
    # grad_norm: the epoch mean of the pre-clip global norms, which clipping matters for
    np.testing.assert_allclose(history.history["grad_norm"], [np.mean(norms[:4]), np.mean(norms[4:])], rtol=1e-5)
    assert max(norms) > value
    assert "val_grad_norm" not in history.history and "val_loss" in history.history


def test_clipping_composes_with_a_custom_step(data):
    model = linear()
    fit(CustomStep(model, keras.optimizers.SGD(LR), global_clipnorm=1.0), data, batch_size=16)
    trajectory, _ = numpy_linear_sgd(data, 16, [LR] * 4, clip=("global_clipnorm", 1.0))
    assert_weights_close(model, trajectory[-1])


def test_no_grad_norm_without_clipping(data):
    history = fit(Trainer(linear(), keras.optimizers.SGD(LR), "mse"), data, batch_size=16)
    assert "grad_norm" not in history.history


def test_optimizer_options_are_validated_and_conflicts_named():
    sgd = keras.optimizers.SGD
    with pytest.raises(ValueError, match=r"clipnorm=2.0.*clipnorm=1.0"):
        Trainer(linear(), sgd(LR, clipnorm=1.0), "mse", clipnorm=2.0)
    with pytest.raises(ValueError, match=r"Trainer\(clipnorm=1.0\) conflicts with global_clipnorm=0.5"):
        Trainer(linear(), sgd(LR, global_clipnorm=0.5), "mse", clipnorm=1.0)
    with pytest.raises(ValueError, match=r"gradient_accumulation_steps=2.*gradient_accumulation_steps=4"):
        Trainer(linear(), sgd(LR, gradient_accumulation_steps=4), "mse", gradient_accumulation_steps=2)
    with pytest.raises(ValueError, match="only one of clipnorm, clipvalue and global_clipnorm"):
        Trainer(linear(), sgd(LR), "mse", clipnorm=1.0, clipvalue=1.0)
    with pytest.raises(ValueError, match=r"clipnorm must be a positive number, got -1"):
        Trainer(linear(), sgd(LR), "mse", clipnorm=-1)
    with pytest.raises(ValueError, match=r"gradient_accumulation_steps must be a positive integer.*got 0"):
        Trainer(linear(), sgd(LR), "mse", gradient_accumulation_steps=0)
    with pytest.raises(TypeError, match=r"auto_scale_loss must be True or False"):
        Trainer(linear(), sgd(LR), "mse", auto_scale_loss="yes")
    built = sgd(LR)
    model = linear()
    built.build(model.trainable_variables)
    with pytest.raises(ValueError, match="unbuilt"):
        Trainer(model, built, "mse", gradient_accumulation_steps=2)
    # the same value in both places is fine; 1 means no accumulation
    assert Trainer(linear(), sgd(LR, clipnorm=1.0), "mse", clipnorm=1.0).optimizer.clipnorm == 1.0
    assert Trainer(linear(), sgd(LR), "mse", gradient_accumulation_steps=1).optimizer.gradient_accumulation_steps is None


# ------------------------------------------------------------ mixed precision


@pytest.fixture
def policy():
    def use(name):
        keras.mixed_precision.set_dtype_policy(name)
    yield use
    keras.mixed_precision.set_dtype_policy("float32")


@pytest.mark.parametrize("name", ["mixed_float16", "mixed_bfloat16"])
def test_mixed_precision_trains_like_float32_and_like_keras(data, policy, name):
    policy(name)
    model = mlp()
    assert model.layers[0].compute_dtype == name.split("_")[1]
    trainer = Trainer(model, keras.optimizers.SGD(LR), "mse")
    history = fit(trainer, data, batch_size=16, epochs=3)
    scaled = isinstance(trainer.optimizer, keras.optimizers.LossScaleOptimizer)
    assert scaled == (name == "mixed_float16")  # float16 needs loss scaling, bfloat16 does not
    assert all(v.dtype == "float32" for v in model.weights)
    # Dynamic loss scaling skips the first steps, whose gradients overflow at
    # the initial scale (2**15), halving the scale each time, as Keras does.
    skipped = 12 - int(ops.convert_to_numpy(trainer.optimizer.iterations))
    assert skipped <= (2 if scaled else 0)

    policy("float32")  # the reference: float32, skipping the same first batches
    reference = mlp()
    ref_trainer = Trainer(reference, keras.optimizers.SGD(LR), "mse")
    fit(ref_trainer, (data[0][16 * skipped:], data[1][16 * skipped:]), batch_size=16)
    float32 = fit(ref_trainer, data, batch_size=16, epochs=2)
    np.testing.assert_allclose(history.history["loss"][-1], float32.history["loss"][-1], rtol=0.05)
    assert_weights_close(model, reference, tol=3e-2)

    policy(name)  # and plain Keras (compile wraps float16 in a LossScaleOptimizer too)
    keras_model = mlp()
    keras_model.compile(keras.optimizers.SGD(LR), "mse")
    keras_model.fit(data[0], data[1], batch_size=16, epochs=3, shuffle=False, verbose=0)
    # bfloat16 keeps 8 bits of mantissa (one ulp is 3.9e-3 relative): GPU kernels that sum in another
    # order part from Keras's by about one ulp (0.0023 seen on an H200), float16 (11 bits) by less.
    assert_weights_close(model, keras_model, tol=2e-3 if name == "mixed_float16" else 5e-3)


def test_mixed_float16_custom_step_with_its_own_loss_scale_optimizer(data, policy):
    policy("mixed_float16")
    default = mlp()
    fit(Trainer(default, keras.optimizers.SGD(LR), "mse"), data, batch_size=16, epochs=2)
    custom = mlp()
    trainer = CustomStep(custom, keras.optimizers.LossScaleOptimizer(keras.optimizers.SGD(LR)))
    fit(trainer, data, batch_size=16, epochs=2)
    assert_weights_close(custom, default)
    assert all(v.dtype == "float32" for v in custom.weights)


def test_auto_scale_loss_off_keeps_the_optimizer(policy):
    policy("mixed_float16")
    trainer = Trainer(mlp(), keras.optimizers.SGD(LR), "mse", auto_scale_loss=False)
    assert isinstance(trainer.optimizer, keras.optimizers.SGD)


class _AppliedBatches(keras.callbacks.Callback):
    """The batches whose step updated the weights (a loss-scaled step that overflows does not)."""

    def on_train_begin(self, logs=None):
        self.batches, self._count = [], 0

    def on_train_batch_end(self, batch, logs=None):
        count = int(ops.convert_to_numpy(self.model.optimizer.iterations))
        if count > self._count:
            self.batches.append(batch)
        self._count = count


def test_clipping_with_loss_scaling_logs_the_unscaled_norm(data, policy):
    policy("mixed_float16")
    trainer = Trainer(mlp(), keras.optimizers.SGD(LR), "mse", clipnorm=1.0)
    assert trainer.optimizer.inner_optimizer.clipnorm == 1.0
    applied = _AppliedBatches()
    history = fit(trainer, data, batch_size=16, callbacks=[applied])
    assert int(ops.convert_to_numpy(trainer.optimizer.iterations)) == len(applied.batches)
    assert 1 <= 4 - len(applied.batches) <= 2  # overflowing steps: their (infinite) norms are left out
    # (which steps overflow in float16 depends on the XLA version: jax 0.4.30 skips
    # the 1st and 4th, 0.10 the 1st and 2nd; a skipped step leaves the weights as they were)
    rows = np.concatenate([np.arange(16 * b, 16 * b + 16) for b in applied.batches])
    policy("float32")
    reference = fit(Trainer(mlp(), keras.optimizers.SGD(LR), "mse", clipnorm=1.0),
                    (data[0][rows], data[1][rows]), batch_size=16)
    np.testing.assert_allclose(history.history["grad_norm"], reference.history["grad_norm"], rtol=1e-2)


# ------------------------------------------------------------------------ EMA


def test_ema_weights_equal_a_hand_written_average_and_evaluate_uses_them(data):
    model = linear()
    trainer = Trainer(model, keras.optimizers.SGD(LR, use_ema=True, ema_momentum=0.8), "mse")
    val_x, val_y = data[0][:16], data[1][:16]
    history = fit(trainer, data, batch_size=16, epochs=2, validation_data=(val_x, val_y),
                  callbacks=[keras.callbacks.SwapEMAWeights()])
    trajectory, _ = numpy_linear_sgd(data, 16, [LR] * 8, epochs=2)
    ema, averages = None, []
    for weights in trajectory:
        ema = weights if ema is None else [0.8 * a + 0.2 * w for a, w in zip(ema, weights)]
        averages.append(ema)

    def loss(weights, x, y):
        return float(np.mean((np.asarray(x, np.float64) @ weights[0] + weights[1] - y) ** 2))

    # validation ran on the EMA weights of each epoch's end (SwapEMAWeights) ...
    np.testing.assert_allclose(history.history["val_loss"],
                               [loss(averages[3], val_x, val_y), loss(averages[7], val_x, val_y)], rtol=1e-5)
    # ... while training went on with the raw weights, swapped for the average at the end
    assert_weights_close(model, averages[-1])
    result = trainer.evaluate(val_x, val_y, verbose=0, return_dict=True)
    np.testing.assert_allclose(result["loss"], loss(averages[-1], val_x, val_y), rtol=1e-5)


def test_ema_composes_with_a_custom_step(data):
    raw, averaged = linear(), linear()
    fit(CustomStep(raw, keras.optimizers.SGD(LR)), data, batch_size=16)
    trainer = CustomStep(averaged, keras.optimizers.SGD(LR, use_ema=True, ema_momentum=0.8))
    fit(trainer, data, batch_size=16)
    trajectory, _ = numpy_linear_sgd(data, 16, [LR] * 4)
    ema = trajectory[0]
    for weights in trajectory[1:]:
        ema = [0.8 * a + 0.2 * w for a, w in zip(ema, weights)]
    assert_weights_close(raw, trajectory[-1])
    # a custom step's optimizer keeps its average; it is swapped in as Keras does
    trainer.opt.finalize_variable_values(averaged.trainable_variables)
    assert_weights_close(averaged, ema)


# ------------------------------------------------------------ learning rates


def warmup_cosine(step, warmup_steps, decay_steps, target):
    if step < warmup_steps:
        return target * step / warmup_steps
    t = min(step - warmup_steps, decay_steps)
    return target * 0.5 * (1 + math.cos(math.pi * t / decay_steps))


class LearningRates(keras.callbacks.Callback):
    """The learning rate each step (or epoch) starts with, read from the trainer."""

    def __init__(self, per="step"):
        super().__init__()
        self.per, self.rates = per, []

    def _record(self):
        self.rates.append(float(ops.convert_to_numpy(self.model.optimizer.learning_rate)))

    def on_train_batch_begin(self, batch, logs=None):
        if self.per == "step":
            self._record()

    def on_epoch_begin(self, epoch, logs=None):
        if self.per == "epoch":
            self._record()


@pytest.mark.parametrize("custom", [False, True], ids=["default_step", "custom_step"])
def test_warmup_cosine_schedule_matches_a_numpy_replay(data, custom):
    schedule = keras.optimizers.schedules.CosineDecay(0.0, decay_steps=8, warmup_target=LR, warmup_steps=4)
    model = linear()
    opt = keras.optimizers.SGD(schedule)
    trainer = CustomStep(model, opt) if custom else Trainer(model, opt, "mse")
    rates = LearningRates()
    fit(trainer, data, batch_size=16, epochs=3, callbacks=[rates])
    expected = [warmup_cosine(t, 4, 8, LR) for t in range(12)]
    np.testing.assert_allclose(rates.rates, expected, rtol=1e-5, atol=1e-7)
    trajectory, _ = numpy_linear_sgd(data, 16, expected, epochs=3)
    assert_weights_close(model, trajectory[-1])


def test_reduce_lr_on_plateau_changes_the_rate_the_compiled_step_uses(data):
    model = linear()
    trainer = Trainer(model, keras.optimizers.SGD(LR), "mse")
    rates = LearningRates(per="epoch")
    # min_delta this large: no epoch after the first counts as an improvement
    plateau = keras.callbacks.ReduceLROnPlateau(monitor="loss", factor=0.5, patience=0, min_delta=1e6, verbose=0)
    history = fit(trainer, data, batch_size=16, epochs=4, callbacks=[rates, plateau])
    assert rates.rates == pytest.approx([LR, LR, LR / 2, LR / 4])
    assert history.history["learning_rate"] == pytest.approx(rates.rates)
    assert float(ops.convert_to_numpy(trainer.optimizer.learning_rate)) == pytest.approx(LR / 8)
    trajectory, _ = numpy_linear_sgd(data, 16, [r for r in rates.rates for _ in range(4)], epochs=4)
    assert_weights_close(model, trajectory[-1])


def test_reduce_lr_on_plateau_with_a_schedule_is_keras_s_clear_error(data):
    schedule = keras.optimizers.schedules.CosineDecay(0.0, decay_steps=8, warmup_target=LR, warmup_steps=4)
    trainer = Trainer(linear(), keras.optimizers.SGD(schedule), "mse")
    plateau = keras.callbacks.ReduceLROnPlateau(monitor="loss", patience=0, min_delta=1e6)
    with pytest.raises(TypeError, match="LearningRateSchedule"):
        fit(trainer, data, batch_size=16, epochs=3, callbacks=[plateau])


# -------------------------------------------------------- native optimizers


def numpy_adam(data, batch_size, steps, lr, eps, b1=0.9, b2=0.999):
    """Adam as optax and torch write it: eps added to sqrt(v / (1 - b2^t))."""
    x, y = (np.asarray(a, np.float64) for a in data)
    params = [np.asarray(a, np.float64) for a in linear().get_weights()]
    m = [np.zeros_like(p) for p in params]
    v = [np.zeros_like(p) for p in params]
    for t, i in enumerate(range(0, batch_size * steps, batch_size), start=1):
        i %= len(x)  # epochs over the same order
        xb, yb = x[i:i + batch_size], y[i:i + batch_size]
        err = xb @ params[0] + params[1] - yb
        grads = [2 * xb.T @ err / len(xb), 2 * err.sum(0) / len(xb)]
        for k, g in enumerate(grads):
            m[k] = b1 * m[k] + (1 - b1) * g
            v[k] = b2 * v[k] + (1 - b2) * g * g
            params[k] = params[k] - lr * (m[k] / (1 - b1 ** t)) / (np.sqrt(v[k] / (1 - b2 ** t)) + eps)
    return params


def _native_adam(lr, eps):
    if BACKEND == "jax":
        import optax

        return optax.adam(lr, eps=eps)
    import torch

    return functools.partial(torch.optim.Adam, lr=lr, eps=eps)


def _native_sgd(lr, momentum):
    if BACKEND == "jax":
        import optax

        return optax.sgd(lr, momentum=momentum)
    import torch

    return functools.partial(torch.optim.SGD, lr=lr, momentum=momentum)


native = pytest.mark.skipif(BACKEND == "tensorflow",
                            reason="native optimizers: optax on jax, torch.optim on torch; "
                                   "tensorflow's optimizers are Keras's own")


@native
def test_native_adam_equals_keras_adam_and_a_numpy_replay(data):
    eps = 1e-7
    model = linear()
    trainer = Trainer(model, _native_adam(1e-2, eps), "mse")
    assert isinstance(trainer.optimizer, keras.optimizers.Optimizer)
    fit(trainer, data, batch_size=8, epochs=2)
    # the same algorithm written out (eps after bias correction, as optax and torch place it)
    assert_weights_close(model, numpy_adam(data, 8, 16, 1e-2, eps), tol=1e-5)
    # Keras's Adam adds eps before bias correction: equal up to that (tiny) difference
    keras_model = linear()
    fit(Trainer(keras_model, keras.optimizers.Adam(1e-2, epsilon=eps), "mse"), data, batch_size=8, epochs=2)
    assert_weights_close(model, keras_model, tol=1e-5)


@native
def test_native_sgd_momentum_equals_keras_sgd(data):
    model, keras_model = mlp(), mlp()
    fit(Trainer(model, _native_sgd(LR, 0.9), "mse"), data, batch_size=16, epochs=2)
    fit(Trainer(keras_model, keras.optimizers.SGD(LR, momentum=0.9), "mse"), data, batch_size=16, epochs=2)
    assert_weights_close(model, keras_model, tol=1e-5)


@native
def test_native_optimizer_state_is_in_its_variables_and_restores(data):
    model = mlp()
    trainer = Trainer(model, _native_adam(1e-2, 1e-7), "mse")
    fit(trainer, data, batch_size=16)
    weights = model.get_weights()
    store = {}
    trainer.optimizer.save_own_variables(store)  # what Keras's and loops' checkpoints save
    assert len(store) > 3
    fit(trainer, data, batch_size=16)  # the uninterrupted run

    resumed = mlp()
    resumed.set_weights(weights)
    opt = loops.optimizers.get(_native_adam(1e-2, 1e-7))
    opt.build(resumed.trainable_variables)
    opt.load_own_variables(store)
    fit(Trainer(resumed, opt, "mse"), data, batch_size=16)
    assert_weights_close(resumed, model, tol=1e-6)

    fresh = mlp()  # negative control: the same weights without the optimizer state differ
    fresh.set_weights(weights)
    fit(Trainer(fresh, _native_adam(1e-2, 1e-7), "mse"), data, batch_size=16)
    assert not np.allclose(fresh.get_weights()[0], model.get_weights()[0], atol=1e-6)


@native
def test_native_optimizer_composes_with_accumulation_clipping_and_a_custom_step(data):
    model = linear()
    trainer = CustomStep(model, loops.optimizers.get(_native_sgd(LR, 0.0)),
                         gradient_accumulation_steps=2, global_clipnorm=1.0)
    fit(trainer, data, batch_size=8)
    trajectory, _ = numpy_linear_sgd(data, 16, [LR] * 4, clip=("global_clipnorm", 1.0))
    assert_weights_close(model, trajectory[-1])


@pytest.mark.skipif(BACKEND != "jax", reason="optax transformations run on jax only")
def test_optax_learning_rate_via_inject_hyperparams_follows_reduce_lr_on_plateau(data):
    import optax

    model = linear()
    trainer = Trainer(model, optax.inject_hyperparams(optax.sgd)(learning_rate=LR), "mse")
    with pytest.raises(AttributeError, match="inject_hyperparams"):
        _ = Trainer(linear(), optax.sgd(LR), "mse").optimizer.learning_rate
    rates = LearningRates(per="epoch")
    plateau = keras.callbacks.ReduceLROnPlateau(monitor="loss", factor=0.5, patience=0, min_delta=1e6)
    fit(trainer, data, batch_size=16, epochs=3, callbacks=[rates, plateau])
    assert rates.rates == pytest.approx([LR, LR, LR / 2])
    trajectory, _ = numpy_linear_sgd(data, 16, [r for r in rates.rates for _ in range(4)], epochs=3)
    assert_weights_close(model, trajectory[-1])


@pytest.mark.skipif(BACKEND != "torch", reason="torch.optim optimizers run on torch only")
def test_torch_optimizer_follows_a_keras_schedule_and_rejects_instances(data):
    import torch

    schedule = keras.optimizers.schedules.CosineDecay(0.0, decay_steps=8, warmup_target=LR, warmup_steps=4)
    model = linear()
    fit(Trainer(model, loops.optimizers.from_torch(torch.optim.SGD, lr=schedule), "mse"), data,
        batch_size=16, epochs=2)
    expected = [warmup_cosine(t, 4, 8, LR) for t in range(8)]
    trajectory, _ = numpy_linear_sgd(data, 16, expected, epochs=2)
    assert_weights_close(model, trajectory[-1])
    with pytest.raises(TypeError, match="class, not an instance"):
        Trainer(linear(), torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1), "mse")
    with pytest.raises(TypeError, match="betaz"):
        loops.optimizers.from_torch(torch.optim.Adam, betaz=(0.9, 0.99))


def test_a_native_optimizer_of_another_engine_is_a_clear_error():
    if BACKEND != "jax":
        import optax

        with pytest.raises(TypeError, match="optax.GradientTransformation runs only with KERAS_BACKEND=jax"):
            Trainer(linear(), optax.adam(1e-3), "mse")
    if BACKEND != "torch":
        torch = pytest.importorskip("torch")

        with pytest.raises(TypeError, match="torch.optim optimizer runs only with KERAS_BACKEND=torch"):
            Trainer(linear(), torch.optim.Adam, "mse")
        with pytest.raises(TypeError, match="KERAS_BACKEND=torch"):
            loops.optimizers.from_torch(torch.optim.Adam, lr=1e-3)
    with pytest.raises(TypeError, match="from_optax needs an optax.GradientTransformation"):
        loops.optimizers.from_optax(keras.optimizers.Adam())


# ----------------------------------------------------------------- set_seed


@pytest.fixture
def deterministic_off():
    yield
    loops.set_seed(1234, deterministic=False)


def _seeded_run(seed, data):
    loops.set_seed(seed, deterministic=True)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(16, activation="relu"),
                              keras.layers.Dropout(0.3), keras.layers.Dense(1)])  # random init, random dropout
    trainer = Trainer(model, keras.optimizers.Adam(1e-2), "mse")
    trainer.fit(data[0], data[1], batch_size=8, epochs=2, shuffle=True, verbose=0)  # seeded shuffling
    return model.get_weights()


def test_set_seed_deterministic_runs_give_bitwise_equal_weights(data, deterministic_off):
    first, second = _seeded_run(7, data), _seeded_run(7, data)
    for a, b in zip(first, second):
        assert np.array_equal(a, b)
    other = _seeded_run(8, data)
    assert not np.array_equal(first[0], other[0])


def test_set_seed_switches_the_engine_s_deterministic_mode(deterministic_off):
    def enabled():
        if BACKEND == "tensorflow":
            from tensorflow.python.framework import config

            return config.is_op_determinism_enabled()
        if BACKEND == "torch":
            import torch

            return torch.are_deterministic_algorithms_enabled()
        return "--xla_gpu_deterministic_ops=true" in os.environ.get("XLA_FLAGS", "").split()

    loops.set_seed(0, deterministic=True)
    assert enabled()
    loops.set_seed(0)
    assert not enabled()
    a = keras.random.uniform((3,))
    loops.set_seed(0)
    np.testing.assert_array_equal(ops.convert_to_numpy(a), ops.convert_to_numpy(keras.random.uniform((3,))))


def test_set_seed_validates_its_arguments():
    with pytest.raises(ValueError, match=r"integer seed in \[0, 2\*\*32\), got -1"):
        loops.set_seed(-1)
    with pytest.raises(ValueError, match="got 1.5"):
        loops.set_seed(1.5)
    with pytest.raises(TypeError, match="must be True or False"):
        loops.set_seed(0, deterministic="yes")
