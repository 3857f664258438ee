"""Command line: ``python -m loops demo [--backend all|jax|tensorflow|torch]``."""

from __future__ import annotations

import argparse
import os
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loops", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="train the classic MLP on scikit-learn's digits and compare backends")
    demo.add_argument("--backend", default="all",
                      help="jax, tensorflow, torch, or all (each in its own process); default: all")
    demo.add_argument("--epochs", type=int, default=30)
    demo.add_argument("--verbose", type=int, default=2, choices=[0, 1, 2])
    args = parser.parse_args(argv)
    if args.command == "demo":
        if args.backend != "all":
            # The backend is fixed when keras is imported: set it before that.
            os.environ.setdefault("KERAS_BACKEND", args.backend)
        from loops._demo import main as demo_main

        return demo_main(args.backend, args.epochs, args.verbose)
    return 2


if __name__ == "__main__":
    sys.exit(main())
