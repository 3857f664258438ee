"""One backend's benchmark, run in its own process (``KERAS_BACKEND`` set by
the parent): loss gate, first-call times, timing rounds; prints one JSON line."""

from __future__ import annotations

import argparse
import json
import platform
import sys
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


def _weights(w: W.Workload) -> Any:
    if w is W.GAN:
        return {"generator": W.initial_weights(W.keras_model(W.GENERATOR, (W.LATENT,), "g"), 1),
                "discriminator": W.initial_weights(W.keras_model(W.DISCRIMINATOR, (784,), "d"), 2)}
    return W.initial_weights(W.keras_model(w.spec, w.input_shape, w.name), 0)


def _gate(arms: list[Any], k: int, curve: int, per_call: dict[str, int]) -> dict[str, Any]:
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
    out["ok"] = all(v <= GATE_RTOL for v in out["max_rel"].values())
    return out


def run_workload(w: W.Workload, pool: int, curve: int, block_s: float, n_rounds: int,
                 spe: bool) -> dict[str, Any]:
    weights, arrays = _weights(w), W.data(w, pool)
    makers = {"trainer": trainer_arm, "keras": keras_arm, "native": native_arm}
    arms = [makers[a](w, weights, arrays) for a in w.arms]
    if spe:
        arms.insert(1, trainer_arm(w, weights, arrays, spe=SPE))
    gate = _gate(arms, GATE_STEPS, curve, {f"trainer_spe{SPE}": SPE})
    epochs = _timing.epochs_per_block(arms, pool, block_s)
    result = _timing.summarize(_timing.rounds(arms, pool, epochs, n_rounds))
    result.update(gate=gate, steps_per_block=epochs * pool, batch_size=w.batch_size, pool_batches=pool)
    if spe:
        ms = result["ms_per_step"]
        result["spe_overhead_us_per_step"] = 1e3 * (ms[f"trainer_spe{SPE}"] - ms["native"])
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--workloads", default=",".join(w.name for w in W.ALL))
    args = parser.parse_args(argv)
    import keras

    backend = keras.backend.backend()
    keras.utils.set_random_seed(0)
    quick = args.quick
    block_s, n_rounds, curve = (0.2, 3, 30) if quick else (1.0, 5, 60)
    results: dict[str, Any] = {}
    for w in W.ALL:
        if w.name not in args.workloads.split(","):
            continue
        pool = (64 if quick else 256) if w is W.TINY else (32 if quick else 128)  # batches, % SPE == 0
        print(f"[{backend}] {w.name} ...", file=sys.stderr, flush=True)
        results[w.name] = run_workload(w, pool, curve, block_s, n_rounds, spe=w is W.TINY)
    print(RESULT_TAG + json.dumps({"backend": backend, "quick": quick, "python": platform.python_version(),
                                   "keras": keras.__version__, "workloads": results}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
