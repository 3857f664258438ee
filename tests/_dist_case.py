"""Data-parallel runs for tests/test_distributed.py, as a script (and the
models and data the single-device references in the test process share):

    KERAS_BACKEND=jax python tests/_dist_case.py OUT_DIR      # 2 host devices (XLA_FLAGS set here)
    KERAS_BACKEND=tensorflow python tests/_dist_case.py OUT_DIR   # 2 logical CPU devices
    KERAS_BACKEND=torch torchrun --standalone --nproc-per-node=2 tests/_dist_case.py OUT_DIR  # gloo

With ``loops.data_parallel()`` (the one added line) it trains the classic
recipe over 2 replicas with checkpoints, the DCGAN example's ``ConditionalGAN``
(a custom two-optimizer step, unchanged), and on jax a ``ModelParallel``
layout; each process writes what it ended with to OUT_DIR/rank<r>.json and its
stdout to OUT_DIR/stdout-rank<r>.txt. A one-device checkpoint in OUT_DIR/ckpt1
is continued on 2 replicas; ``OUT_DIR --sigterm-at N`` (torch) sends process 1
alone a SIGTERM after step N.
"""

import json
import os
import sys
import time

BACKEND = os.environ.get("KERAS_BACKEND", "jax")
HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

SAMPLES, VAL, BATCH, EPOCHS = 200, 60, 32, 2  # ragged last batches (8 and 28 rows): padded
STEPS_PER_EPOCH = -(-SAMPLES // BATCH)


def data():
    import numpy as np

    rng = np.random.default_rng(0)
    x = rng.normal(size=(SAMPLES + VAL, 8)).astype("float32")
    y = (x[:, 0] + 0.5 * x[:, 1] - x[:, 2] > 0).astype("int32")
    return (x[:SAMPLES], y[:SAMPLES]), (x[SAMPLES:], y[SAMPLES:])


def trainer():
    import keras
    import numpy as np

    from loops import Trainer

    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(16, activation="relu", name="hidden"),
                              keras.layers.Dense(2, name="logits")])
    rng = np.random.default_rng(3)  # the same initial numbers on every engine and replica count
    model.set_weights([rng.normal(0, 0.3, size=w.shape).astype("float32") for w in model.get_weights()])
    return Trainer(model, optimizer=keras.optimizers.Adam(0.01),
                   loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                   metrics=["accuracy"], seed=7)


def fit(t, ckpt_dir=None, verbose=0, epochs=EPOCHS):
    (x, y), val = data()
    return t.fit(x, y, batch_size=BATCH, epochs=epochs, validation_data=val, verbose=verbose,
                 checkpoint_dir=ckpt_dir, checkpoint_every=3, keep=None)


def classic(ckpt_dir=None, verbose=0):
    """Trains the classic case; returns what the test compares."""
    import keras

    t = trainer()
    history = fit(t, ckpt_dir, verbose)
    _, (xv, yv) = data()
    return {"weights": [w.tolist() for w in t.get_weights()], "history": history.history,
            "evaluate": t.evaluate(xv, yv, batch_size=BATCH, verbose=0, return_dict=True),
            "predict": keras.ops.convert_to_numpy(t.predict(xv, batch_size=BATCH, verbose=0)).tolist()}


def features():
    """Clipping by the global norm (logged before clipping) and gradient accumulation."""
    import keras

    from loops import Trainer

    base = trainer()
    t = Trainer(base.model, keras.optimizers.SGD(0.1), keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                global_clipnorm=0.5, gradient_accumulation_steps=2, seed=7)
    (x, y), _ = data()
    history = t.fit(x, y, batch_size=BATCH, epochs=1, verbose=0)
    return {"weights": [w.tolist() for w in t.get_weights()], "history": history.history}


def gan_data():
    sys.path.insert(0, ROOT)
    from examples._digits import load_digits_split

    x, y, _, _ = load_digits_split()
    return x[:128, ..., None] * 2.0 - 1.0, y[:128]


def gan(verbose=0):
    """The DCGAN example's trainer, as it is, for one epoch of 4 steps."""
    import keras
    import numpy as np

    sys.path.insert(0, ROOT)
    from examples.dcgan_digits import ConditionalGAN

    keras.utils.set_random_seed(5)
    g = ConditionalGAN()
    rng = np.random.default_rng(4)
    g.set_weights([rng.normal(0, 0.05, size=w.shape).astype("float32") for w in g.get_weights()])
    x, y = gan_data()
    history = g.fit(x, y, batch_size=32, epochs=1, shuffle=False, verbose=verbose)
    images = g.generate(np.arange(10).astype("int32"))
    return {"weights": [w.tolist() for w in g.get_weights()], "history": history.history,
            "generated": [float(images.min()), float(images.max())]}


def neutral_gan():
    """The DCGAN example with neutral random numbers: each replica draws its
    rows of the global batch's noise, so two replicas equal one device."""
    import loops

    loops.set_seed(5, neutral_random=True)
    try:
        return gan()
    finally:
        loops.set_seed(5, neutral_random=False)


def refusals():
    """Batches that cannot split evenly over 2 replicas are refused before training."""
    (x, y), _ = data()
    found = {}
    for name, run in {
        "odd_batch": lambda: trainer().fit(x, y, batch_size=33, epochs=1, verbose=0),
        # a custom step gets no padding: 127 samples in batches of 32 leave 31 rows
        "custom_ragged": lambda: _custom().fit(x[:127], y[:127], batch_size=32, epochs=1, verbose=0),
    }.items():
        try:
            run()
            found[name] = None
        except ValueError as e:
            found[name] = str(e)
    return found


def _custom():
    from loops import Trainer

    class Custom(Trainer):  # the default step's math, written as a custom step
        def train_step(self, batch):
            x, y = batch

            def loss_fn():
                return self.compute_loss(x, y, self.model(x, training=True))

            loss, grads = self.value_and_grad(loss_fn, self.model.trainable_variables)
            self.optimizer.apply(grads, self.model.trainable_variables)
            return {"loss": loss}

    import keras

    return Custom(trainer().model, keras.optimizers.Adam(0.01),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True))


def model_parallel():
    """jax only: the classic case with the hidden layer split over a 'model' mesh axis."""
    import keras

    mesh = keras.distribution.DeviceMesh((1, 2), ["batch", "model"])
    layout = keras.distribution.LayoutMap(mesh)
    layout[".*hidden/kernel"] = (None, "model")  # (keys are regexes matched against whole paths)
    layout[".*hidden/bias"] = ("model",)
    layout[".*logits/kernel"] = ("model", None)
    keras.distribution.set_distribution(keras.distribution.ModelParallel(layout_map=layout, batch_dim_name="batch"))
    t = trainer()
    kernel = t.model.get_layer("hidden").kernel.value
    sharded = str(kernel.sharding.spec)
    history = fit(t)
    return {"weights": [w.tolist() for w in t.get_weights()], "history": history.history, "kernel_spec": sharded}


def _devices_setup():
    if BACKEND == "jax":
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=2").strip()
        return None
    if BACKEND == "tensorflow":
        import tensorflow as tf

        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
        return ["/cpu:0", "/cpu:1"]
    import torch

    torch.set_num_threads(1)
    return None


def resumed():
    """Continues the one-device run checkpointed in OUT_DIR/ckpt1 (mid-epoch) on 2 replicas."""
    t = trainer()
    history = fit(t, os.path.join(sys.argv[1], "ckpt1"))
    return {"weights": [w.tolist() for w in t.get_weights()], "history": history.history}


def sigterm(at):
    """Process 1 alone gets SIGTERM after step ``at``: every process checkpoints that step and exits 143."""
    import signal

    import keras

    class Kill(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            if batch + 1 == at and int(os.environ.get("RANK", "0")) == 1:
                os.kill(os.getpid(), signal.SIGTERM)

    (x, y), _ = data()
    trainer().fit(x, y, batch_size=BATCH, epochs=EPOCHS, verbose=0, callbacks=[Kill()],
                  checkpoint_dir=os.path.join(sys.argv[1], "ckpt-sigterm"), checkpoint_every=100)


def main():
    out = sys.argv[1]
    devices = _devices_setup()
    sys.path.insert(0, ROOT)
    import loops

    loops.data_parallel(devices)  # the one line
    from loops import distributed as _distributed

    rank = int(os.environ.get("RANK", "0"))
    if len(sys.argv) > 3 and sys.argv[2] == "--sigterm-at":
        sigterm(int(sys.argv[3]))
        return
    stdout = open(os.path.join(out, f"stdout-rank{rank}.txt"), "w")
    sys.stdout = stdout  # per-process output: only the chief's progress shows up
    result = {"rank": rank}
    t = trainer()
    replicas = _distributed.current(t)
    result["replicas"] = replicas.num_replicas
    result["description"] = replicas.native.description if replicas.native is not None else None
    seconds = result["seconds"] = {}
    parts = {"classic": lambda: classic(os.path.join(out, "ckpt"), verbose=2), "gan": gan, "errors": refusals,
             "features": features, "neutral_gan": neutral_gan}
    if os.path.isdir(os.path.join(out, "ckpt1")):
        parts["resumed"] = resumed
    if BACKEND == "jax":
        parts["model_parallel"] = model_parallel
    for name, part in parts.items():
        start = time.perf_counter()
        result[name] = part()
        seconds[name] = round(time.perf_counter() - start, 2)
    with open(os.path.join(out, f"rank{rank}.json"), "w") as f:
        json.dump(result, f)
    stdout.flush()


if __name__ == "__main__":
    main()
