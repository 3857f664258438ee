"""NaN provenance: ``Trainer(..., debug_nans=True)``.

Inside the compiled step, every ``value_and_grad`` call folds "is the loss and
every gradient finite?" into a trainer-owned flag variable (a few reductions,
threaded through jit like any state). Around each training call the loop's
step function is wrapped (``guard``) so that it

1. copies the state (every variable the trainer owns) before the step,
2. runs the compiled step as usual,
3. reads the flag: one host sync per step.

On the first non-finite value it puts the state back as it was before the
step, replays that step eagerly with every layer call and every gradient
watched (``loops/debug/hooks.py``), and raises ``NonFiniteError``. Its report names
where the first non-finite value appears: in the batch itself, in the forward
pass (the first layer whose output is not finite while its inputs were), in
the loss, or in the backward pass (the variable whose gradient backprop makes
non-finite first, i.e. the latest in forward order among those with
non-finite gradients). The report keeps the batch and the state before the
step (``report.save(path)`` writes both), and the trainer is left in that
state.

Costs, only when on: a device copy of the whole state and a host sync per
step (no asynchronous dispatch across steps), so expect a slower run; off by
default, the compiled step is unchanged.

Compiled and eager numerics can differ: tensorflow's fused
matmul+bias+relu kernel turns a NaN input into 0, so under ``tf.function`` a
NaN can leave the loss finite while the gradients (checked too) are not. The
eager replay shows the NaN where it first appears; if the replay stays finite
the report says so and keeps the batch and state for a closer look.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import keras
import numpy as np

from loops.data import padding as _padding
from loops.debug.hooks import Recorder


class NonFiniteError(FloatingPointError):
    """Training hit a NaN or Inf (``Trainer(debug_nans=True)``); ``.report``
    says where it first appears and holds the batch and the state before the step."""

    def __init__(self, report: NonFiniteReport):
        super().__init__(str(report))
        self.report = report


@dataclasses.dataclass
class NonFiniteReport:
    """Where a non-finite value first appeared in a training step.

    Attributes:
        step: index of the training step (batch), counted from 0 over this trainer's life.
        where: ``"input"``, ``"forward"``, ``"loss"``, ``"backward"`` or ``"not reproduced"``.
        layer: the layer whose output first went non-finite (forward), else None.
        variable: the variable whose gradient first went non-finite (backward), else None.
        message: a sentence saying all of it, with the fix to look for.
        nonfinite_gradients: paths of every variable with a non-finite gradient in the replay.
        batch: the batch the step got, as NumPy arrays.
        state: every variable's value before the step, by path.
    """

    step: int
    where: str
    layer: str | None
    variable: str | None
    message: str
    nonfinite_gradients: list[str]
    batch: Any
    state: dict[str, np.ndarray]

    def __str__(self) -> str:
        return self.message

    def save(self, path: str) -> str:
        """Writes the batch and the state before the step to ``path`` (``.npz``)."""
        arrays = {f"state/{name}": value for name, value in self.state.items()}
        for i, leaf in enumerate(keras.tree.flatten(self.batch)):
            if leaf is not None:
                arrays[f"batch/{i}"] = np.asarray(leaf)
        np.savez(path, **arrays)  # type: ignore[arg-type]
        return path


def _host(tree: Any) -> Any:
    return keras.tree.map_structure(lambda t: None if t is None else np.asarray(keras.ops.convert_to_numpy(t)), tree)


def _state_by_path(variables: list[Any], values: list[Any]) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    for v, value in zip(variables, values):
        name = v.path if v.path not in out else f"{v.path}#{len(out)}"
        out[name] = np.asarray(keras.ops.convert_to_numpy(value))
    return out


def _describe_layer(layer: Any) -> str:
    return f"{layer.name!r} ({type(layer).__name__})"


def _nonfinite_inputs(batch: Any) -> list[str]:
    from loops.data import padding as _padding

    data, _ = _padding.unwrap(batch)
    x, y, sw = keras.utils.unpack_x_y_sample_weight(data) if isinstance(data, tuple) else (data, None, None)
    found = []
    for name, part in (("x", x), ("y", y), ("sample_weight", sw)):
        for i, leaf in enumerate(keras.tree.flatten(part) if part is not None else []):
            arr = np.asarray(leaf)
            if arr.dtype.kind == "f" and not np.all(np.isfinite(arr)):
                rows = np.nonzero(~np.all(np.isfinite(arr.reshape(len(arr), -1)), axis=1))[0][:5].tolist()
                found.append(f"{name}{'' if i == 0 and not keras.tree.is_nested(part) else f'[{i}]'} (rows {rows})")
    return found


def _diagnose(rec: Recorder, host_batch: Any, step: int) -> tuple[str, str | None, str | None, str, list[str]]:
    """``(where, layer, variable, message, nonfinite gradient paths)`` from a replay's records."""
    bad_grads: list[tuple[int, Any]] = []
    order: dict[int, int] = {}
    for gs in rec.gradient_sets:
        for v, fin in zip(gs.variables, gs.finite):
            order.setdefault(id(v), len(order))
            if not fin and all(id(v) != id(u) for _, u in bad_grads):
                bad_grads.append((order[id(v)], v))
    paths = [v.path for _, v in bad_grads]
    head = f"Training step {step} produced a non-finite value"
    inputs = _nonfinite_inputs(host_batch)
    if inputs:
        return ("input", None, None,
                f"{head}: the batch itself holds NaN/Inf in {', '.join(inputs)}. Clean or impute the data; "
                "fit(..., check_inputs=True) rejects such batches as they arrive.", paths)
    for call in rec.layer_calls:
        if not call.outputs_finite:
            if call.inputs_finite:
                return ("forward", call.layer.name, None,
                        f"{head}: in the forward pass, layer {_describe_layer(call.layer)} returned NaN/Inf "
                        f"(output shape {call.output_shapes[0] if call.output_shapes else '?'}) from finite "
                        "inputs. Look there for log/sqrt/division of zero or negative values, an overflowing "
                        "exp, or a weight that blew up (the state before the step is in the report).", paths)
            return ("forward", call.layer.name, None,
                    f"{head}: layer {_describe_layer(call.layer)} is the first to return NaN/Inf, and its "
                    "inputs were already non-finite (computed outside any layer, in the step itself).", paths)
    bad_loss = [gs for gs in rec.gradient_sets if not np.isfinite(gs.loss)]
    if bad_loss or (rec.losses and not all(np.isfinite(rec.losses))):
        return ("loss", None, None,
                f"{head}: every layer's output is finite but the loss is not. Look at the loss function: "
                "log of 0 or of a negative value (probabilities fed where logits are expected, or the "
                "reverse), a division by zero, or labels out of range.", paths)
    if bad_grads:
        _, first = max(bad_grads, key=lambda item: item[0])  # latest in forward order: reached first by backprop
        others = f" ({len(paths) - 1} more: {', '.join(p for p in paths if p != first.path)[:300]})" \
            if len(paths) > 1 else ""
        return ("backward", None, first.path,
                f"{head}: the forward pass and the loss are finite, but in the backward pass the gradient of "
                f"variable {first.path!r} {tuple(first.shape)} is the first non-finite one{others}. Look at "
                "what consumes that variable, or the layer after it: the derivative of sqrt at 0, of log "
                "near 0, or of a clipped/abs op, and a gradient that overflows.", paths)
    return ("not reproduced", None, None,
            f"{head} in the compiled step, but the eager replay of that step stays finite: the compiled "
            "kernels differ (XLA or fused tensorflow kernels, e.g. matmul+bias+relu maps NaN to 0). The "
            "batch and the state before the step are in the report (report.save(path)).", paths)


class _Guard:
    """The training step function, wrapped to stop at the first non-finite value."""

    def __init__(self, trainer: Any, compiled: Callable[[Any], Any], step: Callable[[Any], Any],
                 executes_many: bool):
        self.trainer = trainer
        self.compiled = compiled
        self.step = step
        self.executes_many = executes_many

    def _snapshot(self) -> list[Any]:
        return [keras.ops.copy(v.value) for v in self.trainer._state]

    def _restore(self, values: list[Any]) -> None:
        for v, value in zip(self.trainer._state, values):
            v.assign(value)

    def _flag(self) -> bool:
        return bool(keras.ops.convert_to_numpy(self.trainer._nan_flag.value) > 0)

    def __call__(self, batch: Any) -> Any:
        t = self.trainer
        t._sync()  # jax: the variables hold the state, so it can be copied and the flag reset
        saved = self._snapshot()
        t._nan_flag.assign(0.0)
        out = self.compiled(batch)
        t._sync()
        first = t.__dict__.get("_nan_steps", 0)
        batches = _padding.unstack(batch) if self.executes_many else (batch,)
        t._nan_steps = first + len(batches)
        if self._flag():
            self._replay(batches, saved, first)
        return out

    def _replay(self, batches: tuple[Any, ...], saved: list[Any], first: int) -> None:
        t = self.trainer
        self._restore(saved)
        for i, batch in enumerate(batches):
            before = self._snapshot()
            t._nan_flag.assign(0.0)
            rec = Recorder(t._engine)
            try:
                with rec.installed(t), t._engine.step_context():
                    self.step(batch)
                tripped = self._flag()
            except BaseException:
                self._restore(before)
                raise
            if tripped or i == len(batches) - 1:
                self._restore(before)
                host = _host(batch)
                where, layer, variable, message, paths = _diagnose(rec, host, first + i)
                t._nan_flag.assign(0.0)
                raise NonFiniteError(NonFiniteReport(
                    step=first + i, where=where, layer=layer, variable=variable, message=message,
                    nonfinite_gradients=paths, batch=host, state=_state_by_path(t._state, before)))


def guard(trainer: Any, kind: str, compiled: Callable[[Any], Any], step: Callable[[Any], Any],
          executes_many: bool) -> Callable[[Any], Any]:
    """``compiled`` itself, or with ``debug_nans=True`` a training step that
    stops at the first non-finite loss or gradient (see the module docstring)."""
    if kind != "train" or getattr(trainer, "_nan_flag", None) is None:
        return compiled
    return _Guard(trainer, compiled, step, executes_many)


__all__ = ["NonFiniteError", "NonFiniteReport", "guard"]
