"""Hand-written training loops, one per engine, as a careful user writes them
without loops or model.fit: the engine's own autodiff, compiled where the
engine compiles, and Adam written out in the engine's ops with Keras's update
rule (epsilon added to sqrt(v), bias correction folded into the step size)."""

import math

import keras
import numpy as np

B1, B2, EPS = 0.9, 0.999, 1e-7


def _alpha(lr, t):
    return lr * math.sqrt(1 - B2 ** t) / (1 - B1 ** t)


def native_losses(model, batches, lr):
    """Trains ``model`` in place on ``batches`` [(x, y)]; returns per-step losses."""
    return {"jax": _jax, "tensorflow": _tf, "torch": _torch}[keras.backend.backend()](model, batches, lr)


def _jax(model, batches, lr):
    import jax
    import jax.numpy as jnp

    ntv = [v.value for v in model.non_trainable_variables]

    def loss_fn(tv, x, y):
        logits, _ = model.stateless_call(tv, ntv, x, training=True)
        logp = jax.nn.log_softmax(logits)
        return -jnp.mean(jnp.take_along_axis(logp, y[:, None].astype(jnp.int32), axis=1))

    @jax.jit
    def step(tv, m, v, alpha, x, y):
        loss, g = jax.value_and_grad(loss_fn)(tv, x, y)
        m = [mi + (gi - mi) * (1 - B1) for mi, gi in zip(m, g)]
        v = [vi + (gi * gi - vi) * (1 - B2) for vi, gi in zip(v, g)]
        tv = [w - mi * alpha / (jnp.sqrt(vi) + EPS) for w, mi, vi in zip(tv, m, v)]
        return loss, tv, m, v

    tv = [v.value for v in model.trainable_variables]
    m = [jnp.zeros_like(w) for w in tv]
    s = [jnp.zeros_like(w) for w in tv]
    losses = []
    for t, (x, y) in enumerate(batches, start=1):
        loss, tv, m, s = step(tv, m, s, _alpha(lr, t), x, y)
        losses.append(loss)
    for var, value in zip(model.trainable_variables, tv):
        var.assign(value)
    return [float(l) for l in losses]


def _tf(model, batches, lr):
    import tensorflow as tf

    params = model.trainable_variables
    m = [tf.Variable(tf.zeros(p.shape)) for p in params]
    s = [tf.Variable(tf.zeros(p.shape)) for p in params]

    @tf.function
    def step(x, y, alpha):
        with tf.GradientTape() as tape:
            logits = model(x, training=True)
            loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(tf.cast(y, tf.int32), logits))
        grads = tape.gradient(loss, [p.value for p in params])
        for p, mi, vi, g in zip(params, m, s, grads):
            mi.assign_add((g - mi) * (1 - B1))
            vi.assign_add((g * g - vi) * (1 - B2))
            p.value.assign_sub(mi * alpha / (tf.sqrt(vi) + EPS))
        return loss

    return [float(step(x, y, tf.constant(_alpha(lr, t), tf.float32)))
            for t, (x, y) in enumerate(batches, start=1)]


def _torch(model, batches, lr):
    import torch

    params = [v.value for v in model.trainable_variables]
    device = params[0].device  # the GPU's where Keras put the model there
    m = [torch.zeros_like(p) for p in params]
    s = [torch.zeros_like(p) for p in params]
    losses = []
    for t, (x, y) in enumerate(batches, start=1):
        logits = model(torch.as_tensor(x, device=device), training=True)
        loss = torch.nn.functional.cross_entropy(logits, torch.as_tensor(y, device=device).long())
        grads = torch.autograd.grad(loss, params)
        alpha = _alpha(lr, t)
        with torch.no_grad():
            for p, mi, vi, g in zip(params, m, s, grads):
                mi.add_((g - mi) * (1 - B1))
                vi.add_((g * g - vi) * (1 - B2))
                p.sub_(mi * alpha / (vi.sqrt() + EPS))
        losses.append(loss.detach())
    return [float(l) for l in losses]


def numpy_mlp_losses(weights, batches, lr):
    """A float64 NumPy reference for the classic MLP (Flatten, Dense+relu x2,
    Dense logits, sparse CE, Adam): the same numbers whatever the backend."""
    w = [np.asarray(a, np.float64) for a in weights]
    m = [np.zeros_like(a) for a in w]
    s = [np.zeros_like(a) for a in w]
    losses = []
    for t, (x, y) in enumerate(batches, start=1):
        n = len(y)
        a0 = x.reshape(n, -1).astype(np.float64)
        z1 = a0 @ w[0] + w[1]; a1 = np.maximum(z1, 0)
        z2 = a1 @ w[2] + w[3]; a2 = np.maximum(z2, 0)
        z3 = a2 @ w[4] + w[5]
        z3 = z3 - z3.max(axis=1, keepdims=True)
        p = np.exp(z3) / np.exp(z3).sum(axis=1, keepdims=True)
        losses.append(float(-np.mean(np.log(p[np.arange(n), y]))))
        d3 = p.copy(); d3[np.arange(n), y] -= 1; d3 /= n
        d2 = (d3 @ w[4].T) * (z2 > 0)
        d1 = (d2 @ w[2].T) * (z1 > 0)
        grads = [a0.T @ d1, d1.sum(0), a1.T @ d2, d2.sum(0), a2.T @ d3, d3.sum(0)]
        alpha = _alpha(lr, t)
        for i, g in enumerate(grads):
            m[i] += (g - m[i]) * (1 - B1)
            s[i] += (g * g - s[i]) * (1 - B2)
            w[i] -= m[i] * alpha / (np.sqrt(s[i]) + EPS)
    return losses, w
