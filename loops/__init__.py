"""loops: one Keras 3 training loop, run on JAX, TensorFlow or PyTorch.

Example:
    >>> import keras
    >>> from loops import Trainer
    >>> trainer = Trainer(model, optimizer="adam",
    ...                   loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    ...                   metrics=["accuracy"])
    >>> trainer.fit(x, y, epochs=3)
"""

from loops import optimizers
from loops._checkpoint import Checkpoint, CheckpointError, latest_checkpoint
from loops._ops import clip_by_global_norm, global_norm
from loops._seed import set_seed
from loops._trainer import OptimizerGroup, Trainer

__version__ = "0.1.0"

__all__ = [
    "Checkpoint",
    "CheckpointError",
    "OptimizerGroup",
    "Trainer",
    "__version__",
    "clip_by_global_norm",
    "global_norm",
    "latest_checkpoint",
    "optimizers",
    "set_seed",
]
