"""BN003: a layer bias that the following BatchNormalization cancels."""

from bnlint.graph import Graph, Node
from bnlint.foldable import consumers_reason
from bnlint.ops import value_rank
from bnlint.registry import Hit, check
from bnlint.semantics import batchnorm
from bnlint.walker import op_in, walk_up

THROUGH_IDENTITY = op_in({"Identity"})


def cancelled_bias(layer: Node, bn_channels: int | None) -> str | None:
    """The bias value name of `layer` when it is constant per BN channel (so BN's mean removes it)."""
    graph = layer.graph
    if layer.is_op("Conv", "ConvTranspose"):
        return layer.input(2) or None
    if layer.is_op("Gemm"):
        bias = layer.input(2)
        if not bias or float(layer.attr("beta", 1.0)) == 0.0:
            return None
        shape = graph.shape_of(bias)
        if shape is not None and len(shape) == 2 and shape[0] != 1:
            return None  # a C that varies along the batch axis is not a per-channel bias
        return bias
    if layer.is_op("Add"):
        for left, right in ((layer.input(0), layer.input(1)), (layer.input(1), layer.input(0))):
            producer = graph.producer(left)
            if producer is None or not producer.is_op("MatMul") or not graph.is_constant(right):
                continue
            rank = value_rank(graph, left)
            shape = graph.shape_of(right)
            if rank not in (2, None) or shape is None:
                continue
            if rank is None and (bn_channels is None or not shape or shape[-1] != bn_channels):
                continue
            if len(shape) <= 1 or all(d == 1 for d in shape[:-1]):
                return right
    return None


@check("BN003")
def bias_before_bn(graph: Graph):
    for node in graph.nodes_of("BatchNormalization"):
        bn = batchnorm(node)
        path = walk_up(graph, bn.x, THROUGH_IDENTITY)
        if path is None:
            continue
        layer = path.end
        scale_shape = graph.shape_of(bn.scale)
        bias = cancelled_bias(layer, scale_shape[0] if scale_shape else None)
        if bias is None or consumers_reason(layer, layer.output(0)):
            continue
        if any(consumers_reason(n, n.output(0)) for n in path.via):
            continue
        kind = "MatMul+Add" if layer.op_type == "Add" else layer.op_type
        yield Hit(
            node,
            f"{kind} '{layer.label}' adds bias '{bias}', which {node.display} cancels by subtracting the mean; "
            "BN's own bias (beta) already plays its role",
            related=(layer,),
        )
