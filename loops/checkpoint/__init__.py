"""Checkpoints: exact, atomic, pickle-free.

Owns: ``Checkpoint`` (what a checkpoint directory holds), ``Checkpointer``
(writing and pruning during ``fit``), ``latest_checkpoint``. Files are
written to a temporary name and renamed; the state is ``.npz`` arrays and
JSON, never pickle.

May import: keras, numpy. Never the trainer or an engine.
"""

from loops.checkpoint.store import Checkpoint, CheckpointError, Checkpointer, latest_checkpoint

__all__ = ["Checkpoint", "CheckpointError", "Checkpointer", "latest_checkpoint"]
