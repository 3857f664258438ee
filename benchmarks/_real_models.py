"""The realistic workloads of ``benchmarks/workloads_real.py``: a small
GPT-style character language model and an LSTM next-character model, both on
the text of Python's own ``pydoc_data.topics`` (no download), and a small
ResNet-style CNN on synthetic 32x32x3 images. Each as a Keras model, host
data (NumPy, final dtypes) and, for torch's native arm, the same network in
``torch.nn`` loaded with the Keras model's weights.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import numpy as np

from benchmarks import _workloads as W

LN_EPSILON = 1e-5  # torch.nn.LayerNorm's default, set on the Keras side too


@dataclasses.dataclass(frozen=True)
class Real:
    name: str            # gpt, lstm, resnet
    batch_size: int
    seq: int = 0         # text: characters per sequence; images: side
    width: int = 0       # gpt: model width; lstm: units; resnet: first stage's channels
    heads: int = 0       # gpt: attention heads
    embed: int = 0       # lstm: embedding width
    pool: int = 16       # batches in the data pool (one epoch)

    @property
    def unit(self) -> str:
        return "samples" if self.name == "resnet" else "tokens"

    @property
    def per_step(self) -> int:
        """Tokens or samples per training step."""
        return self.batch_size * (1 if self.name == "resnet" else self.seq)

    def workload(self) -> W.Workload:
        shape = (self.seq, self.seq, 3) if self.name == "resnet" else (self.seq,)
        return W.Workload(self.name, shape, resnet_spec(self.width) if self.name == "resnet" else (),
                          self.batch_size)


SIZES: dict[str, dict[str, Real]] = {
    "tiny": {"gpt": Real("gpt", 4, seq=16, width=16, heads=2, pool=4),
             "lstm": Real("lstm", 4, seq=8, width=16, embed=8, pool=4),
             "resnet": Real("resnet", 4, seq=16, width=4, pool=4)},
    "quick": {"gpt": Real("gpt", 16, seq=64, width=64, heads=4, pool=16),
              "lstm": Real("lstm", 32, seq=32, width=128, embed=32, pool=16),
              "resnet": Real("resnet", 32, seq=32, width=8, pool=16)},
    "full": {"gpt": Real("gpt", 32, seq=128, width=128, heads=4, pool=32),
             "lstm": Real("lstm", 64, seq=64, width=256, embed=64, pool=32),
             "resnet": Real("resnet", 64, seq=32, width=16, pool=32)},
}


def resnet_spec(c: int) -> tuple[tuple[Any, ...], ...]:
    return (("convbn", c), ("res", c), ("maxpool", 2), ("convbn", 2 * c), ("res", 2 * c), ("maxpool", 2),
            ("convbn", 4 * c), ("res", 4 * c), ("gap",), ("dense", 10, None))


@functools.cache
def text_ids() -> tuple[np.ndarray, int]:
    """The pydoc topics' text as int32 character ids, and the vocabulary size."""
    from pydoc_data.topics import topics

    text = "".join(topics.values())
    chars = sorted(set(text))
    lookup = {c: i for i, c in enumerate(chars)}
    return np.fromiter((lookup[c] for c in text), dtype=np.int32, count=len(text)), len(chars)


def data(r: Real) -> dict[str, np.ndarray]:
    """``r.pool`` batches: x and y (next characters, or image classes)."""
    if r.name == "resnet":
        return W.data(r.workload(), r.pool)
    ids, _ = text_ids()
    n = r.pool * r.batch_size
    seqs = ids[:n * (r.seq + 1)].reshape(n, r.seq + 1)  # consecutive, non-overlapping windows
    return {"x": np.ascontiguousarray(seqs[:, :-1]), "y": np.ascontiguousarray(seqs[:, 1:])}


@functools.cache
def _token_and_position() -> Any:
    import keras

    class TokenAndPosition(keras.layers.Layer):
        """Token embedding plus a learned position embedding."""

        def __init__(self, vocab: int, seq: int, width: int, **kwargs: Any):
            super().__init__(**kwargs)
            self.tok = keras.layers.Embedding(vocab, width, name="tok")
            self.pos = keras.layers.Embedding(seq, width, name="pos")

        def call(self, x: Any) -> Any:
            positions = keras.ops.arange(keras.ops.shape(x)[1])
            return self.tok(x) + self.pos(positions)[None]

    return TokenAndPosition


def keras_model(r: Real) -> Any:
    import keras

    layers = keras.layers
    if r.name == "resnet":
        w = r.workload()
        return W.keras_model(w.spec, w.input_shape, "resnet")
    _, vocab = text_ids()
    inputs = keras.Input((r.seq,), dtype="int32")
    if r.name == "lstm":
        x = layers.Embedding(vocab, r.embed, name="embed")(inputs)
        x = layers.LSTM(r.width, return_sequences=True, name="lstm")(x)
        return keras.Model(inputs, layers.Dense(vocab, name="head")(x), name="lstm")
    d = r.width
    x = _token_and_position()(vocab, r.seq, d, name="embed")(inputs)
    for i in range(2):
        h = layers.LayerNormalization(epsilon=LN_EPSILON, name=f"b{i}_ln1")(x)
        h = layers.MultiHeadAttention(r.heads, d // r.heads, name=f"b{i}_attn")(h, h, use_causal_mask=True)
        x = layers.Add()([x, h])
        h = layers.LayerNormalization(epsilon=LN_EPSILON, name=f"b{i}_ln2")(x)
        h = layers.Dense(4 * d, activation="gelu", name=f"b{i}_fc")(h)
        x = layers.Add()([x, layers.Dense(d, name=f"b{i}_proj")(h)])
    x = layers.LayerNormalization(epsilon=LN_EPSILON, name="ln_f")(x)
    return keras.Model(inputs, layers.Dense(vocab, name="head")(x), name="gpt")


def torch_net(r: Real, model: Any) -> Any:
    """``model`` (a built Keras model, weights set) as ``torch.nn``."""
    import keras

    if r.name == "resnet":
        return W.torch_module(r.workload().spec, [keras.ops.convert_to_numpy(v) for v in model.weights])
    weights = {v.path: np.asarray(keras.ops.convert_to_numpy(v)) for v in model.weights}
    return (_torch_lstm if r.name == "lstm" else _torch_gpt)(r, weights)


def _param(array: np.ndarray) -> Any:
    import torch

    return torch.nn.Parameter(torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32)))


def _linear(weights: dict[str, np.ndarray], name: str) -> Any:
    from torch import nn

    kernel, bias = weights[f"{name}/kernel"], weights[f"{name}/bias"]
    if kernel.ndim == 3:  # attention: (d, heads, key_dim) in, (heads, key_dim, d) out
        kernel = kernel.reshape(-1, kernel.shape[-1]) if name.endswith("attention_output") \
            else kernel.reshape(kernel.shape[0], -1)
    lin = nn.Linear(kernel.shape[0], kernel.shape[1])
    lin.weight, lin.bias = _param(kernel.T), _param(bias.reshape(-1))
    return lin


def _layer_norm(weights: dict[str, np.ndarray], name: str) -> Any:
    from torch import nn

    gamma = weights[f"{name}/gamma"]
    ln = nn.LayerNorm(gamma.shape[0], eps=LN_EPSILON)
    ln.weight, ln.bias = _param(gamma), _param(weights[f"{name}/beta"])
    return ln


def _torch_gpt(r: Real, weights: dict[str, np.ndarray]) -> Any:
    import torch
    from torch import nn

    heads, key_dim = r.heads, r.width // r.heads

    class Block(nn.Module):
        def __init__(self, i: int):
            super().__init__()
            p = f"b{i}_attn"
            self.ln1, self.ln2 = _layer_norm(weights, f"b{i}_ln1"), _layer_norm(weights, f"b{i}_ln2")
            self.q, self.k, self.v = (_linear(weights, f"{p}/{n}") for n in ("query", "key", "value"))
            self.o = _linear(weights, f"{p}/attention_output")
            self.fc, self.proj = _linear(weights, f"b{i}_fc"), _linear(weights, f"b{i}_proj")

        def forward(self, x: Any) -> Any:
            b, t, _ = x.shape
            h = self.ln1(x)
            q, k, v = (f(h).view(b, t, heads, key_dim).transpose(1, 2) for f in (self.q, self.k, self.v))
            scores = (q * key_dim ** -0.5) @ k.transpose(-2, -1)
            causal = torch.ones(t, t, dtype=torch.bool, device=x.device).triu(1)
            attn = torch.softmax(scores.masked_fill(causal, float("-inf")), dim=-1) @ v
            x = x + self.o(attn.transpose(1, 2).reshape(b, t, heads * key_dim))
            return x + self.proj(nn.functional.gelu(self.fc(self.ln2(x))))

    class GPT(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            tok, pos = weights["embed/tok/embeddings"], weights["embed/pos/embeddings"]
            self.tok, self.pos = nn.Embedding(*tok.shape), nn.Embedding(*pos.shape)
            self.tok.weight, self.pos.weight = _param(tok), _param(pos)
            self.blocks = nn.ModuleList(Block(i) for i in range(2))
            self.ln_f, self.head = _layer_norm(weights, "ln_f"), _linear(weights, "head")

        def forward(self, x: Any) -> Any:
            h = self.tok(x) + self.pos(torch.arange(x.shape[1], device=x.device))[None]
            for block in self.blocks:
                h = block(h)
            return self.head(self.ln_f(h))

    return GPT()


def _torch_lstm(r: Real, weights: dict[str, np.ndarray]) -> Any:
    import torch
    from torch import nn

    class LSTM(nn.Module):
        """Keras's gate order (input, forget, cell, output) is torch's."""

        def __init__(self) -> None:
            super().__init__()
            table = weights["embed/embeddings"]
            self.embed = nn.Embedding(*table.shape)
            self.embed.weight = _param(table)
            kernel = weights["lstm/lstm_cell/kernel"]
            self.lstm = nn.LSTM(kernel.shape[0], r.width, batch_first=True)
            self.lstm.weight_ih_l0 = _param(kernel.T)
            self.lstm.weight_hh_l0 = _param(weights["lstm/lstm_cell/recurrent_kernel"].T)
            self.lstm.bias_ih_l0 = _param(weights["lstm/lstm_cell/bias"])
            self.lstm.bias_hh_l0 = _param(np.zeros(4 * r.width, np.float32))
            self.head = _linear(weights, "head")

        def forward(self, x: Any) -> Any:
            return self.head(self.lstm(self.embed(x))[0])

    del torch
    return LSTM()
