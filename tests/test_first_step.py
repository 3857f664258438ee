"""The first step's checks: on jax traced (``trace_only``) with the value checks
in the compiled step's first call, eager elsewhere; the same errors, warnings
and results on every backend."""

from __future__ import annotations

import warnings

import keras
import numpy as np
import pytest

import loops
from loops.debug.traps import FromLogitsWarning

BACKEND = keras.backend.backend()


def _data(n: int = 64) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return rng.normal(size=(n, 6)).astype("float32"), rng.integers(0, 4, n)


def _model(seed: int = 0) -> keras.Model:
    keras.utils.set_random_seed(seed)
    return keras.Sequential([keras.layers.Dense(8, activation="relu"), keras.layers.Dense(4)])


def _trainer(model: keras.Model, **kwargs: object) -> loops.Trainer:
    return loops.Trainer(model, "adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True), **kwargs)


class _Watch(keras.layers.Layer):
    """Records whether each call saw concrete values."""

    def __init__(self) -> None:
        super().__init__()
        self.concrete: list[bool] = []

    def call(self, x: object) -> object:
        if BACKEND == "jax":
            import jax

            self.concrete.append(not isinstance(x, jax.core.Tracer))
        return x


@pytest.mark.skipif(BACKEND != "jax", reason="jax traces the first step; the others run it eagerly (cheap there)")
@pytest.mark.parametrize("steps_per_execution", [1, 4])
def test_jax_first_step_runs_no_eager_step(steps_per_execution: int) -> None:
    """Also with steps_per_execution: the loop's first step carries the value
    checks' tensors out of lax.scan (an eager first step there cost 1.7 s of
    op-by-op compiling on a small MLP, 3.5x model.fit's whole first call)."""
    x, y = _data()
    watch = _Watch()
    model = keras.Sequential([keras.layers.Dense(8, activation="relu"), watch, keras.layers.Dense(4)])
    _trainer(model, steps_per_execution=steps_per_execution).fit(x, y, batch_size=16, epochs=1, verbose=0)
    assert watch.concrete and not any(watch.concrete), watch.concrete


@pytest.mark.parametrize("steps_per_execution", [1, 4])
def test_label_error_after_the_compiled_first_call_leaves_the_trainer_as_it_was(steps_per_execution: int) -> None:
    x, y = _data()
    bad = y.copy()
    bad[5] = 9
    t = _trainer(_model(), steps_per_execution=steps_per_execution)
    t.model.build((None, 6))
    before = [np.array(w) for w in t.get_weights()]
    with pytest.raises(ValueError, match=r"range over 0..9.*width 4.*rows \[5\]"):
        t.fit(x, bad, batch_size=16, epochs=1, verbose=0, shuffle=False)
    for a, b in zip(before, t.get_weights()):
        np.testing.assert_array_equal(a, b)
    # The same trainer then trains as a fresh one does (the state was not consumed).
    got = t.fit(x, y, batch_size=16, epochs=2, verbose=0, shuffle=False).history["loss"]
    fresh = _trainer(_model(), steps_per_execution=steps_per_execution)
    want = fresh.fit(x, y, batch_size=16, epochs=2, verbose=0, shuffle=False).history["loss"]
    np.testing.assert_allclose(got, want, rtol=1e-6)
    for a, b in zip(t.get_weights(), fresh.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("steps_per_execution", [1, 4])
def test_from_logits_trap_warns_once_on_the_first_call(steps_per_execution: int) -> None:
    x, y = _data()
    model = keras.Sequential([keras.layers.Dense(4, activation="softmax")])
    t = _trainer(model, steps_per_execution=steps_per_execution)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        t.fit(x, y, batch_size=16, epochs=2, verbose=0)
    traps = [w for w in caught if issubclass(w.category, FromLogitsWarning)]
    assert len(traps) == 1, [str(w.message) for w in traps]
    assert "from_logits=True" in str(traps[0].message) and "softmax" in str(traps[0].message)


def test_first_step_results_match_model_fit() -> None:
    x, y = _data()
    model = _model()
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    want = model.fit(x, y, batch_size=16, epochs=2, verbose=0, shuffle=False).history["loss"]
    got = _trainer(_model()).fit(x, y, batch_size=16, epochs=2, verbose=0, shuffle=False).history["loss"]
    np.testing.assert_allclose(got, want, rtol=1e-5)


class Unbuilt(keras.Model):
    """A subclassed model built by a custom step's first call."""

    def __init__(self) -> None:
        super().__init__()
        self.hidden = keras.layers.Dense(8, activation="relu")
        self.out = keras.layers.Dense(4)

    def call(self, x: object) -> object:
        return self.out(self.hidden(x))


class _CustomStep(loops.Trainer):
    def train_step(self, batch: object) -> dict[str, object]:
        x, y = batch  # type: ignore[misc]

        def loss_fn() -> object:
            logits = self.model(x, training=True)
            return keras.ops.mean(keras.losses.sparse_categorical_crossentropy(y, logits, from_logits=True))

        loss, grads = self.value_and_grad(loss_fn, self.model.trainable_variables)
        self.optimizer.apply(grads, self.model.trainable_variables)
        return {"loss": loss}


def test_custom_step_builds_an_unbuilt_model_and_its_optimizer() -> None:
    x, y = _data()
    keras.utils.set_random_seed(0)
    model = Unbuilt()
    t = _CustomStep(model, optimizer=keras.optimizers.SGD(0.1))
    history = t.fit(x, y, batch_size=16, epochs=3, verbose=0, shuffle=False).history["loss"]
    assert model.built and len(t.optimizer.variables) > 0
    assert history[-1] < history[0]
    # Against Keras: the same model and updates through model.fit.
    keras.utils.set_random_seed(0)
    reference = Unbuilt()
    reference.compile(keras.optimizers.SGD(0.1), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    reference.fit(x, y, batch_size=16, epochs=3, verbose=0, shuffle=False)
    for a, b in zip(model.get_weights(), reference.get_weights()):  # (the step logs its last batch's loss)
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("last", ["logits", "softmax"])
def test_value_checks_read_a_sample_of_wide_outputs(last: str) -> None:
    """A language-model-like output (8 x 16 x 1024 = 131,072 values) is read
    as its first rows (``SAMPLE_VALUES``): both from_logits traps still fire,
    and an out-of-range label anywhere in the batch is still an error."""
    from loops.debug import traps

    vocab, seq = 1024, 16
    assert 8 * seq * vocab > traps.SAMPLE_VALUES
    rng = np.random.default_rng(0)
    x = rng.integers(0, vocab, (32, seq))
    y = rng.integers(0, vocab, (32, seq))
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.layers.Embedding(vocab, 8),
                              keras.layers.Dense(vocab, activation=None if last == "logits" else "softmax")])
    # The mismatched setting: logits read as probabilities, or probabilities as logits.
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=last == "softmax")
    with pytest.warns(FromLogitsWarning, match="logits" if last == "logits" else "probabilities"):
        loops.Trainer(model, "adam", loss).fit(x, y, batch_size=8, epochs=1, verbose=0)
    bad = y.copy()
    bad[7, seq - 1] = vocab  # the last value of the first batch: outside any sample of its leading rows
    with pytest.raises(ValueError, match=f"range over 0..{vocab}"):
        loops.Trainer(model, "adam", loss).fit(x, bad, batch_size=8, epochs=1, verbose=0, shuffle=False)


def test_prediction_summary_ignores_non_finite_values_and_nan_rows() -> None:
    from loops.debug import traps

    p = np.array([[0.2, 0.8], [np.nan, 0.5], [np.inf, 0.1], [0.3, 0.7]], dtype=np.float32)
    lo, hi, n_finite, sum_lo, sum_hi = traps._summary(p)
    assert (lo, hi, n_finite) == (pytest.approx(0.1), pytest.approx(0.8), 6)
    assert (sum_lo, sum_hi) == (pytest.approx(1.0), np.inf)  # the NaN row is left out, the inf row is not
    assert traps._summary(np.full((2, 3), np.nan, np.float32))[2:] == (0, np.inf, -np.inf)
    wide = np.zeros((4, 3, traps.SAMPLE_VALUES // 2), np.float32)
    assert tuple(keras.ops.convert_to_numpy(traps._sample(keras.ops.convert_to_tensor(wide))).shape) == (2, wide.shape[-1])


@pytest.mark.skipif(BACKEND != "torch", reason="torch's eager first step skips its backward pass (checks_only; "
                                               "tensorflow: the test below); jax traces it forward only")
def test_torch_first_step_runs_no_backward_pass() -> None:
    import torch

    calls = {"forward": 0, "backward": 0}

    class Count(torch.autograd.Function):
        @staticmethod
        def forward(ctx: object, x: torch.Tensor) -> torch.Tensor:
            calls["forward"] += x.device.type != "meta"  # (not the symbolic build's call)
            return x.clone()

        @staticmethod
        def backward(ctx: object, grad: torch.Tensor) -> torch.Tensor:
            calls["backward"] += 1
            return grad

    class Counted(keras.layers.Layer):
        def call(self, x: object) -> object:
            return Count.apply(x)

    x, y = _data(16)
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.layers.Dense(8, activation="relu"), Counted(), keras.layers.Dense(4)])
    _trainer(model).fit(x, y, batch_size=16, epochs=1, verbose=0)
    assert calls == {"forward": 2, "backward": 1}  # the checks' forward, then the real step


@pytest.mark.skipif(BACKEND != "tensorflow", reason="tensorflow's checks_only (no tape in the checks' step)")
def test_tensorflow_first_step_runs_no_backward_pass_and_checks_reach_in_the_trace() -> None:
    """The checks' eager step runs without a tape: no backward pass, no held
    activations (on the realistic LSTM its tape cost more peak memory than
    model.fit's whole first call). Which variables the loss reaches is then
    checked in the compiled step's trace, whose symbolic gradients say it:
    one warning for an unreached layer."""
    import tensorflow as tf

    calls = {"backward": 0}

    @tf.custom_gradient
    def counted(x: object) -> object:
        def grad(upstream: object) -> object:
            calls["backward"] += 1  # Python: once per eager backward pass, once per traced one
            return upstream
        return tf.identity(x), grad

    class Counted(keras.layers.Layer):
        def call(self, x: object) -> object:
            return counted(x)

    class Dead(keras.Model):
        def __init__(self) -> None:
            super().__init__()
            self.body = keras.Sequential([keras.layers.Dense(8, activation="relu"), Counted(),
                                          keras.layers.Dense(4)])
            self.unused = keras.layers.Dense(4)

        def call(self, x: object) -> object:
            self.unused(x)
            return self.body(x)

    x, y = _data(48)  # (a ragged last batch of this subclassed model would be traced again, unpadded)
    keras.utils.set_random_seed(0)
    with pytest.warns(loops.UnusedVariableWarning, match="unused") as seen:
        _trainer(Dead()).fit(x, y, batch_size=16, epochs=1, verbose=0)
    assert sum(issubclass(w.category, loops.UnusedVariableWarning) for w in seen) == 1
    assert calls == {"backward": 1}  # the compiled step's trace; none in the checks' step
    from loops.backends import tensorflow as engine

    v = keras.Variable(np.ones((2, 2), "float32"))
    with engine.checks_only() as reach_known:
        loss, grads = engine.value_and_grad(lambda: tf.reduce_sum(v.value), [v], has_aux=False, state=[v])
    assert reach_known is False and float(loss) == 4.0
    assert [float(tf.reduce_sum(tf.abs(g))) for g in grads] == [0.0]  # zeros: reach unknown, nothing differentiated


@pytest.mark.skipif(BACKEND != "torch", reason="the torch engine's reachability walk")
def test_torch_reachability_matches_autograd() -> None:
    import torch

    from loops.backends.torch import _reached

    used, unused, frozen = (torch.randn(3, requires_grad=True) for _ in range(3))
    x = torch.randn(3, requires_grad=True)  # an input leaf
    hidden = used * x  # a non-leaf target
    detached = (unused * 2).detach()
    loss = (hidden.exp() + detached + frozen.detach()).sum()
    targets = [used, unused, frozen, x, hidden]
    want = [g is not None for g in torch.autograd.grad(loss, targets, allow_unused=True)]
    assert _reached(loss, targets) == want == [True, False, False, True, True]


class _ReadsItsGradients(loops.Trainer):
    """A step that reads its gradients' values and fails on zero ones (the
    checks' zero gradients on torch): its first step is differentiated after all."""

    def train_step(self, batch: object) -> dict[str, object]:
        x, y = batch  # type: ignore[misc]
        loss, grads = self.value_and_grad(lambda: self.compute_loss(x, y, self.model(x, training=True)),
                                          self.model.trainable_variables)
        norm = float(keras.ops.convert_to_numpy(keras.ops.sqrt(sum(keras.ops.sum(g * g) for g in grads))))
        if norm == 0.0:
            raise ZeroDivisionError("the step normalises by the gradient's norm")
        self.optimizer.apply([g / norm for g in grads], self.model.trainable_variables)
        return {"loss": loss}


@pytest.mark.parametrize("built", [True, False])
def test_a_step_that_needs_real_gradients_in_its_first_call_trains(built: bool) -> None:
    """(Unbuilt, its building pass fails too: it lists no variables before the model is built.)"""
    x, y = _data()
    model = _model()
    if built:
        model(x[:1])
    t = _ReadsItsGradients(model, keras.optimizers.SGD(0.1),
                           keras.losses.SparseCategoricalCrossentropy(from_logits=True), run_eagerly=True)
    t.fit(x, y, batch_size=16, epochs=1, verbose=0, shuffle=False)
    # Against the same updates written out by hand.
    reference = _model()
    reference(x[:1])  # built: its variables exist
    ce = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    for start in range(0, len(x), 16):
        xb, yb = x[start:start + 16], y[start:start + 16]
        if BACKEND == "torch":
            import torch

            with torch.enable_grad():
                loss = ce(yb, reference(xb))
                grads = torch.autograd.grad(loss, [v.value for v in reference.trainable_variables])
            grads = [g.detach().numpy() for g in grads]
        elif BACKEND == "tensorflow":
            import tensorflow as tf

            with tf.GradientTape() as tape:
                loss = ce(yb, reference(xb))
            grads = [g.numpy() for g in tape.gradient(loss, reference.trainable_variables)]
        else:
            import jax

            def pure(values: list[object]) -> object:
                return ce(yb, reference.stateless_call(values, [], xb)[0])

            grads = [np.asarray(g) for g in jax.grad(pure)([v.value for v in reference.trainable_variables])]
        norm = float(np.sqrt(sum(np.sum(g * g) for g in grads)))
        for v, g in zip(reference.trainable_variables, grads):
            v.assign(keras.ops.convert_to_numpy(v.value) - 0.1 * g / norm)
    for a, b in zip(model.get_weights(), reference.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.skipif(BACKEND != "torch", reason="the torch engine's forward-only checks")
def test_torch_checks_forward_keeps_no_activations() -> None:
    import gc
    import weakref

    import torch

    from loops.backends import torch as engine

    v = keras.Variable(np.eye(4, dtype="float32"))
    x = torch.ones(2, 4)
    kept: list[object] = []

    def loss_fn() -> object:
        hidden = torch.relu(x @ v.value)  # saved by the next matmul for its backward
        kept.append(weakref.ref(hidden))
        return (hidden @ v.value).sum()

    gc.disable()  # (a reference cycle must not be what frees it)
    try:
        with torch.no_grad(), engine.checks_only():
            loss, grads = engine.value_and_grad(loss_fn, [v], has_aux=False, state=[v])
        assert kept[0]() is None  # the graph that is never run backward holds no activation
    finally:
        gc.enable()
    assert loss.grad_fn is not None and float(loss) == 8.0
    assert [float(g.abs().sum()) for g in grads] == [0.0]  # reached: zeros, nothing differentiated



def test_the_default_step_s_optimizer_builds_before_the_first_step_a_custom_step_s_at_its_apply():
    """As Keras's symbolic build: the default train_step's optimizer is built on
    the model's trainable variables before the checked first step runs (inside
    jax's trace of that step its slots compiled their programs again); a custom
    step's optimizer still builds at its first ``apply``."""
    x, y = np.random.rand(32, 4).astype("float32"), np.random.randint(0, 3, 32)

    def watched(trainer):
        seen = []
        original = trainer.optimizer.build
        trainer.optimizer.build = lambda variables: seen.append(trainer._in_first_step) or original(variables)
        trainer.fit(x, y, batch_size=16, epochs=1, verbose=0)
        return seen

    def make(cls=loops.Trainer):
        model = keras.Sequential([keras.layers.Dense(3)])  # unbuilt: built before the optimizer
        return cls(model, keras.optimizers.Adam(), keras.losses.SparseCategoricalCrossentropy(from_logits=True))

    assert watched(make()) == [False]

    class Custom(loops.Trainer):
        def train_step(self, batch):
            xb, yb = batch
            variables = self.model.trainable_variables
            loss, grads = self.value_and_grad(lambda: self.compute_loss(xb, yb, self.model(xb)), variables)
            self.optimizer.apply(grads, variables)
            return {"loss": loss}

    assert watched(make(Custom)) == [True]
