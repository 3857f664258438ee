"""When torch captures a compiled step (``backends/torch/policy.py``): the
first call of each input signature runs eagerly, a later one is captured when
the run plans enough calls to win the capture back (``Runner.expect``), or,
with no plan, once the signature has run eagerly ``CAPTURE_AFTER`` times;
``LOOPS_TORCH_CAPTURE`` overrides it. The loop's plans must match the calls
it then makes."""

import keras
import numpy as np
import pytest

from loops import Trainer

BACKEND = keras.backend.backend()
pytestmark = pytest.mark.skipif(BACKEND != "torch", reason="torch's graph capture policy")

THRESHOLD = 6


@pytest.fixture
def auto(monkeypatch):
    """The default policy, whatever the environment says."""
    monkeypatch.delenv("LOOPS_TORCH_CAPTURE", raising=False)


@pytest.fixture
def small_threshold(auto, monkeypatch):
    from loops.backends.torch import policy

    monkeypatch.setattr(policy, "CAPTURE_AFTER", THRESHOLD)


def _data(n, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 4)).astype("float32")
    return x, (x.sum(axis=1, keepdims=True) > 0).astype("float32")


def _trainer(eager=False, **kwargs):
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(8, activation="relu"), keras.layers.Dense(1)])
    model.set_weights([np.random.default_rng(1).normal(0, 0.3, w.shape).astype("float32")
                       for w in model.get_weights()])
    return Trainer(model, keras.optimizers.Adam(0.01), "mse", run_eagerly=eager, **kwargs)


class Graphs(keras.callbacks.Callback):
    """After each call of ``kind``'s step: how many graphs it holds."""

    def __init__(self, trainer, kind="train"):
        super().__init__()
        self.trainer, self.kind, self.seen = trainer, kind, []
        setattr(self, f"on_{kind}_batch_end", self._record)

    def _record(self, batch, logs=None):
        self.seen.append(len(getattr(self.trainer._step_fns[self.kind], "graphs", ())))  # (eager: a function)


def test_a_short_fit_runs_eagerly_and_never_captures(auto):
    """48 steps (the short-run benchmark's length) plan fewer calls than a
    capture needs to pay back."""
    x, y = _data(64)
    trainer = _trainer()
    graphs = Graphs(trainer)
    trainer.fit(x, y, batch_size=8, epochs=6, verbose=0, callbacks=[graphs])
    assert graphs.seen == [0] * 48
    assert trainer.trace_counts == {"train": 0}


def test_a_long_fit_runs_its_first_call_eagerly_then_captures_with_eager_results(small_threshold):
    x, y = _data(64)
    histories, weights = [], []
    for eager in (False, True):
        trainer = _trainer(eager)
        graphs = Graphs(trainer)
        histories.append(trainer.fit(x, y, batch_size=8, epochs=2, shuffle=False, verbose=0,
                                     validation_data=_data(16, seed=2), callbacks=[graphs]).history)
        weights.append(trainer.model.get_weights())
        if not eager:
            # captured at the third of 16 calls (the second is timed past the first's warm-up)
            assert graphs.seen == [0, 0] + [1] * 14
            assert trainer.trace_counts == {"train": 1, "test": 0}  # 2 x 2 validation calls: eager
    for key in histories[0]:
        np.testing.assert_allclose(histories[0][key], histories[1][key], rtol=1e-6, atol=1e-7, err_msg=key)
    for a, b in zip(*weights):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


def test_without_a_plan_a_signature_is_captured_once_it_ran_eagerly_the_threshold_times(small_threshold):
    x, y = _data(80)
    trainer = _trainer()
    graphs = Graphs(trainer)
    batches = ((x[i:i + 8], y[i:i + 8]) for i in range(0, 80, 8))  # a generator: no length
    trainer.fit(batches, epochs=1, verbose=0, callbacks=[graphs])
    assert graphs.seen == [0] * THRESHOLD + [1] * (10 - THRESHOLD)


def test_eager_calls_add_up_over_runs_of_one_call(small_threshold):
    """train_on_batch in a loop: each run plans one call, yet the signature
    gets captured once it has run eagerly the threshold times."""
    x, y = _data(8)
    trainer = _trainer()
    seen = []
    for _ in range(THRESHOLD + 2):
        trainer.train_on_batch(x, y)
        seen.append(len(trainer._step_fns["train"].graphs))
    assert seen == [0] * THRESHOLD + [1] * 2


@pytest.mark.parametrize("mode", ["first", "never"])
def test_the_environment_variable_overrides_the_policy(small_threshold, monkeypatch, mode):
    monkeypatch.setenv("LOOPS_TORCH_CAPTURE", mode)
    x, y = _data(64)
    trainer = _trainer()
    graphs = Graphs(trainer)
    trainer.fit(x, y, batch_size=8, epochs=2, verbose=0, callbacks=[graphs])
    assert graphs.seen == ([1] * 16 if mode == "first" else [0] * 16)


def test_an_unknown_mode_is_an_error(monkeypatch):
    monkeypatch.setenv("LOOPS_TORCH_CAPTURE", "sometimes")
    x, y = _data(16)
    with pytest.raises(ValueError, match="LOOPS_TORCH_CAPTURE must be one of auto, first, never"):
        _trainer().fit(x, y, batch_size=8, verbose=0)


def test_plans_match_the_calls_each_run_makes(small_threshold):
    """fit (steps_per_execution=2, validation every 2nd epoch), evaluate and
    predict announce exactly the calls they then make: each plan counts down
    to 0, and it is known before the first call."""
    x, y = _data(60)  # 8 batches of 8 (the last padded): 4 executions an epoch
    trainer = _trainer(steps_per_execution=2)
    planned = {}

    class AtStart(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            planned.update({kind: trainer._step_fns[kind].policy.remaining for kind in ("train", "test")})

    trainer.fit(x, y, batch_size=8, epochs=3, verbose=0, validation_data=_data(20, seed=3),
                validation_freq=2, callbacks=[AtStart()])
    assert planned == {"train": 3 * 4, "test": 1 * 2}  # 3 validation batches: 2 executions, after epoch 2
    trainer.evaluate(x, y, batch_size=8, verbose=0)
    trainer.predict(x, batch_size=8, verbose=0)
    trainer.predict_on_batch(x[:8])
    for kind in ("train", "test", "predict"):
        assert trainer._step_fns[kind].policy.remaining == 0, kind


def test_a_rare_signature_is_expected_to_take_its_share_of_the_plan(small_threshold):
    """A shape seen once in ten calls (a ragged last batch a custom step sees
    unpadded) is captured only when a tenth of the planned calls is enough."""
    from loops.backends.torch.policy import Policy

    def captured_at(planned):
        policy, done = Policy(), set()
        policy.expect(planned)
        for call in range(1, planned + 1):
            policy.tick()
            key = "ragged" if call % 10 == 0 else "full"
            if key not in done and policy.capture(key):
                done.add(key)
                if key == "ragged":
                    return call
        return None

    assert captured_at(60) is None  # 40 calls left at the ragged batch's 2nd call: ~4 of them its
    assert captured_at(600) == 20


def test_a_graph_that_replays_slower_than_the_eager_step_is_dropped(small_threshold, monkeypatch):
    """On CPU a new graph is kept only where its replay beats the eager step
    (KEEP_BELOW; a long unrolled recurrence loses); dropped, the signature runs
    eagerly from then on, with the eager results."""
    from loops.backends.torch import policy

    monkeypatch.setattr(policy, "KEEP_BELOW", 0.0)  # no replay is fast enough
    x, y = _data(64)
    trainer, reference = _trainer(), _trainer(eager=True)
    graphs = Graphs(trainer)
    got = trainer.fit(x, y, batch_size=8, epochs=2, shuffle=False, verbose=0, callbacks=[graphs]).history
    want = reference.fit(x, y, batch_size=8, epochs=2, shuffle=False, verbose=0).history
    assert graphs.seen == [0] * 16
    assert trainer.trace_counts == {"train": 0}  # (the capture was the third call's step; no graph kept)
    assert trainer._runner.captured["train"].policy.stay_eager  # decided once, not re-captured
    np.testing.assert_allclose(got["loss"], want["loss"], rtol=1e-6, atol=1e-7)
    for a, b in zip(trainer.model.get_weights(), reference.model.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


def test_on_a_gpu_the_eager_step_is_timed_with_device_syncs_so_a_slower_graph_is_dropped_too(
        small_threshold, monkeypatch):
    """On a GPU a host clock times the launch, not the step: the first
    TIMED_CALLS eager calls of a signature wait for the device before and
    after (later ones do not), so the policy compares the replay with the
    eager step there too. (Seen on an H200: a captured LSTM kept without that
    comparison replayed 4.6x slower than its eager cuDNN step.) Simulated
    here: the step believes it is on a GPU, and the syncs are counted."""
    import torch

    from loops.backends.torch import capture, policy

    syncs = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda *a: syncs.append(1))
    init = capture.CapturedStep.__init__

    def on_gpu(self, *args, **kwargs):
        init(self, *args, **kwargs)
        self.on_gpu = True

    monkeypatch.setattr(capture.CapturedStep, "__init__", on_gpu)
    monkeypatch.setattr(policy, "KEEP_BELOW", 0.0)  # no replay is fast enough
    x, y = _data(64)
    trainer = _trainer()
    graphs = Graphs(trainer)
    trainer.fit(x, y, batch_size=8, epochs=2, shuffle=False, verbose=0, callbacks=[graphs])
    step = trainer._runner.captured["train"]
    assert graphs.seen == [0] * 16 and step.policy.stay_eager  # measured, dropped, eager from then on
    assert step.policy.samples == {k: policy.TIMED_CALLS for k in step.policy.samples}
    # before and after each timed eager call and the capture's own run; none later
    assert len(syncs) == 2 * policy.TIMED_CALLS + 2


def test_a_graph_whose_first_run_is_far_slower_than_the_eager_step_is_dropped_untimed(small_threshold,
                                                                                      monkeypatch):
    """A new graph whose first run (the captured step itself) took over
    DROP_FIRST_ABOVE eager steps is dropped without timing its replays (two
    more runs on copies of the state: the full-size LSTM's 0.7 s and ~50 MB
    on CPU); the signature runs eagerly from then on, with the eager results."""
    from loops.backends.torch import executors, policy

    raced = []
    monkeypatch.setattr(policy, "DROP_FIRST_ABOVE", 0.0)  # any first run is too slow
    monkeypatch.setattr(policy, "DROP_FIRST_MIN_S", -1.0)
    monkeypatch.setattr(executors, "best_times", lambda fns, *a, **k: raced.append(1) or [0.0] * len(fns))
    x, y = _data(64)
    trainer, reference = _trainer(), _trainer(eager=True)
    graphs = Graphs(trainer)
    got = trainer.fit(x, y, batch_size=8, epochs=2, shuffle=False, verbose=0, callbacks=[graphs]).history
    want = reference.fit(x, y, batch_size=8, epochs=2, shuffle=False, verbose=0).history
    step = trainer._runner.captured["train"]
    assert graphs.seen == [0] * 16 and step.policy.stay_eager and not raced
    np.testing.assert_allclose(got["loss"], want["loss"], rtol=1e-6, atol=1e-7)
    for a, b in zip(trainer.model.get_weights(), reference.model.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    # and with the rule off, the same run times the replays (the race this rule skips)
    monkeypatch.setattr(policy, "DROP_FIRST_ABOVE", float("inf"))
    _trainer().fit(x, y, batch_size=8, epochs=2, shuffle=False, verbose=0)
    assert raced


class _TorchLSTMNet(keras.Model):
    """A subclassed model over ``torch.nn.LSTM`` (which calls torch's fused
    ``torch.lstm`` kernel, as Keras's own torch LSTM does on a GPU)."""

    def __init__(self):
        super().__init__()
        import torch

        torch.manual_seed(0)
        self.rnn = keras.layers.TorchModuleWrapper(torch.nn.LSTM(4, 8, batch_first=True))
        self.head = keras.layers.Dense(1)

    def call(self, x):
        out, _ = self.rnn(x)
        return self.head(out[:, -1])


def test_a_step_calling_a_fused_recurrent_kernel_is_never_captured(small_threshold, monkeypatch):
    """A trace decomposes torch.lstm into its per-timestep ops (on an H200 the
    captured LSTM replayed 4.6x slower than the eager cuDNN step), so a
    signature whose first call runs a fused recurrent kernel stays eager
    without a capture attempt; a model without one is still captured."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 5, 4)).astype("float32")
    y = x[:, -1, :1]
    from loops.backends.torch import policy

    monkeypatch.setattr(policy, "KEEP_BELOW", float("inf"))  # any graph is kept: only the new rule refuses
    trainer = Trainer(_TorchLSTMNet(), keras.optimizers.Adam(0.01), "mse")
    graphs = Graphs(trainer)
    got = trainer.fit(x, y, batch_size=8, epochs=2, shuffle=False, verbose=0, callbacks=[graphs]).history
    step = trainer._runner.captured["train"]
    assert graphs.seen == [0] * 16 and trainer.trace_counts == {"train": 0}  # no capture was even tried
    assert step.fused_recurrence == "torch.lstm" and step.policy.stay_eager
    assert got["loss"][-1] < got["loss"][0]
    # The same run without the fused kernel (Keras's CPU LSTM steps in Python): captured at the third call.
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.layers.LSTM(8), keras.layers.Dense(1)])
    trainer = Trainer(model, keras.optimizers.Adam(0.01), "mse")
    graphs = Graphs(trainer)
    trainer.fit(x, y, batch_size=8, epochs=2, shuffle=False, verbose=0, callbacks=[graphs])
    assert trainer._runner.captured["train"].fused_recurrence is None
    assert graphs.seen == [0, 0] + [1] * 14 and trainer.trace_counts == {"train": 1}
