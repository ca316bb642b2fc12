"""BN008: a BatchNormalization feeding another BatchNormalization directly."""

from bnlint.graph import Graph
from bnlint.registry import Hit, check
from bnlint.semantics import batchnorm
from bnlint.walker import op_in, walk_up

THROUGH_IDENTITY = op_in({"Identity"})


@check("BN008")
def consecutive_bn(graph: Graph):
    for node in graph.nodes_of("BatchNormalization"):
        bn = batchnorm(node)
        path = walk_up(graph, bn.x, THROUGH_IDENTITY)
        if path is None or batchnorm(path.end) is None:
            continue
        yield Hit(
            node,
            f"{node.display} directly follows {path.end.display}{path.describe_via()}: two per-channel affine "
            "maps in a row are one",
            related=(path.end,),
        )
