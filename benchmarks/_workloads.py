"""The workloads: model specs, host data and backend-independent initial
weights (NumPy), so every arm and every backend starts from the same numbers.

A spec is a list of layers, each ``(kind, *args)``; the same spec builds a
Keras model and, for torch's native arm, a ``torch.nn`` module.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

LR = 1e-3
# Adam's epsilon for every arm. Keras adds it to sqrt(v) before bias
# correction, torch.optim.Adam after: with the default 1e-7 the two arms
# differ by ~1% after 30 steps; at 1e-10 both are the same rule to round-off.
EPS = 1e-10


@dataclasses.dataclass(frozen=True)
class Workload:
    name: str
    input_shape: tuple[int, ...]
    spec: tuple[tuple[Any, ...], ...]
    batch_size: int
    arms: tuple[str, ...] = ("trainer", "keras", "native")


TINY = Workload("tiny_mlp", (784,), (("dense", 64, "relu"), ("dense", 10, None)), 32)
MLP = Workload("mlp", (784,), (("dense", 256, "relu"), ("dense", 128, "relu"), ("dense", 10, None)), 128)
CNN = Workload("cnn", (28, 28, 1), (("conv", 8, 3, "relu"), ("maxpool", 2), ("conv", 16, 3, "relu"),
                                    ("gap",), ("dense", 10, None)), 128)
LATENT = 32
GAN = Workload("gan", (784,), (), 64, arms=("trainer", "native"))
GENERATOR = (("dense", 128, "relu"), ("dense", 784, None))
DISCRIMINATOR = (("dense", 128, "relu"), ("dense", 1, None))
ALL = (TINY, MLP, CNN, GAN)


def resnet(dry: bool = False) -> Workload:
    """A small ResNet-style CNN on 32x32x3 images (the GPU workload): three
    stages of conv-BN-ReLU and one residual block each, max-pooling between,
    global average pooling and a dense head. About 100 GFLOP per step at batch
    256 (``dry``: 16x16x3, a quarter of the widths, batch 8, for CPU tests)."""
    c, side, batch = (8, 16, 8) if dry else (32, 32, 256)
    spec = (("convbn", c), ("res", c), ("maxpool", 2), ("convbn", 2 * c), ("res", 2 * c), ("maxpool", 2),
            ("convbn", 4 * c), ("res", 4 * c), ("gap",), ("dense", 10, None))
    return Workload("resnet", (side, side, 3), spec, batch)


RESNET = resnet()
BN_EPSILON, BN_MOMENTUM = 1e-3, 0.99  # Keras's BatchNormalization defaults (torch: eps, 1 - momentum)


def _conv_bn(x: Any, filters: int, relu: bool = True) -> Any:
    import keras

    x = keras.layers.Conv2D(filters, 3, padding="same", use_bias=False)(x)
    x = keras.layers.BatchNormalization(epsilon=BN_EPSILON, momentum=BN_MOMENTUM)(x)
    return keras.layers.ReLU()(x) if relu else x


def keras_model(spec: tuple[tuple[Any, ...], ...], input_shape: tuple[int, ...], name: str) -> Any:
    import keras

    if any(kind in ("convbn", "res") for kind, *_ in spec):  # residual: a functional model
        inputs = x = keras.Input(input_shape)
        for kind, *args in spec:
            if kind == "convbn":
                x = _conv_bn(x, args[0])
            elif kind == "res":  # relu(x + bn(conv(relu(bn(conv(x))))))
                y = _conv_bn(_conv_bn(x, args[0]), args[0], relu=False)
                x = keras.layers.ReLU()(keras.layers.Add()([x, y]))
            elif kind == "maxpool":
                x = keras.layers.MaxPooling2D(args[0])(x)
            elif kind == "gap":
                x = keras.layers.GlobalAveragePooling2D()(x)
            elif kind == "dense":
                x = keras.layers.Dense(args[0], activation=args[1])(x)
        return keras.Model(inputs, x, name=name)
    layers: list[Any] = [keras.Input(input_shape)]
    for kind, *args in spec:
        if kind == "dense":
            layers.append(keras.layers.Dense(args[0], activation=args[1]))
        elif kind == "conv":
            layers.append(keras.layers.Conv2D(args[0], args[1], activation=args[2]))
        elif kind == "maxpool":
            layers.append(keras.layers.MaxPooling2D(args[0]))
        elif kind == "gap":
            layers.append(keras.layers.GlobalAveragePooling2D())
    return keras.Sequential(layers, name=name)


def initial_weights(model: Any, seed: int) -> list[np.ndarray]:
    """Glorot-uniform kernels and zero biases drawn with NumPy (batch
    normalization: gamma and moving variance ones, beta and moving mean zeros)."""
    rng = np.random.default_rng(seed)
    out = []
    for v, w in zip(model.weights, model.get_weights()):
        if v.name in ("gamma", "moving_variance"):
            out.append(np.ones(w.shape, "float32"))
        elif w.ndim >= 2:
            fan_in = int(np.prod(w.shape[:-1]))
            limit = np.sqrt(6.0 / (fan_in + w.shape[-1]))
            out.append(rng.uniform(-limit, limit, w.shape).astype("float32"))
        else:
            out.append(np.zeros(w.shape, "float32"))
    return out


def data(w: Workload, pool: int, seed: int = 0) -> dict[str, np.ndarray]:
    """``pool`` batches as flat arrays: x, y (teacher labels) or GAN inputs."""
    rng = np.random.default_rng(seed)
    n = pool * w.batch_size
    if w is GAN:
        return {"real": np.tanh(rng.normal(size=(n, 784))).astype("float32"),
                "z1": rng.normal(size=(n, LATENT)).astype("float32"),
                "z2": rng.normal(size=(n, LATENT)).astype("float32")}
    x = rng.random(size=(n, *w.input_shape)).astype("float32")  # pixel-like, in [0, 1)
    teacher = rng.normal(size=(int(np.prod(w.input_shape)), 10)).astype("float32")
    y = np.argmax((x.reshape(n, -1) - 0.5) @ teacher, axis=1).astype("int32")
    return {"x": x, "y": y}


def batches(arrays: dict[str, np.ndarray], batch_size: int) -> list[dict[str, np.ndarray]]:
    n = len(next(iter(arrays.values())))
    return [{k: a[i:i + batch_size] for k, a in arrays.items()} for i in range(0, n, batch_size)]


def torch_module(spec: tuple[tuple[Any, ...], ...], weights: list[np.ndarray]) -> Any:
    """The spec as ``torch.nn`` (NCHW), loaded with the Keras-layout weights."""
    import torch
    from torch import nn

    mods: list[Any] = []
    it = iter(weights)

    def conv_bn(relu: bool = True) -> Any:
        kernel = next(it)  # (3, 3, in, out), no bias
        conv = nn.Conv2d(kernel.shape[2], kernel.shape[3], 3, padding=1, bias=False)
        conv.weight.data = torch.from_numpy(np.ascontiguousarray(kernel.transpose(3, 2, 0, 1)))
        bn = nn.BatchNorm2d(kernel.shape[3], eps=BN_EPSILON, momentum=1 - BN_MOMENTUM)
        for t in (bn.weight, bn.bias, bn.running_mean, bn.running_var):  # gamma, beta, mean, variance
            t.data = torch.from_numpy(next(it).copy())
        return nn.Sequential(conv, bn, *([nn.ReLU()] if relu else []))

    for kind, *args in spec:
        if kind == "convbn":
            mods.append(conv_bn())
        elif kind == "res":
            mods.append(_Residual(nn.Sequential(conv_bn(), conv_bn(relu=False))))
        elif kind == "dense":
            kernel, bias = next(it), next(it)
            lin = nn.Linear(kernel.shape[0], kernel.shape[1])
            lin.weight.data = torch.from_numpy(np.ascontiguousarray(kernel.T))
            lin.bias.data = torch.from_numpy(bias.copy())
            mods.append(lin)
        elif kind == "conv":
            kernel, bias = next(it), next(it)  # (kh, kw, in, out) -> (out, in, kh, kw)
            conv = nn.Conv2d(kernel.shape[2], kernel.shape[3], kernel.shape[0])
            conv.weight.data = torch.from_numpy(np.ascontiguousarray(kernel.transpose(3, 2, 0, 1)))
            conv.bias.data = torch.from_numpy(bias.copy())
            mods.append(conv)
        elif kind == "maxpool":
            mods.append(nn.MaxPool2d(args[0]))
        elif kind == "gap":
            mods.append(nn.AdaptiveAvgPool2d(1))
            mods.append(nn.Flatten())
        if kind in ("dense", "conv") and args[-1] == "relu":
            mods.append(nn.ReLU())
    return nn.Sequential(*mods)


def _residual_class() -> Any:
    from torch import nn

    class Residual(nn.Module):
        """relu(x + body(x)), as the Keras block."""

        def __init__(self, body: Any):
            super().__init__()
            self.body = body

        def forward(self, x: Any) -> Any:
            return nn.functional.relu(x + self.body(x))

    return Residual


def _Residual(body: Any) -> Any:  # noqa: N802 (torch is imported only where torch runs)
    return _residual_class()(body)
