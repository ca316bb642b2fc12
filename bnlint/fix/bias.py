"""BN003 fix: remove a layer bias that the following BN cancels, and subtract it from BN's running mean.

BN(x + b) with mean m equals BN(x) with mean m - b, exactly, at inference; in training mode BN subtracts
the batch mean, which moves with b, so Y is unchanged too (the running-statistics outputs are not: a BN
whose running mean output is read keeps its bias). The new mean is a new tensor: BN parameters shared
with another node are never edited in place.
"""

from __future__ import annotations

import numpy as np
import onnx

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
    result = PassResult(CODE, TITLE)
    for node, bn in live.batchnorms():
        site = bias_site(bn)
        if site is None:
            continue
        layer, bias = site.layer, site.bias
        outcome = _remove_bias(live, bn, layer, site.via, bias)
        if isinstance(outcome, str):
            result.kept.append(Kept(CODE, live.path, node.label, node.op_type,
                                    f"bias '{bias}' of {layer_kind(layer)} '{layer.label}' kept: {outcome}"))
        else:
            result.changes.append(outcome)
    return result


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


def _remove_bias(live: LiveGraph, bn: BatchNorm, layer: Node, via, bias: str) -> Change | str:
    graph = live
    reason = _blocker(live, bn, layer, via)
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
    removed = ()
    if layer.op_type == "Add":
        matmul_out = next(n for n in layer.inputs if n != bias)
        live.remove_node(layer)
        live.replace_uses(layer.output(0), matmul_out)
        removed = (layer.label,)
    else:
        live.truncate_inputs(layer, 2)
    name = live.add_array(f"{bn.node.label}_mean_nobias", new_mean.reshape(mean.shape), mean_type)
    live.set_input(bn.node, 3, name)
    return Change(CODE, live.path, bn.node.label,
                  f"removed bias '{bias}' of {layer_kind(layer)} '{layer.label}' and subtracted it from "
                  f"the running mean of {bn.node.display}", kind="remove-bias", removed_nodes=removed,
                  new_tensors=(name,), checkpoint=Checkpoint(bn.y, bn.y), notes=tuple(stats.notes()))
