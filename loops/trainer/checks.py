"""Checks that turn silent mistakes into errors that name the value and the fix.

They run once, in the first step of each kind (eager, or on jax traced, see
``Trainer._first_step``), never per step.
"""

from __future__ import annotations

import warnings
from typing import Any, Sequence

import keras


def _shape(t: Any) -> tuple[int | None, ...]:
    return tuple(keras.ops.shape(t))


def _loss_name(loss: Any) -> str:
    return getattr(loss, "name", None) or getattr(loss, "__name__", None) or type(loss).__name__


def _is_sparse(loss: Any) -> bool:
    fn = getattr(loss, "fn", loss)
    names = (_loss_name(loss), getattr(fn, "__name__", ""), type(loss).__name__)
    return any("sparse" in n.lower() for n in names)


def loss_shape_problems(compile_loss: Any, y: Any, y_pred: Any) -> list[str]:
    """Where labels do not match the output their (Keras) loss compares them
    to: a message naming both shapes and the fix, per mismatch.

    ``Trainer.compute_loss`` raises it when the loss then fails (in place of
    the engine's error) and warns with it when Keras's loss broadcasts the
    mismatch (labels ``(n, 1)`` against an output ``(n, 10)`` under MSE):
    Keras trains that, and so does the Trainer. A user's loss function is
    not judged: its shapes are its own.
    """
    from loops._keras_private import keras_own

    problems: list[str] = []
    flat_losses = getattr(compile_loss, "_flat_losses", None) or []
    for path, loss_fn, _, output_name in flat_losses:
        if not keras_own(loss_fn):
            continue
        try:
            y_t, y_p = y, y_pred
            for key in path:
                y_t, y_p = y_t[key], y_p[key]
        except (KeyError, IndexError, TypeError):
            continue  # structure handled by Keras's own error
        if y_t is None or y_p is None or keras.tree.is_nested(y_t) or keras.tree.is_nested(y_p):
            continue
        st, sp = _shape(y_t), _shape(y_p)
        # (one output: Keras names the entry after the loss, not the output)
        output = ("the model output" if not path else f"model output {output_name!r}" if output_name
                  else f"model output {'.'.join(map(str, path))!r}")
        if _is_sparse(loss_fn):
            ok = st == sp[:-1] or st == sp[:-1] + (1,)
            fix = (f"sparse losses take integer class ids of shape {sp[:-1]}; for one-hot labels "
                   "use the non-sparse loss (e.g. CategoricalCrossentropy)")
        else:
            squeeze = lambda s: s[:-1] if len(s) > 1 and s[-1] == 1 else s
            ok = squeeze(st) == squeeze(sp)
            fix = (f"labels must have the output's shape {sp}; for integer class ids use a sparse "
                   "loss (e.g. SparseCategoricalCrossentropy), or change the output layer's width")
        if not ok:
            problems.append(f"Loss {_loss_name(loss_fn)!r} cannot compare labels of shape {st} with "
                            f"{output} of shape {sp}: {fix}.")
    return problems


class LabelShapeWarning(UserWarning):
    """Labels and an output differ in shape, and Keras's loss broadcasts them
    (training goes on, as ``model.fit``'s would): most often a mistake."""


def shape_checked_loss(compile_loss: Any, y: Any, y_pred: Any, sample_weight: Any, problems: list[str]) -> Any:
    """``compile_loss(y, y_pred, sample_weight)``; with ``loss_shape_problems``:
    the first one as the error where the loss fails, as a warning where
    Keras's loss computes a value (Keras trains it)."""
    if not problems:
        return compile_loss(y, y_pred, sample_weight)
    try:
        loss = compile_loss(y, y_pred, sample_weight)
    except Exception as e:
        raise ValueError(problems[0]) from e
    for problem in problems:
        warnings.warn(f"{problem} Keras's loss broadcasts these shapes, so training goes on as model.fit's "
                      "would, but this is most often a mistake.", LabelShapeWarning, stacklevel=2)
    return loss


def check_scalar_loss(loss: Any) -> None:
    shape = _shape(loss)
    if len(shape) != 0:
        raise ValueError(
            f"The function given to value_and_grad must return a scalar loss, got shape {shape}. "
            "Reduce it first, e.g. keras.ops.mean(loss)."
        )


class UnusedVariableWarning(UserWarning):
    """Some trainable variables get no gradient from the loss (they are left
    as they are, as Keras's ``fit`` leaves them)."""


def check_no_gradient(variables: Sequence[keras.Variable], grads: Sequence[Any]) -> None:
    """Warns about trainable variables the loss does not reach (Keras trains
    the rest); raises only when none of them gets a gradient."""
    missing = [v for v, g in zip(variables, grads) if g is None]
    if not missing:
        return
    names = ", ".join(f"{v.path} {tuple(v.shape)}" for v in missing)
    if len(missing) == len(variables):
        raise ValueError(
            f"No gradient reaches any of the trainable variables given to value_and_grad ({names}). "
            "Likely causes: the loss does not use them, or the forward pass ran outside the function "
            "given to value_and_grad (compute it inside). Fix the loss, or freeze the layers "
            "(layer.trainable = False)."
        )
    warnings.warn(
        f"No gradient reaches trainable variable(s) {names}: they are not updated. Likely causes: "
        "the variable is not used in the loss (an unused head, a counter made with add_weight), or it "
        "was used outside the function given to value_and_grad. Freeze the layer "
        "(layer.trainable = False) or make the variable non-trainable to silence this.",
        UnusedVariableWarning, stacklevel=4)


def check_variables(variables: Sequence[Any]) -> None:
    for v in variables:
        if not isinstance(v, keras.Variable):
            raise TypeError(
                f"value_and_grad differentiates keras.Variable objects, got {type(v).__name__}. "
                "Pass e.g. model.trainable_variables."
            )
        if not v.trainable:
            raise ValueError(
                f"value_and_grad got non-trainable variable {v.path}; gradients are taken only with "
                "respect to trainable variables (use model.trainable_variables)."
            )


def check_inputs(inputs: Sequence[Any]) -> None:
    for i, t in enumerate(inputs):
        if isinstance(t, keras.Variable) or not keras.ops.is_tensor(t):
            raise TypeError(
                f"value_and_grad(inputs=...) takes tensors; input {i} is a {type(t).__name__}. "
                "Pass variables in `variables`, and convert arrays with keras.ops.convert_to_tensor."
            )
        if not keras.backend.is_float_dtype(t.dtype):
            raise ValueError(
                f"value_and_grad(inputs=...) needs float tensors; input {i} has dtype {t.dtype}. "
                "Cast it with keras.ops.cast(x, 'float32')."
            )


def check_no_input_gradient(grads: Sequence[Any]) -> None:
    missing = [i for i, g in enumerate(grads) if g is None]
    if missing:
        raise ValueError(
            f"The loss does not depend on input(s) {missing} given to value_and_grad(inputs=...): "
            "use the argument fn receives, not the original tensor, inside fn."
        )


def explain_string_inputs(batch: Any, error: BaseException) -> None:
    """Raises a ValueError naming the input when ``error`` (an engine's own,
    from the first step) came from string features the model cannot take.
    A model that takes strings (``TextVectorization``/``StringLookup`` on
    tensorflow, as in Keras) never gets here: its first step succeeds."""
    import numpy as np

    from loops.data import padding as _padding

    batch, _ = _padding.unwrap(batch)
    strings = []
    for path, leaf in keras.tree.flatten_with_path(batch):
        dtype = getattr(leaf, "dtype", None)
        kind = getattr(np.dtype(dtype), "kind", "") if isinstance(dtype, np.dtype) else ""
        if kind in ("U", "S", "O") or str(dtype) in ("<dtype: 'string'>", "string"):
            strings.append((path, dtype))
    if not strings:
        return
    def name(path: tuple[Any, ...]) -> str:
        if isinstance(batch, tuple) and path and isinstance(path[0], int) and path[0] < 3:
            head, rest = ("x", "y", "sample_weight")[path[0]], path[1:]
        else:
            head, rest = "x", path
        return head + "".join(f"[{k!r}]" for k in rest)

    where = ", ".join(f"{name(p)} (dtype {d})" for p, d in strings)
    raise ValueError(
        f"The data holds strings: {where}, and the model cannot take them as numbers "
        f"({type(error).__name__}: {str(error).splitlines()[0][:160]}). Encode them first: map them to "
        "integer ids or floats before fit(), or (on tensorflow) put keras.layers.StringLookup / "
        "TextVectorization at the model's input.") from error


def check_callbacks(callbacks: Any) -> None:
    """Every callback must be a ``keras.callbacks.Callback`` (before any work)."""
    if callbacks is None or isinstance(callbacks, keras.callbacks.CallbackList):
        return
    if not isinstance(callbacks, (list, tuple)):
        raise TypeError(f"callbacks must be a list of keras.callbacks.Callback, got {type(callbacks).__name__}.")
    for i, cb in enumerate(callbacks):
        if not isinstance(cb, keras.callbacks.Callback):
            raise TypeError(
                f"callbacks[{i}] is a {type(cb).__name__} ({cb!r:.60}), not a keras.callbacks.Callback. "
                "Subclass keras.callbacks.Callback (or use keras.callbacks.LambdaCallback) and pass an instance.")


def check_validation_data(validation_data: Any) -> None:
    if isinstance(validation_data, (tuple, list)) and not 2 <= len(validation_data) <= 3 \
            and not all(isinstance(e, tuple) for e in validation_data):
        raise ValueError(
            f"validation_data must be (x_val, y_val) or (x_val, y_val, val_sample_weight), got a "
            f"{type(validation_data).__name__} of {len(validation_data)} element(s). Without labels there is "
            "no validation loss: pass the labels too, or a dataset/generator yielding (x, y) batches.")
