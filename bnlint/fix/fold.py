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

from dataclasses import dataclass

import numpy as np

from bnlint.fix import batched, bias
from bnlint.fix.live import LiveGraph, constant_type
from bnlint.fix.numeric import CastRefused, CastStats, cast_checked, dtype_name, scale_rows
from bnlint.fix.result import Change, Checkpoint, Kept, PassResult
from bnlint.foldable import Affine, FoldTarget, Refusal, fold_target, inference_affine
from bnlint.graph import Node
from bnlint.semantics import BatchNorm, batchnorm

CODE = "BN004"
TITLE = "fold BN into the preceding layer"
# Folds finished together at most: finishing earlier is always correct, and this bounds the memory the
# stacked arithmetic holds at once (at most 512 small weights, each <= 64 KiB, plus their results).
MAX_PENDING = 512


def run(live: LiveGraph) -> PassResult:
    """Decide BN by BN (in graph order, on the graph as the earlier folds left it), compute the folded
    values of the accepted BNs together (bnlint.fix.batched), then make their edits in order.

    Folds wait in `pending` until a BN whose decision could depend on one of them comes up (it reads a
    pending BN's output, or follows an Add or MatMul whose rank or bias analysis looks further up), or
    MAX_PENDING are waiting; then the pending folds are finished first, so every decision sees exactly
    the graph the one-by-one order would show it."""
    entries: list[Change | Kept | Plan] = []
    pending: list[Plan] = []
    pending_outputs: set[str] = set()
    for node, bn in live.batchnorms():
        if pending and (len(pending) >= MAX_PENDING or _depends_on_pending(live, bn, pending_outputs)):
            _finish(live, pending, entries)
            pending, pending_outputs = [], set()
        deferred = live.deferred_biases.get(node.index)
        target = fold_target(bn)
        if isinstance(target, FoldTarget):
            reason = None
            if deferred is not None and target.layer.index != deferred.layer.index:
                raise RuntimeError(f"{node.display}: deferred BN003 rewrite names another layer")
        else:
            target, reason = _refused(live, target, deferred)
            deferred = None
        if reason is not None:
            entries.append(Kept(CODE, live.path, node.label, node.op_type, f"{node.display} kept: {reason}"))
            continue
        plan = Plan(target, deferred, len(entries))
        entries.append(plan)
        pending.append(plan)
        pending_outputs.add(bn.y)
    if pending:
        _finish(live, pending, entries)
    bias.settle_all(live)  # a deferred BN003 rewrite whose BN this pass never reached
    result = PassResult(CODE, TITLE)
    result.changes = [entry for entry in entries if isinstance(entry, Change)]
    result.kept = [entry for entry in entries if isinstance(entry, Kept)]
    return result


class FoldRefused(Exception):
    """A fold found impossible while computing it; the message is the reason."""


@dataclass
class Plan:
    """An accepted fold whose values are not computed yet. `deferred`: the BN003 rewrite of this BN that
    the fold absorbs (fold with its new mean, as if the layer had no bias)."""

    target: FoldTarget
    deferred: bias.DeferredBias | None
    slot: int


def _depends_on_pending(live: LiveGraph, bn: BatchNorm, pending_outputs: set[str]) -> bool:
    """Could fold_target(bn) answer differently once the pending folds are made? A fold moves its BN's
    output onto the layer and removes the BN (and MatMul's bias Add); fold_target looks at the producer of
    bn.x, and for Add and MatMul further up (rank inference, the Add's inputs)."""
    if bn.x in pending_outputs:
        return True
    producer = live.producer(bn.x)
    return producer is not None and producer.op_type in ("Add", "MatMul")


def _refused(live: LiveGraph, refusal: Refusal, deferred: bias.DeferredBias | None):
    """(None, reason) for a refused BN, after making its deferred BN003 rewrite for real; (target, None)
    when the rewritten BN folds after all. fold_target ran on the graph without that rewrite, which
    differs only in BN's mean: the structural checks answer the same, and the numeric check (the last one)
    is made again on the rewritten BN (explicitly: the numeric facts cached per graph predate the mean)."""
    if deferred is None:
        return None, refusal.reason
    bias.settle(live, deferred)
    after = batchnorm(deferred.bn)
    target = fold_target(after)
    if not isinstance(target, FoldTarget):
        return None, target.reason
    affine = inference_affine(after)
    if isinstance(affine, str):
        return None, affine
    return target, None


def _finish(live: LiveGraph, plans: list[Plan], entries: list) -> None:
    """Compute the values of these folds together, then make each fold's edits, in order."""
    outcomes = batched.fold_values(live, plans)
    for plan, outcome in zip(plans, outcomes):
        node = plan.target.bn.node
        if isinstance(outcome, tuple):
            if plan.deferred is not None:
                bias.absorb(live, plan.deferred)
            new_weight, new_bias, weight_type, notes = outcome
            entries[plan.slot] = _apply(live, plan.target, new_weight, new_bias, weight_type, notes)
            continue
        if plan.deferred is not None:
            bias.settle(live, plan.deferred)
        if outcome is batched.NUMERICS_AFTER_BIAS:  # refused once BN's mean has the bias subtracted
            outcome = inference_affine(batchnorm(node))
            if not isinstance(outcome, str):
                raise RuntimeError(f"fold of {node.display}: batched and single numerics disagree")
        entries[plan.slot] = Kept(CODE, live.path, node.label, node.op_type, f"{node.display} kept: {outcome}")


def _constant(live: LiveGraph, name: str) -> np.ndarray:
    value = live.constant(name)
    if value is None:
        raise FoldRefused(f"'{name}' is not a constant")
    return np.asarray(value)


def fold_one(live: LiveGraph, target: FoldTarget, affine: Affine, *, absorbed: bool):
    """One fold's values, computed alone: (new weight, new bias, weight type, notes). With `absorbed`,
    the layer's bias input is ignored (a deferred BN003 rewrite removes it). Raises FoldRefused."""
    layer = target.layer
    weight = _constant(live, layer.input(1))
    weight_type = constant_type(live, layer.input(1))
    stats = CastStats(dtype_name(weight_type))
    bias_input = "" if absorbed else layer.input(2)
    try:
        if layer.op_type == "Conv":
            new_weight, new_bias = _conv(live, layer, weight, affine, weight_type, stats, bias_input)
        elif layer.op_type == "ConvTranspose":
            new_weight, new_bias = _conv_transpose(live, layer, weight, affine, weight_type, stats, bias_input)
        elif layer.op_type == "Gemm":
            new_weight, new_bias = _gemm(live, layer, weight, affine, weight_type, stats, bias_input)
        else:
            new_weight, new_bias = _matmul(live, target, weight, affine, weight_type, stats)
    except CastRefused as refused:
        raise FoldRefused(str(refused)) from None
    return new_weight, new_bias, weight_type, tuple(stats.notes())


def _apply(live: LiveGraph, target: FoldTarget, new_weight, bias, weight_type, notes) -> Change:
    layer, bn = target.layer, target.bn
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
                  checkpoint=Checkpoint(bn.y, bn.y), notes=notes)


def _channel_check(affine: Affine, channels: int, layer: Node) -> None:
    if affine.channels != channels:
        raise FoldRefused(f"BN has {affine.channels} channels but {layer.display} has {channels} outputs")


def _bias(live: LiveGraph, layer: Node, channels: int, name: str) -> np.ndarray:
    if not name:
        return np.zeros(channels)
    values = _constant(live, name).astype(np.float64)
    if values.size != channels:
        raise FoldRefused(f"{layer.display} bias has {values.size} values for {channels} channels")
    return values.reshape(-1)


def _conv(live, layer, weight, affine, weight_type, stats, bias_input):
    _channel_check(affine, weight.shape[0], layer)
    trailing = (1,) * (weight.ndim - 1)
    new_weight = scale_rows(weight, lambda rows: affine.s[rows].reshape(-1, *trailing), weight_type, "weights",
                            stats)
    bias = _bias(live, layer, weight.shape[0], bias_input) * affine.s + affine.t
    return new_weight, cast_checked(bias, weight_type, "bias", stats)


def _conv_transpose(live, layer, weight, affine, weight_type, stats, bias_input):
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
    bias = _bias(live, layer, per_group * groups, bias_input) * affine.s + affine.t
    return new_weight, cast_checked(bias, weight_type, "bias", stats)


def _gemm(live, layer, weight, affine, weight_type, stats, bias_input):
    if weight.ndim != 2:
        raise FoldRefused(f"{layer.display} weight is not 2-D")
    trans_b = bool(layer.attr("transB", 0))
    features = weight.shape[0] if trans_b else weight.shape[1]
    _channel_check(affine, features, layer)
    if trans_b:
        new_weight = scale_rows(weight, lambda rows: affine.s[rows, None], weight_type, "weights", stats)
    else:
        new_weight = scale_rows(weight, lambda rows: affine.s[None, :], weight_type, "weights", stats)
    bias = _broadcast_bias(live, layer, bias_input, float(layer.attr("beta", 1.0)), affine)
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
