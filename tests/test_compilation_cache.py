"""``loops.compilation_cache``: jax keeps every compiled program for the next
process (which then compiles nothing and trains the same numbers); tensorflow
and torch have nothing to keep and say so by returning None."""

import json
import os
import subprocess
import sys

import pytest

import loops
from conftest import BACKEND

SCRIPT = """
import json, sys
import keras, numpy as np
import loops
what = loops.compilation_cache()
rng = np.random.default_rng(0)
x, y = rng.normal(size=(64, 5)).astype("float32"), rng.normal(size=(64, 1)).astype("float32")
model = keras.Sequential([keras.Input((5,)), keras.layers.Dense(8, activation="relu"), keras.layers.Dense(1)])
model.set_weights([rng.normal(0, 0.3, size=w.shape).astype("float32") for w in model.get_weights()])
history = loops.Trainer(model, "adam", "mse").fit(x, y, batch_size=16, epochs=2, verbose=0, shuffle=False)
print(json.dumps({"what": what, "loss": history.history["loss"],
                  "weights": [w.tolist() for w in model.get_weights()]}))
"""


def _run(cache):
    env = dict(os.environ, KERAS_BACKEND=BACKEND, LOOPS_COMPILATION_CACHE=str(cache), TF_CPP_MIN_LOG_LEVEL="3")
    out = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def _entries(cache):
    return sorted(os.listdir(cache)) if os.path.isdir(cache) else []


@pytest.mark.skipif(BACKEND != "jax", reason="jax's persistent compilation cache")
def test_jax_keeps_every_program_and_the_next_process_compiles_nothing(tmp_path):
    cache = tmp_path / "cache"
    first = _run(cache)
    assert "persistent compilation cache" in first["what"]
    kept = _entries(cache)
    assert len(kept) >= 10, kept  # the step and the eager first step's per-op programs
    second = _run(cache)
    assert _entries(cache) == kept  # every program came from the cache: nothing new compiled
    assert second["loss"] == first["loss"] and second["weights"] == first["weights"]


@pytest.mark.skipif(BACKEND == "jax", reason="tensorflow and torch keep nothing")
def test_other_engines_have_nothing_to_keep(tmp_path):
    assert loops.compilation_cache(tmp_path / "cache") is None
    assert not (tmp_path / "cache").exists()


@pytest.mark.skipif(BACKEND != "jax", reason="only jax writes the directory")
def test_a_directory_that_cannot_be_made_is_a_clear_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    import jax

    before = jax.config.jax_compilation_cache_dir
    try:
        with pytest.raises(ValueError, match=r"compilation_cache\(.*file/cache.*cannot be created.*writable"):
            loops.compilation_cache(blocker / "cache")
    finally:
        jax.config.update("jax_compilation_cache_dir", before)
