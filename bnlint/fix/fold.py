"""BN004 fix: fold an inference BN into the Conv, ConvTranspose, Gemm, MatMul or MatMul+Add before it.

With BN(y) = s * y + t per output channel (bnlint.foldable), the layer's weights are scaled by s along
their output-channel axis and its bias becomes b * s + t:
  Conv          W[M, C/g, k...]       scaled along axis 0
  ConvTranspose W[C, M/g, k...]       output channel of W[c, j] is (c // (C/g)) * (M/g) + j
  Gemm          B[K, N] or B[N, K]    (transB) scaled along N; C' = beta * C * s + t and beta' = 1
  MatMul(+Add)  W[K, N]               becomes Gemm(A, W * s, b * s + t): rank-2 activations only
The folded layer keeps its name, takes over the BN's output name, and gets new weight tensors, so a
weight shared with another layer is never modified.
"""

from __future__ import annotations

import numpy as np

from bnlint.fix.live import LiveGraph, constant_type
from bnlint.fix.numeric import CastRefused, CastStats, cast_checked, dtype_name, scale_rows
from bnlint.fix.result import Change, Checkpoint, Kept, PassResult
from bnlint.foldable import Affine, FoldTarget, fold_target
from bnlint.graph import Node

CODE = "BN004"
TITLE = "fold BN into the preceding layer"


def run(live: LiveGraph) -> PassResult:
    result = PassResult(CODE, TITLE)
    for node, bn in live.batchnorms():
        target = fold_target(bn)
        if not isinstance(target, FoldTarget):
            result.kept.append(Kept(CODE, live.path, node.label, node.op_type,
                                    f"{node.display} kept: {target.reason}"))
            continue
        try:
            result.changes.append(_fold(live, target))
        except FoldRefused as refused:
            result.kept.append(Kept(CODE, live.path, node.label, node.op_type, f"{node.display} kept: {refused}"))
    return result


class FoldRefused(Exception):
    """A fold found impossible while computing it; the message is the reason."""


def _constant(live: LiveGraph, name: str) -> np.ndarray:
    value = live.constant(name)
    if value is None:
        raise FoldRefused(f"'{name}' is not a constant")
    return np.asarray(value)


def _fold(live: LiveGraph, target: FoldTarget) -> Change:
    layer, bn, affine = target.layer, target.bn, target.affine
    weight = _constant(live, layer.input(1))
    weight_type = constant_type(live, layer.input(1))
    stats = CastStats(dtype_name(weight_type))
    try:
        if layer.op_type == "Conv":
            new_weight, bias = _conv(live, layer, weight, affine, weight_type, stats)
        elif layer.op_type == "ConvTranspose":
            new_weight, bias = _conv_transpose(live, layer, weight, affine, weight_type, stats)
        elif layer.op_type == "Gemm":
            new_weight, bias = _gemm(live, layer, weight, affine, weight_type, stats)
        else:
            new_weight, bias = _matmul(live, target, weight, affine, weight_type, stats)
    except CastRefused as refused:
        raise FoldRefused(str(refused)) from None
    stem = layer.label
    weight_name = live.add_array(f"{stem}_weight_bnfold", new_weight, weight_type, detach=True)
    bias_name = live.add_array(f"{stem}_bias_bnfold", bias, weight_type)
    removed = [bn.node]
    live.remove_node(bn.node)
    if target.add is not None:
        removed.append(target.add)
        live.remove_node(target.add)
    into = f"{layer.display}"
    if target.add is not None:
        into += f" + {target.add.display}"
    if layer.op_type == "MatMul":
        live.set_op_type(layer, "Gemm")
        into += f" (now Gemm '{layer.label}')"
    if layer.op_type == "Gemm":
        live.set_attribute(layer, "beta", None)  # C is pre-multiplied: the default beta = 1 applies
        if layer.opset < 7:
            live.set_attribute(layer, "broadcast", 1)
    live.set_input(layer, 1, weight_name)
    live.set_input(layer, 2, bias_name)
    live.set_output(layer, 0, bn.y)
    return Change(CODE, live.path, bn.node.label, f"folded {bn.node.display} into {into}", kind="fold",
                  removed_nodes=tuple(n.label for n in removed), new_tensors=(weight_name, bias_name),
                  checkpoint=Checkpoint(bn.y, bn.y), notes=tuple(stats.notes()))


def _channel_check(affine: Affine, channels: int, layer: Node) -> None:
    if affine.channels != channels:
        raise FoldRefused(f"BN has {affine.channels} channels but {layer.display} has {channels} outputs")


def _bias(live: LiveGraph, layer: Node, channels: int) -> np.ndarray:
    name = layer.input(2)
    if not name:
        return np.zeros(channels)
    values = _constant(live, name).astype(np.float64)
    if values.size != channels:
        raise FoldRefused(f"{layer.display} bias has {values.size} values for {channels} channels")
    return values.reshape(-1)


def _conv(live, layer, weight, affine, weight_type, stats):
    _channel_check(affine, weight.shape[0], layer)
    trailing = (1,) * (weight.ndim - 1)
    new_weight = scale_rows(weight, lambda rows: affine.s[rows].reshape(-1, *trailing), weight_type, "weights",
                            stats)
    bias = _bias(live, layer, weight.shape[0]) * affine.s + affine.t
    return new_weight, cast_checked(bias, weight_type, "bias", stats)


def _conv_transpose(live, layer, weight, affine, weight_type, stats):
    groups = int(layer.attr("group", 1))
    in_channels, per_group = weight.shape[0], weight.shape[1]
    _channel_check(affine, per_group * groups, layer)
    if in_channels % groups:
        raise FoldRefused(f"{layer.display} weight has {in_channels} input channels for {groups} groups")
    group_of_row = np.arange(in_channels) // (in_channels // groups)
    s = affine.s.reshape(groups, per_group)
    trailing = (1,) * (weight.ndim - 2)

    def factor(rows):
        return s[group_of_row[rows]].reshape(-1, per_group, *trailing)

    new_weight = scale_rows(weight, factor, weight_type, "weights", stats)
    bias = _bias(live, layer, per_group * groups) * affine.s + affine.t
    return new_weight, cast_checked(bias, weight_type, "bias", stats)


def _gemm(live, layer, weight, affine, weight_type, stats):
    if weight.ndim != 2:
        raise FoldRefused(f"{layer.display} weight is not 2-D")
    trans_b = bool(layer.attr("transB", 0))
    features = weight.shape[0] if trans_b else weight.shape[1]
    _channel_check(affine, features, layer)
    if trans_b:
        new_weight = scale_rows(weight, lambda rows: affine.s[rows, None], weight_type, "weights", stats)
    else:
        new_weight = scale_rows(weight, lambda rows: affine.s[None, :], weight_type, "weights", stats)
    bias = _broadcast_bias(live, layer, layer.input(2), float(layer.attr("beta", 1.0)), affine)
    return new_weight, cast_checked(bias, weight_type, "bias", stats)


def _broadcast_bias(live, layer, name: str, factor: float, affine: Affine) -> np.ndarray:
    """factor * C * s + t for a C that Gemm broadcasts to (M, N): scalar, (N,), (1, N), (M, 1) or (M, N)."""
    if not name:
        return affine.t.copy()
    values = _constant(live, name).astype(np.float64) * factor
    if values.ndim > 2:
        raise FoldRefused(f"bias '{name}' has rank {values.ndim}, more than the 2-D output")
    try:
        folded = values * affine.s + affine.t
    except ValueError:
        raise FoldRefused(f"bias '{name}' of shape {list(values.shape)} does not broadcast to "
                          f"{affine.channels} features") from None
    return folded.reshape(-1) if folded.ndim == 2 and folded.shape[0] == 1 else folded


def _matmul(live, target: FoldTarget, weight, affine, weight_type, stats):
    layer = target.layer
    if weight.ndim != 2:
        raise FoldRefused(f"{layer.display} weight is not 2-D")
    _channel_check(affine, weight.shape[1], layer)
    new_weight = scale_rows(weight, lambda rows: affine.s[None, :], weight_type, "weights", stats)
    if target.add is None:
        return new_weight, cast_checked(affine.t.copy(), weight_type, "bias", stats)
    bias_name = next(n for n in target.add.inputs if n != layer.output(0))
    bias = _broadcast_bias(live, layer, bias_name, 1.0, affine)
    return new_weight, cast_checked(bias, weight_type, "bias", stats)
