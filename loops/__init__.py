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
from loops.debug.check import CheckReport
from loops.trainer.checks import LabelShapeWarning, UnusedVariableWarning
from loops.checkpoint.store import Checkpoint, CheckpointError, latest_checkpoint
from loops.distributed import ProcessLost, data_parallel
from loops.debug.nans import NonFiniteError, NonFiniteReport
from loops._ops import clip_by_global_norm, global_norm
from loops.debug.retrace import RetraceWarning
from loops._seed import set_seed
from loops._cache import compilation_cache
from loops.trainer.trainer import OptimizerGroup, Trainer
from loops.debug.traps import FromLogitsWarning

__version__ = "0.1.0"

__all__ = [
    "CheckReport",
    "Checkpoint",
    "CheckpointError",
    "FromLogitsWarning",
    "LabelShapeWarning",
    "NonFiniteError",
    "NonFiniteReport",
    "OptimizerGroup",
    "ProcessLost",
    "RetraceWarning",
    "Trainer",
    "UnusedVariableWarning",
    "__version__",
    "clip_by_global_norm",
    "compilation_cache",
    "data_parallel",
    "global_norm",
    "latest_checkpoint",
    "optimizers",
    "set_seed",
]
