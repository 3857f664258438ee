"""One backend's benchmark, run in its own process (``KERAS_BACKEND`` set by
the parent): loss gate, first-call times, timing rounds; prints one JSON line."""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from typing import Any

import numpy as np

from benchmarks import _timing
from benchmarks import _workloads as W
from benchmarks._arms import keras_arm, trainer_arm
from benchmarks._native import native_arm

RESULT_TAG = "BENCHMARK_RESULT "
GATE_RTOL = 1e-5
SPE = 32
GATE_STEPS = 10
# torch's native arm is torch.nn + torch.optim.Adam: other kernels (addmm
# against Keras's matmul + add) and Adam's epsilon in another place. Adam
# turns their round-off in near-zero gradients into full-size steps, so on
# some data the losses part by 1e-5 from the fifth step on (measured: 2e-5 at
# step 5, 4e-4 at step 9, with the Trainer and model.fit bitwise equal).
# Against that arm the gate covers 4 steps; the Keras arms are still held to
# each other over all GATE_STEPS (same kernels: they must agree).
NATIVE_GATE_STEPS = {"torch": 4}


# Per mode: seconds per timed block, rounds, Trainer loss-curve steps, batches
# in the pool (tiny MLP, others; a multiple of SPE for the tiny MLP) and the
# workloads run by default. "gpu" adds the ResNet-style CNN; "dry" is the gpu
# mode's code path at tiny sizes, for CPU tests.
MODES: dict[str, dict[str, Any]] = {
    "full": dict(block_s=1.0, rounds=5, curve=60, pool=(256, 128), workloads="tiny_mlp,mlp,cnn,gan"),
    "quick": dict(block_s=0.2, rounds=3, curve=30, pool=(64, 32), workloads="tiny_mlp,mlp,cnn,gan"),
    "gpu": dict(block_s=0.5, rounds=5, curve=60, pool=(256, 64), workloads="resnet,tiny_mlp,mlp,cnn,gan"),
    "dry": dict(block_s=0.01, rounds=1, curve=10, pool=(32, 12), workloads="tiny_mlp,gan,resnet"),
}
RESNET_POOL = {"gpu": 32, "dry": 12}  # batches of 256 (dry: 8) images


def _workload(name: str, mode: str) -> W.Workload:
    if name == "resnet":
        return W.resnet(dry=mode == "dry")
    return next(w for w in W.ALL if w.name == name)


def _precision(precision: str) -> str:
    """On a GPU, by default, full float32 matmuls and convolutions (no TF32)
    on jax and torch, so the loss gate's 1e-5 compares the arms' maths, not
    TF32's round-off; ``precision="default"`` keeps each engine's default."""
    import keras

    if precision != "highest":
        return "engine default"
    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        jax.config.update("jax_default_matmul_precision", "highest")
    elif backend == "torch":
        import torch

        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    return "float32 (TF32 off)"


def _device() -> dict[str, str]:
    import keras

    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        d = jax.devices()[0]
        return {"engine": f"jax {jax.__version__}", "device": f"{d.platform}: {d.device_kind}"}
    if backend == "torch":
        import torch

        name = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
        return {"engine": f"torch {torch.__version__}", "device": name}
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    return {"engine": f"tensorflow {tf.__version__}", "device": "gpu" if gpus else "cpu"}


def _weights(w: W.Workload) -> Any:
    if w is W.GAN:
        return {"generator": W.initial_weights(W.keras_model(W.GENERATOR, (W.LATENT,), "g"), 1),
                "discriminator": W.initial_weights(W.keras_model(W.DISCRIMINATOR, (784,), "d"), 2)}
    return W.initial_weights(W.keras_model(w.spec, w.input_shape, w.name), 0)


def _gate(arms: list[Any], k: int, curve: int, per_call: dict[str, int],
          rtol: float = GATE_RTOL) -> dict[str, Any]:
    """Each arm's logs for its first ``k`` steps (the Trainer's for ``curve``
    steps, for the plot); the largest relative difference against native.

    ``k`` is small on purpose: Adam turns round-off in near-zero gradients into
    full-size steps, so arms with different kernels (torch.nn against Keras
    layers) drift apart chaotically after ~20 steps even when both are right.
    """
    native_k = max([k, *per_call.values()]) if len(arms) > 1 else k
    steps_of = {"trainer": curve, "native": native_k, **per_call}
    logs = {arm.name: arm.gate(steps_of.get(arm.name, k), per_call.get(arm.name, 1)) for arm in arms}
    metric = sorted(logs["native"][0])[0]
    out: dict[str, Any] = {"k": k, "metric": metric, "curves": {a: [s[metric] for s in v] for a, v in logs.items()},
                           "first_call_s": {arm.name: arm.first_call_s for arm in arms}, "max_rel": {}}
    import keras

    k_native = min(k, NATIVE_GATE_STEPS.get(keras.backend.backend(), k))
    rel_to = lambda steps, ref: max(abs(s[m] - r[m]) / abs(r[m])  # noqa: E731
                                    for s, r in zip(steps[:len(ref)], ref) for m in r)
    for name, steps in logs.items():
        if name == "native":
            continue
        n = per_call.get(name, 1)
        ref = logs["native"][:k_native] if n == 1 else [  # one mean over each fused execution
            {m: float(np.mean([s[m] for s in logs["native"][i:i + n]])) for m in logs["native"][0]}
            for i in range(0, len(logs["native"]), n)]
        out["max_rel"][name] = rel_to(steps, ref)
    out["native_steps"] = k_native
    if "keras" in logs and k_native < k:  # the same kernels: held to each other over all k steps
        out["max_rel"]["trainer_vs_keras"] = rel_to(logs["trainer"], logs["keras"][:k])
    out["rtol"] = rtol
    out["ok"] = all(v <= rtol for v in out["max_rel"].values())
    return out


def run_workload(w: W.Workload, pool: int, curve: int, block_s: float, n_rounds: int,
                 spe: bool, gate_rtol: float = GATE_RTOL) -> dict[str, Any]:
    weights, arrays = _weights(w), W.data(w, pool)
    makers = {"trainer": trainer_arm, "keras": keras_arm, "native": native_arm}
    arms = [makers[a](w, weights, arrays) for a in w.arms]
    if spe:
        arms.insert(1, trainer_arm(w, weights, arrays, spe=SPE))
    gate = _gate(arms, GATE_STEPS, curve, {f"trainer_spe{SPE}": SPE} if spe else {}, gate_rtol)
    epochs = _timing.epochs_per_block(arms, pool, block_s)
    result = _timing.summarize(_timing.rounds(arms, pool, epochs, n_rounds))
    result.update(gate=gate, steps_per_block=epochs * pool, batch_size=w.batch_size, pool_batches=pool)
    if spe:
        ms = result["ms_per_step"]
        result["spe_overhead_us_per_step"] = 1e3 * (ms[f"trainer_spe{SPE}"] - ms["native"])
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="same as --mode quick")
    parser.add_argument("--mode", choices=sorted(MODES), default=None)
    parser.add_argument("--workloads", default=None, help="comma-separated; the mode's list by default")
    parser.add_argument("--gate-rtol", type=float, default=GATE_RTOL)
    parser.add_argument("--precision", choices=("highest", "default"), default="highest",
                        help="gpu/dry modes: float32 matmuls (TF32 off) or the engine's default")
    parser.add_argument("--budget-s", type=float, default=0.0,
                        help="start no further workload after this many seconds (0: no limit)")
    args = parser.parse_args(argv)
    mode = args.mode or ("quick" if args.quick else "full")
    settings = MODES[mode]
    start = time.perf_counter()
    import keras

    backend = keras.backend.backend()
    keras.utils.set_random_seed(0)
    extra: dict[str, Any] = {}
    if mode in ("gpu", "dry"):
        extra = {"mode": mode, "precision": _precision(args.precision), **_device()}
    block_s, n_rounds, curve = settings["block_s"], settings["rounds"], settings["curve"]
    results: dict[str, Any] = {}
    skipped: list[str] = []
    for name in (args.workloads or settings["workloads"]).split(","):
        w = _workload(name, mode)
        if args.budget_s and time.perf_counter() - start > args.budget_s:
            skipped.append(name)
            print(f"[{backend}] {name}: skipped, over the {args.budget_s:.0f} s budget", file=sys.stderr, flush=True)
            continue
        pool = settings["pool"][0] if w is W.TINY else settings["pool"][1]
        if name == "resnet":
            pool = RESNET_POOL.get(mode, pool)
        print(f"[{backend}] {w.name} ...", file=sys.stderr, flush=True)
        t0 = time.perf_counter()
        results[w.name] = run_workload(w, pool, min(curve, pool), block_s, n_rounds, spe=w is W.TINY,
                                       gate_rtol=args.gate_rtol)
        results[w.name]["wall_s"] = time.perf_counter() - t0
    if skipped:
        extra["skipped"] = skipped
    print(RESULT_TAG + json.dumps({"backend": backend, "quick": mode == "quick", "python": platform.python_version(),
                                   "keras": keras.__version__, **extra, "workloads": results}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
