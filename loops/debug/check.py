"""``Trainer.check(data)``: a pre-flight that runs one training step eagerly on
one batch, changing nothing, and reports per layer what the seeds' debugging
guide asks you to print by hand.

Per layer: output shape, parameter count, gradient norm (one column per
``value_and_grad`` call of the step), and variables whose gradient is None,
zero or non-finite. For the step: whether the loss is finite, the loss against
random guessing (``ln C`` for C-class cross-entropy: far off flags a wrong
``from_logits``, unscaled inputs or a bad initialisation), the label range
against the output width, ``from_logits`` traps, and gradient sets over the
same variables whose scales differ by orders of magnitude (the seeds'
first- plus second-order story). Any error the step raises is caught and
reported with the layer it came from.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from typing import Any, Callable

import numpy as np

from loops.debug.hooks import GradientSet, LayerCall, Recorder
from loops.debug.traps import LossInputs


@dataclasses.dataclass
class LayerReport:
    """One row of the table: a top-level layer of a model."""

    name: str
    type: str
    output_shape: tuple[Any, ...] | list[tuple[Any, ...]] | None
    params: int
    trainable_params: int
    grad_norms: list[float | None]  # per gradient set; None where the set has none of its variables
    no_gradient: list[str]  # variable paths that got no gradient (None)
    zero_gradient: list[str]
    nonfinite_gradient: list[str]


@dataclasses.dataclass
class Finding:
    level: str  # "error" or "warning"
    message: str


@dataclasses.dataclass
class CheckReport:
    """What ``Trainer.check`` found; ``str(report)`` is the printed table.

    Attributes:
        layers: one ``LayerReport`` per top-level layer of each model.
        loss: the configured loss on the batch (or the first ``value_and_grad`` loss), or None.
        loss_finite: whether every loss the step computed is finite.
        expected_loss: the loss of random guessing (``ln C``), when the loss is a cross-entropy.
        loss_inputs: per probabilistic loss: label range, output width, prediction range.
        gradient_sets: what each ``value_and_grad`` call returned (norms per variable).
        findings: errors then warnings, each a sentence with the fix.
        batch_shapes: shape of each input of the checked batch.
    """

    layers: list[LayerReport]
    loss: float | None
    loss_finite: bool | None
    expected_loss: float | None
    loss_inputs: list[LossInputs]
    gradient_sets: list[GradientSet]
    findings: list[Finding]
    batch_shapes: dict[str, tuple[Any, ...]]

    @property
    def errors(self) -> list[str]:
        return [f.message for f in self.findings if f.level == "error"]

    @property
    def warnings(self) -> list[str]:
        return [f.message for f in self.findings if f.level == "warning"]

    @property
    def ok(self) -> bool:
        """No errors and no warnings."""
        return not self.findings

    @property
    def total_params(self) -> int:
        return sum(r.params for r in self.layers)

    def __str__(self) -> str:
        return format_report(self)


def _fmt_shape(shape: Any) -> str:
    if shape is None:
        return "?"
    if isinstance(shape, list):
        return ", ".join(_fmt_shape(s) for s in shape)
    return "(" + ", ".join("None" if d is None else str(d) for d in shape) + (",)" if len(shape) == 1 else ")")


def _fmt_norm(value: float | None) -> str:
    return "-" if value is None else f"{value:.3e}"


def _box(headers: list[str], rows: list[list[str]], right: set[int]) -> list[str]:
    """A table drawn like ``keras.Model.summary``."""
    widths = [max([len(h)] + [len(r[i]) for r in rows]) + 2 for i, h in enumerate(headers)]

    def line(cells: list[str], sep: str = "│") -> str:
        out = []
        for i, (cell, w) in enumerate(zip(cells, widths)):
            out.append((" " + cell.rjust(w - 2) + " ") if i in right else (" " + cell.ljust(w - 2) + " "))
        return sep + sep.join(out) + sep

    top = "┏" + "┳".join("━" * w for w in widths) + "┓"
    mid = "┡" + "╇".join("━" * w for w in widths) + "┩"
    bottom = "└" + "┴".join("─" * w for w in widths) + "┘"
    return [top, line(headers, "┃"), mid] + [line(r) for r in rows] + [bottom]


def format_report(report: CheckReport) -> str:
    sets = len(report.gradient_sets)
    norm_headers = ["Grad norm"] if sets <= 1 else [f"Grad norm #{i + 1}" for i in range(sets)]
    headers = ["Layer (type)", "Output Shape", "Param #"] + norm_headers + ["Gradient notes"]
    rows = []
    for r in report.layers:
        notes = []
        for label, names in (("None", r.no_gradient), ("zero", r.zero_gradient), ("NaN/Inf", r.nonfinite_gradient)):
            if names:
                notes.append(f"{label}: " + ", ".join(n.rsplit("/", 1)[-1] for n in names))
        norms = r.grad_norms if sets else [None]
        rows.append([f"{r.name} ({r.type})", _fmt_shape(r.output_shape), f"{r.params:,}"]
                    + [_fmt_norm(n) for n in (norms or [None] * max(sets, 1))] + ["; ".join(notes)])
    lines = [" Check: one training step, run eagerly on one batch ("
             + ", ".join(f"{k} {_fmt_shape(v)}" for k, v in report.batch_shapes.items()) + "); nothing was updated"]
    lines += _box(headers, rows, right={2} | {3 + i for i in range(len(norm_headers))})
    trainable = sum(r.trainable_params for r in report.layers)
    lines.append(f" Total params: {report.total_params:,} (trainable: {trainable:,})")
    if report.loss is not None:
        state = "finite" if report.loss_finite else "NOT FINITE"
        line = f" Loss: {report.loss:.4g} ({state})"
        if report.expected_loss is not None:
            width = report.loss_inputs[0].width if report.loss_inputs else None
            line += f"; random guessing over {width} classes gives ln({width}) = {report.expected_loss:.4g}"
        lines.append(line)
    for info in report.loss_inputs:
        lines.append(f" Labels for {info.loss}: {info.label_min:g}..{info.label_max:g}; {info.output} has width "
                     f"{info.width if info.kind != 'binary' else 1}, values {info.pred_min:.3g}..{info.pred_max:.3g}"
                     f" (from_logits={info.from_logits})")
    if sets > 1:
        for i, gs in enumerate(report.gradient_sets):
            lines.append(f" Gradient set #{i + 1} (value_and_grad call {i + 1}, nested calls first): "
                         f"{len(gs.variables)} variables, global norm {gs.global_norm():.3e}")
    lines.append(" Findings:" if report.findings else " Findings: none")
    for f in report.findings:
        lines.append(f"   {f.level.upper():8s}{f.message}")
    return "\n".join(lines)


def _layer_rows(trainer: Any, rec: Recorder) -> list[LayerReport]:
    first_call: dict[int, LayerCall] = {}
    for call in rec.layer_calls:
        first_call.setdefault(id(call.layer), call)
    models = trainer.models
    rows: list[LayerReport] = []
    for model in models:
        layers = list(getattr(model, "layers", None) or [])
        inner = {id(v) for layer in layers for v in layer.weights}
        own = [v for v in model.weights if id(v) not in inner]
        entries: list[tuple[Any, list[Any], str, str]] = [
            (layer, list(layer.weights), layer.name, type(layer).__name__) for layer in layers]
        if own or not layers:
            entries.append((model, own if layers else list(model.weights), model.name,
                            type(model).__name__ + (" own weights" if layers else "")))
        for layer, weights, name, type_name in entries:
            if len(models) > 1:
                name = f"{model.name}/{name}" if layer is not model else name
            seen = first_call.get(id(layer))
            shape: Any = None
            if seen is not None and seen.output_shapes:
                shape = seen.output_shapes[0] if len(seen.output_shapes) == 1 else seen.output_shapes
            ids = {id(v) for v in weights}
            norms: list[float | None] = []
            none_, zero, bad = [], [], []
            for gs in rec.gradient_sets:
                squares = [n * n for v, n in zip(gs.variables, gs.norms) if id(v) in ids and n is not None]
                norms.append(math.sqrt(sum(squares)) if squares else None)
                for v, n, fin in zip(gs.variables, gs.norms, gs.finite):
                    if id(v) not in ids:
                        continue
                    if n is None and v.path not in none_:
                        none_.append(v.path)
                    elif n == 0.0 and v.path not in zero:
                        zero.append(v.path)
                    elif not fin and v.path not in bad:
                        bad.append(v.path)
            rows.append(LayerReport(
                name=name, type=type_name, output_shape=shape,
                params=int(sum(np.prod(v.shape) for v in weights)),
                trainable_params=int(sum(np.prod(v.shape) for v in weights if v.trainable)),
                grad_norms=norms, no_gradient=none_, zero_gradient=zero, nonfinite_gradient=bad))
    return rows


def _scale_findings(sets: list[GradientSet]) -> list[Finding]:
    """Gradient sets over the same variables whose norms differ by >= 10x."""
    out = []
    for i in range(len(sets)):
        for j in range(i + 1, len(sets)):
            shared = {id(v) for v in sets[i].variables} & {id(v) for v in sets[j].variables}
            if not shared:
                continue
            a, b = sets[i].global_norm(shared), sets[j].global_norm(shared)
            lo, hi = min(a, b), max(a, b)
            if lo > 0 and hi / lo >= 10:
                big, small = (j, i) if b > a else (i, j)
                out.append(Finding("warning", (
                    f"Gradient set #{big + 1} is {hi / lo:.3g}x larger than set #{small + 1} over the same "
                    f"{len(shared)} variables (global norms {hi:.3e} vs {lo:.3e}: {math.log10(hi / lo):.1f} orders "
                    "of magnitude). Summed raw, the larger one decides every update; normalise each (e.g. "
                    "divide by its global norm) before combining, or weight them.")))
    return out


def _findings(rec: Recorder, rows: list[LayerReport], errors: list[str], caught: list[str],
              loss: float | None, expected: float | None, info: LossInputs | None) -> list[Finding]:
    found = [Finding("error", e) for e in errors]
    losses = rec.losses + [gs.loss for gs in rec.gradient_sets]
    if losses and not all(math.isfinite(v) for v in losses):
        found.append(Finding("error", (
            f"The loss is not finite ({', '.join(f'{v:g}' for v in losses if not math.isfinite(v))}) on this "
            "batch: look for NaN/Inf in the inputs (fit(check_inputs=True)), log/sqrt of non-positive values, "
            "or labels out of range; Trainer(debug_nans=True) names the layer.")))
    bad = [p for r in rows for p in r.nonfinite_gradient]
    if bad:
        found.append(Finding("error", f"Non-finite gradients for {', '.join(bad)}: Trainer(debug_nans=True) "
                                      "finds the first layer or variable where they appear."))
    if not any("No gradient reaches" in e for e in errors):
        missing = [p for r in rows for p in r.no_gradient]
        if missing:
            found.append(Finding("error", f"No gradient reaches {', '.join(missing)}: the variable is not "
                                          "used in the loss, or it is used outside the differentiated function."))
    found += [Finding("warning", m) for m in caught]
    zero = [p for r in rows for p in r.zero_gradient]
    if zero:
        found.append(Finding("warning", (
            f"The gradient of {', '.join(zero)} is exactly zero on this batch: dead ReLUs, a path "
            "multiplied by zero, zero-initialised weights feeding each other, or stop_gradient.")))
    if loss is not None and expected is not None and math.isfinite(loss) and info is not None \
            and not (0.5 * expected <= loss <= 2.0 * expected + 0.5):
        found.append(Finding("warning", (
            f"The loss at initialisation is {loss:.4g}, but random guessing over {info.width} classes gives "
            f"ln({info.width}) = {expected:.4g}. A freshly initialised classifier should be close: check "
            f"from_logits (now {info.from_logits}), the output activation, the input scaling (inputs of "
            "order 1), and the initialisation of the last layer.")))
    found += _scale_findings(rec.gradient_sets)
    return found


def run(trainer: Any, batch: Any, step: Callable[[Any], Any],
        print_fn: Callable[[str], Any] | None = None) -> CheckReport:
    """Runs ``step`` on ``batch`` (native) through the trainer's first-step
    machinery with a ``Recorder`` installed; builds the report."""
    from loops.debug.retrace import _batch_spec

    trainer._sync()
    rec = Recorder(trainer._engine)
    errors: list[str] = []
    # The from_logits warnings go into the report; the first real step warns again.
    warned = trainer.__dict__.get("_from_logits_warned", set())
    trainer.__dict__["_from_logits_warned"] = set()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            with rec.installed(trainer):
                trainer._first_step(step, batch)
        except Exception as e:  # noqa: BLE001 - reported, not raised
            message = f"{type(e).__name__}: {e}" if not isinstance(e, ValueError) else str(e)
            failure = rec.failure  # the innermost layer that raised, if one did
            if failure is not None:
                message = (f"Layer {failure.layer.name!r} ({type(failure.layer).__name__}) failed when called on "
                           f"inputs of shape {', '.join(_fmt_shape(s) for s in failure.input_shapes)}: {message}")
            errors.append(message)
    trainer.__dict__["_from_logits_warned"] = warned
    rows = _layer_rows(trainer, rec)
    losses = rec.losses or [gs.loss for gs in rec.gradient_sets[:1]]
    loss = losses[0] if losses else None
    info = rec.loss_inputs[0] if len(rec.loss_inputs) == 1 and len(rec.losses) <= 1 else None
    expected = info.expected_loss if info is not None else None
    all_losses = rec.losses + [gs.loss for gs in rec.gradient_sets]
    caught_messages = [str(w.message) for w in caught if issubclass(w.category, UserWarning)]
    report = CheckReport(
        layers=rows, loss=loss, loss_finite=(all(math.isfinite(v) for v in all_losses) if all_losses else None),
        expected_loss=expected, loss_inputs=list(rec.loss_inputs), gradient_sets=list(rec.gradient_sets),
        findings=[], batch_shapes={k: s for k, (s, _) in _batch_spec(batch).items()})
    found = _findings(rec, rows, errors, caught_messages, loss, expected, info)
    report.findings = sorted(found, key=lambda f: f.level != "error")
    if print_fn is not None:
        print_fn(str(report))
    return report


__all__ = ["CheckReport", "Finding", "LayerReport", "format_report", "run"]
