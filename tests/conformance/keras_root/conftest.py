"""Stands in for the ``conftest.py`` at the root of Keras's repository (not
shipped in the wheel), which some of Keras's test files import by name."""

import keras
import pytest


def skip_if_backend(given_backends, reason):
    return pytest.mark.skipif(keras.backend.backend() in given_backends, reason=reason)
