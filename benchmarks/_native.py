"""Arm (c): the hand-written loop a careful user writes on each engine
(BENCHMARKS.md): one donated ``jax.jit`` over the whole state with the Keras
optimizer's ``stateless_apply``; ``tf.function`` around ``GradientTape`` and
``apply_gradients``; ``torch.nn`` with ``torch.optim.Adam``, no ``.item()``
per step. Same interface as ``_arms.FitArm``: ``gate(k)`` and ``run(epochs)``.
"""

from __future__ import annotations

import time
from typing import Any, Callable

import numpy as np

from benchmarks import _workloads as W


class NativeArm:
    """Wraps ``step(batch) -> logs`` (engine tensors) and a ``sync(logs)``."""

    def __init__(self, step: Callable[[Any], dict[str, Any]], batches: list[Any],
                 sync: Callable[[Any], Any]):
        self.name, self.step, self.batches, self.sync = "native", step, batches, sync
        self.first_call_s = float("nan")

    def gate(self, k: int, per_call: int = 1) -> list[dict[str, float]]:
        logs = []
        for i in range(k):
            start = time.perf_counter()
            logs.append(self.step(self.batches[i]))
            if i == 0:
                self.sync(next(iter(logs[0].values())))
                self.first_call_s = time.perf_counter() - start
        steps = [{m: float(np.asarray(self.sync(v))) for m, v in step.items()} for step in logs]
        if per_call == 1:
            return steps
        return [{m: float(np.mean([s[m] for s in steps[i:i + per_call]])) for m in steps[0]}
                for i in range(0, k, per_call)]

    def run(self, epochs: int) -> None:
        logs = None
        for _ in range(epochs):
            for batch in self.batches:
                logs = self.step(batch)
        self.sync(next(iter(logs.values())))  # type: ignore[union-attr]


def native_arm(w: W.Workload, weights: Any, arrays: dict[str, np.ndarray]) -> NativeArm:
    import keras

    backend = keras.backend.backend()
    batches = W.batches(arrays, w.batch_size)
    make = {"jax": _jax, "tensorflow": _tf, "torch": _torch}[backend]
    return make(w, weights, batches)


def _jax(w: W.Workload, weights: Any, batches: list[Any]) -> NativeArm:
    import jax
    import keras

    from benchmarks._arms import gan_models

    def opt_for(model: Any) -> tuple[Any, list[Any]]:
        opt = keras.optimizers.Adam(W.LR, epsilon=W.EPS)
        opt.build(model.trainable_variables)
        return opt, [v.value for v in opt.variables]

    def values(model: Any) -> tuple[list[Any], list[Any]]:
        return [v.value for v in model.trainable_variables], [v.value for v in model.non_trainable_variables]

    if w is not W.GAN:
        model = W.keras_model(w.spec, w.input_shape, w.name)
        model.set_weights(weights)
        return jax_model_arm(model, batches)

    g, d = gan_models(weights)
    bce = keras.losses.BinaryCrossentropy(from_logits=True)
    (g_opt, gov), (d_opt, dov) = opt_for(g), opt_for(d)

    def gan_step(state: Any, real: Any, z1: Any, z2: Any) -> Any:
        (gtv, gntv, gov), (dtv, dntv, dov) = state
        n = real.shape[0]
        ones, zeros = jax.numpy.ones((n, 1)), jax.numpy.zeros((n, 1))

        def d_loss(dtv: Any) -> Any:
            fake, _ = g.stateless_call(gtv, gntv, z1, training=True)
            real_logits, _ = d.stateless_call(dtv, dntv, real, training=True)
            fake_logits, _ = d.stateless_call(dtv, dntv, fake, training=True)
            return bce(ones, real_logits) + bce(zeros, fake_logits)

        dl, grads = jax.value_and_grad(d_loss)(dtv)
        dtv, dov = d_opt.stateless_apply(dov, grads, dtv)

        def g_loss(gtv: Any) -> Any:
            fake, _ = g.stateless_call(gtv, gntv, z2, training=True)
            return bce(ones, d.stateless_call(dtv, dntv, fake, training=True)[0])

        gl, grads = jax.value_and_grad(g_loss)(gtv)
        gtv, gov = g_opt.stateless_apply(gov, grads, gtv)
        return ((gtv, gntv, gov), (dtv, dntv, dov)), (dl, gl)

    jgan = jax.jit(gan_step, donate_argnums=0)
    gbox = [((*values(g), gov), (*values(d), dov))]

    def run_gan(b: dict[str, Any]) -> dict[str, Any]:
        gbox[0], (dl, gl) = jgan(gbox[0], b["real"], b["z1"], b["z2"])
        return {"d_loss": dl, "g_loss": gl}

    return NativeArm(run_gan, batches, lambda t: t.block_until_ready())


def jax_model_arm(model: Any, batches: list[Any]) -> NativeArm:
    """The native jax loop for any Keras ``model`` (weights already set):
    one donated ``jax.jit`` of ``stateless_call``, sparse cross-entropy from
    logits and the Keras Adam's ``stateless_apply``."""
    import jax
    import keras

    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    opt = keras.optimizers.Adam(W.LR, epsilon=W.EPS)
    opt.build(model.trainable_variables)

    def step(state: Any, x: Any, y: Any) -> Any:
        tv, ntv, ov = state

        def f(tv: Any) -> Any:
            logits, ntv2 = model.stateless_call(tv, ntv, x, training=True)
            return loss_fn(y, logits), ntv2

        (loss, ntv), grads = jax.value_and_grad(f, has_aux=True)(tv)
        tv, ov = opt.stateless_apply(ov, grads, tv)
        return (tv, ntv, ov), loss

    jstep = jax.jit(step, donate_argnums=0)
    box = [([v.value for v in model.trainable_variables], [v.value for v in model.non_trainable_variables],
            [v.value for v in opt.variables])]

    def run_step(b: dict[str, Any]) -> dict[str, Any]:
        box[0], loss = jstep(box[0], b["x"], b["y"])
        return {"loss": loss}

    return NativeArm(run_step, batches, lambda t: t.block_until_ready())


def _tf(w: W.Workload, weights: Any, batches: list[Any]) -> NativeArm:
    import keras
    import tensorflow as tf

    from benchmarks._arms import gan_models

    if w is not W.GAN:
        model = W.keras_model(w.spec, w.input_shape, w.name)
        model.set_weights(weights)
        return tf_model_arm(model, batches)

    g, d = gan_models(weights)
    bce = keras.losses.BinaryCrossentropy(from_logits=True)
    g_opt, d_opt = keras.optimizers.Adam(W.LR, epsilon=W.EPS), keras.optimizers.Adam(W.LR, epsilon=W.EPS)

    @tf.function
    def gan_step(real: Any, z1: Any, z2: Any) -> Any:
        n = tf.shape(real)[0]
        ones, zeros = tf.ones((n, 1)), tf.zeros((n, 1))
        with tf.GradientTape() as tape:
            fake = g(z1, training=True)
            dl = bce(ones, d(real, training=True)) + bce(zeros, d(fake, training=True))
        d_opt.apply_gradients(zip(tape.gradient(dl, d.trainable_variables), d.trainable_variables))
        with tf.GradientTape() as tape:
            gl = bce(ones, d(g(z2, training=True), training=True))
        g_opt.apply_gradients(zip(tape.gradient(gl, g.trainable_variables), g.trainable_variables))
        return dl, gl

    def run_gan(b: dict[str, Any]) -> dict[str, Any]:
        dl, gl = gan_step(b["real"], b["z1"], b["z2"])
        return {"d_loss": dl, "g_loss": gl}

    return NativeArm(run_gan, batches, lambda t: t.numpy())


def tf_model_arm(model: Any, batches: list[Any]) -> NativeArm:
    """The native tensorflow loop for any Keras ``model`` (weights already
    set): ``tf.function`` around ``GradientTape`` and ``apply_gradients``."""
    import keras
    import tensorflow as tf

    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    opt = keras.optimizers.Adam(W.LR, epsilon=W.EPS)

    @tf.function
    def step(x: Any, y: Any) -> Any:
        with tf.GradientTape() as tape:
            loss = loss_fn(y, model(x, training=True))
        grads = tape.gradient(loss, model.trainable_variables)
        opt.apply_gradients(zip(grads, model.trainable_variables))
        return loss

    return NativeArm(lambda b: {"loss": step(b["x"], b["y"])}, batches, lambda t: t.numpy())


def torch_net_arm(net: Any, batches: list[Any]) -> NativeArm:
    """The native torch loop for a ``torch.nn`` module (weights already set)
    returning logits; sequence logits ``(batch, time, classes)`` are scored
    against labels ``(batch, time)`` as Keras's sparse cross-entropy does."""
    return _torch(W.MLP, None, batches, net=net)


def _torch(w: W.Workload, weights: Any, batches: list[Any], net: Any = None) -> NativeArm:
    import torch

    # Keras's torch backend runs on CUDA when torch sees a GPU; so does this arm.
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")

    # Host layout prepared once, as a torch user stores data: NCHW, int64 labels
    # (on a GPU in pinned memory, copied to the device each step, as a
    # DataLoader with pin_memory=True feeds a loop).
    def host(b: dict[str, np.ndarray]) -> dict[str, Any]:
        out = {k: torch.from_numpy(v) for k, v in b.items()}
        if "x" in b and b["x"].ndim == 4:
            out["x"] = torch.from_numpy(np.ascontiguousarray(b["x"].transpose(0, 3, 1, 2)))
        if "y" in b:
            out["y"] = torch.from_numpy(b["y"].astype(np.int64))
        return {k: v.pin_memory() for k, v in out.items()} if device.type == "cuda" else out

    def to_device(b: dict[str, Any]) -> dict[str, Any]:
        return {k: v.to(device, non_blocking=True) for k, v in b.items()}

    tbatches = [host(b) for b in batches]
    # Keras's epsilon placement differs slightly (it adds eps to sqrt(v) before
    # bias correction); with eps=1e-7 the losses still agree to 1e-5.
    adam = lambda params: torch.optim.Adam(params, lr=W.LR, eps=W.EPS)  # noqa: E731
    sync = lambda t: t.cpu().numpy()  # noqa: E731
    if w is not W.GAN:
        net = (W.torch_module(w.spec, weights) if net is None else net).to(device)
        opt = adam(net.parameters())
        ce = torch.nn.CrossEntropyLoss()

        def step(b: dict[str, Any]) -> dict[str, Any]:
            if device.type != "cpu":
                b = to_device(b)
            opt.zero_grad(set_to_none=True)
            logits = net(b["x"])
            loss = ce(logits.reshape(-1, logits.shape[-1]), b["y"].reshape(-1))
            loss.backward()
            opt.step()
            return {"loss": loss.detach()}

        return NativeArm(step, tbatches, sync)

    gnet = W.torch_module(W.GENERATOR, weights["generator"]).to(device)
    dnet = W.torch_module(W.DISCRIMINATOR, weights["discriminator"]).to(device)
    g_opt, d_opt = adam(gnet.parameters()), adam(dnet.parameters())
    bce = torch.nn.BCEWithLogitsLoss()

    def gan_step(b: dict[str, Any]) -> dict[str, Any]:
        if device.type != "cpu":
            b = to_device(b)
        real = b["real"]
        ones = torch.ones(real.shape[0], 1, device=real.device)
        zeros = torch.zeros(real.shape[0], 1, device=real.device)
        d_opt.zero_grad(set_to_none=True)
        fake = gnet(b["z1"]).detach()
        dl = bce(dnet(real), ones) + bce(dnet(fake), zeros)
        dl.backward()
        d_opt.step()
        g_opt.zero_grad(set_to_none=True)
        gl = bce(dnet(gnet(b["z2"])), ones)
        gl.backward()
        g_opt.step()
        return {"d_loss": dl.detach(), "g_loss": gl.detach()}

    return NativeArm(gan_step, tbatches, sync)
