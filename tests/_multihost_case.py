"""One process of a multi-process ("multi-host") run, for tests/test_multihost.py.

Each process stands in for a host (one device each) and is started the way a
cluster starts it, with the engine's own environment:

    jax:         KERAS_DISTRIBUTION_JOB_ADDRESSES=127.0.0.1:PORT KERAS_DISTRIBUTION_NUM_PROCESSES=2 \\
                 KERAS_DISTRIBUTION_PROCESS_ID=i python tests/_multihost_case.py OUT MODE
    tensorflow:  TF_CONFIG='{"cluster": {"worker": [...]}, "task": {"type": "worker", "index": i}}' \\
                 python tests/_multihost_case.py OUT MODE
    torch:       torchrun --nnodes=2 --nproc-per-node=1 --rdzv-backend=c10d --rdzv-endpoint=127.0.0.1:PORT \\
                 tests/_multihost_case.py OUT MODE

The script adds one line to the single-process recipe, ``loops.data_parallel()``.

MODE ``runs``: the classic recipe of tests/_dist_case.py over both processes
(the global batch is the one-process batch): a whole run (checkpoints in
OUT/full), one epoch into OUT/half (which one process then continues), and the
continuation of a one-process epoch in OUT/from-one; then a checkpoint_dir
that is not shared (OUT/local-<rank>), whose resume must fail on every process.

MODE ``kill``: the whole run, slowed down, checkpointing every 3 steps into
OUT/kill, each process's pid in OUT/pid-rank<r> (the test kills one).

Each process writes OUT/<mode>-rank<r>.json: its results and the files it
opened for writing under OUT (an audit hook sees every open).
"""

import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import _dist_case  # noqa: E402

STEP_SECONDS = 0.25
TIMEOUT = 15  # seconds a process waits for a silent one (kill mode)


def _rank():
    for name in ("RANK", "KERAS_DISTRIBUTION_PROCESS_ID"):
        if name in os.environ:
            return int(os.environ[name])
    config = json.loads(os.environ.get("TF_CONFIG", "{}") or "{}")
    return int(config.get("task", {}).get("index", 0))


def _record_writes(out, written):
    """Every file this process opens for writing under OUT (checkpoints, temp files)."""
    root = os.path.realpath(out)

    def hook(event, args):
        if event == "open" and args and isinstance(args[0], (str, bytes, os.PathLike)):
            path, mode, flags = args[0], args[1], args[2] if len(args) > 2 else 0
            writing = (mode is not None and any(c in str(mode) for c in "wax+")) or (
                isinstance(flags, int) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT))
            if writing:
                full = os.path.realpath(os.fsdecode(path))
                if full.startswith(root + os.sep):
                    written.add(os.path.relpath(full, root))
        elif event in ("os.rename", "os.replace", "os.mkdir") and args:
            full = os.path.realpath(os.fsdecode(args[1] if event != "os.mkdir" else args[0]))
            if full.startswith(root + os.sep):
                written.add(os.path.relpath(full, root))

    sys.addaudithook(hook)


def _result(t, history):
    import keras

    _, (xv, yv) = _dist_case.data()
    return {"weights": [w.tolist() for w in t.get_weights()], "history": history.history,
            "evaluate": t.evaluate(xv, yv, batch_size=_dist_case.BATCH, verbose=0, return_dict=True),
            "predict": keras.ops.convert_to_numpy(t.predict(xv, batch_size=_dist_case.BATCH, verbose=0)).tolist()}


def runs(out):
    found = {}
    t = _dist_case.trainer()
    found["full"] = _result(t, _dist_case.fit(t, os.path.join(out, "full")))
    t = _dist_case.trainer()
    found["half"] = _result(t, _dist_case.fit(t, os.path.join(out, "half"), epochs=1))
    # checkpoint_dir on each host's own disk (a different path per process): the chief's checkpoints
    # are not where the others look, so resuming must fail on every process (not hang, not diverge)
    local = os.path.join(out, f"local-{_rank()}")
    _dist_case.fit(_dist_case.trainer(), local, epochs=1)
    try:
        _dist_case.fit(_dist_case.trainer(), local)
        found["local_disks"] = None
    except Exception as e:  # noqa: BLE001 - reported to the test
        found["local_disks"] = f"{type(e).__name__}: {e}"
    import keras

    found["label_error"] = _label_error(keras.backend.backend() == "jax")
    if os.path.isdir(os.path.join(out, "from-one")):
        t = _dist_case.trainer()
        found["from_one"] = _result(t, _dist_case.fit(t, os.path.join(out, "from-one")))
    return found


def _label_error(jax):
    """A label out of range on the last process's rows of the first global
    batch stops every process, naming the global row, with the weights as
    they were (jax: whether the first step's checks were only traced, recorded)."""
    import numpy as np

    traced = []
    if jax:
        from loops.backends.jax import first_call

        trace_only = first_call.trace_only
        first_call.trace_only = lambda fn, batch: traced.append(trace_only(fn, batch)) or traced[-1]
    try:
        t = _dist_case.trainer()
        before = [w.tolist() for w in t.get_weights()]
        (x, y), _ = _dist_case.data()
        bad = np.array(y)
        bad[_dist_case.BATCH - 1] = 9
        try:
            t.fit(x, bad, batch_size=_dist_case.BATCH, epochs=1, shuffle=False, verbose=0)
            error = None
        except ValueError as e:
            error = str(e)
        # softmax outputs under from_logits=True: every process warns (its checks see the same values)
        import warnings

        import keras

        model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(2, activation="softmax")])
        soft = type(t)(model, keras.optimizers.SGD(0.1), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            soft.fit(x, y, batch_size=_dist_case.BATCH, epochs=1, verbose=0)
        return {"traced": traced, "error": error, "unchanged": [w.tolist() for w in t.get_weights()] == before,
                "warned": any("already sum to 1" in str(w.message) for w in caught)}
    finally:
        if jax:
            first_call.trace_only = trace_only


def kill(out, rank):
    """The whole run, slowed down (so a kill from outside lands mid-epoch)."""
    import time

    import keras

    class Slow(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            time.sleep(STEP_SECONDS)

    with open(os.path.join(out, f"pid-rank{rank}"), "w") as f:  # for the test to kill this process
        f.write(str(os.getpid()))
    from loops import latest_checkpoint

    before = latest_checkpoint(os.path.join(out, "kill"))
    t = _dist_case.trainer()
    (x, y), val = _dist_case.data()
    history = t.fit(x, y, batch_size=_dist_case.BATCH, epochs=_dist_case.EPOCHS, validation_data=val, verbose=0,
                    checkpoint_dir=os.path.join(out, "kill"), checkpoint_every=3, keep=None, callbacks=[Slow()])
    return {"kill": _result(t, history), "resumed_from": None if before is None else before.global_step,
            "attempt": int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))}


def main():
    out, mode = sys.argv[1], sys.argv[2]
    rank = _rank()
    print("launched as:", {k: v for k, v in os.environ.items() if k.startswith(("TORCHELASTIC", "MASTER_", "GROUP_"))
                           or k in ("RANK", "WORLD_SIZE")}, file=sys.stderr, flush=True)
    written = set()
    if os.environ.get("KERAS_BACKEND") == "torch":
        import torch

        torch.set_num_threads(1)
    import loops

    loops.data_parallel(timeout=TIMEOUT if mode == "kill" else None)  # the one added line
    _record_writes(out, written)
    from loops import distributed

    replicas = distributed.current(_dist_case.trainer())
    result = {"rank": rank, "replicas": replicas.num_replicas, "processes": replicas.process_count,
              "process_index": replicas.process_index}
    result.update(runs(out) if mode == "runs" else kill(out, rank))
    result["written"] = sorted(written)
    with open(os.path.join(out, f"{mode}-rank{rank}.json.tmp"), "w") as f:
        json.dump(result, f)
    os.replace(os.path.join(out, f"{mode}-rank{rank}.json.tmp"), os.path.join(out, f"{mode}-rank{rank}.json"))


if __name__ == "__main__":
    main()
