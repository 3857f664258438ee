"""The benchmark harness on this backend, tiny settings: arms start from the
same weights and its loss gate holds (the full run is ``python -m benchmarks``)."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import _workloads as W  # noqa: E402
from benchmarks._worker import run_workload  # noqa: E402


def test_tiny_mlp_gate_holds_and_every_arm_is_timed():
    result = run_workload(W.TINY, pool=32, curve=10, block_s=0.01, n_rounds=1, spe=True)
    assert result["gate"]["ok"], result["gate"]["max_rel"]
    assert set(result["ms_per_step"]) == {"trainer", "trainer_spe32", "keras", "native"}
    assert all(v > 0 for v in result["ms_per_step"].values())
    assert "trainer/native" in result["ratios"] and "spe_overhead_us_per_step" in result
