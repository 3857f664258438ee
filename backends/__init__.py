"""Engine packages behind one small protocol (see ``protocol.py``).

Installed and imported as ``loops.backends`` (the repository keeps the folder
at top level, ``backends/``; setuptools maps it), so nothing with a generic
name lands in site-packages. Imports inside this package are relative.

Owns: everything that names an engine. ``jax/``, ``tensorflow/`` and
``torch/`` each build steps, move data and run data parallelism for their
engine (with its optimizer adapter and, on torch, graph capture). May import:
keras, numpy, its own engine, and ``loops._keras_private`` (the one module that
touches private Keras); nothing else of ``loops``.

The engine is chosen by name from ``keras.backend.backend()``; its package is
imported only then, so a machine with a single engine installed works.

Example:
    >>> from loops import backends
    >>> engine = backends.get()          # the package for KERAS_BACKEND
    >>> engine.NAME in backends.names()
    True
"""

from __future__ import annotations

import importlib
from types import ModuleType

__all__ = ["get", "names"]

# name -> module path; a fourth engine is one more line and one more file.
_REGISTRY: dict[str, str] = {
    "jax": "loops.backends.jax",
    "tensorflow": "loops.backends.tensorflow",
    "torch": "loops.backends.torch",
}


def names() -> list[str]:
    """The backend names this project implements."""
    return sorted(_REGISTRY)


def get(name: str | None = None) -> ModuleType:
    """Returns the backend module for ``name`` (default: Keras's current backend).

    Raises:
        ValueError: ``name`` is not a registered backend; the message lists them.
    """
    if name is None:
        import keras

        name = keras.backend.backend()
    if name not in _REGISTRY:
        raise ValueError(
            f"loops has no backend named {name!r}. Valid names: {names()}. "
            "Set KERAS_BACKEND to one of them before importing keras."
        )
    return importlib.import_module(_REGISTRY[name])
