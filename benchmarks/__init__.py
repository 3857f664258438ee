"""Speed benchmarks: ``loops.Trainer.fit`` against Keras ``model.fit`` and a
hand-written native loop, on each backend in its own process (see
``../shared/BENCHMARKS.md`` for the method). Run ``python -m benchmarks``.
"""
