"""A ``torch.optim.Optimizer`` class as a ``keras.optimizers.Optimizer`` (torch only).

The adapter creates the torch optimizer over the torch parameters behind the
Keras variables it is built with, and keeps every tensor of the torch
optimizer's state (``exp_avg``, ``step``, ...) in a non-trainable
``keras.Variable``: the torch state tensor *is* the variable's storage (same
device) or is copied into it after every step, so ``optimizer.variables`` (and
any checkpoint of them) hold the state. Torch creates its state lazily at the
first step; the adapter learns its layout in ``build`` from one step on
throw-away copies of the parameters, and adopts the real tensors after the
first real step. Values assigned to the variables (a checkpoint restore,
also into a fresh adapter) reach torch before its next step.

Keras's ``apply`` runs around ``step()``, so ``clipnorm`` and friends,
``gradient_accumulation_steps``, ``use_ema`` and ``LossScaleOptimizer``
compose with it; the learning rate is Keras's (a float or a
``keras.optimizers.schedules`` schedule, settable by ``ReduceLROnPlateau``)
and is written into every param group before each step.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any, cast

import keras
import torch

from ..protocol import KERAS_OPTIONS


def _default_lr(optimizer_class: Any) -> Any:
    param = inspect.signature(optimizer_class).parameters.get("lr")
    if param is None or param.default is inspect.Parameter.empty:
        raise TypeError(f"{optimizer_class.__name__} has no default learning rate: pass lr=...")
    return param.default


class TorchOptimizer(keras.optimizers.Optimizer):
    """Runs ``optimizer_class`` (``torch.optim.Adam``, ...) as a Keras optimizer.

    Args:
        optimizer_class: a ``torch.optim.Optimizer`` subclass (not an instance:
            the adapter creates it over the variables it is built with).
        lr: a float or a ``keras.optimizers.schedules.LearningRateSchedule``
            (default: the class's default ``lr``).
        **kwargs: Keras optimizer options (``name``, ``clipnorm``, ``clipvalue``,
            ``global_clipnorm``, ``use_ema``, ``ema_momentum``,
            ``ema_overwrite_frequency``, ``loss_scale_factor``,
            ``gradient_accumulation_steps``); everything else goes to
            ``optimizer_class`` (``betas``, ``eps``, ``weight_decay``, ...).
    """

    def __init__(self, optimizer_class: Any, lr: Any = None, **kwargs: Any):
        if not (isinstance(optimizer_class, type) and issubclass(optimizer_class, torch.optim.Optimizer)):
            raise TypeError(
                f"TorchOptimizer needs a torch.optim.Optimizer subclass (e.g. torch.optim.Adam), got "
                f"{optimizer_class!r}.")
        if optimizer_class is torch.optim.LBFGS:
            raise TypeError("torch.optim.LBFGS needs a closure that re-evaluates the loss; it cannot run "
                            "behind optimizer.apply(grads). Use another optimizer.")
        keras_options = {k: kwargs.pop(k) for k in list(kwargs) if k in KERAS_OPTIONS}
        lr = _default_lr(optimizer_class) if lr is None else lr
        if isinstance(lr, (int, float)) and not isinstance(lr, bool):
            lr = float(lr)
        elif not isinstance(lr, keras.optimizers.schedules.LearningRateSchedule):
            raise TypeError(f"lr must be a float or a keras.optimizers.schedules.LearningRateSchedule, got {lr!r}.")
        super().__init__(learning_rate=lr, **keras_options)
        self.optimizer_class = cast(Any, optimizer_class)  # a torch.optim.Optimizer subclass
        self.torch_kwargs = kwargs
        # Unknown or bad torch arguments fail now, with torch's own message.
        self.optimizer_class([torch.zeros(1, requires_grad=True)], lr=0.1, **kwargs)
        self._torch: torch.optim.Optimizer | None = None
        self._params: list[torch.Tensor] = []
        self._slots: list[tuple[int, str, keras.Variable, torch.device]] = []
        self._linked = False

    def build(self, variables: Sequence[keras.Variable]) -> None:
        if self.built:
            return
        super().build(variables)
        self._params = [v.value for v in variables]
        lr = 0.1  # replaced by Keras's learning rate before every step
        self._torch = self.optimizer_class(self._params, lr=lr, **self.torch_kwargs)
        # The state layout, from one step on throw-away copies with zero gradients.
        copies = [p.detach().clone().requires_grad_(True) for p in self._params]
        probe = self.optimizer_class(copies, lr=lr, **self.torch_kwargs)
        for c in copies:
            c.grad = torch.zeros_like(c)
        with torch.no_grad():
            probe.step()
        slots = []
        for i, (c, v) in enumerate(zip(copies, variables)):
            for key in sorted(probe.state.get(c, {})):
                value = probe.state[c][key]
                if value is None:
                    continue
                if not torch.is_tensor(value):
                    raise TypeError(
                        f"{self.optimizer_class.__name__} keeps {key!r} in its state as "
                        f"{type(value).__name__}, not a tensor: it cannot be held in Keras variables.")
                var = self.add_variable(
                    shape=tuple(value.shape), dtype=str(value.dtype).replace("torch.", ""),
                    name=f"{v.path.replace('/', '_')}_{key}")
                slots.append((i, key, var, value.device))
        self._slots = slots
        # 1 once the variables hold a real state (after the first step, or a restore).
        self._has_state = self.add_variable(shape=(), dtype="int32", name="torch_state_initialized")

    def _before_step(self) -> None:
        """The variables are the truth (a checkpoint restore assigns them):
        hand their values to torch's state where it does not alias them."""
        assert self._torch is not None
        restored = self._linked or int(self._has_state.value) == 1
        for i, key, var, device in self._slots:
            state = self._torch.state[self._params[i]]
            tensor = state.get(key)
            if tensor is None:
                if restored:
                    value = var.value
                    state[key] = value if value.device == device else value.detach().to(device).clone()
            elif tensor is not var.value:
                tensor.copy_(var.value)

    def _after_step(self) -> None:
        """Makes the variables hold torch's state, aliasing it where device and dtype agree."""
        assert self._torch is not None
        for i, key, var, _ in self._slots:
            state = self._torch.state.get(self._params[i], {})
            tensor = state.get(key)
            if tensor is None or tensor is var.value:
                continue
            var.assign(tensor)
            if tensor.device == var.value.device and tensor.dtype == var.value.dtype:
                state[key] = var.value
        if not self._linked:
            self._has_state.assign(1)
            self._linked = True

    def _backend_update_step(self, grads: Sequence[Any], trainable_variables: Sequence[keras.Variable],
                             learning_rate: Any) -> None:
        opt = self._torch
        assert opt is not None, "build() runs before the first update"
        with torch.no_grad():
            self._before_step()
            lr = float(keras.ops.convert_to_numpy(learning_rate))
            for group in opt.param_groups:
                group["lr"] = lr
            params = [v.value for v in trainable_variables]
            for p, g in zip(params, grads):
                p.grad = g.detach().to(p.dtype)
            try:
                opt.step()
            finally:
                for p in params:
                    p.grad = None  # never leaks into another network's .grad
            self._after_step()
