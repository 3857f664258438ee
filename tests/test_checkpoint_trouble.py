"""A checkpoint directory in trouble: not writable, a full disk, a checkpoint
of another model or optimizer. Each is a clear ``CheckpointError`` (a
``ValueError``) naming the directory and the fix, raised before any work is
lost, and the checkpoints already there stay untouched."""

import errno
import hashlib
import os

import keras
import numpy as np
import pytest

import loops
from loops import CheckpointError, Trainer, latest_checkpoint


def _data(n=64, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, 5)).astype("float32"), rng.normal(size=(n, 1)).astype("float32")


def _trainer(optimizer="adam", units=4):
    model = keras.Sequential([keras.Input((5,)), keras.layers.Dense(units, activation="relu"),
                              keras.layers.Dense(1)])
    return Trainer(model, optimizer=optimizer, loss="mse")


def _tree_digest(directory):
    """Every file under ``directory`` (names and bytes), as one digest."""
    h = hashlib.sha256()
    for root, dirs, files in sorted(os.walk(directory)):
        dirs.sort()
        for name in sorted(files):
            path = os.path.join(root, name)
            h.update(os.path.relpath(path, directory).encode())
            with open(path, "rb") as f:
                h.update(f.read())
    return h.hexdigest()


class _StepCounter(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.steps = 0

    def on_train_batch_end(self, batch, logs=None):
        self.steps += 1


def test_a_directory_that_cannot_be_created_fails_before_the_first_step(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    x, y = _data()
    counter = _StepCounter()
    with pytest.raises(CheckpointError, match=r"checkpoint_dir=.*a_file/ckpt.*cannot be written.*Pass a directory"):
        _trainer().fit(x, y, batch_size=16, epochs=2, verbose=0, callbacks=[counter],
                       checkpoint_dir=str(blocker / "ckpt"))
    assert counter.steps == 0


def test_a_directory_without_write_permission_fails_before_the_first_step(tmp_path, monkeypatch):
    x, y = _data()
    ckpt = tmp_path / "ckpt"
    if os.geteuid() != 0:  # a real read-only directory (root writes anywhere: simulated below)
        ckpt.mkdir()
        ckpt.chmod(0o500)
    else:
        import tempfile

        def refuse(*args, **kwargs):
            raise PermissionError(errno.EACCES, "Permission denied")

        monkeypatch.setattr(tempfile, "mkstemp", refuse)
    counter = _StepCounter()
    try:
        with pytest.raises(CheckpointError, match="cannot be written.*Permission denied"):
            _trainer().fit(x, y, batch_size=16, epochs=2, verbose=0, callbacks=[counter], checkpoint_dir=str(ckpt))
    finally:
        if ckpt.exists():
            ckpt.chmod(0o700)
    assert counter.steps == 0


@pytest.mark.parametrize("where", ["state", "directory"])
def test_a_full_disk_keeps_the_previous_checkpoint_and_the_same_call_resumes(tmp_path, monkeypatch, where):
    x, y = _data()
    keras.utils.set_random_seed(3)
    straight = _trainer()
    straight.fit(x, y, batch_size=16, epochs=3, verbose=0, shuffle=False)
    reference = straight.get_weights()

    ckpt = tmp_path / "ckpt"
    keras.utils.set_random_seed(3)
    trainer = _trainer()
    import tempfile

    real_savez, real_mkdtemp = np.savez, tempfile.mkdtemp
    writes = []

    def savez_until_the_disk_is_full(f, **arrays):
        writes.append(1)
        if len(writes) >= 2:  # the second checkpoint finds the disk full half-way through its state
            f.write(b"partial")
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_savez(f, **arrays)

    def mkdtemp_until_the_disk_is_full(*args, **kwargs):
        if kwargs.get("prefix", "").startswith(".ckpt-"):
            writes.append(1)
            if len(writes) >= 2:  # ... or cannot even make its temporary directory
                raise OSError(errno.ENOSPC, "No space left on device")
        return real_mkdtemp(*args, **kwargs)

    if where == "state":
        monkeypatch.setattr(np, "savez", savez_until_the_disk_is_full)
    else:
        monkeypatch.setattr(tempfile, "mkdtemp", mkdtemp_until_the_disk_is_full)
    with pytest.warns(UserWarning, match="Could not write a checkpoint after the error"):
        with pytest.raises(CheckpointError, match=r"No space left on device.*ckpt-000000.*untouched.*resume"):
            trainer.fit(x, y, batch_size=16, epochs=3, verbose=0, shuffle=False, checkpoint_dir=str(ckpt))
    monkeypatch.setattr(np, "savez", real_savez)
    monkeypatch.setattr(tempfile, "mkdtemp", real_mkdtemp)
    assert sorted(os.listdir(ckpt)) == ["ckpt-000000"]  # no half-written checkpoint, no temporary left
    first = latest_checkpoint(ckpt)
    assert first is not None and first.global_step == 4  # the first epoch's 4 steps
    digest = _tree_digest(ckpt / "ckpt-000000")

    # Space freed: the same call, in a fresh process's state, resumes and ends as the straight run.
    keras.utils.set_random_seed(99)
    again = _trainer()
    again.fit(x, y, batch_size=16, epochs=3, verbose=0, shuffle=False, checkpoint_dir=str(ckpt))
    for a, b in zip(reference, again.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    assert _tree_digest(ckpt / "ckpt-000000") == digest  # (keep=3: still there, as it was)


@pytest.mark.parametrize("other", ["optimizer", "model", "layer_sizes"])
def test_a_checkpoint_of_another_model_or_optimizer_is_refused_and_left_as_it_was(tmp_path, other):
    x, y = _data()
    ckpt = tmp_path / "ckpt"
    _trainer().fit(x, y, batch_size=16, epochs=1, verbose=0, checkpoint_dir=str(ckpt))
    digest = _tree_digest(ckpt)
    if other == "optimizer":  # AdamW holds the same variables as Adam, of the same shapes
        trainer = _trainer(optimizer=keras.optimizers.AdamW())
        match = "another model or optimizer"
    elif other == "model":  # the same variables' shapes, another layer
        model = keras.Sequential([keras.Input((5,)),
                                  keras.layers.EinsumDense("ab,bc->ac", output_shape=4, bias_axes="c"),
                                  keras.layers.Dense(1)])
        trainer = Trainer(model, optimizer="adam", loss="mse")
        match = "another model or optimizer"
    else:
        trainer = _trainer(units=8)
        match = "has shape .* in the checkpoint"
    before = [w.copy() for w in trainer.get_weights()]
    counter = _StepCounter()
    with pytest.raises(CheckpointError, match=match) as e:
        trainer.fit(x, y, batch_size=16, epochs=2, verbose=0, callbacks=[counter], checkpoint_dir=str(ckpt))
    assert "resume=False" in str(e.value) or "differs" in str(e.value)
    assert counter.steps == 0
    assert _tree_digest(ckpt) == digest  # nothing written, nothing pruned
    for a, b in zip(before, trainer.get_weights()):
        np.testing.assert_array_equal(a, b)  # nothing half-restored either


def test_the_error_is_a_value_error_as_the_rest_of_bad_input():
    assert issubclass(loops.CheckpointError, ValueError)


def test_a_write_a_dead_process_left_half_done_is_ignored_then_removed(tmp_path):
    """A run killed (SIGKILL) while writing leaves only a temporary directory
    (the checkpoint appears by an atomic rename): the next run resumes from the
    last whole checkpoint, and removes the leftover before its first step."""
    x, y = _data()
    ckpt = tmp_path / "ckpt"
    first = _trainer().fit(x, y, batch_size=16, epochs=1, verbose=0, shuffle=False, checkpoint_dir=str(ckpt))
    leftover = ckpt / ".ckpt-000001-dead1234"
    leftover.mkdir()
    (leftover / "state.npz").write_bytes(b"half of it")
    assert latest_checkpoint(ckpt).global_step == 4  # the leftover is not a checkpoint
    resumed = _trainer()
    history = resumed.fit(x, y, batch_size=16, epochs=2, verbose=0, shuffle=False, checkpoint_dir=str(ckpt))
    assert history.epoch == [0, 1]
    assert history.history["loss"][0] == first.history["loss"][0]  # epoch 1 restored (a new model differs)
    assert not leftover.exists()
    assert sorted(os.listdir(ckpt)) == ["ckpt-000000", "ckpt-000001"]
