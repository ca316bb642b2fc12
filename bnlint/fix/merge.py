"""BN008 fix: merge two consecutive inference BNs into the second one.

BN1 is y1 = s1 * x + t1 and BN2 is y2 = s2 * (y1 - m2) + b2 with s2 = g2 / sqrt(v2 + eps2). Keeping BN2's
variance and epsilon (so the runtime computes the same sqrt(v2 + eps2)), the merged BN2 has
scale' = g2 * s1, mean' = 0 and bias' = b2 + s2 * (t1 - m2). Chains of three or more merge one at a time.
"""

from __future__ import annotations

import numpy as np
import onnx

from bnlint.fix.live import LiveGraph, constant_type
from bnlint.fix.numeric import CastRefused, CastStats, cast_checked, dtype_name
from bnlint.fix.result import Change, Checkpoint, Kept, PassResult
from bnlint.foldable import consumers_reason, inference_affine
from bnlint.semantics import BatchNorm
from bnlint.patterns import preceding_bn

CODE = "BN008"
TITLE = "merge consecutive BNs"


def run(live: LiveGraph) -> PassResult:
    result = PassResult(CODE, TITLE)
    for node, second in live.batchnorms():
        found = preceding_bn(second)
        if found is None:
            continue
        first, path = found
        outcome = _merge(live, first, second, path.via)
        if isinstance(outcome, str):
            result.kept.append(Kept(CODE, live.path, node.label, node.op_type,
                                    f"{first.node.display} and {node.display} not merged: {outcome}"))
        else:
            result.changes.append(outcome)
    return result


def _blocker(first: BatchNorm, second: BatchNorm, via) -> str | None:
    for bn in (first, second):
        if bn.training:
            return f"{bn.node.display} is in training mode ({bn.training_reason})"
        if not bn.spatial:
            return f"{bn.node.display} has spatial=0"
    for node in (first.node, *via):
        reason = consumers_reason(node, node.output(0))
        if reason:
            return reason
    return None


def _merge(live: LiveGraph, first: BatchNorm, second: BatchNorm, via) -> Change | str:
    graph = live
    reason = _blocker(first, second, via)
    if reason:
        return reason
    a1, a2 = inference_affine(first), inference_affine(second)
    for bn, affine in ((first, a1), (second, a2)):
        if isinstance(affine, str):
            return f"{bn.node.display}: {affine}"
    if a1.channels != a2.channels:
        return f"channel counts differ ({a1.channels} vs {a2.channels})"
    p2 = second.params()
    scale = p2["scale"] * a1.s
    bias = p2["bias"] + a2.s * (a1.t - p2["mean"])
    mean = np.zeros_like(scale)
    stats = None
    tensors = []
    try:
        for key, values, source in (("scale", scale, second.scale), ("bias", bias, second.bias),
                                    ("mean", mean, second.mean)):
            data_type = constant_type(graph, source) or onnx.TensorProto.FLOAT
            stats = stats or CastStats(dtype_name(data_type))
            tensors.append((key, cast_checked(values, data_type, f"BN {key}", stats), data_type))
    except CastRefused as refused:
        return str(refused)
    names = []
    for (key, values, data_type), slot in zip(tensors, (1, 2, 3)):
        name = live.add_array(f"{second.node.label}_{key}_merged", values, data_type)
        live.set_input(second.node, slot, name)
        names.append(name)
    live.set_input(second.node, 0, first.x)
    removed = [first.node, *via]
    for node in removed:
        live.remove_node(node)
    return Change(CODE, live.path, second.node.label,
                  f"merged {first.node.display} into {second.node.display}", kind="merge-bn",
                  removed_nodes=tuple(n.label for n in removed), new_tensors=tuple(names),
                  checkpoint=Checkpoint(second.y, second.y), notes=tuple(stats.notes()))
