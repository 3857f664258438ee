"""The one place that imports private ``keras.src`` APIs.

Keras keeps ``compile()``'s loss and metric containers private; using them
gives string aliases, multi-output structures, ``loss_weights`` and the
``"accuracy"`` alias resolution exactly as ``model.compile`` does.
``tests/test_keras_private.py`` fails loudly if they move.
"""

from __future__ import annotations

from keras.src.trainers.compile_utils import CompileLoss, CompileMetrics

__all__ = ["CompileLoss", "CompileMetrics"]
