"""Multi-process runs standing in for hosts, and a worker killed mid-epoch (issue #20).

Two processes on 127.0.0.1, one device each, started the way a cluster starts
them (tests/_multihost_case.py): jax joined by ``keras.distribution.initialize``
from ``KERAS_DISTRIBUTION_*``, tensorflow's ``MultiWorkerMirroredStrategy``
from ``TF_CONFIG``, torch by two ``torchrun --nnodes=2`` agents meeting at a
c10d rendezvous. Each run must end with the weights, History, ``evaluate`` and
``predict`` of one process with the same global batch, the chief alone writing
files, and checkpoints moving between 2 processes and 1 in both directions.

Then one process is killed with SIGKILL mid-epoch: under ``torchrun
--max-restarts`` the group restarts and resumes with no one's help; on jax and
tensorflow the survivor stops within a bounded wait with ``loops.ProcessLost``
naming the last checkpoint, which is intact, and the same launch command run
again resumes and ends as the uninterrupted run.

Every launch is bounded; processes (and their children) are killed on failure.
"""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import BACKEND

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import _dist_case  # noqa: E402
import _multihost_case  # noqa: E402

from loops import latest_checkpoint  # noqa: E402

CASE = os.path.join(HERE, "_multihost_case.py")
LIMIT = 240  # seconds a launch may take before the test kills it and fails

pytestmark = pytest.mark.skipif(
    BACKEND == "jax" and not hasattr(__import__("jax").config, "jax_cpu_collectives_implementation"),
    reason="jax multi-process CPU collectives (gloo) need jax >= 0.4.31")


def _free_ports(n):
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


class Launch:
    """The engine's 2-"host" launch of tests/_multihost_case.py OUT MODE, one
    Popen per host (its own session, so its children die with it)."""

    def __init__(self, out, mode, ports, restarts=0, agents=2):
        self.out, self.mode = str(out), mode
        env = dict(os.environ, KERAS_BACKEND=BACKEND, OMP_NUM_THREADS="1", TF_CPP_MIN_LOG_LEVEL="2",
                   PYTHONUNBUFFERED="1")
        env.pop("XLA_FLAGS", None)  # one device per process
        self.procs, self.logs = [], []
        for host in range(agents):  # (torch with agents=1: one torchrun agent starts both processes)
            host_env = dict(env)
            if BACKEND == "jax":
                host_env.update(KERAS_DISTRIBUTION_JOB_ADDRESSES=f"127.0.0.1:{ports[0]}",
                                KERAS_DISTRIBUTION_NUM_PROCESSES="2", KERAS_DISTRIBUTION_PROCESS_ID=str(host))
                cmd = [sys.executable, CASE, self.out, mode]
            elif BACKEND == "tensorflow":
                host_env["TF_CONFIG"] = json.dumps({"cluster": {"worker": [f"127.0.0.1:{p}" for p in ports]},
                                                    "task": {"type": "worker", "index": host}})
                cmd = [sys.executable, CASE, self.out, mode]
            else:
                nodes = (["--nnodes=2", "--nproc-per-node=1"] if agents == 2 else
                         ["--nnodes=1", "--nproc-per-node=2"])
                cmd = [sys.executable, "-m", "torch.distributed.run", *nodes,
                       "--rdzv-backend=c10d", f"--rdzv-endpoint=127.0.0.1:{ports[0]}", "--rdzv-id=loops-test",
                       f"--max-restarts={restarts}", "--monitor-interval=0.5", CASE, self.out, mode]
            log = open(os.path.join(self.out, f"{mode}-host{host}-{time.monotonic_ns()}.log"), "w")
            self.logs.append(log)
            self.procs.append(subprocess.Popen(cmd, env=host_env, stdout=log, stderr=subprocess.STDOUT,
                                               start_new_session=True, cwd=os.path.dirname(HERE)))

    def wait(self, limit=LIMIT):
        """Every host's exit status (each within ``limit`` seconds, else all are killed and the test fails)."""
        deadline = time.monotonic() + limit
        try:
            for p in self.procs:
                p.wait(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            self.kill()
            pytest.fail(f"the {BACKEND} {self.mode} launch ran past {limit} s (a hang):\n" + self.output()[-6000:])
        return [p.returncode for p in self.procs]

    def kill(self):
        for p in self.procs:
            if p.poll() is None:
                try:
                    os.killpg(p.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                p.wait()

    def output(self):
        for log in self.logs:
            log.flush()
        return "\n".join(open(log.name).read() for log in self.logs)


@pytest.fixture(scope="module")
def reference():
    """One process, the same global batch: the run every multi-process run must equal."""
    return _dist_case.classic()


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The ``runs`` mode over 2 processes; OUT/from-one holds one epoch of one process to continue."""
    out = tmp_path_factory.mktemp(f"multihost-{BACKEND}")
    t = _dist_case.trainer()
    _dist_case.fit(t, str(out / "from-one"), epochs=1)
    launch = Launch(out, "runs", _free_ports(2))
    try:
        codes = launch.wait()
    finally:
        launch.kill()
    assert codes == [0, 0], launch.output()[-6000:]
    return out, [json.load(open(out / f"runs-rank{r}.json")) for r in range(2)]


def _assert_run_equal(got, expected, atol=1e-5, what=""):
    for a, b in zip(got["weights"], expected["weights"]):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=0, atol=atol, err_msg=f"{what} weights")
    assert set(got["history"]) == set(expected["history"]), what
    for key, values in expected["history"].items():
        np.testing.assert_allclose(got["history"][key], values, rtol=0, atol=atol, err_msg=f"{what} {key}")
    if "evaluate" in got:
        for key, value in expected["evaluate"].items():
            assert got["evaluate"][key] == pytest.approx(value, abs=atol), (what, key)
        np.testing.assert_allclose(got["predict"], expected["predict"], rtol=0, atol=atol, err_msg=f"{what} predict")


def test_two_hosts_train_evaluate_and_predict_like_one_process(runs, reference):
    _, ranks = runs
    for rank in ranks:
        assert (rank["processes"], rank["replicas"]) == (2, 2), rank["process_index"]
        _assert_run_equal(rank["full"], reference, what=f"rank {rank['rank']}")
    assert [r["process_index"] for r in ranks] == [0, 1]


def test_a_label_error_on_one_process_s_rows_stops_every_process_with_the_weights_as_they_were(runs):
    """No process trains on while another stops (it would wait in a collective):
    each one's first-step checks see the whole global batch. On jax the first
    step is traced, not run eagerly op by op: its compiled first call's labels
    and predictions, split among the processes, are gathered once for them."""
    _, results = runs
    for rank, result in enumerate(results):
        got = result["label_error"]
        if BACKEND == "jax":
            assert got["traced"] and all(got["traced"]), (rank, got["traced"])
        assert got["error"] and "range over 0..9" in got["error"], (rank, got["error"])
        assert f"rows [{_dist_case.BATCH - 1}]" in got["error"], (rank, got["error"])  # the global batch's row
        assert got["unchanged"], rank
        assert got["warned"], rank  # softmax outputs with from_logits=True: the value checks ran everywhere


def test_only_the_chief_writes_files(runs):
    out, ranks = runs
    assert ranks[1]["written"] == [], ranks[1]["written"]  # not a checkpoint, not a temp file, not a probe
    chief = ranks[0]["written"]
    assert any(p.startswith("full/ckpt-") or p.startswith("full/.ckpt-") for p in chief), chief
    names = sorted(os.listdir(out / "full"))
    assert names and all(n.startswith("ckpt-") for n in names), names  # whole checkpoints, no leftovers
    assert latest_checkpoint(out / "full").global_step == _dist_case.EPOCHS * _dist_case.STEPS_PER_EPOCH


def test_a_checkpoint_moves_from_two_processes_to_one_and_from_one_to_two(runs, reference, tmp_path):
    out, ranks = runs
    # two -> one: one epoch on 2 processes, continued here by one process
    half = tmp_path / "half"
    shutil.copytree(out / "half", half)
    assert latest_checkpoint(half).epoch == 1  # (the end of epoch 1: the next run starts epoch 2)
    t = _dist_case.trainer()
    history = _dist_case.fit(t, str(half))
    _assert_run_equal({"weights": t.get_weights(), "history": history.history}, reference, what="2 -> 1")
    # one -> two: one epoch of one process, continued by the 2 processes
    _assert_run_equal(ranks[0]["from_one"], reference, what="1 -> 2")


def test_a_checkpoint_dir_the_processes_do_not_share_fails_on_every_process(runs):
    """Each process its own checkpoint_dir (a host's local disk): only the chief's holds checkpoints.
    Resuming must not let the chief resume while the other starts over: all stop with the fix."""
    _, ranks = runs
    for rank in ranks:
        error = rank["local_disks"]
        assert error is not None and error.startswith("CheckpointError"), error
        assert "checkpoint_dir must be a directory every process sees" in error, error
    assert "process 1 cannot read it" in ranks[1]["local_disks"]


def _kill_after_first_checkpoint(out, launch, victim=1, limit=LIMIT):
    """SIGKILL to process ``victim`` from outside once the first checkpoint exists (mid-epoch: it is
    written before step 4 of 7, and steps take 0.25 s)."""
    first = out / "kill" / "ckpt-000000"
    pid_file = out / f"pid-rank{victim}"
    deadline = time.monotonic() + limit
    while not (first.exists() and pid_file.exists()):
        if time.monotonic() > deadline or any(p.poll() is not None for p in launch.procs):
            launch.kill()
            pytest.fail("the run ended or hung before its first checkpoint:\n" + launch.output()[-6000:])
        time.sleep(0.05)
    time.sleep(0.3)  # into step 4 or 5
    os.kill(int(pid_file.read_text()), signal.SIGKILL)
    os.remove(pid_file)


@pytest.mark.skipif(BACKEND != "torch", reason="torchrun restarts the group; jax and tensorflow stop (below)")
@pytest.mark.parametrize("agents, victim", [(2, 1), (1, 0)], ids=["nnodes=2-kill-rank1", "nproc-per-node=2-kill-chief"])
def test_torchrun_restarts_after_a_killed_worker_and_ends_as_the_uninterrupted_run(runs, reference, tmp_path,
                                                                                   agents, victim):
    launch = Launch(tmp_path, "kill", _free_ports(1), restarts=2, agents=agents)
    try:
        _kill_after_first_checkpoint(tmp_path, launch, victim)
        codes = launch.wait()
    finally:
        launch.kill()
    assert codes == [0] * agents, launch.output()[-6000:]
    ranks = [json.load(open(tmp_path / f"kill-rank{r}.json")) for r in range(2)]
    # restarted (the dead worker's agent counts a failure; the other restarts for the new round) and
    # resumed, not started afresh, both from the same step
    assert max(rank["attempt"] for rank in ranks) >= 1, [rank["attempt"] for rank in ranks]
    for rank in ranks:
        assert rank["resumed_from"] >= 3, rank["resumed_from"]
        _assert_run_equal(rank["kill"], runs[1][0]["full"], atol=0, what="restarted (bitwise)")
        _assert_run_equal(rank["kill"], reference, what="restarted vs one process")
    assert ranks[0]["resumed_from"] == ranks[1]["resumed_from"]


@pytest.mark.skipif(BACKEND == "torch", reason="torch: restarted by torchrun (above)")
def test_survivor_of_a_killed_worker_stops_with_process_lost_and_a_relaunch_resumes(reference, tmp_path):
    ports = _free_ports(2)
    launch = Launch(tmp_path, "kill", ports)
    try:
        _kill_after_first_checkpoint(tmp_path, launch)
        start = time.monotonic()
        codes = launch.wait(limit=_multihost_case.TIMEOUT + 60)  # bounded: no hang
        waited = time.monotonic() - start
        print(f"the survivor exited {waited:.1f} s after the kill")
    finally:
        launch.kill()
    output = launch.output()
    assert codes[1] == -signal.SIGKILL and codes[0] != 0, (codes, output[-6000:])
    assert "loops.distributed.ProcessLost: Process 0 of 2" in output, output[-6000:]
    assert "lost process 1:" in output  # named
    assert "The last checkpoint is" in output and "run the same launch command again" in output
    ckpt = latest_checkpoint(tmp_path / "kill")  # intact: it reads and passes its checksum
    assert ckpt is not None and ckpt.global_step >= 3 and ckpt.epoch == 0, ckpt
    assert str(ckpt.path) in output  # the error names it
    assert waited < _multihost_case.TIMEOUT + 60
    assert not (tmp_path / "kill-rank0.json").exists()

    again = Launch(tmp_path, "kill", ports)  # the same launch command
    try:
        codes = again.wait()
    finally:
        again.kill()
    assert codes == [0, 0], again.output()[-6000:]
    for r in range(2):
        got = json.load(open(tmp_path / f"kill-rank{r}.json"))
        assert got["resumed_from"] == ckpt.global_step, got["resumed_from"]
        _assert_run_equal(got["kill"], reference, what=f"relaunched rank {r}")


@pytest.mark.parametrize("bad", [0, -5, "10", True])
def test_data_parallel_refuses_a_timeout_that_is_not_positive_seconds(bad):
    import loops

    with pytest.raises(ValueError, match=r"timeout=.*positive number of seconds, got " + repr(bad).replace("'", ".")):
        loops.data_parallel(timeout=bad)

