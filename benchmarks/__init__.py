"""Speed benchmarks: ``loops.Trainer.fit`` against Keras ``model.fit`` and a
hand-written native loop, on each backend in its own process (see
``../shared/BENCHMARKS.md`` for the method). Run ``python -m benchmarks``.
Also: ``python -m benchmarks.first_call`` (where the first ``fit`` call's time
goes, per phase), ``python -m benchmarks.workloads_real`` (a character GPT, an
LSTM and a ResNet-style CNN: throughput and peak RSS per arm),
``python -m benchmarks.short_runs`` (48-step fits of six small models, end to
end), ``python -m benchmarks.scaling`` (ms/step against batch size and width),
``python -m benchmarks.memory`` (peak host and device memory of fit, evaluate
and predict on 312.5 MiB of data) and ``python -m benchmarks.neutral_random``.
"""
