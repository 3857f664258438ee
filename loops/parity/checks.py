"""Known sources of cross-backend divergence, found by inspecting a trainer.

Each finding is a sentence naming the object and the fix; the parity tool
prints them before it runs, so a difference it then reports is not a surprise.
"""

from __future__ import annotations

from typing import Any, Iterator

import keras

_PROBABILISTIC = ("categorical_crossentropy", "binary_crossentropy", "sparse_categorical_crossentropy",
                  "categorical_focal_crossentropy", "binary_focal_crossentropy")


def _layers(layer: Any, seen: set[int]) -> Iterator[Any]:
    """``layer`` and every layer reachable through its attributes."""
    if id(layer) in seen:
        return
    seen.add(id(layer))
    yield layer
    for value in vars(layer).values():
        items = value if isinstance(value, (list, tuple)) else [value]
        for item in items:
            if isinstance(item, keras.Layer):
                yield from _layers(item, seen)


def _rng_findings(trainer: Any) -> list[str]:
    found = []
    seen: set[int] = set()
    for model in trainer.models:
        for layer in _layers(model, seen):
            if any(isinstance(v, keras.random.SeedGenerator) for v in vars(layer).values()):
                found.append(
                    f"layer {layer.name!r} ({type(layer).__name__}) draws from the backend's RNG: the same "
                    "seed gives different numbers on each backend. Use loops.parity.ParityDropout, or "
                    "noise generated on the host and passed in the batch.")
    for name, value in vars(trainer).items():
        if isinstance(value, keras.random.SeedGenerator):
            found.append(
                f"trainer.{name} is a SeedGenerator: keras.random draws differ per backend. Generate the "
                "noise with NumPy and pass it in the batch, or use loops.parity.neutral_uniform.")
    return found


def _loss_leaves(trainer: Any) -> list[Any]:
    compile_loss = getattr(trainer, "_compile_loss", None)
    user_loss = getattr(compile_loss, "_user_loss", None)  # what was passed to Trainer(loss=...)
    return [] if user_loss is None else keras.tree.flatten(user_loss)


def _loss_findings(trainer: Any) -> list[str]:
    found = []
    for loss in _loss_leaves(trainer):
        if isinstance(loss, str):
            name, from_logits = loss, False
        else:
            config = loss.get_config() if hasattr(loss, "get_config") else {}
            name = str(getattr(getattr(loss, "fn", None), "__name__", None) or getattr(loss, "__name__", ""))
            from_logits = bool(config.get("from_logits", False))
        if name in _PROBABILISTIC and not from_logits:
            found.append(
                f"loss {name} with from_logits=False: on a softmax/sigmoid output tensorflow reuses the "
                "pre-activation logits while jax and torch clip probabilities (60.0 vs 16.1 on a saturated "
                "output). Make the last layer return logits and pass from_logits=True.")
    return found


def _jit_findings(trainer: Any, backend_names: list[str]) -> list[str]:
    jit = getattr(trainer, "jit_compile", "auto")
    if jit != "auto" or len(backend_names) < 2:
        return []
    return [
        "jit_compile='auto' compiles with XLA on jax, not on tensorflow (CPU) nor torch: fused XLA "
        "kernels round differently, so differences of about 1e-6 relative per step are expected. "
        "Pass jit_compile=True (or False) to the Trainer to compare like with like."]


def known_divergence_sources(trainer: Any, backend_names: list[str] | None = None) -> list[str]:
    """Sentences naming what in ``trainer`` is known to differ across backends.

    Args:
        trainer: a ``loops.Trainer`` (its models, loss and seed generators are read).
        backend_names: the backends about to be compared (for the XLA note).

    Returns:
        One sentence per finding; empty when nothing known is found.

    Example:
        >>> for line in known_divergence_sources(trainer, ["jax", "torch"]):
        ...     print("warning:", line)
    """
    return (_loss_findings(trainer) + _rng_findings(trainer)
            + _jit_findings(trainer, list(backend_names or [])))
