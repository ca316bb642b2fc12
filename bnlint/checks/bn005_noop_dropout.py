"""BN005: a Dropout that does nothing at inference."""

from bnlint.graph import Graph
from bnlint.registry import Hit, check
from bnlint.semantics import dropout


@check("BN005")
def noop_dropout(graph: Graph):
    for node in graph.nodes_of("Dropout"):
        view = dropout(node)
        if not view.noop:
            continue
        yield Hit(node, f"{node.display} is the identity at inference ({view.reason}); it can be removed")
