"""Data-parallel training on each engine's own runtime, on CPU: jax over 2 host
devices (``--xla_force_host_platform_device_count=2``), tensorflow's
MirroredStrategy over 2 logical CPUs, torch with 2 gloo processes (torchrun)
on loopback. The 2-replica runs (tests/_dist_case.py, in subprocesses) are
compared here with one-device runs of the same global batches."""

import json
import os
import re
import shutil
import subprocess
import sys

import keras
import numpy as np
import pytest

import _dist_case
from conftest import BACKEND
import loops
from loops import latest_checkpoint
from loops.data import padding as _padding

HERE = os.path.dirname(os.path.abspath(__file__))
PROCESSES = 2 if BACKEND == "torch" else 1  # torch: one process per replica


def _keep_until_step_6(directory):
    for name in sorted(os.listdir(directory))[2:]:
        shutil.rmtree(directory / name)  # keep the one at step 6: mid-epoch, metric state half-way
    found = latest_checkpoint(directory)
    assert (found.epoch, found.step, found.global_step) == (0, 6, 6)
    return found


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The classic case on one device, same global batches (with checkpoints)."""
    ckpt = tmp_path_factory.mktemp("one_device") / "ckpt"
    return _dist_case.classic(str(ckpt)), ckpt


@pytest.fixture(scope="module")
def run(tmp_path_factory, reference):
    """One 2-replica run of tests/_dist_case.py; what every process wrote."""
    out = tmp_path_factory.mktemp("data_parallel")
    shutil.copytree(reference[1], out / "ckpt1")
    _keep_until_step_6(out / "ckpt1")  # the 2-replica run continues it
    script = os.path.join(HERE, "_dist_case.py")
    if BACKEND == "torch":
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", script, str(out)]
    else:
        cmd = [sys.executable, script, str(out)]
    env = dict(os.environ, KERAS_BACKEND=BACKEND, OMP_NUM_THREADS="1")
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-6000:]
    ranks = []
    for r in range(PROCESSES):
        with open(out / f"rank{r}.json") as f:
            ranks.append(json.load(f))
    return out, ranks


def _assert_close(actual, expected, atol=1e-5, what=""):
    assert len(actual) == len(expected), what
    for i, (a, b) in enumerate(zip(actual, expected)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=0, atol=atol, err_msg=f"{what}[{i}]")


def test_two_replicas_end_with_the_single_device_weights_and_metrics(run, reference):
    _, ranks = run
    reference = reference[0]
    chief = ranks[0]
    assert chief["replicas"] == 2, chief["description"]
    got = chief["classic"]
    _assert_close(got["weights"], reference["weights"], what="weights")
    # losses and metrics over all replicas' shards: the global batch's (ragged
    # last batches included: a shard may hold only padding)
    assert set(got["history"]) == set(reference["history"])
    for key, values in reference["history"].items():
        np.testing.assert_allclose(got["history"][key], values, rtol=0, atol=1e-5, err_msg=key)
    for key, value in reference["evaluate"].items():
        assert got["evaluate"][key] == pytest.approx(value, abs=1e-5), key
    np.testing.assert_allclose(got["predict"], reference["predict"], rtol=0, atol=1e-5)  # gathered, in order


def test_clipping_and_accumulation_see_the_global_gradient(run):
    got, single = run[1][0]["features"], _dist_case.features()
    _assert_close(got["weights"], single["weights"], what="weights")
    for key in ("loss", "grad_norm"):  # grad_norm: the global batch's, before clipping
        np.testing.assert_allclose(got["history"][key], single["history"][key], rtol=0, atol=1e-5, err_msg=key)


def test_replicas_agree_and_only_the_chief_prints_and_writes(run):
    out, ranks = run
    for other in ranks[1:]:  # torch: every process holds the same weights and logs
        _assert_close(other["classic"]["weights"], ranks[0]["classic"]["weights"], atol=0, what="rank 1")
        assert other["classic"]["history"] == ranks[0]["classic"]["history"]
        assert other["gan"]["history"] == ranks[0]["gan"]["history"]
    printed = [(out / f"stdout-rank{r}.txt").read_text() for r in range(PROCESSES)]
    assert printed[0].count("Epoch 1/2") == 1 and printed[0].count("Epoch 2/2") == 1, printed[0]
    assert all(p == "" for p in printed[1:]), printed[1:]
    # one set of checkpoints (every 3 steps and the end; epochs of 7 steps), nothing half-written
    names = sorted(os.listdir(out / "ckpt"))
    assert names == [f"ckpt-{i:06d}" for i in range(5)], names
    steps = [json.loads((out / "ckpt" / n / "manifest.json").read_text())["position"]["global_step"] for n in names]
    assert steps == [3, 6, 9, 12, 14]


def test_checkpoint_written_by_two_replicas_resumes_on_one(run, reference, tmp_path):
    out, _ = run
    reference = reference[0]
    ckpt = tmp_path / "ckpt"
    shutil.copytree(out / "ckpt", ckpt)
    found = _keep_until_step_6(ckpt)
    names = [v["path"] for v in found.manifest["variables"]]
    with np.load(os.path.join(found.path, "state.npz")) as npz:
        count = float(npz[f"v{names.index('loss/count'):05d}"])
    assert count == 6 * _dist_case.BATCH  # the loss tracker over both replicas' rows, not one's
    t = _dist_case.trainer()
    history = _dist_case.fit(t, str(ckpt))  # one device continues the 2-replica run
    _assert_close(t.get_weights(), reference["weights"], what="resumed weights")
    for key, values in reference["history"].items():
        np.testing.assert_allclose(history.history[key], values, rtol=0, atol=1e-5, err_msg=key)


def test_checkpoint_written_by_one_device_resumes_on_two_replicas(run, reference):
    for rank in run[1]:
        got = rank["resumed"]
        _assert_close(got["weights"], reference[0]["weights"], what="resumed on 2 replicas")
        for key, values in reference[0]["history"].items():
            np.testing.assert_allclose(got["history"][key], values, rtol=0, atol=1e-5, err_msg=key)


def test_the_gan_example_runs_data_parallel_unchanged(run):
    _, ranks = run
    got = ranks[0]["gan"]
    assert set(got["history"]) == {"d_loss", "g_loss"}
    assert all(np.isfinite(v[0]) for v in got["history"].values())
    lo, hi = got["generated"]
    assert -1.0 <= lo < hi <= 1.0  # the generator's tanh images, after fit
    single = _dist_case.gan()
    moved = [np.abs(np.asarray(w) - np.asarray(s)).max() for w, s in zip(got["weights"], single["weights"])]
    if BACKEND == "jax":
        # jax keeps the global view: the noise is drawn for the whole batch, as on one device
        assert max(moved) < 1e-4, moved
    else:
        # each replica draws noise for its own rows: close to, not equal to, one device
        assert max(moved) < 2e-2, moved
        for key, value in single["history"].items():
            assert got["history"][key][0] == pytest.approx(value[0], abs=2e-3), key


def test_neutral_random_draws_are_the_global_batch_s_on_every_engine(run):
    """With neutral random numbers each replica draws its rows of the global
    batch's noise: the GAN's 2-replica run equals one device's on every
    engine (without them, tensorflow and torch replicas draw apart: above)."""
    _, ranks = run
    got = ranks[0]["neutral_gan"]
    single = _dist_case.neutral_gan()
    for key, value in single["history"].items():
        np.testing.assert_allclose(got["history"][key], value, rtol=1e-5, atol=1e-6, err_msg=key)
    _assert_close(got["weights"], single["weights"], atol=1e-5, what="weights")


def test_batches_that_cannot_split_evenly_are_refused(run):
    errors = run[1][0]["errors"]
    assert "splits every batch into 2 equal shards" in errors["odd_batch"], errors
    assert "batch size is 33" in errors["odd_batch"]
    assert "has 31 rows" in errors["custom_ragged"] and "custom step" in errors["custom_ragged"], errors


@pytest.mark.skipif(BACKEND != "jax", reason="keras.distribution.ModelParallel is jax's")
def test_model_parallel_layout_map_trains_like_one_device(run, reference):
    got = run[1][0]["model_parallel"]
    assert "model" in got["kernel_spec"]  # the hidden kernel is split over the 'model' mesh axis
    _assert_close(got["weights"], reference[0]["weights"], what="model parallel")


@pytest.mark.skipif(BACKEND != "torch", reason="one process per replica only on torch")
def test_sigterm_to_one_process_checkpoints_and_stops_all_at_the_same_step(tmp_path):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    procs = []
    for rank in range(2):  # what torchrun sets, launched by hand to see each exit status
        env = dict(os.environ, KERAS_BACKEND="torch", OMP_NUM_THREADS="1", RANK=str(rank), LOCAL_RANK=str(rank),
                   WORLD_SIZE="2", LOCAL_WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        procs.append(subprocess.Popen([sys.executable, os.path.join(HERE, "_dist_case.py"), str(tmp_path),
                                       "--sigterm-at", "4"], env=env, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True))
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [143, 143], [o[1][-3000:] for o in outs]
    names = os.listdir(tmp_path / "ckpt-sigterm")
    assert names == ["ckpt-000000"], names  # written once, by the chief, at the signalled step
    assert latest_checkpoint(tmp_path / "ckpt-sigterm").global_step == 4


def test_data_parallel_on_one_device_changes_nothing(reference):
    reference = reference[0]
    """The one-line switch in this process (one device: jax DataParallel over
    it, a one-replica MirroredStrategy, torch not launched by torchrun)."""
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with loops.data_parallel():
            got = _dist_case.classic()
    if BACKEND == "torch":
        assert any("torchrun" in str(w.message) for w in caught)
    _assert_close(got["weights"], reference["weights"], what="weights")
    for key, values in reference["history"].items():
        np.testing.assert_allclose(got["history"][key], values, rtol=0, atol=1e-5, err_msg=key)


def test_padding_shards_use_the_whole_batch_counts():
    """A padded batch of 8 rows (3 real) split in two shards (the second all
    padding): the replicas' mean of their weighted mean losses is the mean over
    the 3 real rows, and the loss trackers' weights add up to 3."""
    losses = np.array([1.0, 2.0, 6.0, 1.0, 2.0, 6.0, 1.0, 2.0], "float32")  # padding repeats rows
    batch = _padding.mask_batch((losses[:3, None], losses[:3, None]), 8)
    shard = _padding.with_totals(batch)
    means, weights = [], []
    for lo, hi in ((0, 4), (4, 8)):
        part = keras.tree.map_structure(lambda a, lo=lo, hi=hi: None if a is None else a[lo:hi], shard)
        (_, y, sw), pad = _padding.unwrap(keras.tree.map_structure(
            lambda a: None if a is None else keras.ops.convert_to_tensor(a), part))
        assert sw is None  # (no weights given: the step makes them from the mask, shaped to y_pred)
        w = keras.ops.convert_to_numpy(pad.loss_weight(sw, y)).reshape(-1)
        means.append(float(np.mean(w * losses[lo:hi])))  # "sum_over_batch_size" on the shard
        weights.append(float(keras.ops.convert_to_numpy(pad.count)))
    assert np.mean(means) == pytest.approx(3.0)  # (1 + 2 + 6) / 3
    assert sum(weights) == pytest.approx(3.0)


_JAX_DP_CHECKS = """
import os
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
import numpy as np, keras, loops, warnings
from loops.backends.jax import first_call
calls = []
original = first_call.first_call
first_call.first_call = lambda *a: calls.append(1) or original(*a)
loops.data_parallel()
rng = np.random.default_rng(0)
x = rng.random((64, 8)).astype("float32")
def trainer(activation):
    m = keras.Sequential([keras.Input((8,)), keras.layers.Dense(3, activation=activation)])
    return loops.Trainer(m, keras.optimizers.Adam(1e-3), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
t = trainer(None)
before = [w.copy() for w in t.model.get_weights()]
try:
    t.fit(x, rng.integers(3, 5, 64), batch_size=16, epochs=1, verbose=0)  # every label out of range
    print("NO ERROR")
except ValueError as e:
    print("ERROR", str(e).splitlines()[0][:120])
print("UNCHANGED", all(np.array_equal(a, b) for a, b in zip(before, t.model.get_weights())))
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    trainer("softmax").fit(x, rng.integers(0, 3, 64), batch_size=16, epochs=2, verbose=0)
print("WARNED", any("already sum to 1" in str(w.message) for w in caught))
# an output over 65,536 values: the checks read its first 5 rows, which 2 devices cannot split evenly
wide = keras.Sequential([keras.Input((100, 8)), keras.layers.Dense(131)])
t3 = loops.Trainer(wide, keras.optimizers.Adam(1e-3), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
h = t3.fit(rng.random((32, 100, 8)).astype("float32"), rng.integers(0, 131, (32, 100)), batch_size=16, epochs=1,
           verbose=0)
print("WIDE", np.isfinite(h.history["loss"][0]))
print("CHECKED CALLS", len(calls))
"""


@pytest.mark.skipif(BACKEND != "jax", reason="jax's traced first step under a distribution")
def test_jax_data_parallel_checks_run_on_the_traced_first_step():
    """On one process, a data-parallel first step is traced, not run eagerly
    (op by op: 2.2-2.3 s against model.fit's 0.6-0.7 s on an MLP over 2 host
    devices; now 0.8 s): the value checks read the first compiled call's
    labels and predictions, which stay split along the batch (no all-gather
    at every call). A label out of range still raises before any update, and
    softmax outputs with from_logits=True still warn."""
    env = dict(os.environ, KERAS_BACKEND="jax")
    proc = subprocess.run([sys.executable, "-c", _JAX_DP_CHECKS], env=env, capture_output=True, text=True,
                          timeout=300, cwd=HERE)
    out = proc.stdout
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert re.search(r"ERROR Labels for loss 'sparse_categorical_crossentropy' range over [34]\.\.[34], but the "
                     r"model output has width 3", out), out
    assert "UNCHANGED True" in out and "WARNED True" in out, out
    assert "WIDE True" in out, out
    assert "CHECKED CALLS 3" in out, out  # each trainer's first call went through the traced checks' gate
