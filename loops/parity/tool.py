"""Cross-backend parity: one weights file, one batch order, one process per
backend, and a report naming the first step, metric and layer that differ.

A *factory* is an importable ``"module:function"`` returning a ``ParityCase``
(trainer + host batches). Every backend process calls it; the first writes the
initial weights, the others load them (the same Keras seed gives different
weights per backend). Each step is one ``trainer.fit`` over one batch, so the
logs are that step's values (metrics reset each epoch), and all weights are
recorded after every step.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import os
import subprocess
import sys
import tempfile
from typing import Any, Callable, Sequence

import numpy as np

DEFAULT_BACKENDS = ("jax", "tensorflow", "torch")
# float32 round-off across engines: a few ulp per op, compounding over steps.
DEFAULT_RTOL = 1e-5
DEFAULT_WEIGHT_RTOL = 1e-3
_TINY = 1e-12


@dataclasses.dataclass
class ParityCase:
    """What a factory returns.

    Attributes:
        trainer: a ``loops.Trainer`` (any subclass) holding its models.
        batches: host (NumPy) batches, one per step, in order; cycled when
            ``steps`` exceeds their number. Put random numbers in the batch
            (host-generated) to make noise identical across backends.
        prepare: optional, called with the trainer after the shared initial
            weights are loaded (e.g. to plant a difference in a test).
    """

    trainer: Any
    batches: Sequence[Any]
    prepare: Callable[[Any], None] | None = None


@dataclasses.dataclass
class Divergence:
    """Where backends first disagree beyond the tolerance (steps are 1-based;
    weight step 0 means the initial weights already differ)."""

    backend: str
    step: int | None = None
    metric: str | None = None
    metric_rel_diff: float = 0.0
    weight_step: int | None = None
    layer: str | None = None
    layer_rel_diff: float = 0.0

    def describe(self) -> str:
        parts = []
        if self.step is not None:
            parts.append(f"logs first differ at step {self.step}, metric {self.metric!r} "
                         f"(rel diff {self.metric_rel_diff:.2e})")
        if self.weight_step is not None:
            when = "in the initial weights" if self.weight_step == 0 else f"after step {self.weight_step}"
            parts.append(f"weights first differ {when}, most in layer {self.layer!r} "
                         f"(rel diff {self.layer_rel_diff:.2e})")
        return f"{self.backend}: " + "; ".join(parts)


@dataclasses.dataclass
class ParityReport:
    """Per-step logs for each backend and where they diverge, if anywhere.

    ``logs[backend][metric]`` is the list of per-step values; the first
    backend is the reference the others are compared against.
    """

    backends: list[str]
    steps: int
    rtol: float
    weight_rtol: float
    logs: dict[str, dict[str, list[float]]]
    max_rel_diff: float
    divergences: list[Divergence]
    warnings: list[str]
    jit_compile: dict[str, bool]

    @property
    def ok(self) -> bool:
        return not self.divergences

    def format(self, max_rows: int = 20) -> str:
        """A plain-text report: per-step losses side by side, then the verdict."""
        ref = self.backends[0]
        metric = "loss" if "loss" in self.logs[ref] else sorted(self.logs[ref])[0]
        lines = [f"per-step {metric} (reference: {ref}; jit_compile: {self.jit_compile})",
                 "step  " + "  ".join(f"{b:>14}" for b in self.backends)]
        shown = list(range(self.steps))
        if len(shown) > max_rows:
            shown = shown[: max_rows // 2] + shown[-max_rows // 2:]
        for i in shown:
            lines.append(f"{i + 1:4d}  " + "  ".join(f"{self.logs[b][metric][i]:14.8f}" for b in self.backends))
        lines.append(f"max relative difference over all steps and metrics: {self.max_rel_diff:.3e} "
                     f"(tolerance {self.rtol:g}, weights {self.weight_rtol:g})")
        if self.ok:
            lines.append("PARITY OK: all backends agree within float32 round-off.")
        for d in self.divergences:
            lines.append("DIVERGENCE " + d.describe())
        return "\n".join(lines)


def load_factory(spec: str) -> Callable[[], ParityCase]:
    """Imports ``"package.module:function"``."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"A factory is given as 'module:function', got {spec!r}.")
    return getattr(importlib.import_module(module_name), attr)  # type: ignore[no-any-return]


def _weight_names(trainer: Any) -> list[str]:
    return [v.path for m in trainer.models for v in m.weights]


def run_backend(factory: str | Callable[[], ParityCase], steps: int, weights_path: str,
                write_weights: bool, backend_names: Sequence[str] = ()) -> dict[str, Any]:
    """Runs ``steps`` steps on the current backend (in this process).

    Args:
        factory: ``"module:function"`` or the function itself.
        steps: number of training steps (one batch each).
        weights_path: the shared ``.weights.h5`` file.
        write_weights: write the initial weights there (first backend) instead
            of loading them.
        backend_names: all backends being compared (for the warnings).

    Returns:
        ``{"backend", "jit_compile", "warnings", "logs": {metric: [per step]},
        "names": [weight paths], "weights": [array (steps + 1, *shape)]}``.
    """
    import keras

    from loops.parity.checks import known_divergence_sources

    make = load_factory(factory) if isinstance(factory, str) else factory
    case = make()
    trainer = case.trainer
    found = known_divergence_sources(trainer, list(backend_names))
    for line in found:
        print(f"[parity] warning: {line}", file=sys.stderr, flush=True)
    if write_weights:
        trainer.save_weights(weights_path)
    else:
        trainer.load_weights(weights_path)
    if case.prepare is not None:
        case.prepare(trainer)
    snapshots = [trainer.get_weights()]
    logs: dict[str, list[float]] = {}
    for i in range(steps):
        batch = case.batches[i % len(case.batches)]
        # An iterator of one batch: the element reaches train_step as given.
        history = trainer.fit(iter([batch]), epochs=1, verbose=0, shuffle=False)
        for name, values in history.history.items():
            logs.setdefault(name, []).append(float(np.asarray(values[-1])))
        snapshots.append(trainer.get_weights())
    jit = trainer._resolve_jit_compile() and not trainer.run_eagerly
    return {"backend": keras.backend.backend(), "jit_compile": bool(jit), "warnings": found, "logs": logs,
            "names": _weight_names(trainer),
            "weights": [np.stack([s[j] for s in snapshots]) for j in range(len(snapshots[0]))]}


def _save_run(run: dict[str, Any], path: str) -> None:
    meta = {k: run[k] for k in ("backend", "jit_compile", "warnings", "logs", "names")}
    arrays = {f"w{j}": w for j, w in enumerate(run["weights"])}
    np.savez(path, meta=np.asarray(json.dumps(meta)), **arrays)  # type: ignore[arg-type]


def _load_run(path: str) -> dict[str, Any]:
    with np.load(path) as data:
        run = json.loads(str(data["meta"]))
        run["weights"] = [data[f"w{j}"] for j in range(len(run["names"]))]
    return run  # type: ignore[no-any-return]


def _rel(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.abs(a - b) / np.maximum(np.abs(b), _TINY)


def _layer_diffs(run: dict[str, Any], ref: dict[str, Any]) -> tuple[list[str], np.ndarray]:
    """(layers, rel diff per step and layer): max |a - b| over a layer's
    weights, relative to the largest reference magnitude in that weight."""
    layers: list[str] = []
    per_weight = []
    for name, a, b in zip(ref["names"], run["weights"], ref["weights"]):
        a64, b64 = a.astype(np.float64), b.astype(np.float64)
        axes = tuple(range(1, a64.ndim))
        scale = np.maximum(np.abs(b64).max(axis=axes) if axes else np.abs(b64), _TINY)
        diff = np.abs(a64 - b64).max(axis=axes) if axes else np.abs(a64 - b64)
        per_weight.append((name.rsplit("/", 1)[0], diff / scale))
        if per_weight[-1][0] not in layers:
            layers.append(per_weight[-1][0])
    table = np.zeros((len(run["weights"][0]) if run["weights"] else 0, len(layers)))
    for layer, rel in per_weight:
        col = layers.index(layer)
        table[:, col] = np.maximum(table[:, col], rel)
    return layers, table


def compare_runs(runs: list[dict[str, Any]], rtol: float = DEFAULT_RTOL,
                 weight_rtol: float = DEFAULT_WEIGHT_RTOL) -> ParityReport:
    """Compares runs (from ``run_backend``) against the first one."""
    ref = runs[0]
    steps = len(next(iter(ref["logs"].values()), []))
    max_rel = 0.0
    divergences = []
    for run in runs[1:]:
        shapes, ref_shapes = [w.shape for w in run["weights"]], [w.shape for w in ref["weights"]]
        if shapes != ref_shapes:
            raise ValueError(f"{run['backend']} has weights of shapes {shapes}, {ref['backend']} has "
                             f"{ref_shapes}: the factory must build the same models on every backend.")
        d = Divergence(backend=run["backend"])
        rels = {m: _rel(np.asarray(run["logs"][m]), np.asarray(v))
                for m, v in ref["logs"].items() if m in run["logs"]}
        for step in range(steps):
            worst = max(rels, key=lambda m: rels[m][step]) if rels else None
            if worst is not None and rels[worst][step] > rtol:
                d.step, d.metric, d.metric_rel_diff = step + 1, worst, float(rels[worst][step])
                break
        max_rel = max([max_rel] + [float(r.max()) for r in rels.values() if r.size])
        # Weights name the layer; on their own they decide only at step 0 (the
        # same file was loaded), since Adam turns round-off in a near-zero
        # gradient (a bias before BatchNorm) into a full-size step.
        layers, table = _layer_diffs(run, ref)
        initial_differ = bool(table.size) and table[0].max() > weight_rtol
        if table.size and (d.step is not None or initial_differ):
            bad = np.nonzero(table.max(axis=1) > weight_rtol)[0]
            t = int(bad[0]) if len(bad) else min(d.step or 0, len(table) - 1)
            col = int(np.argmax(table[t]))
            d.weight_step, d.layer, d.layer_rel_diff = t, layers[col], float(table[t, col])
            divergences.append(d)
    warnings = list(dict.fromkeys(w for run in runs for w in run["warnings"]))
    return ParityReport(backends=[r["backend"] for r in runs], steps=steps, rtol=rtol, weight_rtol=weight_rtol,
                        logs={r["backend"]: r["logs"] for r in runs}, max_rel_diff=max_rel,
                        divergences=divergences, warnings=warnings,
                        jit_compile={r["backend"]: r["jit_compile"] for r in runs})


def _spawn(backend: str, factory: str, steps: int, weights_path: str, out: str, write: bool,
           backend_names: Sequence[str], printed: set[str]) -> None:
    # The child imports the factory from wherever this process could.
    path = os.pathsep.join(p for p in [os.getcwd(), *sys.path] if p and os.path.isdir(p))
    env = dict(os.environ, KERAS_BACKEND=backend, PYTHONPATH=path)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    cmd = [sys.executable, "-m", "loops.parity", "--worker", factory, "--steps", str(steps),
           "--weights", weights_path, "--out", out, "--backends", ",".join(backend_names)]
    if write:
        cmd.append("--write-weights")
    proc = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for line in proc.stderr.splitlines():
        if line.startswith("[parity]") and line not in printed:
            printed.add(line)
            print(line, file=sys.stderr, flush=True)
    if proc.returncode != 0:
        raise RuntimeError(f"parity run on {backend} failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}")


def compare(factory: str, backends: Sequence[str] = DEFAULT_BACKENDS, steps: int = 20,
            rtol: float = DEFAULT_RTOL, weight_rtol: float = DEFAULT_WEIGHT_RTOL,
            weights_path: str | None = None) -> ParityReport:
    """Trains the factory's trainer on each backend, each in its own process.

    Args:
        factory: ``"module:function"`` returning a ``ParityCase``.
        backends: backend names; the first writes the initial weights (unless
            ``weights_path`` exists) and is the reference.
        steps: training steps (one batch each).
        rtol: relative tolerance on per-step logs.
        weight_rtol: tolerance on each layer's max weight difference, relative
            to that weight's largest magnitude.
        weights_path: an existing ``.weights.h5`` to start from.

    Returns:
        A ``ParityReport``; ``report.format()`` prints it.

    Example:
        >>> report = compare("my_models:mlp_case", ["jax", "torch"], steps=10)
        >>> assert report.ok, report.format()
    """
    if not backends:
        raise ValueError("compare() needs at least one backend name, e.g. ['jax', 'torch'].")
    with tempfile.TemporaryDirectory(prefix="loops-parity-") as tmp:
        path = weights_path or os.path.join(tmp, "initial.weights.h5")
        write = not os.path.exists(path)
        runs = []
        printed: set[str] = set()
        for i, backend in enumerate(backends):
            out = os.path.join(tmp, f"{backend}.npz")
            _spawn(backend, factory, steps, path, out, write and i == 0, backends, printed)
            runs.append(_load_run(out))
    return compare_runs(runs, rtol, weight_rtol)
