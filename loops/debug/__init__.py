"""Debugging: finding out why training misbehaves.

Owns: ``Trainer.check`` (``check.py``, a pre-flight report), gradient
statistics (``gradstats.py``), NaN/Inf tracing to the first layer that makes
one (``nans.py``), retrace warnings (``retrace.py``), loss-input traps such
as logits passed to a probability loss (``traps.py``), the layer and gradient
hooks they share (``hooks.py``), and the ``Trainer``'s debugging methods
(``diagnostics.py``).

May import: keras, numpy, ``loops.data`` (padding; ``check`` reads a batch
through ``make_source``). Never an engine directly.
"""
