"""Memory: peak host memory (and device memory on a GPU) of ``Trainer.fit``,
``evaluate`` and ``predict`` against Keras's and a native loop's, on data that
does not fit in a cache.

    python -m benchmarks.memory            # 312.5 MiB of float32 inputs (80,000 x 1024)
    python -m benchmarks.memory --quick    # 39 MiB (10,000 x 1024), < 4 minutes

The case: an MLP (1024 -> Dense(256, relu) -> Dense(10)), Adam, sparse
cross-entropy from logits, batch 256, one epoch of ``fit(x, y,
validation_split=0.1)`` on NumPy arrays, then ``evaluate(x, y)`` and
``predict(x)`` on all of them. Arms: (a) ``Trainer``, (b) Keras ``model.fit``
/ ``evaluate`` / ``predict`` (``verbose=0``), (c) the hand-written loop of
``benchmarks/_native.py`` over slices of the same arrays (it trains on the
same 90%; no validation, evaluate or predict pass). Each (backend, arm) runs
in its own process, so a peak is its own: the data and the model are made
first, then the peak RSS is reset (``/proc/self/clear_refs``) before each
phase and its growth read after it; each arm runs in 3 processes
(``--repeats``), interleaved with the others, and the report shows the
medians (one process's growth varies by ~10 MB: where the allocator's heap
stands). On a GPU the device's peak bytes in use
(jax ``memory_stats``, torch ``max_memory_allocated``) are read the same way;
tensorflow's are read through ``tf.config.experimental.get_memory_info``.

Verdict per phase: the Trainer holds no more than ``model.fit`` + 5% (growth
under 8 MB counts as level: allocator noise). Writes
``benchmarks/results/memory{_quick}.{md,json}``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from typing import Any

from benchmarks import _timing
from benchmarks.workloads_real import _peak_growth_mb, _peak_reset

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
BACKENDS = ("jax", "tensorflow", "torch")
ARMS = ("trainer", "keras", "native")
PHASES = ("fit", "evaluate", "predict")
TAG = "MEMORY "
SIZES = {"full": 80_000, "quick": 10_000, "tiny": 1_000}
FEATURES, WIDTH, CLASSES, BATCH = 1024, 256, 10, 256
SLACK = 1.05
NOISE_MB = 8.0


def data(n: int, features: int = FEATURES) -> tuple[Any, Any]:
    import numpy as np

    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, features), dtype=np.float32)
    y = rng.integers(0, CLASSES, size=(n,)).astype(np.int32)
    return x, y


def _model(features: int) -> Any:
    import keras

    keras.utils.set_random_seed(0)
    return keras.Sequential([keras.Input((features,)), keras.layers.Dense(WIDTH, activation="relu"),
                             keras.layers.Dense(CLASSES)])


class _Device:
    """Peak device memory in bytes where there is a GPU (None otherwise)."""

    def __init__(self) -> None:
        import keras

        self.backend = keras.backend.backend()
        self.gpu = False
        if self.backend == "jax":
            import jax

            self.device = jax.devices()[0]
            self.gpu = self.device.platform == "gpu"
        elif self.backend == "torch":
            import torch

            self.gpu = torch.cuda.is_available()
        else:
            import tensorflow as tf

            self.gpu = bool(tf.config.list_logical_devices("GPU"))

    def reset(self) -> float:
        if not self.gpu:
            return 0.0
        if self.backend == "torch":
            import torch

            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            return float(torch.cuda.memory_allocated())
        if self.backend == "tensorflow":
            import tensorflow as tf

            tf.config.experimental.reset_memory_stats("GPU:0")
            return float(tf.config.experimental.get_memory_info("GPU:0")["current"])
        return float(self.device.memory_stats().get("bytes_in_use", 0))  # jax keeps no resettable peak

    def growth_mb(self, before: float) -> float | None:
        if not self.gpu:
            return None
        if self.backend == "torch":
            import torch

            torch.cuda.synchronize()
            peak = float(torch.cuda.max_memory_allocated())
        elif self.backend == "tensorflow":
            import tensorflow as tf

            peak = float(tf.config.experimental.get_memory_info("GPU:0")["peak"])
        else:
            peak = float(self.device.memory_stats().get("peak_bytes_in_use", 0))
        return max(0.0, peak - before) / 2**20


def run_arm(arm: str, n: int, features: int = FEATURES) -> dict[str, Any]:
    """One arm's three phases in this process: peak RSS growth (MB) and,
    on a GPU, peak device memory growth per phase; the fit's final loss."""
    import keras
    import numpy as np

    x, y = data(n, features)
    model = _model(features)
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    opt = keras.optimizers.Adam(1e-3)
    device = _Device()
    out: dict[str, Any] = {"arm": arm, "n": n, "features": features, "data_mb": (x.nbytes + y.nbytes) / 2**20,
                           "rss_mb": {}, "device_mb": {}, "seconds": {}}

    def phase(name: str, fn: Any) -> Any:
        method, before = _peak_reset()
        dev_before = device.reset()
        start = time.perf_counter()
        result = fn()
        out["seconds"][name] = time.perf_counter() - start
        out["rss_mb"][name] = _peak_growth_mb(method, before)
        out["device_mb"][name] = device.growth_mb(dev_before)
        out["rss_method"] = method
        return result

    if arm == "native":
        from benchmarks import _native, _workloads

        keep = int(n * 0.9)  # validation_split=0.1 holds out the last 10%
        batches = _workloads.batches({"x": x[:keep], "y": y[:keep]}, BATCH)
        backend = keras.backend.backend()
        if backend == "jax":
            native = _native.jax_model_arm(model, batches)
        elif backend == "tensorflow":
            native = _native.tf_model_arm(model, batches)
        else:
            spec = (("dense", WIDTH, "relu"), ("dense", CLASSES, None))  # the same MLP in torch.nn
            native = _native.torch_net_arm(_workloads.torch_module(spec, model.get_weights()), batches)
        phase("fit", lambda: native.run(1))
        out["loss"] = float(np.asarray(native.sync(native.step(native.batches[0])["loss"])))
        return out
    if arm == "trainer":
        from loops import Trainer

        fitter: Any = Trainer(model, opt, loss)
    else:
        model.compile(opt, loss)
        fitter = model
    history = phase("fit", lambda: fitter.fit(x, y, batch_size=BATCH, epochs=1, validation_split=0.1,
                                              shuffle=True, verbose=0))
    out["loss"] = float(history.history["loss"][-1])
    out["val_loss"] = float(history.history["val_loss"][-1])
    phase("evaluate", lambda: fitter.evaluate(x, y, batch_size=BATCH, verbose=0))
    preds = phase("predict", lambda: fitter.predict(x, batch_size=BATCH, verbose=0))
    out["predict_shape"] = list(np.shape(preds))
    return out


def median_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One arm's processes as one result: per phase the median of each
    measure, and every process's peak growth in ``rss_mb_runs``."""
    out = dict(runs[0])
    for key in ("rss_mb", "device_mb", "seconds"):
        out[key] = {}
        for ph in runs[0][key]:
            values = [r[key][ph] for r in runs if r[key].get(ph) is not None]
            out[key][ph] = statistics.median(values) if values else None
    out["rss_mb_runs"] = {ph: [r["rss_mb"][ph] for r in runs] for ph in runs[0]["rss_mb"]}
    return out


def verdict(a: float | None, b: float | None) -> str:
    """ok when the Trainer's growth is within model.fit's + 5% (or both under the noise floor)."""
    if a is None or b is None:
        return "—"
    return "ok" if a <= b * SLACK or a - b <= NOISE_MB else "OVER"


def markdown(results: dict[str, dict[str, Any]], machine: str, size: str, note: str, failed: list[str]) -> str:
    n = SIZES[size]
    mib = n * (FEATURES + 1) * 4 / 2**20
    lines = ["# Memory: peak host (and device) memory per arm", "",
             f"Machine: {machine}. Data: x {n:,} x {FEATURES} float32 + int32 labels ({mib:.1f} MiB), made "
             "before the peak is reset. MLP 1024-256-10, Adam, sparse cross-entropy from logits, batch "
             f"{BATCH}. fit: one epoch, `validation_split=0.1`, shuffled; evaluate and predict: all rows. "
             "Each (backend, arm) in its own processes (arms interleaved); per phase the growth of the "
             "peak RSS over the RSS before it (MB), the median over the processes (each one's in the last "
             "column: a / b). a = Trainer, b = Keras (`model.fit` / `evaluate` / `predict`), c = native "
             "loop (fit only: the same 90%, no validation pass). Verdict: a <= b x 1.05, or a - b <= "
             f"{NOISE_MB:g} MB (allocator noise).", ""]
    if note:
        lines += [f"Note: {note}", ""]
    if failed:
        lines += [f"Failed: {', '.join(failed)}", ""]
    lines += ["| backend | phase | a MB | b MB | c MB | a / b | verdict | seconds (a / b / c) | device MB (a / b / c) "
              "| per process MB (a / b) |", "|---" * 10 + "|"]
    fmt = lambda v: "—" if v is None else f"{v:.0f}"  # noqa: E731
    for backend, arms in results.items():
        for ph in PHASES:
            get = lambda arm, key: (arms.get(arm) or {}).get(key, {}).get(ph)  # noqa: E731
            a, b, c = (get(arm, "rss_mb") for arm in ARMS)
            ratio = f"{a / b:.2f}" if a is not None and b else "—"
            secs = " / ".join("—" if get(arm, "seconds") is None else f"{get(arm, 'seconds'):.1f}" for arm in ARMS)
            dev = " / ".join(fmt(get(arm, "device_mb")) for arm in ARMS)
            each = " / ".join(",".join(fmt(v) for v in ((arms.get(arm) or {}).get("rss_mb_runs") or {}).get(ph, []))
                              or "—" for arm in ARMS[:2])
            lines.append(f"| {backend} | {ph} | {fmt(a)} | {fmt(b)} | {fmt(c)} | {ratio} | {verdict(a, b)} "
                         f"| {secs} | {dev} | {each} |")
    return "\n".join(lines) + "\n"


def _worker(a: argparse.Namespace) -> int:
    import warnings

    import keras

    warnings.filterwarnings("ignore")
    result = run_arm(a.arm, SIZES[a.size])
    result["backend"] = keras.backend.backend()
    print(TAG + json.dumps(result), flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.memory", description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="39 MiB of data instead of 312.5 MiB")
    p.add_argument("--backends", default=",".join(BACKENDS))
    p.add_argument("--arms", default=",".join(ARMS))
    p.add_argument("--out", default=RESULTS)
    p.add_argument("--note", default="", help="a line for the report's head (e.g. the machine's load)")
    p.add_argument("--repeats", type=int, default=3,
                   help="processes per (backend, arm), arms interleaved; the report shows medians")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--arm", default="trainer", help=argparse.SUPPRESS)
    p.add_argument("--size", default=None, choices=sorted(SIZES), help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    a.size = a.size or ("quick" if a.quick else "full")
    if a.repeats < 1:
        p.error(f"--repeats must be at least 1 (processes per arm), got {a.repeats}")
    if a.worker:
        return _worker(a)
    start = time.perf_counter()
    results: dict[str, dict[str, Any]] = {}
    failed: list[str] = []
    for backend in a.backends.split(","):
        runs: dict[str, list[dict[str, Any]]] = {arm: [] for arm in a.arms.split(",")}
        for i in range(a.repeats):
            for arm in runs:
                env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="3")
                cmd = [sys.executable, "-m", "benchmarks.memory", "--worker", "--arm", arm, "--size", a.size]
                print(f"[{backend}] {arm} {i + 1}/{a.repeats} ...", file=sys.stderr, flush=True)
                got = _timing.run_worker(cmd, env, TAG, f"{backend} {arm}", timeout=1800)
                if got is None:
                    failed.append(f"{backend}/{arm}")
                else:
                    runs[arm].append(got)
        results[backend] = {arm: median_run(got) for arm, got in runs.items() if got}
    from benchmarks.__main__ import _machine

    text = markdown(results, _machine(), a.size, a.note, failed)
    print(text)
    stem = "memory_quick" if a.size == "quick" else "memory" if a.size == "full" else f"memory_{a.size}"
    os.makedirs(a.out, exist_ok=True)
    with open(os.path.join(a.out, f"{stem}.md"), "w") as f:
        f.write(text)
    with open(os.path.join(a.out, f"{stem}.json"), "w") as f:
        json.dump({"machine": _machine(), "note": a.note, "size": a.size, "failed": failed, "results": results},
                  f, indent=1)
    print(f"wrote {a.out}/{stem}.{{md,json}} in {time.perf_counter() - start:.0f} s", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
