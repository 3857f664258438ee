"""loops: one Keras 3 training loop, run on JAX, TensorFlow or PyTorch.

Example:
    >>> import keras
    >>> from loops import Trainer
    >>> trainer = Trainer(model, optimizer="adam",
    ...                   loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    ...                   metrics=["accuracy"])
    >>> trainer.fit(x, y, epochs=3)
"""

from loops._ops import clip_by_global_norm, global_norm
from loops._trainer import Trainer

__version__ = "0.1.0"

__all__ = ["Trainer", "clip_by_global_norm", "global_norm", "__version__"]
