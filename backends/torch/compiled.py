"""``jit_compile=True`` on torch: ``torch.compile`` of the step, as Keras
has it, with dynamo tracing the gradient into the step's graph, a count of
the compilations for ``trace_counts``, and a clear error where
``torch.compile`` cannot differentiate the step."""

from __future__ import annotations

import contextlib
import threading
from typing import Any, Callable

import torch


def step(body: Callable[[Any], Any], on_trace: Callable[[Any], None] | None) -> Callable[[Any], Any]:
    """The compiled ``body``; ``on_trace(batch)`` after each call that compiled."""
    if on_trace is None:
        return _whole_step(torch.compile(body, backend=_counting_inductor))
    return _counting_compiles(body, on_trace)


def _counting_compiles(step: Callable[[Any], Any], on_trace: Callable[[Any], None]) -> Callable[[Any], Any]:
    """``torch.compile(step)`` that calls ``on_trace(batch)`` after each call
    during which dynamo compiled something. Dynamo replays Python side effects
    at every call, so the step's own Python cannot count traces; its backend
    (inductor, wrapped) is called once per graph it compiles. A call that
    compiles several graphs (graph breaks) counts once."""
    compiled = _whole_step(torch.compile(step, backend=_counting_inductor))

    def run(batch: Any) -> Any:
        _compiles.now = False
        out = compiled(batch)
        if _compiles.now:
            on_trace(batch)
        return out

    return run


_compiles = threading.local()  # .now: whether dynamo compiled a graph during this thread's call


def _whole_step(compiled: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """Calls ``compiled`` with dynamo tracing ``torch.autograd.grad`` into
    its graph (``trace_autograd_ops``, where torch has it). Without it the
    gradient is a graph break inside the step's ``no_grad``, which dynamo
    cannot resume from: it compiled each function the step calls as a frame
    of its own (a Dense classifier on CPU: 52 frames, 4 breaks, first fit
    10.3-14.6 s); with it, one graph for the step, forward and backward (2
    frames, no break; first fit 3.6-4.1 s, ``model.fit``'s 7.9-12.9 s in the
    same runs). The option holds during the step's calls only: whatever
    dynamo compiles then (a ``torch.compile`` the user's step calls, too)
    sees it."""
    patch = (torch._dynamo.config.patch(trace_autograd_ops=True)
             if hasattr(torch._dynamo.config, "trace_autograd_ops") else contextlib.nullcontext())

    def run(batch: Any) -> Any:
        try:
            with patch:
                return compiled(batch)
        except RuntimeError as e:
            if "double backward" not in str(e):
                raise
            raise RuntimeError(
                "jit_compile=True on torch (torch.compile, as Keras's) cannot differentiate a gradient: this "
                "step calls value_and_grad inside a function it differentiates (a gradient penalty, say), and "
                "torch.compile's autograd has no double backward. Leave jit_compile at its default (the "
                "Trainer's captured graph differentiates it) or pass run_eagerly=True.") from e

    return run


def _counting_inductor(gm: Any, example_inputs: Any) -> Any:
    """Inductor, noting that it compiled. One function for every compiled
    step: dynamo guards on the backend's identity, and the steps of a process
    share their code (a new backend per step recompiled every step it met)."""
    _compiles.now = True
    return torch._dynamo.lookup_backend("inductor")(gm, example_inputs)
