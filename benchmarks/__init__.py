"""Speed benchmarks: ``loops.Trainer.fit`` against Keras ``model.fit`` and a
hand-written native loop, on each backend in its own process (see
``../shared/BENCHMARKS.md`` for the method). Run ``python -m benchmarks``.
Also: ``python -m benchmarks.first_call`` (where the first ``fit`` call's time
goes, per phase), ``python -m benchmarks.workloads_real`` (a character GPT, an
LSTM and a ResNet-style CNN: throughput and peak RSS per arm) and
``python -m benchmarks.neutral_random``.
"""
