"""The ``Trainer``: Keras's loop contract around steps written once.

Owns: ``Trainer`` (``trainer.py``) and the concerns it is assembled from:
``state.py`` (what it holds), ``steps.py`` (compiling steps), ``loop.py``
(``fit``/``evaluate``/``predict``, the loop top to bottom), ``execution.py``
(batches into executions, batch hooks), ``progress.py`` (epoch and step
bookkeeping, checkpoints and resume), ``weights.py`` and ``checks.py``
(argument and step validation).

May import: keras, numpy, ``loops.backends`` (the only way to an engine),
``loops.data``, ``loops.checkpoint``, ``loops.debug``, ``loops.distributed``,
``loops.optimizers``, ``loops._keras_private``. Nothing imports it but
``loops/__init__`` and the demo.
"""

from loops.trainer.trainer import OptimizerGroup, Trainer

__all__ = ["OptimizerGroup", "Trainer"]
