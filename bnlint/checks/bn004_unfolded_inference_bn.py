"""BN004: an inference BatchNormalization that could be folded into the preceding layer."""

from bnlint.foldable import FoldTarget, fold_target
from bnlint.graph import Graph
from bnlint.registry import Hit, check
from bnlint.semantics import batchnorms


@check("BN004")
def unfolded_inference_bn(graph: Graph):
    for bn in batchnorms(graph):
        node = bn.node
        if bn.training:
            continue
        target = fold_target(bn)
        if not isinstance(target, FoldTarget):
            continue
        yield Hit(
            node,
            f"{node.display} is an inference-time per-channel affine map that can be folded into "
            f"{target.kind} '{target.layer.label}' (`bnlint fix`)",
            related=(target.layer,) if target.add is None else (target.layer, target.add),
        )
