"""Weights of every model a trainer owns: get/set, and atomic saving to files
that plain Keras loads (``.weights.h5`` for one model, ``.keras`` via ``save``)."""

from __future__ import annotations

import os
import tempfile
from typing import Any, Sequence

import keras
import numpy as np

from loops import distributed as _distributed


class WeightsMixin:
    """Mixed into ``Trainer``, which provides ``models`` and ``_sync``."""

    @property
    def models(self) -> list[keras.Layer]:
        raise NotImplementedError

    def _sync(self) -> None:
        raise NotImplementedError

    def _writes_files(self) -> bool:
        """Data parallel over processes: only the chief (process 0) writes."""
        return _distributed.current(self).is_chief

    def _models_or_raise(self, what: str) -> list[keras.Layer]:
        models = self.models
        if not models:
            raise ValueError(f"{what}: this Trainer holds no keras.Model. Pass Trainer(model, ...).")
        return models

    def get_weights(self) -> list[np.ndarray]:
        """Weights of every model the trainer owns, concatenated in order."""
        self._sync()
        return [w for m in self._models_or_raise("get_weights") for w in m.get_weights()]

    def set_weights(self, weights: Sequence[Any]) -> None:
        self._sync()
        models = self._models_or_raise("set_weights")
        expected = sum(len(m.weights) for m in models)
        if len(weights) != expected:
            raise ValueError(
                f"set_weights got {len(weights)} arrays, but the trainer's models have {expected} "
                "weights. Pass the list that get_weights() returns."
            )
        start = 0
        for m in models:
            m.set_weights(weights[start:start + len(m.weights)])
            start += len(m.weights)

    def _bundle(self) -> keras.Layer:
        models = self._models_or_raise("save_weights")
        if len(models) == 1:
            return models[0]  # the file then loads with plain model.load_weights
        bundle = keras.Model()
        for name, value in vars(self).items():
            if isinstance(value, keras.Layer):
                setattr(bundle, name, value)
        return bundle

    def save_weights(self, filepath: str | os.PathLike[str], overwrite: bool = True) -> None:
        """Saves every model's weights to one ``.weights.h5`` file, atomically."""
        path = os.fspath(filepath)
        if not path.endswith(".weights.h5"):
            raise ValueError(f"save_weights needs a path ending in '.weights.h5', got {path!r}.")
        if not overwrite and os.path.exists(path):
            raise FileExistsError(f"{path!r} exists; pass overwrite=True to replace it.")
        self._sync()
        if not self._writes_files():
            return
        target = self._bundle()
        directory = os.path.dirname(os.path.abspath(path))
        fd, tmp = tempfile.mkstemp(suffix=".weights.h5", dir=directory)
        os.close(fd)
        try:
            target.save_weights(tmp, overwrite=True)
            os.replace(tmp, path)  # atomic: readers see the old file or the new one
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)

    def load_weights(self, filepath: str | os.PathLike[str]) -> None:
        self._sync()
        self._bundle().load_weights(os.fspath(filepath))

    def save(self, filepath: str | os.PathLike[str], overwrite: bool = True) -> None:
        """Saves the (single) model as a ``.keras`` file (used by ModelCheckpoint)."""
        models = self._models_or_raise("save")
        if len(models) != 1:
            raise ValueError(
                f"save() writes one model, but this trainer holds {len(models)}. "
                "Use save_weights('all.weights.h5'), or save each model yourself."
            )
        self._sync()
        path = os.fspath(filepath)
        if not overwrite and os.path.exists(path):
            raise FileExistsError(f"{path!r} exists; pass overwrite=True to replace it.")
        if not self._writes_files():
            return
        directory = os.path.dirname(os.path.abspath(path))
        fd, tmp = tempfile.mkstemp(suffix=os.path.splitext(path)[1] or ".keras", dir=directory)
        os.close(fd)
        try:
            models[0].save(tmp, overwrite=True)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
