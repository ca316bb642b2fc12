"""BN008: a BatchNormalization feeding another BatchNormalization directly."""

from bnlint.graph import Graph
from bnlint.patterns import preceding_bn
from bnlint.registry import Hit, check
from bnlint.semantics import batchnorms


@check("BN008")
def consecutive_bn(graph: Graph):
    for bn in batchnorms(graph):
        node = bn.node
        found = preceding_bn(bn)
        if found is None:
            continue
        first, path = found
        yield Hit(
            node,
            f"{node.display} directly follows {first.node.display}{path.describe_via()}: two per-channel affine "
            "maps in a row are one",
            related=(first.node,),
        )
