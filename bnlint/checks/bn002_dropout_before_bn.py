"""BN002: a Dropout whose output reaches a BatchNormalization before any weight layer."""

from bnlint.graph import Graph
from bnlint.ops import WEIGHT_OPS
from bnlint.registry import Hit, check
from bnlint.walker import op_in, walk_down

IS_BN = op_in({"BatchNormalization"})
IS_WEIGHT_LAYER = op_in(WEIGHT_OPS)


@check("BN002")
def dropout_before_bn(graph: Graph):
    for node in graph.nodes_of("Dropout"):
        paths = list(walk_down(graph, node.output(0), target=IS_BN, stop=IS_WEIGHT_LAYER))
        if not paths:
            continue
        reached = ", ".join(f"{p.end.display}{p.describe_via()}" for p in paths)
        yield Hit(
            node,
            f"{node.display} feeds {reached} with no weight layer between: the variance Dropout adds in "
            "training is gone at inference, so BN's running variance no longer matches (variance shift)",
            related=tuple(n for p in paths for n in (p.end, *p.via)),
        )
