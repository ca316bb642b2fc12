"""BN001: BatchNormalization whose input is the output of a nonlinearity."""

from bnlint.graph import Graph
from bnlint.ops import NONLINEAR_OPS, POOL_OPS, SHAPE_OPS, nonlinearity_name
from bnlint.registry import Hit, check
from bnlint.semantics import batchnorms
from bnlint.walker import op_in, walk_up

TRANSPARENT_OPS = SHAPE_OPS | POOL_OPS | {"Dropout"}
TRANSPARENT = op_in(TRANSPARENT_OPS)
# What the node right before a BN must be for a hit: a transparent op or one nonlinearity_name may name.
FIRST_STEPS = TRANSPARENT_OPS | NONLINEAR_OPS | {"Clip", "Mul"}


@check("BN001")
def bn_after_activation(graph: Graph):
    for bn in batchnorms(graph):
        first = graph.local_producer_op(bn.x)
        if first is not None and first not in FIRST_STEPS:
            continue  # e.g. Conv -> BN: nothing to walk
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
