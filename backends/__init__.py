"""Engine modules behind one small protocol (see ``backends/_protocol.py``).

The engine is chosen by name from ``keras.backend.backend()``; its module is
imported only then, so a machine with a single engine installed works.

Example:
    >>> import backends
    >>> engine = backends.get()          # the module for KERAS_BACKEND
    >>> engine.NAME in backends.names()
    True
"""

from __future__ import annotations

import importlib
from types import ModuleType

__all__ = ["get", "names"]

# name -> module path; a fourth engine is one more line and one more file.
_REGISTRY: dict[str, str] = {
    "jax": "backends.jax",
    "tensorflow": "backends.tensorflow",
    "torch": "backends.torch",
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
