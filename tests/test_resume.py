"""Training checkpoints: a run killed at a random step and restarted finishes
with bit-identical weights; a checkpoint continues on another backend;
corrupt checkpoints are skipped; the files hold no pickle."""

import json
import os
import subprocess
import sys
import zipfile

import keras
import numpy as np
import pytest

import _resume_case
from conftest import BACKEND, requires
from loops import latest_checkpoint

HERE = os.path.dirname(os.path.abspath(__file__))
NEXT_BACKEND = {"jax": "torch", "torch": "tensorflow", "tensorflow": "jax"}[BACKEND]
TOTAL_STEPS = 5 * _resume_case.STEPS_PER_EPOCH


def _script(backend, ckpt_dir, out, *args):
    env = dict(os.environ, KERAS_BACKEND=backend, OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, os.path.join(HERE, "_resume_case.py"), str(ckpt_dir), str(out), *args],
                          env=env, capture_output=True, text=True, timeout=300)


def _weights(run):
    if isinstance(run, str):
        with open(run) as f:
            run = json.load(f)
    return [np.asarray(w, dtype=np.float32) for w in run["weights"]]


def test_killed_at_random_steps_resumes_bit_for_bit(tmp_path):
    t, h = _resume_case.run(str(tmp_path / "straight"), dropout=True)
    reference = t.get_weights()
    # Two SIGKILLs and one SIGTERM at random steps (none on a checkpoint step
    # boundary guaranteed: work after the last checkpoint is lost and redone).
    rng = np.random.default_rng({"jax": 0, "tensorflow": 1, "torch": 2}[BACKEND])
    kills = sorted(rng.choice(np.arange(2, TOTAL_STEPS - 1), size=3, replace=False).tolist())
    ckpt = tmp_path / "ckpt"
    out = tmp_path / "out.json"
    for at, sig in zip(kills, ["KILL", "KILL", "TERM"]):
        proc = _script(BACKEND, ckpt, out, "--dropout", "--die-at", str(at), "--signal", sig)
        assert proc.returncode == (-9 if sig == "KILL" else 143), (at, sig, proc.stderr[-2000:])
        assert not out.exists()
        found = latest_checkpoint(ckpt)
        assert found is not None and found.global_step <= at
        if sig == "TERM":  # SIGTERM writes a checkpoint of the very step before exiting
            assert found.global_step == at, found
    proc = _script(BACKEND, ckpt, out, "--dropout")
    assert proc.returncode == 0, proc.stderr[-3000:]
    resumed = json.loads(out.read_text())
    for a, b in zip(reference, _weights(resumed)):
        np.testing.assert_array_equal(a, b)  # bitwise
    assert resumed["epoch"] == list(range(5))  # History spans the whole run, not just the last process
    np.testing.assert_array_equal(resumed["history"]["loss"], h.history["loss"])
    np.testing.assert_array_equal(resumed["history"]["val_accuracy"], h.history["val_accuracy"])


@requires({"jax": "torch", "torch": "tensorflow", "tensorflow": "jax"}[BACKEND])
def test_checkpoint_continues_on_another_backend(tmp_path):
    """An exception mid-epoch writes a checkpoint here; the next backend resumes it,
    and its loss curve continues the uninterrupted run's within 1e-5."""
    _, straight = _resume_case.run(str(tmp_path / "straight"), dropout=False)
    ckpt = tmp_path / "ckpt"
    with pytest.raises(RuntimeError, match="planted failure"):
        _resume_case.run(str(ckpt), dropout=False, interrupt=(10, "raise"))
    found = latest_checkpoint(ckpt)
    assert (found.epoch, found.step, found.global_step) == (1, 3, 10)  # mid-epoch, at the failing step
    assert found.manifest["backend"] == BACKEND
    out = tmp_path / "out.json"
    proc = _script(NEXT_BACKEND, ckpt, out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    other = json.loads(out.read_text())
    for key in ("loss", "accuracy", "val_loss", "val_accuracy"):
        np.testing.assert_allclose(other["history"][key], straight.history[key], rtol=1e-5, atol=1e-7, err_msg=key)
    assert latest_checkpoint(ckpt).manifest["backend"] == NEXT_BACKEND


@requires({"jax": "torch", "torch": "tensorflow", "tensorflow": "jax"}[BACKEND])
def test_checkpoint_of_a_dropout_model_continues_on_another_backend_with_neutral_random(tmp_path):
    """With loops.set_seed(..., neutral_random=True) the Dropout masks are the
    same on every backend, so a checkpoint of a Dropout model (its
    SeedGenerator's state included) continues on the next backend as the
    uninterrupted run would have, within 1e-5."""
    import loops

    try:
        _, straight = _resume_case.run(str(tmp_path / "straight"), dropout=True, neutral=True)
        ckpt = tmp_path / "ckpt"
        with pytest.raises(RuntimeError, match="planted failure"):
            _resume_case.run(str(ckpt), dropout=True, interrupt=(10, "raise"), neutral=True)
    finally:
        loops.set_seed(1234, neutral_random=False)
    out = tmp_path / "out.json"
    proc = _script(NEXT_BACKEND, ckpt, out, "--dropout", "--neutral")
    assert proc.returncode == 0, proc.stderr[-3000:]
    other = json.loads(out.read_text())
    for key in ("loss", "accuracy", "val_loss", "val_accuracy"):
        np.testing.assert_allclose(other["history"][key], straight.history[key], rtol=1e-5, atol=1e-7, err_msg=key)


def test_corrupt_or_truncated_checkpoint_falls_back_to_the_previous(tmp_path):
    ckpt = tmp_path / "ckpt"
    _resume_case.run(str(ckpt), epochs=2, dropout=False)
    names = sorted(os.listdir(ckpt))
    assert len(names) == 3, names  # keep=3: older ones pruned
    newest, previous = latest_checkpoint(ckpt), sorted(ckpt.iterdir())[-2]
    state = os.path.join(newest.path, "state.npz")
    with open(state, "r+b") as f:
        f.truncate(os.path.getsize(state) // 2)
    with pytest.warns(UserWarning, match="state.npz does not match its checksum"):
        found = latest_checkpoint(ckpt)
    assert found.path == str(previous)
    with open(os.path.join(found.path, "manifest.json"), "w") as f:
        f.write('{"format": "loops-checkpo')  # a torn write
    with pytest.warns(UserWarning) as caught:
        third = latest_checkpoint(ckpt)
    reasons = " | ".join(str(w.message) for w in caught)
    assert "does not match its checksum" in reasons and "manifest.json is missing or unreadable" in reasons
    assert third.global_step < found.global_step
    # fit resumes from the one that is intact (and still finishes the run)
    with pytest.warns(UserWarning, match="corrupt checkpoint"):
        t, h = _resume_case.run(str(ckpt), epochs=2, dropout=False)
    assert h.epoch == [0, 1]


def test_checkpoint_files_hold_no_pickle(tmp_path):
    _resume_case.run(str(tmp_path), epochs=1, dropout=True)
    path = latest_checkpoint(tmp_path).path
    assert sorted(os.listdir(path)) == ["manifest.json", "state.npz"]
    manifest = json.loads(open(os.path.join(path, "manifest.json")).read())
    with zipfile.ZipFile(os.path.join(path, "state.npz")) as z:
        members = z.namelist()
        assert members and all(m.endswith(".npy") for m in members)
        for m in members:
            with z.open(m) as f:
                version = np.lib.format.read_magic(f)
                read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                               else np.lib.format.read_array_header_2_0)
                _, _, dtype = read_header(f)
                assert not dtype.hasobject, m  # an object array is the only way .npy holds a pickle
    with np.load(os.path.join(path, "state.npz"), allow_pickle=False) as npz:
        assert len([k for k in npz.files if k.startswith("v")]) == len(manifest["variables"])
    # every state the run owns is in it: weights, Adam's slots, metrics, the dropout seed
    paths = " ".join(v["path"] for v in manifest["variables"])
    for part in ("/kernel", "adam", "seed_generator", "accuracy", "loss"):
        assert part in paths, part
    assert manifest["position"]["epoch"] == 1 and manifest["fit"]["batch_size"] == 32


def test_resume_with_other_data_or_bad_arguments_is_refused(tmp_path):
    _resume_case.run(str(tmp_path), epochs=1, dropout=False)
    (x, y), _ = _resume_case.data()
    t = _resume_case.trainer(False)
    before = t.get_weights()
    with pytest.raises(ValueError, match=r"batch_size=32 then, 16 now.*resume=False"):
        t.fit(x, y, batch_size=16, epochs=2, verbose=0, checkpoint_dir=str(tmp_path))
    for a, b in zip(before, t.get_weights()):
        np.testing.assert_array_equal(a, b)
    h = t.fit(x, y, batch_size=16, epochs=1, verbose=0, checkpoint_dir=str(tmp_path), resume=False)
    assert h.epoch == [0] and latest_checkpoint(tmp_path).manifest["fit"]["batch_size"] == 16
    for kwargs, match in [({"checkpoint_every": 0}, "checkpoint_every must be 'epoch' or a positive"),
                          ({"keep": 0}, "keep must be a positive integer"),
                          ({"checkpoint_dir": 3}, "checkpoint_dir must be a path")]:
        with pytest.raises((ValueError, TypeError), match=match):
            t.fit(x, y, epochs=1, verbose=0, **{"checkpoint_dir": str(tmp_path), **kwargs})


def test_a_finished_run_is_not_trained_again_and_can_be_extended(tmp_path):
    t, h = _resume_case.run(str(tmp_path), epochs=2, dropout=False)
    again, h2 = _resume_case.run(str(tmp_path), epochs=2, dropout=False)
    for a, b in zip(t.get_weights(), again.get_weights()):
        np.testing.assert_array_equal(a, b)
    assert h2.history["loss"] == h.history["loss"]
    _, straight = _resume_case.run(str(tmp_path / "straight"), epochs=3, dropout=False)
    _, longer = _resume_case.run(str(tmp_path), epochs=3, dropout=False)
    np.testing.assert_array_equal(longer.history["loss"], straight.history["loss"])
