"""What one Adam update costs on each side of a comparison with a native torch
loop: Keras's Adam (what ``Trainer.fit`` and ``model.fit`` both run) against
``torch.optim.Adam`` (the native arm's), on the parameters of the scaling
benchmark's MLP (``benchmarks/scaling.py``) at a given width (a diagnosis,
written for a GPU; runs anywhere).

    KERAS_BACKEND=torch python -m benchmarks.optimizer_diag [--widths 512,8192] [--repeats 20]

Prints ms per update (best of ``--repeats``, after 3 warm-ups, device synced):
``keras`` is ``optimizer.apply(grads)`` eagerly, as a step runs it;
``torch`` is ``torch.optim.Adam(...).step()`` with torch's default
implementation (``foreach`` on CUDA); ``torch_fused`` is ``fused=True``.
On an H200 the scaling benchmark's torch Trainer gained +0.75 ms/step over the
native loop at width 8192 (67M parameters) and none at width 512: this says
how much of that is the optimizer update, which ``model.fit`` pays as well.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

os.environ.setdefault("KERAS_BACKEND", "torch")


def best_ms(fn, repeats: int) -> float:
    import torch

    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    for _ in range(3):
        fn()
    sync()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync()
        best = min(best, time.perf_counter() - t0)
    return best * 1e3


def update_ms(width: int, repeats: int = 20, fused: bool = True) -> dict[str, float]:
    """ms per Adam update of the scaling MLP's parameters at ``width``:
    ``keras``, ``torch`` (and ``torch_fused`` when ``fused``), ``params_m``."""
    import keras
    import torch

    from benchmarks import _workloads as W
    from benchmarks import scaling

    w = scaling.workload(scaling.BASE_BATCH, width)
    model = W.keras_model(w.spec, w.input_shape, w.name)
    opt = keras.optimizers.Adam(W.LR, epsilon=W.EPS)
    opt.build(model.trainable_variables)
    grads = [torch.randn_like(v.value) * 1e-3 for v in model.trainable_variables]
    with torch.no_grad():
        out = {"keras": best_ms(lambda: opt.apply(grads, model.trainable_variables), repeats)}
    for name, kw in (("torch", {}), ("torch_fused", {"fused": True}))[:2 if fused else 1]:
        params = [torch.nn.Parameter(torch.randn_like(g)) for g in grads]
        for p, g in zip(params, grads):
            p.grad = g.clone()
        try:
            topt = torch.optim.Adam(params, lr=W.LR, eps=W.EPS, **kw)
            out[name] = best_ms(topt.step, repeats)
        except (RuntimeError, ValueError) as e:  # fused needs a device that has it
            print(f"  {name}: {type(e).__name__}: {str(e)[:100]}", file=sys.stderr)
    out["params_m"] = sum(g.numel() for g in grads) / 1e6
    return out


def run(width: int, repeats: int) -> dict[str, float]:
    import torch

    out = update_ms(width, repeats)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    print(f"width {width} ({out['params_m']:.1f}M params, {device}): "
          + ", ".join(f"{k} {v:.3f} ms" for k, v in out.items() if k != "params_m"), flush=True)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.optimizer_diag", description=__doc__.split("\n")[0])
    p.add_argument("--widths", default="512,8192")
    p.add_argument("--repeats", type=int, default=20)
    a = p.parse_args(argv)
    for width in (int(v) for v in a.widths.split(",") if v):
        run(width, a.repeats)
    return 0


if __name__ == "__main__":
    sys.exit(main())
