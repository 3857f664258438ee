"""The benchmark harness on this backend, tiny settings: arms start from the
same weights and its loss gate holds (the full run is ``python -m benchmarks``);
the first-call probe finds every phase it times, and the realistic workloads'
arms train, are timed, and agree (``benchmarks/first_call.py``,
``benchmarks/workloads_real.py``); a short run's arms are timed and agree
(``benchmarks/short_runs.py``); the scaling sweeps time every arm at every
point and write their report (``benchmarks/scaling.py``); the memory
benchmark measures every phase of every arm (``benchmarks/memory.py``); the torch
capture diagnosis reports every mode (``benchmarks/capture_diag.py``)."""

import math
import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import _first_call_report, first_call, memory, scaling, short_runs, workloads_real  # noqa: E402
from benchmarks import _workloads as W  # noqa: E402
from benchmarks._worker import run_workload  # noqa: E402


def test_tiny_mlp_gate_holds_and_every_arm_is_timed():
    result = run_workload(W.TINY, pool=32, curve=10, block_s=0.01, n_rounds=1, spe=True)
    assert result["gate"]["ok"], result["gate"]["max_rel"]
    assert set(result["ms_per_step"]) == {"trainer", "trainer_spe32", "keras", "native"}
    assert all(v > 0 for v in result["ms_per_step"].values())
    assert "trainer/native" in result["ratios"] and "spe_overhead_us_per_step" in result


ENGINE_PHASE = {"jax": "jax_trace", "tensorflow": "tf_trace", "torch": "capture_trace"}


@pytest.mark.parametrize("arm", ["trainer", "keras"])
def test_first_call_probes_find_every_phase(arm, capture_first):
    """(torch captures at the first call here: its first call otherwise runs
    eagerly, and the capture phases it probes would all read 0 s.)"""
    import keras

    out = first_call.worker("tiny", arm, profile=False)
    rows, backend = out["rows"], keras.backend.backend()
    assert out["missing"] == [], "probe points renamed or gone: the breakdown would read 0 s for them"
    assert rows["total"] > 0 and rows["compiled"] > 0 and out["second_s"] > 0 and out["fresh_again_s"] > 0
    assert rows["fit_rest"] > -1e-3, rows  # the timed parts do not add up to more than the whole call
    if arm == "trainer":
        assert rows["eager_step"] > 0 and rows[ENGINE_PHASE[backend]] > 0, rows
        assert rows["compiled"] >= rows[ENGINE_PHASE[backend]] - 1e-6
    elif backend != "torch":  # (model.fit on torch runs eagerly: nothing traced)
        assert rows[ENGINE_PHASE[backend]] > 0, rows
    text = _first_call_report.markdown([out], "test machine", 1, [])
    assert "**fit() first call, total**" in text and "Cut candidates" in text


@pytest.mark.parametrize("name", ["gpt", "lstm", "resnet"])
def test_real_workload_arms_train_and_trainer_matches_model_fit(name):
    runs = {arm: workloads_real.run_arm(name, arm, size="tiny", gate_steps=3, block_s=0.0, rounds=1,
                                               warmup_steps=6)
            for arm in ("trainer", "keras", "native")}
    for arm, r in runs.items():
        assert len(r["losses"]) == 3 and all(math.isfinite(v) and v > 0 for v in r["losses"]), (arm, r["losses"])
        assert math.isfinite(r["per_s"]) and r["per_s"] > 0 and r["first_call_s"] > 0, (arm, r)
        assert math.isfinite(r["rss_growth_mb"]) and r["rss_growth_mb"] >= 0, (arm, r)
        assert r["warmup_steps"] == 8 and r["warmup_s"] > 0, (arm, r)  # whole epochs of 4 batches
    losses = runs["trainer"]["losses"]
    assert losses[-1] < losses[0], losses  # it learns
    # Same weights, same batches, same Keras kernels: the same losses.
    assert workloads_real.max_rel(losses, runs["keras"]["losses"]) <= 1e-4
    # The native loop (torch: a torch.nn copy of the network) computes the same maths.
    assert workloads_real.max_rel(losses, runs["native"]["losses"]) <= 1e-3


def test_short_run_arms_are_timed_and_agree():
    import keras

    row = short_runs.run_model(short_runs.CHEAPEST, rounds=1, epochs=1, batches=3, batch_size=50)
    assert row["gate"]["ok"], row["gate"]  # same weights, shuffle=False: the same final loss
    assert row["trainer_s"] > 0 and row["keras_s"] > 0 and row["ratio"] > 0, row
    assert 0 < row["trainer_first_s"] <= row["trainer_s"] and 0 < row["keras_first_s"] <= row["keras_s"], row
    assert all(math.isfinite(run["loss"]) and run["loss"] > 0 for runs in row["runs"].values() for run in runs)
    result = {"backend": keras.backend.backend(), "warmup_s": 0.0, "rows": [row]}
    text = short_runs.markdown([result], "test machine", short_runs.MODES["quick"], [], "", True)
    assert f"| {short_runs.CHEAPEST} |" in text and "| gate |" in text


def test_scaling_times_every_arm_at_every_point(tmp_path, monkeypatch):
    import json

    import keras

    monkeypatch.setenv("LOOPS_TORCH_CAPTURE", "first")  # as the benchmark's workers run (torch: the replayed step)
    mode = dict(batches=(32,), widths=(64,), steps=3, block_s=0.0, rounds=1)
    res = scaling.run_backend(mode["batches"], mode["widths"], mode["steps"], mode["block_s"], mode["rounds"])
    assert list(res["points"]) == ["32x256", "128x64"], res["points"]  # one point per sweep
    paths = scaling.write([res], "test machine", mode, [], "", str(tmp_path), "scaling", quick=True)
    assert os.path.exists(paths["md"]) and os.path.exists(paths["json"])
    with open(paths["json"]) as f:
        saved = json.load(f)["results"][0]
    for key, point in saved["points"].items():
        ms = point["ms_per_step"]
        assert set(ms) == set(scaling.ARMS) and all(math.isfinite(v) and v > 0 for v in ms.values()), (key, point)
        if keras.backend.backend() == "torch":  # Keras's and torch's Adam update, each timed alone
            assert all(point["optimizer_ms"][k] > 0 for k in ("keras", "torch")), point
    assert "slope" in saved["overhead"], saved["overhead"]
    text = open(paths["md"]).read()
    assert "| batch | 32 | 256 |" in text and "| width | 128 | 64 |" in text and "Verdict:" in text
    assert ("Keras − torch Adam ms (alone)" in text) == (keras.backend.backend() == "torch"), text
    assert "FAILED" not in text and "—" not in text.split("## ")[-1], text


def test_memory_measures_every_phase_of_every_arm():
    import keras

    n, features = memory.SIZES["tiny"], 64
    runs = {arm: memory.run_arm(arm, n, features) for arm in memory.ARMS}
    for arm, r in runs.items():
        phases = ("fit",) if arm == "native" else memory.PHASES
        assert set(r["rss_mb"]) == set(phases), (arm, r)
        assert all(math.isfinite(v) and v >= 0 for v in r["rss_mb"].values()), (arm, r)
        assert math.isfinite(r["loss"]) and r["loss"] > 0, (arm, r)
    for arm in ("trainer", "keras"):
        assert runs[arm]["predict_shape"] == [n, memory.CLASSES], runs[arm]
        assert math.isfinite(runs[arm]["val_loss"]), runs[arm]
    # Same weights and data: one epoch leaves both at a loss near ln(10) (random labels).
    assert abs(runs["trainer"]["loss"] - runs["keras"]["loss"]) < 0.1 * runs["keras"]["loss"], runs
    text = memory.markdown({keras.backend.backend(): runs}, "test machine", "tiny", "", [])
    rows = [line for line in text.splitlines() if line.startswith(f"| {keras.backend.backend()} |")]
    assert len(rows) == len(memory.PHASES), text
    assert memory.verdict(100.0, 100.0) == "ok" and memory.verdict(200.0, 100.0) == "OVER"
    assert memory.verdict(10.0, 3.0) == "ok"  # under the noise floor


def test_memory_report_is_the_median_of_its_processes(capsys):
    """Each arm runs in several processes: the report shows per phase the
    median growth, and every process's value beside it."""
    def run(fit, evaluate):
        return {"arm": "trainer", "rss_mb": {"fit": fit, "evaluate": evaluate}, "device_mb": {"fit": None,
                "evaluate": None}, "seconds": {"fit": 1.0, "evaluate": 0.5}}

    merged = memory.median_run([run(30.0, 9.0), run(50.0, 1.0), run(31.0, 4.0)])
    assert merged["rss_mb"] == {"fit": 31.0, "evaluate": 4.0}
    assert merged["device_mb"] == {"fit": None, "evaluate": None}
    assert merged["rss_mb_runs"] == {"fit": [30.0, 50.0, 31.0], "evaluate": [9.0, 1.0, 4.0]}
    keras_arm = dict(memory.median_run([run(29.0, 2.0)]), arm="keras")
    text = memory.markdown({"jax": {"trainer": merged, "keras": keras_arm}}, "test machine", "tiny", "", [])
    assert "| jax | fit | 31 | 29 |" in text and "| 30,50,31 / 29 |" in text, text
    with pytest.raises(SystemExit):
        memory.main(["--repeats", "0"])
    assert "--repeats must be at least 1" in capsys.readouterr().err


def test_capture_diag_reports_each_mode_or_names_the_backend_it_needs(capsys):
    """``benchmarks/capture_diag.py`` (the torch GPU diagnosis): per mode, the
    step time, what the captured step chose and the profiler's counts; on
    another backend, an error naming KERAS_BACKEND=torch."""
    import keras

    from benchmarks import capture_diag

    argv = ["--size", "tiny", "--workloads", "resnet", "--modes", "keras,never,first"]
    if keras.backend.backend() != "torch":
        with pytest.raises(SystemExit):
            capture_diag.main(argv)
        assert "KERAS_BACKEND=torch" in capsys.readouterr().err
        return
    with pytest.raises(SystemExit):
        capture_diag.main(argv[:-1] + ["keras,sometimes"])
    assert "--modes takes" in capsys.readouterr().err
    assert capture_diag.main(argv) == 0
    lines = capsys.readouterr().out.splitlines()
    rows = {line.split()[1]: (line, detail) for line, detail in zip(lines[::2], lines[1::2])}
    assert set(rows) == {"keras", "never", "first"}
    for mode, (line, detail) in rows.items():
        assert float(line.split("ms/step")[1].split()[0]) > 0 and "copy_=" in line, line
    assert rows["keras"][1].strip() == "(model.fit)"
    assert "graphs=0" in rows["never"][1] and "graphs=1" in rows["first"][1], rows
