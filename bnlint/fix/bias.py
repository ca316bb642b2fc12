"""BN003 fix: remove a layer bias that the following BN cancels, and subtract it from BN's running mean.

BN(x + b) with mean m equals BN(x) with mean m - b, exactly, at inference; in training mode BN subtracts
the batch mean, which moves with b, so Y is unchanged too (the running-statistics outputs are not: a BN
whose running mean output is read keeps its bias). The new mean is a new tensor: BN parameters shared
with another node are never edited in place.

When the backward fold (BN004) runs next, most of these BNs are folded into the very layer whose bias was
removed, and the fold replaces that layer's bias and drops the BN with its new mean. So a rewrite that the
fold may absorb is deferred: reported as usual, its mean's name and place reserved, but the graph is left
alone. The fold pass then either absorbs it (folding with the new mean, to the same values) or `settle`s
it, which makes the rewrite for real; `settle_all` settles whatever is left before the graph is committed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx

from bnlint.fix import batched
from bnlint.fix.live import LiveGraph, constant_type
from bnlint.fix.numeric import CastRefused, CastStats, cast_checked, dtype_name
from bnlint.fix.result import Change, Checkpoint, Kept, PassResult
from bnlint.foldable import consumers_reason
from bnlint.graph import Node
from bnlint.patterns import bias_site, layer_kind
from bnlint.semantics import BatchNorm

CODE = "BN003"
TITLE = "remove bias cancelled by BN"


def run(live: LiveGraph) -> PassResult:
    """BN by BN in graph order. A rewrite the fold may absorb makes no edit, so its arithmetic can wait:
    such float32 candidates are computed together (bnlint.fix.batched.new_means) just before the next
    rewrite that edits the graph, or at the end, which keeps names and tensors in the one-by-one order."""
    entries: list = []
    waiting: list[Candidate] = []
    for node, bn in live.batchnorms():
        site = bias_site(bn)
        if site is None:
            continue
        reason = _blocker(live, bn, site.layer, site.via)
        if reason is None and _fold_may_absorb(live, bn, site.layer, site.via):
            raws = batched.bias_raws(live, bn, site)
            if raws is not None:
                candidate = Candidate(bn, site, *raws, len(entries))
                entries.append(candidate)
                waiting.append(candidate)
                continue
        if reason is None:
            if waiting:
                _finish(live, waiting, entries)
                waiting = []
            reason = _remove_bias(live, bn, site.layer, site.via, site.bias, blocked_checked=True)
        entries.append(_kept(live, bn, site, reason) if isinstance(reason, str) else reason)
    if waiting:
        _finish(live, waiting, entries)
    result = PassResult(CODE, TITLE)
    result.changes = [entry for entry in entries if isinstance(entry, Change)]
    result.kept = [entry for entry in entries if isinstance(entry, Kept)]
    return result


def _kept(live: LiveGraph, bn: BatchNorm, site, reason: str) -> Kept:
    return Kept(CODE, live.path, bn.node.label, bn.node.op_type,
                f"bias '{site.bias}' of {layer_kind(site.layer)} '{site.layer.label}' kept: {reason}")


@dataclass(frozen=True)
class Candidate:
    """A deferrable rewrite (float32 mean and bias of one length) whose new mean is not computed yet."""

    bn: BatchNorm
    site: object  # bnlint.patterns.BiasSite
    mean_raw: bytes
    bias_raw: bytes
    slot: int


def _finish(live: LiveGraph, candidates: list[Candidate], entries: list) -> None:
    """New means of the waiting candidates, computed together; a mean that overflows float32 takes the
    one-by-one path, which refuses it with the usual reason."""
    for candidate, new_mean in zip(candidates, batched.new_means(candidates)):
        bn, site = candidate.bn, candidate.site
        if new_mean is None:
            outcome = _remove_bias(live, bn, site.layer, site.via, site.bias, blocked_checked=True)
        else:
            outcome = _defer(live, bn, site.layer, site.bias, new_mean, onnx.TensorProto.FLOAT, ())
        entries[candidate.slot] = _kept(live, bn, site, outcome) if isinstance(outcome, str) else outcome


@dataclass(frozen=True)
class DeferredBias:
    """A reported BN003 rewrite not made yet: `mean` (the new running mean, already in the mean's type)
    is to go into the reserved tensor `mean_name`, read by `bn` instead of its mean; `layer` loses its bias."""

    bn: Node
    layer: Node
    mean_name: str
    mean: np.ndarray


def _fold_may_absorb(live: LiveGraph, bn: BatchNorm, layer: Node, via) -> bool:
    """Could the backward fold fold this BN into `layer` itself? Only then is deferring worth it. The BN
    must read the layer directly (no Identity), and no BN may read the BN (through Identity): BN008 would
    merge it into that BN, reading its mean first. The fold pass settles every case where it does not fold."""
    if not live.fold_follows or via or layer.op_type not in ("Conv", "ConvTranspose", "Gemm"):
        return False
    return not any(reader.op_type in ("BatchNormalization", "Identity") for reader in live.consumers(bn.y))


def settle(live: LiveGraph, deferred: DeferredBias) -> None:
    """Make a deferred rewrite for real (the edits `_remove_bias` would have made)."""
    del live.deferred_biases[deferred.bn.index]
    live.truncate_inputs(deferred.layer, 2)
    live.fill_reserved(deferred.mean_name)
    live.set_input(deferred.bn, 3, deferred.mean_name)


def absorb(live: LiveGraph, deferred: DeferredBias) -> None:
    """The fold removed the BN and replaced the layer's bias: the new mean is never needed."""
    del live.deferred_biases[deferred.bn.index]
    live.abandon_reserved(deferred.mean_name)


def settle_all(live: LiveGraph) -> None:
    for deferred in list(live.deferred_biases.values()):
        settle(live, deferred)


def _blocker(live: LiveGraph, bn: BatchNorm, layer: Node, via) -> str | None:
    graph = live
    reason = consumers_reason(layer, layer.output(0))
    if reason is None:
        reason = next((r for r in (consumers_reason(n, n.output(0)) for n in via) if r), None)
    if reason:
        return reason
    if not bn.spatial:
        return "BN has spatial=0 (per-activation statistics)"
    for name in bn.node.outputs[1:]:
        if name and graph.use_count(name):
            return (f"{bn.node.display} runs in training mode and its running-statistics output '{name}' is "
                    "read; removing the bias would shift it")
    if not graph.is_constant(bn.mean):
        return f"{bn.node.display} mean is not a constant"
    if layer.is_op("Gemm") and layer.opset < 11:
        return "Gemm before opset 11 requires its C input"
    return None


def _bias_vector(live: LiveGraph, layer: Node, bias: str, channels: int) -> np.ndarray | str:
    graph = live
    values = graph.constant(bias)
    if values is None:
        return f"bias '{bias}' is not a constant"
    values = np.asarray(values, dtype=np.float64)
    if layer.is_op("Gemm"):
        values = values * float(layer.attr("beta", 1.0))
    if values.size == 1:
        return np.full(channels, values.reshape(-1)[0])
    flat = values.reshape(-1)
    if flat.size != channels:
        return f"bias '{bias}' has {flat.size} values for {channels} BN channels"
    return flat


def _remove_bias(live: LiveGraph, bn: BatchNorm, layer: Node, via, bias: str, *,
                 blocked_checked: bool = False) -> Change | str:
    graph = live
    reason = None if blocked_checked else _blocker(live, bn, layer, via)
    if reason:
        return reason
    mean = np.asarray(graph.constant(bn.mean), dtype=np.float64)
    vector = _bias_vector(live, layer, bias, mean.size)
    if isinstance(vector, str):
        return vector
    mean_type = constant_type(graph, bn.mean) or onnx.TensorProto.FLOAT
    stats = CastStats(dtype_name(mean_type))
    try:
        new_mean = cast_checked(mean.reshape(-1) - vector, mean_type, "running mean", stats)
    except CastRefused as refused:
        return str(refused)
    new_mean = new_mean.reshape(mean.shape)
    if _fold_may_absorb(live, bn, layer, via):
        return _defer(live, bn, layer, bias, new_mean, mean_type, tuple(stats.notes()))
    removed = ()
    if layer.op_type == "Add":
        matmul_out = next(n for n in layer.inputs if n != bias)
        live.remove_node(layer)
        live.replace_uses(layer.output(0), matmul_out)
        removed = (layer.label,)
    else:
        live.truncate_inputs(layer, 2)
    name = live.add_array(f"{bn.node.label}_mean_nobias", new_mean, mean_type)
    live.set_input(bn.node, 3, name)
    return _change(live, bn, layer, bias, removed, name, tuple(stats.notes()))


def _defer(live: LiveGraph, bn: BatchNorm, layer: Node, bias: str, new_mean: np.ndarray, mean_type: int,
           notes: tuple[str, ...]) -> Change:
    """Report the rewrite and reserve its tensor, but leave the graph alone (see the module docstring)."""
    name = live.reserve_array(f"{bn.node.label}_mean_nobias", new_mean, mean_type)
    live.deferred_biases[bn.node.index] = DeferredBias(bn.node, layer, name, new_mean)
    return _change(live, bn, layer, bias, (), name, notes)


def _change(live: LiveGraph, bn: BatchNorm, layer: Node, bias: str, removed, name: str, notes) -> Change:
    return Change(CODE, live.path, bn.node.label,
                  f"removed bias '{bias}' of {layer_kind(layer)} '{layer.label}' and subtracted it from "
                  f"the running mean of {bn.node.display}", kind="remove-bias", removed_nodes=removed,
                  new_tensors=(name,), checkpoint=Checkpoint(bn.y, bn.y), notes=notes)
