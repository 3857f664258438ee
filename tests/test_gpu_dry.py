"""``benchmarks/gpu.sh --dry`` on this backend: the GPU proof's script runs on
CPU at tiny sizes (a smoke selection of the core tests, then the benchmark's
GPU mode with the ResNet-style workload, then the realistic-workload
benchmark of the startup and memory phase, then the scaling sweep), its loss
gates hold and it writes the reports (the real run, on a CUDA machine, is ``bash benchmarks/gpu.sh``)."""

import json
import os
import subprocess
import sys

import pytest
from conftest import BACKEND

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.skipif(BACKEND == "tensorflow", reason="the GPU run is jax's and torch's (GPU_BACKENDS): "
                    "tensorflow's GPU wheel does not go to the GPU machine")
def test_gpu_sh_dry_runs_the_tests_and_the_gpu_benchmark(tmp_path):
    env = dict(os.environ, GPU_BACKENDS=BACKEND, OUT=str(tmp_path), PYTHON=sys.executable, GPU_SCALING="1")
    proc = subprocess.run(["bash", os.path.join(ROOT, "benchmarks", "gpu.sh"), "--dry"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert f"tests on {BACKEND}: exit 0" in proc.stdout, proc.stdout[-4000:]
    with open(tmp_path / "gpu_dry.json") as f:
        (result,) = json.load(f)["results"]
    assert result["backend"] == BACKEND and result["mode"] == "dry"
    assert set(result["workloads"]) == {"tiny_mlp", "gan", "resnet"}
    for name, wl in result["workloads"].items():
        assert wl["gate"]["ok"], (name, wl["gate"]["max_rel"])
        assert all(v > 0 for v in wl["ms_per_step"].values()), name
    assert set(result["workloads"]["resnet"]["ms_per_step"]) == {"trainer", "keras", "native"}
    assert "| resnet (b8) |" in (tmp_path / "gpu_dry.md").read_text()
    assert (tmp_path / f"junit-{BACKEND}.xml").exists() and (tmp_path / "run.log").exists()
    # Phase 3 (startup and memory): the realistic workload's report, gate held.
    with open(tmp_path / "startup" / BACKEND / "workloads_real_quick_tiny.json") as f:
        real = json.load(f)
    arms = real["results"][BACKEND]["resnet"]
    assert set(arms) == {"trainer", "keras", "_gate"} and not real["failed"]
    assert arms["_gate"]["trainer_vs_keras"] <= 1e-4
    assert all(arms[arm]["per_s"] > 0 and "device_mb" in arms[arm] for arm in ("trainer", "keras"))
    # Phase 4 (scaling, opt-in): every arm timed at every point, the overhead's slope reported.
    with open(tmp_path / "scaling" / BACKEND / "scaling.json") as f:
        scaling = json.load(f)
    (res,) = scaling["results"]
    assert res["backend"] == BACKEND and not scaling["failed"]
    assert set(res["points"]) == {"16x256", "32x256", "128x8"}
    assert all(set(p["ms_per_step"]) == {"trainer", "keras", "native"} for p in res["points"].values())
    assert "slope" in res["overhead"]
    assert len(os.listdir(tmp_path)) <= 8  # what the device tool brings back from $OUT
