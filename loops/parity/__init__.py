"""Cross-backend parity tool.

Command line::

    python -m loops.parity my_models:mlp_case --backends jax,tensorflow,torch --steps 20

Python::

    from loops.parity import compare
    report = compare("my_models:mlp_case", ["jax", "torch"], steps=20)
    print(report.format())

The factory (``"module:function"``) returns a ``ParityCase(trainer, batches)``.
Exit status: 0 when the backends agree, 1 when they diverge, 2 on bad usage.

Owns: the parity tool (``tool.py``: each backend in its own process, the
per-step comparison, the report), the hints for known divergence sources
(``checks.py``) and backend-neutral random numbers (``neutral_random.py``).
May import: keras, numpy, the public ``loops`` API. Never an engine.
"""

from __future__ import annotations

import argparse
import sys

from loops.parity.neutral_random import ParityDropout, neutral_uniform
from loops.parity.tool import (DEFAULT_BACKENDS, DEFAULT_RTOL, DEFAULT_WEIGHT_RTOL, Divergence, ParityCase,
                           ParityReport, _save_run, compare, compare_runs, run_backend)
from loops.parity.checks import known_divergence_sources

__all__ = ["Divergence", "ParityCase", "ParityDropout", "ParityReport", "compare", "compare_runs",
           "known_divergence_sources", "main", "neutral_uniform", "run_backend"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loops.parity", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("factory", help="'module:function' returning a loops.parity.ParityCase")
    parser.add_argument("--backends", default=",".join(DEFAULT_BACKENDS), help="comma-separated; first is reference")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--rtol", type=float, default=DEFAULT_RTOL, help="tolerance on per-step logs")
    parser.add_argument("--weight-rtol", type=float, default=DEFAULT_WEIGHT_RTOL,
                        help="tolerance on per-layer weight differences")
    parser.add_argument("--weights", default=None, help="start from this .weights.h5 (written if absent)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--write-weights", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--out", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    names = [b.strip() for b in args.backends.split(",") if b.strip()]
    if args.steps < 1:
        parser.error(f"--steps must be positive, got {args.steps}")
    if args.worker:  # one backend, in this process (KERAS_BACKEND set by the parent)
        run = run_backend(args.factory, args.steps, args.weights, args.write_weights, names)
        _save_run(run, args.out)
        return 0
    print(f"[parity] {args.factory}: {args.steps} steps on {', '.join(names)}", file=sys.stderr, flush=True)
    report = compare(args.factory, names, args.steps, args.rtol, args.weight_rtol, args.weights)
    print(report.format())
    return 0 if report.ok else 1

