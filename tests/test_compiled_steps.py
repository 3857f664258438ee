"""Compiled steps compute what eager steps compute, on every backend.

jax traces the step under ``jax.jit``, tensorflow under ``tf.function``, and
torch captures it as an aten graph and replays it (``backends/torch/capture.py``).
Each test trains twice from the same weights, compiled and with
``run_eagerly=True``, and compares the results; the torch-only tests cover
what only capture can get wrong (a value read into Python)."""

import warnings

import keras
import numpy as np
import pytest
from keras import ops

from loops import Trainer

BACKEND = keras.backend.backend()


@pytest.fixture(autouse=True)
def _captured_from_the_first_call(capture_first):
    """torch: every test here is about the captured step, and these runs are
    too short for the capture policy to capture (``test_torch_capture_policy.py``)."""


def _twice(build, fit_kwargs, data):
    """(compiled trainer, eager trainer, their histories) from one start."""
    out = []
    weights = None
    for eager in (False, True):
        keras.utils.set_random_seed(0)
        trainer = build(eager)
        if weights is None:
            trainer.model.build((None, *data[0].shape[1:]))
            weights = trainer.model.get_weights()
        trainer.model.set_weights(weights)
        out.append((trainer, trainer.fit(*data, shuffle=False, verbose=0, **fit_kwargs)))
    return out


def _assert_same(compiled, eager, rtol=1e-5):
    (tc, hc), (te, he) = compiled, eager
    assert set(hc.history) == set(he.history)
    for key in hc.history:
        np.testing.assert_allclose(hc.history[key], he.history[key], rtol=rtol, atol=1e-6, err_msg=key)
    for a, b in zip(tc.model.get_weights(), te.model.get_weights()):
        np.testing.assert_allclose(a, b, rtol=rtol * 10, atol=1e-6)


def _images(n=128, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.random((n, 10, 10, 1)).astype("float32")
    y = (x.mean(axis=(1, 2, 3)) > 0.5).astype("int32") + 2 * (x[:, :5].mean(axis=(1, 2, 3)) > 0.5)
    return x, y.astype("int32")


def test_cnn_with_batchnorm_schedule_momentum_and_lr_callback():
    """channels_last convs and pools, BatchNorm statistics, SGD with momentum
    under a warm-up schedule (a keras.ops.cond), and an LR set by a callback
    between epochs: the compiled step follows every one of them."""
    x, y = _images()

    def build(eager):
        model = keras.Sequential([
            keras.Input((10, 10, 1)),
            keras.layers.Conv2D(4, 3, activation="relu"),
            keras.layers.BatchNormalization(),
            keras.layers.MaxPooling2D(2),
            keras.layers.Flatten(),
            keras.layers.Dense(4),
        ])
        schedule = keras.optimizers.schedules.CosineDecay(0.01, 40, warmup_target=0.05, warmup_steps=5)
        return Trainer(model, keras.optimizers.SGD(schedule, momentum=0.9),
                       keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                       metrics=["accuracy"], run_eagerly=eager)

    compiled, eager = _twice(build, {"batch_size": 16, "epochs": 3, "validation_split": 0.25}, (x, y))
    _assert_same(compiled, eager)
    assert compiled[0].trace_counts == {"train": 1, "test": 1}  # traced (torch: captured) once each
    assert compiled[1].history["loss"][-1] < compiled[1].history["loss"][0]


def test_mlp_adam_with_one_hot_labels_and_a_scheduler_callback():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(64, 8)).astype("float32")
    labels = (x[:, 0] > 0).astype("int32") + (x[:, 1] > 0)

    class OneHot(Trainer):
        def train_step(self, batch):
            x, labels = batch
            return super().train_step((x, ops.one_hot(labels, 3)))

    def build(eager):
        model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(16, activation="relu"), keras.layers.Dense(3)])
        return OneHot(model, keras.optimizers.Adam(0.01), keras.losses.CategoricalCrossentropy(from_logits=True),
                      run_eagerly=eager)

    halve = keras.callbacks.LearningRateScheduler(lambda epoch, lr: lr if epoch == 0 else lr * 0.5)
    compiled, eager = _twice(build, {"batch_size": 16, "epochs": 3, "callbacks": [halve]}, (x, labels))
    _assert_same(compiled, eager)
    np.testing.assert_allclose(compiled[1].history["learning_rate"], [0.01, 0.005, 0.0025], rtol=1e-6)


class Masks(Trainer):
    """Returns the sum of a dropout layer's output for a constant input."""

    def train_step(self, batch):
        x, y = batch
        out = self.model(ops.ones_like(x), training=True)
        self._loss_tracker.update_state(ops.sum(out))
        return {"out": ops.sum(out)}


def test_dropout_draws_a_fresh_mask_at_every_compiled_step():
    model = keras.Sequential([keras.Input((64,)), keras.layers.Dropout(0.5)])
    trainer = Masks(model, "sgd", "mse")
    seen = []
    cb = keras.callbacks.LambdaCallback(on_train_batch_end=lambda batch, logs: seen.append(float(logs["out"])))
    x = np.ones((8 * 6, 64), "float32")
    trainer.fit(x, x, batch_size=8, epochs=1, verbose=0, callbacks=[cb])
    assert len(seen) == 6
    assert len(set(seen)) > 1, f"the same dropout mask at every step: {seen}"
    assert all(0 < s < 2 * 64 * 8 for s in seen)  # 8 rows; kept units are scaled by 2


def test_weights_assigned_between_steps_are_used_by_the_next_compiled_step():
    x = np.ones((32, 4), "float32")
    y = np.zeros((32, 1), "float32")

    def build(eager):
        model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
        return Trainer(model, keras.optimizers.SGD(0.01), "mse", run_eagerly=eager)

    def reset(trainer):
        return keras.callbacks.LambdaCallback(on_train_batch_end=lambda batch, logs: batch == 1 and [
            v.assign(ops.ones(v.shape)) for v in trainer.model.trainable_variables])

    results = []
    for eager in (False, True):
        trainer = build(eager)
        trainer.model.set_weights([np.zeros((4, 1), "float32"), np.zeros((1,), "float32")])
        trainer.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0, callbacks=[reset(trainer)])
        results.append(trainer.model.get_weights())
    for a, b in zip(*results):
        np.testing.assert_allclose(a, b, rtol=1e-6)
    assert results[0][1][0] != 0.0  # the reset to ones, then two more steps


@pytest.mark.skipif(BACKEND != "torch", reason="jax and tensorflow refuse a Python `if` on a traced tensor")
def test_torch_step_that_reads_a_value_runs_eagerly_with_the_same_results():
    """A Python ``if`` on a tensor cannot be captured: torch warns, restores
    the state the failed capture touched, and runs the step eagerly."""
    rng = np.random.default_rng(2)
    x = rng.normal(size=(48, 4)).astype("float32")
    y = x.sum(axis=1, keepdims=True)

    class Branches(Trainer):
        def train_step(self, batch):
            logs = super().train_step(batch)
            if logs["loss"] > 1e9:  # reads the value: not capturable
                raise AssertionError("unreachable")
            return logs

    def build(eager):
        model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
        return Branches(model, keras.optimizers.Adam(0.05), "mse", run_eagerly=eager)

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        compiled, eager = _twice(build, {"batch_size": 8, "epochs": 2}, (x, y))
    messages = [str(w.message) for w in caught if "captured graph" in str(w.message)]
    assert len(messages) == 1 and "test_compiled_steps.py" in messages[0] and "logs[\"loss\"] > 1e9" in messages[0]
    _assert_same(compiled, eager, rtol=1e-6)
    assert int(ops.convert_to_numpy(compiled[0].optimizer.iterations)) == 12  # no update applied twice


@pytest.mark.skipif(BACKEND != "torch", reason="torch's captured graph")
def test_torch_capture_replays_without_running_keras_python():
    """After the capture, the step's Python (here: a counter) does not run."""
    calls = []

    class Counts(Trainer):
        def train_step(self, batch):
            calls.append(1)
            return super().train_step(batch)

    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
    trainer = Counts(model, "adam", "mse")
    x = np.ones((40, 4), "float32")
    trainer.fit(x, x[:, :1], batch_size=8, epochs=3, verbose=0)
    assert len(calls) == 2  # the checking step, then the capture; 15 steps ran
    assert int(ops.convert_to_numpy(trainer.optimizer.iterations)) == 15


@pytest.mark.skipif(BACKEND != "torch", reason="torch's captured graph")
def test_torch_stops_capturing_after_max_graphs_shapes(monkeypatch):
    from loops.backends.torch import capture as _torch_graph

    monkeypatch.setattr(_torch_graph, "MAX_GRAPHS", 2)
    rng = np.random.default_rng(3)
    x, y = rng.normal(size=(16, 4)).astype("float32"), rng.normal(size=(16, 1)).astype("float32")
    batches = [(x[:n], y[:n]) for n in (5, 6, 7, 8, 5)]
    weights = None
    results = []
    for eager in (False, True):
        model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
        weights = weights or model.get_weights()
        model.set_weights(weights)
        trainer = Trainer(model, "adam", "mse", run_eagerly=eager)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            trainer.fit(batches, epochs=1, verbose=0)
        results.append(model.get_weights())
        if not eager:
            assert trainer.trace_counts["train"] == 2  # shapes 5 and 6; 7 and 8 ran eagerly, 5 replayed
            assert sum("captured for 2 different input shapes" in str(w.message) for w in caught) == 1
    for a, b in zip(*results):
        np.testing.assert_allclose(a, b, rtol=1e-6)


@pytest.mark.skipif(BACKEND != "torch", reason="torch's captured graph")
@pytest.mark.parametrize("replay", ["torchscript", "fx", "large_intermediates"])
def test_torch_replay_executors_match_eager(monkeypatch, replay):
    """The captured graph replays through TorchScript's interpreter when it
    reproduces the step, else (or with LOOPS_TORCH_REPLAY=fx, or when the
    step's intermediates are over TORCHSCRIPT_MAX_HELD_BYTES: its memory
    peak) as FX code."""
    import torch

    from loops.backends.torch import executors

    if replay == "fx":
        monkeypatch.setenv("LOOPS_TORCH_REPLAY", "fx")
    if replay == "large_intermediates":  # this step's few kB count as large
        monkeypatch.setattr(executors, "TORCHSCRIPT_MAX_HELD_BYTES", 256)
    rng = np.random.default_rng(4)
    x = rng.normal(size=(64, 6)).astype("float32")
    y = (x[:, :1] > 0).astype("int32")

    def build(eager):
        model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(8, activation="relu"), keras.layers.Dense(2)])
        return Trainer(model, keras.optimizers.Adam(0.01),
                       keras.losses.SparseCategoricalCrossentropy(from_logits=True), run_eagerly=eager)

    compiled, eager = _twice(build, {"batch_size": 16, "epochs": 2}, (x, y))
    _assert_same(compiled, eager, rtol=1e-6)
    graphs = list(compiled[0]._step_fns["train"].graphs.values())
    assert len(graphs) == 1
    if replay == "fx" or not torch.cuda.is_available():
        # (on CUDA the executor race may keep FX code: it measured faster on an H200)
        assert isinstance(graphs[0], torch.fx.GraphModule) == (replay != "torchscript")


@pytest.mark.skipif(BACKEND != "torch", reason="torch's captured graph")
def test_torch_torchscript_only_where_its_one_time_peak_is_small(monkeypatch):
    """TorchScript's trace and first runs hold all of a step's intermediates
    at once, so only graphs whose intermediates sum to at most
    TORCHSCRIPT_MAX_HELD_BYTES get it: the memory benchmark's train step
    (1024-256-10, batch 256) replays as FX code; its predict step is traced
    (the executor race then picks the faster)."""
    import torch

    from loops.backends.torch import executors

    offered = []
    original = executors.torchscript

    def spy(graph, tensors, inputs):
        runner = original(graph, tensors, inputs)
        offered.append((executors.held_bytes(graph), runner is not None))
        return runner

    monkeypatch.setattr(executors, "torchscript", spy)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(512, 1024)).astype("float32")
    y = rng.integers(0, 10, size=(512,)).astype("int32")
    model = keras.Sequential([keras.Input((1024,)), keras.layers.Dense(256, activation="relu"),
                              keras.layers.Dense(10)])
    trainer = Trainer(model, keras.optimizers.Adam(1e-3),
                      keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    trainer.fit(x, y, batch_size=256, epochs=1, verbose=0)
    (train,) = trainer._step_fns["train"].graphs.values()
    assert isinstance(train, torch.fx.GraphModule)
    # at least the hidden activations and the first kernel's gradient and Adam moments
    assert offered[0][0] >= 4 * (256 * 256 + 3 * 1024 * 256)
    assert offered[0] == (offered[0][0], False) and offered[0][0] > executors.TORCHSCRIPT_MAX_HELD_BYTES
    trainer.predict(x, batch_size=256, verbose=0)
    # (on a GPU TorchScript is not offered: its runs there hold ~45 MB more host memory)
    assert offered[1][0] <= executors.TORCHSCRIPT_MAX_HELD_BYTES and offered[1][1] == (not torch.cuda.is_available())


@pytest.mark.skipif(BACKEND != "torch", reason="torch's captured graph")
@pytest.mark.parametrize("replay", ["", "torchscript"])
def test_torch_torchscript_is_a_cpu_executor_unless_asked_for(monkeypatch, replay):
    """Steps on a GPU replay as FX code (TorchScript's runs there took ~45 MB
    more host memory on an H200, at the FX code's speed);
    LOOPS_TORCH_REPLAY=torchscript offers it there too. (The GPU is faked:
    ``executors.on_gpu`` says True for these CPU tensors.)"""
    from loops.backends.torch import executors

    monkeypatch.setattr(executors, "on_gpu", lambda tensors: True)
    monkeypatch.setenv("LOOPS_TORCH_REPLAY", replay)
    offered = []
    original = executors.torchscript
    monkeypatch.setattr(executors, "torchscript",
                        lambda *args: offered.append(original(*args)) or offered[-1])
    rng = np.random.default_rng(1)
    x = rng.normal(size=(64, 6)).astype("float32")
    y = rng.integers(0, 2, size=(64,)).astype("int32")
    model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(8, activation="relu"), keras.layers.Dense(2)])
    trainer = Trainer(model, keras.optimizers.Adam(0.01), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    trainer.fit(x, y, batch_size=16, epochs=2, verbose=0)
    assert len(trainer._step_fns["train"].graphs) == 1
    assert len(offered) == 1 and (offered[0] is not None) == (replay == "torchscript")


@pytest.mark.skipif(BACKEND != "torch", reason="torch's captured graph")
def test_an_unknown_replay_executor_is_a_clear_error(monkeypatch):
    from loops.backends.torch import executors

    monkeypatch.setenv("LOOPS_TORCH_REPLAY", "torchscipt")
    with pytest.raises(ValueError, match="LOOPS_TORCH_REPLAY must be one of auto, fx, torchscript; got 'torchscipt'"):
        executors.torchscript(None, [], [])


@pytest.mark.skipif(BACKEND != "torch", reason="torch's captured graph")
def test_torch_step_the_trace_fails_on_runs_eagerly_with_a_warning(monkeypatch):
    """A step the fake-tensor trace cannot run (an op without a shape
    function, say) runs eagerly from then on, warned once, with the eager
    step's numbers; it is not traced again at every call."""
    from loops.backends.torch import capture

    calls = []

    def failing_make_fx(fn, *args, **kwargs):
        calls.append(1)
        raise RuntimeError("no fake kernel for this op\nmore lines")

    x, y = _images(64)

    def build(eager):
        model = keras.Sequential([keras.Input((10, 10, 1)), keras.layers.Conv2D(4, 3), keras.layers.Flatten(),
                                  keras.layers.Dense(4)])
        return Trainer(model, keras.optimizers.Adam(1e-2),
                       keras.losses.SparseCategoricalCrossentropy(from_logits=True), run_eagerly=eager)

    monkeypatch.setattr(capture, "make_fx", failing_make_fx)
    with pytest.warns(UserWarning, match=r"could not capture this step as a graph \(RuntimeError: no fake kernel"):
        compiled, eager = _twice(build, {"batch_size": 16, "epochs": 3}, (x, y))
    _assert_same(compiled, eager, rtol=1e-6)
    assert len(calls) == 1  # once, not at each of the 12 calls
    assert compiled[0]._step_fns["train"].graphs == {}


@pytest.mark.skipif(BACKEND != "torch", reason="torch's captured graph")
def test_torch_value_error_in_a_captured_batch_is_the_eager_error_with_the_eager_state():
    """Fake tensors carry no values, so an index out of range shows only
    when the new graph first runs on the real batch, here after the
    optimizer's update: the graph's update is undone and the eager step
    runs, raising torch's own error after its own update, as Keras's torch
    loop does, so the weights are the eager run's (not updated twice)."""
    import torch

    if torch.cuda.is_available():
        pytest.skip("on a GPU an index out of range is a device-side assert, eager or captured: it leaves the "
                    "process's CUDA context unusable, so nothing runs after it (docs/limits.md)")

    class UpdateThenLookup(Trainer):
        def __init__(self, run_eagerly):
            super().__init__(run_eagerly=run_eagerly)
            self.net = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
            self.opt = keras.optimizers.SGD(0.1)

        def train_step(self, batch):
            x, idx = batch
            loss, grads = self.value_and_grad(lambda: ops.mean(self.net(x) ** 2), self.net.trainable_variables)
            self.opt.apply(grads, self.net.trainable_variables)
            return {"loss": loss, "looked_up": ops.sum(ops.take(ops.arange(5.0), idx))}

    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 3)).astype("float32")
    idx = np.zeros((40,), "int32")
    idx[-3:] = 12  # out of range, in the ragged last batch (a new shape: captured at its first call)
    weights, seen = [], []
    for eager in (False, True):
        keras.utils.set_random_seed(0)
        trainer = UpdateThenLookup(eager)

        class Count(keras.callbacks.Callback):
            def on_train_batch_end(self, batch, logs=None):
                seen.append(batch)

        with pytest.raises(Exception, match="out of range"):
            trainer.fit(x, idx, batch_size=16, epochs=1, shuffle=False, verbose=0, callbacks=[Count()])
        weights.append(trainer.net.get_weights())
    assert seen == [0, 1, 0, 1]
    for a, b in zip(*weights):
        np.testing.assert_allclose(a, b, rtol=1e-6)


@pytest.mark.skipif(BACKEND != "torch", reason="torch's captured graph")
def test_torch_step_with_a_value_dependent_shape_runs_eagerly_with_a_warning():
    """``nonzero``'s output shape is the data's: fake tensors have no result
    for it, so the step runs eagerly (warned), with the eager step's numbers.
    (Traced on real tensors, its graph baked one batch's count into a later
    reshape and failed on the next batch.)"""

    def loss(y, p):
        rows = ops.nonzero(y >= 1)[0]  # the rows of class 1 and up: a count that varies per batch
        return ops.mean(ops.take(ops.sum((p - ops.cast(y[:, None], "float32")) ** 2, axis=-1), rows))

    rng = np.random.default_rng(3)
    x = rng.normal(size=(64, 3)).astype("float32")
    y = rng.integers(0, 3, size=(64,)).astype("int32")

    def build(eager):
        model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
        return Trainer(model, keras.optimizers.Adam(1e-2), loss, run_eagerly=eager)

    with pytest.warns(UserWarning, match=r"could not capture this step as a graph \(DynamicOutputShapeException"):
        compiled, eager = _twice(build, {"batch_size": 16, "epochs": 3}, (x, y))
    _assert_same(compiled, eager, rtol=1e-6)
    step = compiled[0]._step_fns["train"]
    assert step.graphs == {} and step.eager_reason is not None


@pytest.mark.skipif(BACKEND != "torch", reason="torch.compile (jit_compile=True on torch)")
def test_torch_jit_compile_is_one_graph_forward_and_backward():
    """jit_compile=True is torch.compile of the step with dynamo tracing
    torch.autograd.grad (``trace_autograd_ops``): one graph, no break (the
    gradient inside the step's no_grad was a break dynamo could not resume
    from: 52 frames, 4 breaks; first fit 10.3-14.6 s against 3.6-4.1 s now,
    0.72 against 0.46 ms a step), with the eager step's numbers."""
    import torch
    from torch._dynamo.utils import counters

    if not hasattr(torch._dynamo.config, "trace_autograd_ops"):
        pytest.skip("this torch has no trace_autograd_ops: the gradient stays a graph break")
    rng = np.random.default_rng(2)
    x = rng.normal(size=(64, 6)).astype("float32")
    y = rng.integers(0, 3, size=(64,)).astype("int32")

    def build(eager):
        keras.utils.set_random_seed(0)
        model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(8, activation="relu"), keras.layers.Dense(3)])
        return Trainer(model, keras.optimizers.Adam(0.01), keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                       metrics=["accuracy"], run_eagerly=eager, jit_compile=not eager)

    counters.clear()
    compiled, eager = _twice(build, {"batch_size": 16, "epochs": 2}, (x, y))
    _assert_same(compiled, eager, rtol=1e-5)
    assert sum(counters["graph_break"].values()) == 0, dict(counters["graph_break"])
    assert 1 <= counters["frames"]["ok"] <= 2, dict(counters["frames"])  # the train step's frames
    assert compiled[0].trace_counts["train"] == 1


@pytest.mark.skipif(BACKEND != "torch", reason="torch.compile (jit_compile=True on torch)")
def test_torch_jit_compile_of_a_gradient_penalty_is_a_clear_error():
    """torch.compile's autograd has no double backward (Keras's torch.compile
    step fails the same way): a step that differentiates a gradient gets an
    error naming the way out, at its first call, before any update."""

    class Critic(Trainer):
        def train_step(self, batch):
            x, _ = batch

            def loss():
                _, (g,) = self.value_and_grad(lambda t: ops.sum(self.model(t)), [], inputs=[x])
                return ops.mean(self.model(x)) + ops.mean((ops.sqrt(ops.sum(g * g, axis=1) + 1e-12) - 1.0) ** 2)

            value, grads = self.value_and_grad(loss, self.model.trainable_variables)
            self.optimizer.apply(grads, self.model.trainable_variables)
            return {"loss": value}

    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(8, activation="tanh"), keras.layers.Dense(1)])
    trainer = Critic(model, keras.optimizers.Adam(0.01), jit_compile=True)
    before = [w.copy() for w in model.get_weights()]
    x = np.random.default_rng(0).normal(size=(32, 4)).astype("float32")
    with pytest.raises(RuntimeError, match="cannot differentiate a gradient.*run_eagerly=True"):
        trainer.fit(x, np.zeros((32, 1), "float32"), batch_size=16, epochs=1, verbose=0)
    for a, b in zip(model.get_weights(), before):
        np.testing.assert_array_equal(a, b)


@pytest.mark.skipif(BACKEND != "jax", reason="jax.jit's cache key")
def test_jax_compiles_the_train_step_once_over_epochs_and_fits(caplog):
    """The checked first call ran on copies of the state committed to their
    device, and jax.jit keys its cache on committedness: the next epoch, whose
    metrics reset to uncommitted zeros, compiled the whole step again (every
    fit of two epochs or more paid a second XLA compile). Now the copies are
    committed where the values were."""
    import logging

    import jax

    x, y = _images(64)
    model = keras.Sequential([keras.Input((10, 10, 1)), keras.layers.Flatten(), keras.layers.Dense(4)])
    trainer = Trainer(model, keras.optimizers.Adam(1e-2),
                      keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    jax.config.update("jax_log_compiles", True)
    try:
        with caplog.at_level(logging.WARNING):
            trainer.fit(x, y, batch_size=16, epochs=3, verbose=0)
            trainer.fit(x, y, batch_size=16, epochs=2, verbose=0)
    finally:
        jax.config.update("jax_log_compiles", False)
    compiles = [r.getMessage() for r in caplog.records if "Finished XLA compilation of jit(pure)" in r.getMessage()]
    assert len(compiles) == 1, compiles
