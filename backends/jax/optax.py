"""An ``optax.GradientTransformation`` as a ``keras.optimizers.Optimizer`` (jax only).

The transformation's state lives in non-trainable ``keras.Variable`` objects
(one per leaf of the optax state, created in ``build``), so the Trainer's
variable discovery threads it through ``jax.jit`` and checkpoints of
``optimizer.variables`` hold it. Keras's own ``apply`` machinery runs around
the update, so ``clipnorm``/``global_clipnorm``/``clipvalue``,
``gradient_accumulation_steps``, ``use_ema`` and ``LossScaleOptimizer``
compose with it exactly as with a Keras optimizer.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import keras
import numpy as np

from ..protocol import KERAS_OPTIONS


def is_transformation(obj: Any) -> bool:
    """Duck-typed ``optax.GradientTransformation`` (a named tuple of ``init`` and ``update``)."""
    return (not isinstance(obj, keras.optimizers.Optimizer) and callable(getattr(obj, "init", None))
            and callable(getattr(obj, "update", None)))


def _is_learning_rate(path: Sequence[Any]) -> bool:
    # optax.inject_hyperparams keeps hyperparameters in `state.hyperparams[name]`.
    keys = [getattr(k, "name", getattr(k, "key", None)) for k in path]
    return len(keys) >= 2 and keys[-2] == "hyperparams" and keys[-1] == "learning_rate"


class OptaxOptimizer(keras.optimizers.Optimizer):
    """Runs ``transformation`` as a Keras optimizer; see the module docstring.

    Args:
        transformation: an ``optax.GradientTransformation`` (``optax.adam(1e-3)``,
            a ``optax.chain(...)``, ...). Its ``update`` is called as
            ``update(grads, state, params)``.
        **options: Keras optimizer options: ``name``, ``clipnorm``,
            ``clipvalue``, ``global_clipnorm``, ``use_ema``, ``ema_momentum``,
            ``ema_overwrite_frequency``, ``loss_scale_factor``,
            ``gradient_accumulation_steps``.

    The learning rate belongs to the transformation. Wrap it with
    ``optax.inject_hyperparams`` to make ``optimizer.learning_rate`` readable and
    settable (``ReduceLROnPlateau`` then works); otherwise reading it outside
    ``apply`` raises ``AttributeError``.
    """

    def __init__(self, transformation: Any, **options: Any):
        unknown = sorted(set(options) - set(KERAS_OPTIONS))
        if unknown:
            raise TypeError(
                f"Unknown option(s) {unknown} for an optax optimizer. Keras options accepted here: "
                f"{list(KERAS_OPTIONS)}; hyperparameters (learning rate, eps, weight decay) go into the "
                "optax transformation itself, e.g. optax.adamw(1e-3, weight_decay=1e-4).")
        if not is_transformation(transformation):
            raise TypeError(
                f"OptaxOptimizer needs an optax.GradientTransformation (with init and update), got "
                f"{type(transformation).__name__}.")
        super().__init__(learning_rate=0.0, **options)
        self.transformation = transformation
        self._treedef: Any = None
        self._state_variables: list[keras.Variable] = []
        self._lr_index: int | None = None
        self._applying = False

    # ----------------------------------------------------------------- state

    def build(self, variables: Sequence[keras.Variable]) -> None:
        if self.built:
            return
        super().build(variables)
        state = self.transformation.init([v.value for v in variables])
        leaves, self._treedef = jax.tree_util.tree_flatten_with_path(state)
        state_variables = []
        for i, (path, leaf) in enumerate(leaves):
            array = np.asarray(leaf)
            state_variables.append(self.add_variable(
                shape=array.shape, dtype=str(array.dtype), name=f"optax_state_{i}",
                initializer=lambda shape, dtype, a=array: jnp.asarray(a, dtype=dtype)))
            if _is_learning_rate(path):
                self._lr_index = i
        self._state_variables = state_variables

    def _backend_update_step(self, grads: Sequence[Any], trainable_variables: Sequence[keras.Variable],
                             learning_rate: Any) -> None:
        del learning_rate  # the transformation holds its own
        built = self._trainable_variables
        params = [v.value for v in built]
        # Keras filters out variables without a gradient; optax wants the whole tree.
        full: list[Any] = [jnp.zeros_like(p) for p in params]
        updated = set()
        for g, v in zip(grads, trainable_variables):
            i = self._get_variable_index(v)
            full[i] = g
            updated.add(i)
        state = jax.tree_util.tree_unflatten(self._treedef, [s.value for s in self._state_variables])
        updates, new_state = self.transformation.update(full, state, params)
        for i, (v, p, u) in enumerate(zip(built, params, updates)):
            if i in updated:
                v.assign(jnp.asarray(p + u, dtype=p.dtype))  # optax.apply_updates
        for s, leaf in zip(self._state_variables, jax.tree_util.tree_leaves(new_state)):
            s.assign(leaf)

    def apply(self, grads: Sequence[Any], trainable_variables: Sequence[keras.Variable] | None = None) -> Any:
        self._applying = True
        try:
            return super().apply(grads, trainable_variables)
        finally:
            self._applying = False

    # --------------------------------------------------------- learning rate

    @property
    def learning_rate(self) -> Any:
        if self._lr_index is not None:
            return self._state_variables[self._lr_index]
        if self._applying:
            return self._learning_rate  # an unused placeholder Keras's apply passes along
        raise AttributeError(
            "This optax optimizer's learning rate lives inside the transformation. Build it with "
            "optax.inject_hyperparams (e.g. optax.inject_hyperparams(optax.adam)(learning_rate=1e-3)) "
            "to read and set it (ReduceLROnPlateau needs that), or use an optax schedule.")

    @learning_rate.setter
    def learning_rate(self, value: Any) -> None:
        if self._lr_index is None:
            raise TypeError(
                "Cannot set the learning rate of an optax transformation that does not expose it: build it "
                "with optax.inject_hyperparams(optax.adam)(learning_rate=...) (and build the optimizer) first.")
        self._state_variables[self._lr_index].assign(value)
