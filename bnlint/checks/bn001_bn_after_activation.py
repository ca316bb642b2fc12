"""BN001: BatchNormalization whose input is the output of a nonlinearity."""

from bnlint.graph import Graph
from bnlint.ops import POOL_OPS, SHAPE_OPS, nonlinearity_name
from bnlint.registry import Hit, check
from bnlint.semantics import batchnorms
from bnlint.walker import op_in, walk_up

TRANSPARENT = op_in(SHAPE_OPS | POOL_OPS | {"Dropout"})


@check("BN001")
def bn_after_activation(graph: Graph):
    for bn in batchnorms(graph):
        node = bn.node
        path = walk_up(graph, bn.x, TRANSPARENT)
        if path is None:
            continue
        activation = nonlinearity_name(path.end)
        if activation is None:
            continue
        yield Hit(
            node,
            f"{node.display} normalizes the output of {activation} '{path.end.label}'{path.describe_via()}; "
            "Ioffe & Szegedy place BN before the nonlinearity, benchmarks found after works as well or better",
            related=(path.end, *path.via),
        )
