"""BN006: a BatchNormalization left in training mode."""

from bnlint.graph import Graph
from bnlint.registry import Hit, check
from bnlint.semantics import batchnorms


@check("BN006")
def bn_in_training_mode(graph: Graph):
    for bn in batchnorms(graph):
        node = bn.node
        if not bn.training:
            continue
        yield Hit(
            node,
            f"{node.display} runs in training mode ({bn.training_reason}): it normalizes with the statistics "
            "of each batch, so outputs depend on the batch; was the model exported without model.eval()?",
        )
