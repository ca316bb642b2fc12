"""BN008: a BatchNormalization feeding another BatchNormalization directly."""

from bnlint.graph import Graph
from bnlint.patterns import preceding_bn
from bnlint.registry import Hit, check
from bnlint.semantics import BN_OPS, batchnorms

FIRST_STEPS = frozenset({"Identity", *BN_OPS})


@check("BN008")
def consecutive_bn(graph: Graph):
    for bn in batchnorms(graph):
        first = graph.local_producer_op(bn.x)
        if first is not None and first not in FIRST_STEPS:
            continue  # only BN -> BN or BN -> Identity -> BN can match
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
