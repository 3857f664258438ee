"""pytest plugin: Keras's own trainer and callback tests, run against ``loops.Trainer``.

Loaded with ``-p tests.conformance.plugin`` (``scripts/keras_conformance.sh``
does it), it routes what a user swaps when they move from Keras's loop to ours:

    model.compile(opt, loss, metrics, ...)   ->  trainer = loops.Trainer(model, opt, loss, metrics, ...)
    model.fit / evaluate / predict / *_on_batch(...)  ->  trainer.fit / ... (same arguments)

Keras's test files run unchanged. After ``compile`` the model's own
compile-time attributes (``optimizer``, ``metrics``' containers,
``stop_training``) are the Trainer's objects, so a test that reads them after
``fit`` reads what the Trainer trained: a user who swapped reads them from the
trainer. Callbacks see the Trainer as ``self.model``, as they do for users.

Tests that cannot apply are skipped with their reason from ``skips.py``.
"""

from __future__ import annotations

import os
import sys
import threading

import keras
import pytest
from keras.src.trainers import trainer as _keras_trainer

import loops

from tests.conformance import skips

# Keras's test files import helpers from the conftest.py at their repo's root.
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "keras_root"))


_inside = threading.local()


def _routed_compile(self, optimizer="rmsprop", loss=None, loss_weights=None, metrics=None, weighted_metrics=None,
                    run_eagerly=False, steps_per_execution=1, jit_compile="auto", auto_scale_loss=True):
    # loops.Trainer leaves model.compile's state on the model itself (the
    # optimizer, the compiled loss and metrics, the compile config).
    trainer = loops.Trainer(self, optimizer, loss, metrics, loss_weights=loss_weights,
                            weighted_metrics=weighted_metrics, run_eagerly=run_eagerly,
                            steps_per_execution=steps_per_execution, jit_compile=jit_compile,
                            auto_scale_loss=auto_scale_loss)
    object.__setattr__(self, "_loops_trainer", trainer)


def _trainer_of(model, what):
    trainer = model.__dict__.get("_loops_trainer")
    if trainer is None and what in ("predict", "predict_on_batch"):
        trainer = loops.Trainer(model)  # predicting needs no compile(), in Keras as here
        object.__setattr__(model, "_loops_trainer", trainer)
    if trainer is None:
        raise ValueError(f"You must call `compile()` before using the model ({what}).")
    return trainer


def _route(name):
    def method(self, *args, **kwargs):
        return getattr(_trainer_of(self, name), name)(*args, **kwargs)

    method.__name__ = name
    return method


_ROUTED = ("fit", "evaluate", "predict", "train_on_batch", "test_on_batch", "predict_on_batch")


def _install():
    backend_trainer = type(keras.Model).__mro__  # noqa: F841 (documentation: Model's MRO holds the backend trainer)
    classes = {_keras_trainer.Trainer}
    classes.update(c for c in keras.Model.__mro__ if issubclass(c, _keras_trainer.Trainer))
    _keras_trainer.Trainer.compile = _routed_compile
    for cls in classes:
        for name in _ROUTED:
            if name in vars(cls):
                setattr(cls, name, _route(name))


_install()


def pytest_collection_modifyitems(config, items):
    backend = keras.backend.backend()
    for item in items:
        reason = skips.reason(str(item.path), item.nodeid.split("::", 1)[-1], backend)
        if reason:
            item.add_marker(pytest.mark.skip(reason=f"does not apply to loops.Trainer: {reason}"))


def pytest_report_header(config):
    return (f"Keras conformance: keras {keras.__version__} tests routed to loops.Trainer "
            f"(backend {keras.backend.backend()}, {os.path.dirname(keras.__file__)})")


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    skipped = terminalreporter.stats.get("skipped", [])
    ours = sum(1 for r in skipped if "does not apply to loops.Trainer" in str(getattr(r, "longrepr", "")))
    terminalreporter.write_line(
        f"Keras conformance on {keras.backend.backend()}: "
        f"{len(terminalreporter.stats.get('passed', []))} passed, "
        f"{len(terminalreporter.stats.get('failed', []))} failed, {ours} skipped as not applicable "
        f"(tests/conformance/skips.py), {len(skipped) - ours} skipped by Keras itself for this backend")
