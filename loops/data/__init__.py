"""Data: what ``fit``/``evaluate``/``predict`` accept, as batches.

Owns: ``sources.py`` (``DataSource`` and its two kinds: ``ArraySource`` for
arrays, shuffled and split on the host; ``IterableSource`` for anything
iterable), ``adapters.py`` (``make_source``: NumPy and tensors, tf.data,
``keras.utils.PyDataset``, torch ``DataLoader``, generators; input-name and
finiteness checks), ``padding.py`` (the last partial batch padded to a fixed
shape, with the padding masked out of losses and metrics) and ``prefetch.py``
(a background thread that converts the next batches).

May import: keras, numpy, ``loops.backends`` (batch conversion only) and
``loops._keras_private``. Never the trainer.
"""
