"""Rewrites of a captured torch step's FX graph before it is replayed.

``simplify`` makes the replay cheaper with the same results (no ``detach``,
constants folded, dead ops dropped); ``relayout`` removes Keras's
memory-format copies around convolutions and pools, which ``capture.py``
keeps only where a replay from the step's starting state reproduces the
captured results. Pure functions of a ``torch.fx.GraphModule``.
"""

from __future__ import annotations

from typing import Any

import torch

_aten = torch.ops.aten


def _is_pure(node: torch.fx.Node) -> bool:
    target = node.target
    if node.op != "call_function" or not isinstance(target, torch._ops.OpOverload):
        return False
    if target._schema.is_mutable or torch.Tag.nondeterministic_seeded in target.tags:
        return False
    return True


def simplify(gm: torch.fx.GraphModule) -> None:
    """Cheaper replay, same results: ``detach`` is a no-op without autograd
    (the replay runs under ``no_grad``); ops over constants only are computed
    once, here; ops whose results nobody uses are dropped. Ops that mutate
    or draw random numbers are kept as they are."""
    graph = gm.graph
    for node in list(graph.nodes):
        if node.op == "call_function" and node.target in (_aten.detach.default, _aten.alias.default):
            node.replace_all_uses_with(node.args[0])
            graph.erase_node(node)
    # Constant folding: get_attr tensors are the capture's constants.
    constant: dict[torch.fx.Node, Any] = {}
    folded = 0
    for node in list(graph.nodes):
        if node.op == "get_attr":
            value = getattr(gm, str(node.target), None)
            if isinstance(value, torch.Tensor):
                constant[node] = value
            continue
        if not _is_pure(node):
            continue
        if not all(n in constant for n in node.all_input_nodes):  # (no inputs: a constant too)
            continue
        if any(not _is_pure(user) for user in node.users):
            continue  # a mutating user would write into the shared constant
        args, kwargs = torch.fx.node.map_arg((node.args, node.kwargs), lambda n: constant[n])
        value = node.target(*args, **kwargs)
        if not isinstance(value, torch.Tensor):
            continue
        name = f"_folded_{folded}"
        folded += 1
        gm.register_buffer(name, value, persistent=False)
        with graph.inserting_before(node):
            replacement = graph.get_attr(name)
        node.replace_all_uses_with(replacement)
        graph.erase_node(node)
        constant[replacement] = value
    for node in reversed(list(graph.nodes)):
        if not node.users and (_is_pure(node) or node.op == "get_attr"):
            graph.erase_node(node)
    graph.lint()
    gm.recompile()


def relayout(gm: torch.fx.GraphModule) -> bool:
    """Memory-format passes (values unchanged, strides and so kernels
    change); returns whether anything changed. The caller checks the result
    against the captured step before using it.

    Keras's torch convolutions and pools take channels-last activations by
    copying them to NCHW (``.contiguous()``) and back to channels-last
    memory; its pools run on that NCHW copy, which for few channels is ~5x
    slower than on the channels-last view a ``torch.nn`` model would pass.
    A clone whose only job is a memory format is dropped (when nothing
    writes into it), so the permuted views flow through as they are."""
    graph = gm.graph
    changed = _contiguous_conv_weights(graph)
    for node in list(graph.nodes):
        if node.op != "call_function" or node.target is not _aten.clone.default \
                or node.kwargs.get("memory_format") not in (torch.contiguous_format, torch.channels_last):
            continue
        if any(not _is_pure(user) for user in node.users):
            continue  # written into: the copy is needed
        node.replace_all_uses_with(node.args[0])
        graph.erase_node(node)
        changed = True
    if changed:
        graph.lint()
        gm.recompile()
    return changed


_CONVOLUTIONS = {_aten.convolution.default: 1, _aten.convolution_backward.default: 2}
_VIEWS = {_aten.permute.default, _aten.t.default, _aten.transpose.int}


def _contiguous_conv_weights(graph: torch.fx.Graph) -> bool:
    """Keras keeps conv kernels as (kh, kw, in, out) and hands torch a
    permuted view; oneDNN then picks its memory format from strides that no
    torch module would have, and can miss the channels-last path a
    ``torch.nn.Conv2d`` gets (measured: 4x slower max-pooling after the first
    conv of a 1-channel image). The weight is made contiguous once per step,
    as a torch module holds it; forward and backward share the copy."""
    copies: dict[torch.fx.Node, torch.fx.Node] = {}
    for node in list(graph.nodes):
        position = _CONVOLUTIONS.get(node.target) if node.op == "call_function" else None
        if position is None or len(node.args) <= position:
            continue
        weight = node.args[position]
        if not isinstance(weight, torch.fx.Node) or weight.target not in _VIEWS:
            continue
        copy = copies.get(weight)
        if copy is None:
            with graph.inserting_after(weight):
                copy = graph.call_function(_aten.clone.default, (weight,),
                                           {"memory_format": torch.contiguous_format})
            copies[weight] = copy
        node.update_arg(position, copy)
    return bool(copies)


# Graphs kept per step (one per input signature), as torch.compile's
# cache_size_limit: beyond it new signatures run eagerly.
