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


def keras_model(spec: tuple[tuple[Any, ...], ...], input_shape: tuple[int, ...], name: str) -> Any:
    import keras

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
    """Glorot-uniform kernels and zero biases drawn with NumPy."""
    rng = np.random.default_rng(seed)
    out = []
    for w in model.get_weights():
        if w.ndim >= 2:
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
    for kind, *args in spec:
        if kind == "dense":
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
