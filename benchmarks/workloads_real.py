"""Realistic workloads: throughput and memory of ``loops.Trainer.fit`` against
Keras ``model.fit`` and a native loop, per backend.

    python -m benchmarks.workloads_real            # full sizes, 5 rounds of >= 1 s blocks
    python -m benchmarks.workloads_real --quick    # small sizes, 3 rounds of 0.25 s (< 3 minutes)

Workloads (``benchmarks/_real_models.py``): a GPT-style character language
model (token + position embedding, 2 pre-norm transformer blocks with causal
``MultiHeadAttention``, GELU MLP) and an LSTM next-character model, both on the
text of Python's ``pydoc_data.topics``, and a ResNet-style CNN (conv-BN-ReLU
stages with residual blocks) on synthetic 32x32x3 images. Arms: (a)
``Trainer.fit``, (b) ``model.fit(verbose=0)``, (c) the native loop of
``benchmarks/_native.py`` (jax: one donated ``jax.jit`` of ``stateless_call``;
tensorflow: ``tf.function`` + ``GradientTape``; torch: the same network in
``torch.nn`` with ``torch.optim.Adam``, loaded with the Keras weights; its
LSTM is ``nn.LSTM``, a fused kernel, where Keras's torch LSTM steps in Python).

Each arm runs in its own process (``KERAS_BACKEND`` set per process), so its
peak RSS is its own: the growth of the peak during its ``fit`` calls (data
allocated before; ``/proc/self/clear_refs`` resets the peak where Linux
allows, else ``ru_maxrss``). ``--quick`` runs the three workloads one after
the other in one process per (backend, arm); the full run one process per
(backend, workload, arm). Throughput is steady state: after the gate, every
arm first runs ``--warmup-steps`` steps (128, whole epochs; a torch Trainer
captures its step there once 100 calls are made, see
``backends/torch/policy.py``), timed and reported as the warm-up; then the
median over rounds of blocks of whole epochs. The arms' processes run one
after the other, so the ratios are between processes (read them on a quiet
machine). Loss gate: after the same
``--gate-steps`` steps from the same weights, Trainer and ``model.fit``
losses agree to 1e-4 relative (the native arm's difference is shown, not
gated: other kernels). Writes ``benchmarks/results/workloads_real{_quick}.{md,json}``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from typing import Any

from benchmarks import _real_models as R
from benchmarks import _timing
from benchmarks import _workloads as W

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BACKENDS = ("jax", "tensorflow", "torch")
WORKLOADS = ("gpt", "lstm", "resnet")
ARMS = ("trainer", "keras", "native")
GATE_RTOL = 1e-4
TAG = "WORKLOADS_REAL "
MODES = {"quick": dict(size="quick", gate=3, block_s=0.25, rounds=3, warmup=128),
         "full": dict(size="full", gate=5, block_s=1.0, rounds=5, warmup=128)}


def _peak_reset() -> tuple[str, float]:
    """Resets the peak RSS where Linux allows; returns how it is measured and
    the baseline (kB)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        with open("/proc/self/status") as f:
            return "VmHWM", float(next(line.split()[1] for line in f if line.startswith("VmRSS:")))
    except (OSError, StopIteration):
        import resource

        return "ru_maxrss", float(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)


def _peak_growth_mb(method: str, before: float) -> float:
    if method == "VmHWM":
        with open("/proc/self/status") as f:
            peak = float(next(line.split()[1] for line in f if line.startswith("VmHWM:")))
    else:
        import resource

        peak = float(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
    return max(0.0, peak - before) / 1024


def make_arm(arm: str, r: R.Real, weights: list[Any], arrays: dict[str, Any]) -> Any:
    """A fresh model with ``weights``, wrapped in the arm's ``gate``/``run``."""
    import keras

    from benchmarks._arms import FitArm
    from benchmarks._native import jax_model_arm, tf_model_arm, torch_net_arm

    model = R.keras_model(r)
    model.set_weights(weights)
    w = r.workload()
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    if arm == "trainer":
        from loops import Trainer

        return FitArm("trainer", Trainer(model, keras.optimizers.Adam(W.LR, epsilon=W.EPS), loss), w, arrays)
    if arm == "keras":
        model.compile(keras.optimizers.Adam(W.LR, epsilon=W.EPS), loss)
        return FitArm("keras", model, w, arrays)
    batches = W.batches(arrays, r.batch_size)
    backend = keras.backend.backend()
    if backend == "jax":
        return jax_model_arm(model, batches)
    if backend == "tensorflow":
        return tf_model_arm(model, batches)
    return torch_net_arm(R.torch_net(r, model), batches)


def run_arm(name: str, arm: str, size: str = "quick", gate_steps: int = 3, block_s: float = 0.25,
            rounds: int = 3, warmup_steps: int = 128) -> dict[str, Any]:
    """One arm on one workload in this process: the gate's per-step losses
    (the first call timed apart), a timed warm-up of ``warmup_steps`` steps
    (whole epochs; none for 0), then timed rounds; steady-state throughput in
    the workload's units per second and the growth of peak RSS during it all."""
    import keras

    r = R.SIZES[size][name]
    keras.utils.set_random_seed(0)
    arrays = R.data(r)  # allocated before the peak is reset, in its final dtype
    weights = W.initial_weights(R.keras_model(r), 0)
    arm_obj = make_arm(arm, r, weights, arrays)
    from benchmarks.memory import _Device

    device = _Device()
    method, before = _peak_reset()
    device_before = device.reset()
    start = time.perf_counter()
    losses = [step["loss"] for step in arm_obj.gate(gate_steps)]
    warmup_epochs = math.ceil(warmup_steps / r.pool)
    warmup_s = _timing.time_block(arm_obj, warmup_epochs) if warmup_epochs else 0.0
    epochs = _timing.epochs_per_block([arm_obj], r.pool, block_s)
    ms = _timing.rounds([arm_obj], r.pool, epochs, rounds)[arm_obj.name]
    median_ms = statistics.median(ms)
    return {"workload": name, "arm": arm, "size": size, "unit": r.unit, "per_step": r.per_step,
            "batch_size": r.batch_size, "seq": r.seq, "losses": losses, "first_call_s": arm_obj.first_call_s,
            "ms_per_step": median_ms, "rounds_ms": ms, "per_s": 1e3 * r.per_step / median_ms,
            "steps_per_block": epochs * r.pool, "warmup_steps": warmup_epochs * r.pool, "warmup_s": warmup_s, "rss_growth_mb": _peak_growth_mb(method, before),
            "rss_method": method, "device_mb": device.growth_mb(device_before),
            "wall_s": time.perf_counter() - start}


def max_rel(a: list[float], b: list[float]) -> float:
    """Largest relative difference of two loss curves, step by step."""
    if not a or len(a) != len(b):
        return math.inf
    return max(abs(x - y) / max(abs(y), 1e-12) for x, y in zip(a, b))


def _worker(a: argparse.Namespace) -> int:
    import warnings

    import keras

    warnings.filterwarnings("ignore")
    out = []
    for name in a.workloads.split(","):
        print(f"[{keras.backend.backend()}] {name} {a.arm} ...", file=sys.stderr, flush=True)
        result = run_arm(name, a.arm, a.size, a.gate_steps, a.block_s, a.rounds, a.warmup_steps)
        result["backend"] = keras.backend.backend()
        out.append(result)
    print(TAG + json.dumps(out), flush=True)
    return 0


def _launch(backend: str, arm: str, workloads: str, a: argparse.Namespace) -> list[dict[str, Any]] | None:
    env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="3")
    cmd = [sys.executable, "-m", "benchmarks.workloads_real", "--worker", "--arm", arm, "--workloads", workloads,
           "--size", a.size, "--gate-steps", str(a.gate_steps), "--block-s", str(a.block_s),
           "--rounds", str(a.rounds), "--warmup-steps", str(a.warmup_steps)]
    return _timing.run_worker(cmd, env, TAG, f"{backend} {arm} {workloads}", timeout=1800)


def _fmt_mb(x: float | None) -> str:
    return "—" if x is None else f"{x:.0f}"


def _fmt_rate(x: float | None) -> str:
    if x is None:
        return "—"
    return f"{x / 1e3:.1f}k" if x >= 1e3 else f"{x:.0f}"


def markdown(results: dict[str, Any], machine: str, a: argparse.Namespace, failed: list[str]) -> str:
    lines = ["# Realistic workloads: Trainer.fit, model.fit and a native loop", "",
             f"Machine: {machine}. Sizes: `{a.size}`; {a.rounds} rounds of >= {a.block_s} s blocks, median; "
             "each arm in its own process. Throughput in tokens/s (gpt, lstm) or samples/s (resnet); "
             "a = Trainer.fit, b = model.fit, c = native loop; a/b and a/c are throughput ratios (> 1: the "
             "Trainer is faster), between processes run one after the other, in the steady state: after a "
             f"warm-up of {a.warmup_steps} steps (whole epochs) per arm, timed (a torch Trainer captures its "
             "step there, after 100 calls). First call: the first step's fit call (trace, compile, capture). "
             "Peak RSS growth: during the arm's fit calls"
             + ("; quick runs the workloads one after the other in one process per arm, so a later workload "
                "may reuse memory an earlier one freed" if a.quick else "") + ". Loss gate: a vs b over the "
             f"first {a.gate_steps} steps from the same weights, rtol {GATE_RTOL:g}; a vs c shown, not gated.", ""]
    sizes = R.SIZES[a.size]
    for name in a.workloads.split(","):
        r = sizes[name]
        shape = {"gpt": f"d={r.width}, {r.heads} heads, 2 blocks, seq {r.seq}",
                 "lstm": f"embed {r.embed}, LSTM {r.width}, seq {r.seq}",
                 "resnet": f"{r.seq}x{r.seq}x3, widths {r.width}/{2 * r.width}/{4 * r.width}"}[name]
        lines.append(f"- {name}: {shape}, batch {r.batch_size} ({r.per_step} {r.unit}/step), "
                     f"{r.pool} batches per epoch")
    if failed:
        lines.append(f"- failed: {', '.join(failed)}")
    if a.note:
        lines.append(f"- note: {a.note}")
    on_gpu = any(arm.get("device_mb") is not None for per_wl in results.values() for arms in per_wl.values()
                 for k, arm in arms.items() if not k.startswith("_"))
    lines += ["", "| backend | workload | a | b | c | a/b | a/c | first call s (a / b / c) "
              "| warm-up s (a / b / c) | peak RSS growth MB (a / b / c) " + ("| peak device MB (a / b / c) " if on_gpu else "")
              + "| gate a vs b | a vs c |", "|---" * (13 if on_gpu else 12) + "|"]
    for backend, per_wl in results.items():
        for name, arms in per_wl.items():
            get = lambda arm, key: arms[arm].get(key) if arm in arms else None  # noqa: E731
            rate = {arm: get(arm, "per_s") for arm in ARMS}
            ratio = lambda x, y: f"{x / y:.2f}" if x and y else "—"  # noqa: E731
            first = " / ".join("—" if get(arm, "first_call_s") is None else f"{get(arm, 'first_call_s'):.2f}"
                               for arm in ARMS)
            warm = " / ".join("—" if get(arm, "warmup_s") is None else f"{get(arm, 'warmup_s'):.2f}"
                              for arm in ARMS)
            rss = " / ".join("—" if get(arm, "rss_growth_mb") is None else f"{get(arm, 'rss_growth_mb'):.0f}"
                             for arm in ARMS)
            dev = f"| {' / '.join(_fmt_mb(get(arm, 'device_mb')) for arm in ARMS)} " if on_gpu else ""
            gate = arms.get("_gate", {})
            ab = gate.get("trainer_vs_keras")
            verdict = "—" if ab is None else f"{'ok' if ab <= GATE_RTOL else 'FAIL'} ({ab:.0e})"
            ac = gate.get("trainer_vs_native")
            lines.append(f"| {backend} | {name} | {_fmt_rate(rate['trainer'])} | {_fmt_rate(rate['keras'])} "
                         f"| {_fmt_rate(rate['native'])} | {ratio(rate['trainer'], rate['keras'])} "
                         f"| {ratio(rate['trainer'], rate['native'])} | {first} | {warm} | {rss} {dev}| {verdict} "
                         f"| {'—' if ac is None else f'{ac:.0e}'} |")
    methods = sorted({arm["rss_method"] for per_wl in results.values() for arms in per_wl.values()
                      for k, arm in arms.items() if not k.startswith("_")})
    lines += ["", f"Peak RSS measured with: {', '.join(methods)} (VmHWM: reset before the arm's fit calls)."]
    if on_gpu:
        lines.append("Peak device memory: the growth of the device's peak bytes in use during the arm's fit calls "
                     "(torch `max_memory_allocated`, reset first; jax `peak_bytes_in_use`, which jax never resets, "
                     "so a peak reached before, while the data were put on the device, can hide the fit's).")
    return "\n".join(lines) + "\n"


def _gate(arms: dict[str, Any]) -> None:
    gate = {}
    if "trainer" in arms and "keras" in arms:
        gate["trainer_vs_keras"] = max_rel(arms["trainer"]["losses"], arms["keras"]["losses"])
    if "trainer" in arms and "native" in arms:
        gate["trainer_vs_native"] = max_rel(arms["trainer"]["losses"], arms["native"]["losses"])
    arms["_gate"] = gate


def _write(results: dict[str, Any], a: argparse.Namespace, mode: dict[str, Any], failed: list[str]) -> str:
    """The report of what is measured so far: ``{stem}.md`` and ``.json`` under ``--out``."""
    from benchmarks.__main__ import _machine

    text = markdown(results, _machine(), a, failed)
    stem = "workloads_real_quick" if a.quick else "workloads_real"
    if a.size != mode["size"]:
        stem += f"_{a.size}"
    os.makedirs(a.out, exist_ok=True)
    with open(os.path.join(a.out, f"{stem}.md"), "w") as f:
        f.write(text)
    with open(os.path.join(a.out, f"{stem}.json"), "w") as f:
        json.dump({"machine": _machine(), "note": a.note, "size": a.size, "gate_steps": a.gate_steps,
                   "block_s": a.block_s, "rounds": a.rounds, "warmup_steps": a.warmup_steps, "failed": failed, "results": results}, f, indent=1)
    return text


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.workloads_real", description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="small sizes, short blocks (< 3 minutes)")
    p.add_argument("--backends", default=",".join(BACKENDS))
    p.add_argument("--workloads", default=",".join(WORKLOADS))
    p.add_argument("--arms", default=",".join(ARMS))
    p.add_argument("--size", choices=sorted(R.SIZES), default=None, help="the mode's sizes by default")
    p.add_argument("--gate-steps", type=int, default=None)
    p.add_argument("--block-s", type=float, default=None)
    p.add_argument("--rounds", type=int, default=None)
    p.add_argument("--warmup-steps", type=int, default=None,
                   help="steps each arm runs after the gate, before the timed rounds (128; whole epochs)")
    p.add_argument("--out", default=RESULTS)
    p.add_argument("--note", default="", help="a line for the report's head (e.g. the machine's load)")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--arm", default="trainer", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    mode = MODES["quick" if a.quick else "full"]
    for key, value in (("size", mode["size"]), ("gate_steps", mode["gate"]), ("block_s", mode["block_s"]),
                       ("rounds", mode["rounds"]), ("warmup_steps", mode["warmup"])):
        if getattr(a, key) is None:
            setattr(a, key, value)
    if a.warmup_steps < 0:
        p.error(f"--warmup-steps must be 0 (no warm-up) or a positive number of steps; got {a.warmup_steps}")
    if a.worker:
        return _worker(a)
    start = time.perf_counter()
    results: dict[str, Any] = {}
    failed: list[str] = []
    text = ""
    groups = [a.workloads] if a.quick else a.workloads.split(",")  # one process per arm (quick: all workloads)
    for backend in a.backends.split(","):
        per_wl: dict[str, Any] = {name: {} for name in a.workloads.split(",")}
        for group in groups:
            for arm in a.arms.split(","):
                got = _launch(backend, arm, group, a)
                if got is None:
                    failed.append(f"{backend}/{arm}/{group}")
                for result in got or []:
                    per_wl[result["workload"]][arm] = result
                for arms in per_wl.values():
                    _gate(arms)
                results[backend] = per_wl
                # Written after every arm: a run stopped early (a time cap) keeps what it measured.
                text = _write(results, a, mode, failed)
    print(text)
    print(f"wrote the report to {a.out} in {time.perf_counter() - start:.0f} s", file=sys.stderr)
    gates = [g for per_wl in results.values() for arms in per_wl.values()
             for k, g in arms["_gate"].items() if k == "trainer_vs_keras"]
    return 1 if failed or any(g > GATE_RTOL for g in gates) else 0


if __name__ == "__main__":
    sys.exit(main())
