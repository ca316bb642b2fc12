"""BN004 fix, forward: fold an inference BN that cannot fold backwards into the layer that reads it.

A BN after Concat or Add has no weight layer before it, but the next layer is linear in its input:
  Conv(W, s * x + t) = Conv(W * s, x) + Conv(W, t)
scales W along its input-channel axis and, because t is constant per input channel, Conv(W, t) is a
per-output-channel constant - but only where every kernel tap reads real input. Zero padding feeds the
border taps 0 instead of t, so a Conv with any padding (explicit pads or SAME auto_pad with a kernel
larger than 1) is refused rather than approximated. Gemm (transA = 0) and rank-2 MatMul fold the same way
without a padding question: C' = beta * C + alpha * t @ B.
"""

from __future__ import annotations

import numpy as np
import onnx

from bnlint.fix.fold import FoldRefused, _constant
from bnlint.fix.live import LiveGraph, constant_type
from bnlint.fix.numeric import CastRefused, CastStats, cast_checked, dtype_name, scale_rows
from bnlint.fix.result import Change, Checkpoint, Kept, PassResult
from bnlint.foldable import Affine, inference_affine
from bnlint.graph import Node
from bnlint.ops import value_rank
from bnlint.semantics import BatchNorm

CODE = "BN004"
TITLE = "fold BN forward into the next layer"
INTO = ("Conv", "Gemm", "MatMul")


def run(live: LiveGraph) -> PassResult:
    """Fold forward every BN still there after the backward folds (those could not fold backwards)."""
    result = PassResult(CODE, TITLE)
    for node, bn in live.batchnorms():
        try:
            result.changes.append(_fold_forward(live, bn))
        except FoldRefused as refused:
            result.kept.append(Kept(CODE, live.path, node.label, node.op_type, f"forward fold: {refused}"))
    return result


def _next_layer(live: LiveGraph, bn: BatchNorm) -> Node:
    graph = live
    if bn.training:
        raise FoldRefused(f"BN is in training mode ({bn.training_reason})")
    if not bn.spatial:
        raise FoldRefused("BN has spatial=0")
    if graph.is_graph_output(bn.y):
        raise FoldRefused(f"BN output '{bn.y}' is a graph output")
    readers = graph.consumers(bn.y)
    if len(readers) != 1:
        raise FoldRefused(f"BN output has {len(readers)} consumers")
    layer = readers[0]
    if not layer.is_op(*INTO) or layer.input(0) != bn.y or bn.y in layer.inputs[1:]:
        raise FoldRefused(f"next node {layer.display} is not a Conv/Gemm/MatMul reading BN's output as its data")
    if not graph.is_constant(layer.input(1)) or (layer.input(2) and not graph.is_constant(layer.input(2))):
        raise FoldRefused(f"{layer.display} weight or bias is not a constant")
    return layer


def _padding_reason(layer: Node, kernel: tuple[int, ...]) -> str | None:
    pads = layer.attr("pads") or []
    if any(int(p) != 0 for p in pads):
        return f"{layer.display} zero-pads its input (pads={list(pads)}), where BN's shift would be lost"
    auto_pad = layer.attr("auto_pad", b"NOTSET")
    auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else str(auto_pad)
    if auto_pad in ("SAME_UPPER", "SAME_LOWER") and any(k > 1 for k in kernel):
        return f"{layer.display} uses auto_pad={auto_pad} with a kernel larger than 1, which zero-pads its input"
    return None


def _fold_forward(live: LiveGraph, bn: BatchNorm) -> Change:
    layer = _next_layer(live, bn)
    affine = inference_affine(bn)
    if isinstance(affine, str):
        raise FoldRefused(affine)
    weight = _constant(live, layer.input(1))
    weight_type = constant_type(live, layer.input(1)) or onnx.TensorProto.FLOAT
    stats = CastStats(dtype_name(weight_type))
    try:
        if layer.op_type == "Conv":
            new_weight, bias = _into_conv(live, layer, weight, affine, weight_type, stats)
        else:
            new_weight, bias = _into_matrix(live, layer, weight, affine, weight_type, stats)
    except CastRefused as refused:
        raise FoldRefused(str(refused)) from None
    weight_name = live.add_array(f"{layer.label}_weight_bnfold", new_weight, weight_type, detach=True)
    bias_name = live.add_array(f"{layer.label}_bias_bnfold", bias, weight_type)
    shown = layer.display
    live.remove_node(bn.node)
    live.set_input(layer, 0, bn.x)
    if layer.op_type == "MatMul":
        live.set_op_type(layer, "Gemm")
        shown += f" (now Gemm '{layer.label}')"
    if layer.op_type == "Gemm":
        live.set_attribute(layer, "beta", None)
        if layer.opset < 7:
            live.set_attribute(layer, "broadcast", 1)
    live.set_input(layer, 1, weight_name)
    live.set_input(layer, 2, bias_name)
    return Change(CODE, live.path, bn.node.label, f"folded {bn.node.display} forward into {shown}",
                  kind="fold-forward", removed_nodes=(bn.node.label,), new_tensors=(weight_name, bias_name),
                  checkpoint=Checkpoint(layer.output(0), layer.output(0)), notes=tuple(stats.notes()))


def _into_conv(live, layer, weight, affine: Affine, weight_type, stats):
    reason = _padding_reason(layer, tuple(weight.shape[2:]))
    if reason:
        raise FoldRefused(reason)
    groups = int(layer.attr("group", 1))
    out_channels, per_group = weight.shape[0], weight.shape[1]
    if per_group * groups != affine.channels or out_channels % groups:
        raise FoldRefused(f"BN has {affine.channels} channels but {layer.display} reads "
                          f"{per_group * groups}")
    group_of_row = np.arange(out_channels) // (out_channels // groups)
    s = affine.s.reshape(groups, per_group)
    t = affine.t.reshape(groups, per_group)
    trailing = (1,) * (weight.ndim - 2)
    # Conv(W, t) without padding: every output position sums W[m, j, taps] * t[j] over all taps.
    taps = weight.reshape(out_channels, per_group, -1).sum(axis=2, dtype=np.float64)
    extra = (taps * t[group_of_row]).sum(axis=1)
    new_weight = scale_rows(weight, lambda rows: s[group_of_row[rows]].reshape(-1, per_group, *trailing),
                            weight_type, "weights", stats)
    bias_name = layer.input(2)
    bias = _constant(live, bias_name).astype(np.float64).reshape(-1) if bias_name else np.zeros(out_channels)
    return new_weight, cast_checked(bias + extra, weight_type, "bias", stats)


def _into_matrix(live, layer, weight, affine: Affine, weight_type, stats):
    graph = live
    if weight.ndim != 2:
        raise FoldRefused(f"{layer.display} weight is not 2-D")
    if layer.op_type == "Gemm" and layer.attr("transA", 0):
        raise FoldRefused(f"{layer.display} has transA=1, so BN's channels are not its reduction axis")
    if layer.op_type == "MatMul" and value_rank(graph, layer.input(0)) != 2:
        raise FoldRefused(f"{layer.display} activation is not known to be rank 2")
    trans_b = layer.op_type == "Gemm" and bool(layer.attr("transB", 0))
    matrix = weight.T if trans_b else weight  # [K, N]
    if matrix.shape[0] != affine.channels:
        raise FoldRefused(f"BN has {affine.channels} channels but {layer.display} reads {matrix.shape[0]}")
    alpha = float(layer.attr("alpha", 1.0)) if layer.op_type == "Gemm" else 1.0
    beta = float(layer.attr("beta", 1.0)) if layer.op_type == "Gemm" else 1.0
    shift = alpha * (affine.t @ matrix.astype(np.float64))
    if trans_b:
        new_weight = scale_rows(weight, lambda rows: affine.s[None, :], weight_type, "weights", stats)
    else:
        new_weight = scale_rows(weight, lambda rows: affine.s[rows, None], weight_type, "weights", stats)
    bias_name = layer.input(2)
    if bias_name:
        bias = _constant(live, bias_name).astype(np.float64) * beta
        if bias.ndim > 2:
            raise FoldRefused(f"bias '{bias_name}' has rank {bias.ndim}")
        bias = bias + shift
        if bias.ndim == 2 and bias.shape[0] == 1:
            bias = bias.reshape(-1)
    else:
        bias = shift
    return new_weight, cast_checked(bias, weight_type, "bias", stats)
