"""BN009: ReLU (or a BN with all scales > 0) directly before MaxPool, which commutes with it."""

from bnlint.bnstats import bn_facts
from bnlint.graph import Graph, Node
from bnlint.registry import Hit, check
from bnlint.semantics import batchnorm
from bnlint.walker import single_consumer


def monotone_increasing(node: Node) -> str | None:
    """Why the node's output commutes with max (non-decreasing per channel), or None."""
    if node.is_op("Relu"):
        return "Relu is non-decreasing"
    bn = batchnorm(node)
    if bn is None or bn.training or not bn.params_constant():
        return None
    facts = bn_facts(bn)
    if facts is not None:
        return "every BN scale is > 0" if facts.all_scale_positive else None
    params = bn.params()
    if params is not None and (params["scale"] > 0).all() and (params["var"] + bn.epsilon > 0).all():
        return "every BN scale is > 0"
    return None


@check("BN009")
def activation_before_maxpool(graph: Graph):
    if not graph.nodes_of("MaxPool"):
        return
    for node in graph.nodes_of("Relu", "BatchNormalization"):
        pool = single_consumer(graph, node.output(0))
        if pool is None or not pool.is_op("MaxPool"):
            continue
        indices = pool.output(1)
        if indices and graph.use_count(indices) and node.op_type == "Relu":
            continue  # ReLU creates ties, which could change which index MaxPool reports
        why = monotone_increasing(node)
        if why is None:
            continue
        yield Hit(
            node,
            f"{node.display} directly feeds {pool.display}; {why}, so pooling first gives identical outputs "
            "and applies it to fewer elements",
            related=(pool,),
        )
