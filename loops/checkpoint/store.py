"""Training checkpoints: everything a run needs to continue exactly where it
stopped, in backend-neutral files, with no pickle anywhere.

A checkpoint is a directory ``<checkpoint_dir>/ckpt-<seq>/`` with

- ``state.npz``: every variable the trainer owns (models, optimizers, metrics,
  seed generators), one ``.npy`` member per variable, in discovery order;
  loaded with ``allow_pickle=False``;
- ``manifest.json``: format version, the SHA-256 of ``state.npz``, each
  variable's path/shape/dtype, the position (epoch, step in epoch, global
  step, data position), the trainer's config, the fit arguments that shape the
  data, and the History so far.

It is written into a temporary directory, each file fsync'ed, then renamed
into place (and the parent directory fsync'ed): a reader sees a whole
checkpoint or none. A checkpoint that fails its checks (missing or truncated
file, bad JSON, checksum or shape mismatch) is reported and the previous one
is used.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import random
import re
import shutil
import signal
import tempfile
import threading
import time
import warnings
from typing import Any, Callable

import keras
import numpy as np

FORMAT = "loops-checkpoint"
VERSION = 1
_NAME = re.compile(r"^ckpt-(\d{6,})$")


class CheckpointError(ValueError):
    """A checkpoint that cannot be used (corrupt, truncated or mismatched)."""


@dataclasses.dataclass
class Checkpoint:
    """A checkpoint found on disk: where, and the position it holds."""

    path: str
    seq: int
    epoch: int
    step: int
    global_step: int
    manifest: dict[str, Any]


def _fsync(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError:  # some filesystems refuse fsync on directories
        pass
    finally:
        os.close(fd)


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (np.generic, np.ndarray)):
        return np.asarray(value).tolist()
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return repr(value)


def host_value(v: keras.Variable) -> np.ndarray:
    """A variable's value as the checkpoint stores it (NumPy; exotic float dtypes as float32)."""
    arr = np.asarray(keras.ops.convert_to_numpy(v))  # (a tf.distribute variable reads only so)
    if arr.dtype.kind == "V" or arr.dtype.name in ("bfloat16", "float8_e4m3fn", "float8_e5m2"):
        arr = arr.astype("float32")  # .npy has no such dtypes; the manifest keeps the real one
    return arr


def listing(directory: str) -> list[tuple[int, str]]:
    """``(seq, path)`` of the checkpoints in ``directory``, oldest first."""
    if not os.path.isdir(directory):
        return []
    found = []
    for name in os.listdir(directory):
        m = _NAME.match(name)
        if m and os.path.isdir(os.path.join(directory, name)):
            found.append((int(m.group(1)), os.path.join(directory, name)))
    return sorted(found)


def capture_rng(engine: Any) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Global random states outside the variables: the engine's (torch's
    unseeded dropout draws from it), NumPy's and Python's (a user's
    ``epoch_data`` may draw from them)."""
    arrays = {f"engine_{k}": np.asarray(v) for k, v in engine.rng_state().items()}
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    arrays["numpy_keys"] = np.asarray(keys)
    version, internal, gauss_next = random.getstate()
    arrays["python_state"] = np.asarray(internal, dtype=np.uint64)
    meta = {"numpy": [name, int(pos), int(has_gauss), float(gauss)],
            "python": [version, gauss_next], "engine": keras.backend.backend()}
    return arrays, meta


def restore_rng(engine: Any, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
    if meta.get("engine") == keras.backend.backend():  # another engine's generator means nothing here
        engine.set_rng_state({k[len("engine_"):]: v for k, v in arrays.items() if k.startswith("engine_")})
    if "numpy_keys" in arrays and "numpy" in meta:
        name, pos, has_gauss, gauss = meta["numpy"]
        np.random.set_state((name, arrays["numpy_keys"].astype(np.uint32), pos, has_gauss, gauss))
    if "python_state" in arrays and "python" in meta:
        version, gauss_next = meta["python"]
        random.setstate((version, tuple(int(i) for i in arrays["python_state"]), gauss_next))


def write(directory: str, variables: list[keras.Variable], values: list[np.ndarray], *, position: dict[str, Any],
          meta: dict[str, Any], keep: int | None, extra: dict[str, np.ndarray] | None = None) -> str:
    """Writes one checkpoint atomically; prunes to the ``keep`` newest."""
    existing = listing(directory)
    seq = existing[-1][0] + 1 if existing else 0
    final = os.path.join(directory, f"ckpt-{seq:06d}")
    tmp = ""
    try:
        os.makedirs(directory, exist_ok=True)
        tmp = tempfile.mkdtemp(prefix=f".ckpt-{seq:06d}-", dir=directory)
        state = os.path.join(tmp, "state.npz")
        arrays = {f"v{i:05d}": v for i, v in enumerate(values)}
        arrays.update({f"x_{k}": np.asarray(a) for k, a in (extra or {}).items()})
        with open(state, "wb") as f:
            np.savez(f, **arrays)  # type: ignore[arg-type]  # (numpy's stub types **kwds as allow_pickle)
            f.flush()
            os.fsync(f.fileno())
        manifest = {
            "format": FORMAT,
            "version": VERSION,
            "sha256": _sha256(state),
            "written": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "backend": keras.backend.backend(),
            "keras": keras.__version__,
            "variables": [{"path": v.path, "shape": list(v.shape), "dtype": str(v.dtype)} for v in variables],
            "position": _jsonable(position),
            **_jsonable(meta),
        }
        with open(os.path.join(tmp, "manifest.json"), "w") as f:
            json.dump(manifest, f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        _fsync(tmp)
        os.rename(tmp, final)  # atomic: the checkpoint appears whole or not at all
    except OSError as e:  # a full disk, a directory gone read-only: the previous checkpoints stay whole
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)
        previous = existing[-1][1] if existing else None
        raise CheckpointError(
            f"Could not write a checkpoint to {directory!r} ({e.strerror or e}). "
            + (f"The previous checkpoint {previous!r} is untouched: free space (or fix the directory) and "
               "run the same fit() again to resume from it." if previous else
               "No earlier checkpoint exists there. Free space or pass another checkpoint_dir.")) from e
    except BaseException:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    try:
        _fsync(directory)  # the rename itself durable (best effort: the checkpoint is whole already)
    except OSError:
        pass
    if keep is not None:
        for _, old in listing(directory)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    return final


def read(path: str) -> tuple[Checkpoint, list[np.ndarray], dict[str, np.ndarray]]:
    """Loads and verifies one checkpoint directory; raises ``CheckpointError``."""
    try:
        with open(os.path.join(path, "manifest.json")) as f:
            manifest = json.load(f)
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{path}: manifest.json is missing or unreadable ({e}).") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a loops checkpoint (manifest format {manifest.get('format')!r}).")
    if manifest.get("version", 0) > VERSION:
        raise CheckpointError(
            f"{path}: written by a newer loops (checkpoint format {manifest['version']}, this one reads "
            f"{VERSION}). Upgrade loops.")
    state = os.path.join(path, "state.npz")
    try:
        digest = _sha256(state)
    except OSError as e:
        raise CheckpointError(f"{path}: state.npz is missing ({e}).") from None
    if digest != manifest.get("sha256"):
        raise CheckpointError(f"{path}: state.npz does not match its checksum (truncated or corrupt).")
    specs = manifest.get("variables", [])
    try:
        with np.load(state, allow_pickle=False) as npz:
            arrays = [npz[f"v{i:05d}"] for i in range(len(specs))]
            extra = {k[2:]: npz[k] for k in npz.files if k.startswith("x_")}
    except (OSError, ValueError, KeyError) as e:
        raise CheckpointError(f"{path}: state.npz cannot be read ({e}).") from None
    for spec, arr in zip(specs, arrays):
        if list(arr.shape) != list(spec["shape"]):
            raise CheckpointError(f"{path}: {spec['path']} has shape {arr.shape}, manifest says {spec['shape']}.")
    m = _NAME.match(os.path.basename(os.path.normpath(path)))
    pos = manifest.get("position", {})
    info = Checkpoint(path=path, seq=int(m.group(1)) if m else -1, epoch=int(pos.get("epoch", 0)),
                      step=int(pos.get("step", 0)), global_step=int(pos.get("global_step", 0)),
                      manifest=manifest)
    return info, arrays, extra


def latest(directory: str) -> tuple[Checkpoint, list[np.ndarray], dict[str, np.ndarray]] | None:
    """The newest checkpoint in ``directory`` that passes its checks; a
    corrupt one is reported and the one before it is used."""
    for _, path in reversed(listing(directory)):
        try:
            return read(path)
        except CheckpointError as e:
            warnings.warn(f"Skipping a corrupt checkpoint: {e} Using the previous one.", stacklevel=3)
    return None


def latest_checkpoint(directory: str | os.PathLike[str]) -> Checkpoint | None:
    """The newest usable checkpoint in ``directory`` (or None): its path,
    epoch, step in epoch, global step and manifest."""
    found = latest(os.fspath(directory))
    return None if found is None else found[0]


def _unnumbered(path: str) -> str:
    """A variable path without Keras's auto-numbering (``dense_3`` -> ``dense``),
    which differs between processes that build the same model."""
    return re.sub(r"_\d+(?=[_/]|$)", "", path)


def restore(variables: list[keras.Variable], info: Checkpoint, arrays: list[np.ndarray]) -> None:
    """Assigns ``arrays`` to ``variables`` after checking they match."""
    specs = info.manifest["variables"]
    if len(specs) != len(variables):
        mine = {v.path for v in variables}
        theirs = {s["path"] for s in specs}
        raise CheckpointError(
            f"{info.path} holds {len(specs)} variables but this trainer has {len(variables)} "
            f"(only in the checkpoint: {sorted(theirs - mine)[:5]}; only here: {sorted(mine - theirs)[:5]}). "
            "Build the same models, optimizers and metrics as the run that wrote it, or pass "
            "resume=False to start afresh.")
    for v, spec in zip(variables, specs):
        if _unnumbered(v.path) != _unnumbered(spec["path"]):
            raise CheckpointError(
                f"{info.path} is a checkpoint of another model or optimizer: its variable {spec['path']!r} "
                f"stands where this trainer has {v.path!r}. Resume with the models and optimizers of the run "
                "that wrote it, or pass resume=False (or a new checkpoint_dir) to start afresh.")
    for v, spec, arr in zip(variables, specs, arrays):
        if tuple(v.shape) != tuple(arr.shape):
            raise CheckpointError(
                f"{info.path}: variable {spec['path']} has shape {tuple(arr.shape)} in the checkpoint but "
                f"{v.path} here has {tuple(v.shape)}. The model differs from the run that wrote it.")
    for v, arr in zip(variables, arrays):
        v.assign(keras.ops.convert_to_tensor(arr, dtype=v.dtype))


class Checkpointer:
    """What ``fit(checkpoint_dir=...)`` does: when to write, SIGTERM, resume."""

    def __init__(self, directory: Any, every: Any, keep: Any):
        if not isinstance(directory, (str, os.PathLike)):
            raise TypeError(f"checkpoint_dir must be a path, got {type(directory).__name__}.")
        if every != "epoch" and (not isinstance(every, int) or isinstance(every, bool) or every < 1):
            raise ValueError(
                f"checkpoint_every must be 'epoch' or a positive number of steps, got {every!r}.")
        if keep is not None and (not isinstance(keep, int) or isinstance(keep, bool) or keep < 1):
            raise ValueError(f"keep must be a positive integer (checkpoints kept) or None (all), got {keep!r}.")
        self.directory = os.fspath(directory)
        if os.path.exists(self.directory) and not os.path.isdir(self.directory):
            raise ValueError(f"checkpoint_dir={self.directory!r} is a file; pass a directory.")
        self.every = every
        self.keep = keep
        self.due = False
        self.saved_at: int | None = None  # global step of the last write
        self.signalled: int | None = None
        self._previous: dict[int, Any] = {}

    def probe(self) -> None:
        """Fails now, before any step, if the directory cannot be written
        (rather than at the first checkpoint, after an epoch of work); removes
        the temporary directories of writes a dead run left half done."""
        try:
            os.makedirs(self.directory, exist_ok=True)
            fd, probe = tempfile.mkstemp(prefix=".probe-", dir=self.directory)
            os.close(fd)
            os.remove(probe)
            for name in os.listdir(self.directory):  # half-written by a run that died while writing
                if name.startswith(".ckpt-"):
                    shutil.rmtree(os.path.join(self.directory, name), ignore_errors=True)
        except OSError as e:
            raise CheckpointError(
                f"checkpoint_dir={self.directory!r} cannot be written ({e.strerror or e}). Pass a directory "
                "this process can create files in, or fix its permissions.") from None

    def stepped(self, before: int, after: int) -> None:
        """``after - before`` steps just ran."""
        if isinstance(self.every, int) and after // self.every > before // self.every:
            self.due = True

    def install_signal_handler(self) -> None:
        """SIGTERM (and SIGINT's default) set a flag; the loop writes a
        checkpoint at the next step boundary and exits."""
        if threading.current_thread() is not threading.main_thread():
            return

        def handler(signum: int, frame: Any) -> None:
            del frame
            self.signalled = signum

        for sig in (signal.SIGTERM,):
            self._previous[sig] = signal.signal(sig, handler)

    def uninstall_signal_handler(self) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        self._previous = {}

    def skip(self, global_step: int) -> None:
        """Data parallel, not the chief: the chief wrote this step's checkpoint."""
        self.saved_at = int(global_step)
        self.due = False

    def write(self, variables: list[keras.Variable], values: list[np.ndarray], position: dict[str, Any],
              meta: dict[str, Any], extra: dict[str, np.ndarray] | None = None) -> str:
        """``values``: the ``variables``' ``host_value``s (read by every process)."""
        path = write(self.directory, variables, values, position=position, meta=meta, keep=self.keep, extra=extra)
        self.saved_at = int(position["global_step"])
        self.due = False
        return path


__all__ = ["Checkpoint", "CheckpointError", "Checkpointer", "latest_checkpoint"]
