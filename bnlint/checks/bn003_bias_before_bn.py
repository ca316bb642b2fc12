"""BN003: a layer bias that the following BatchNormalization cancels."""

from bnlint.foldable import consumers_reason
from bnlint.graph import Graph
from bnlint.patterns import bias_site
from bnlint.registry import Hit, check
from bnlint.semantics import batchnorms


@check("BN003")
def bias_before_bn(graph: Graph):
    for bn in batchnorms(graph):
        node = bn.node
        site = bias_site(bn)
        if site is None:
            continue
        layer = site.layer
        if consumers_reason(layer, layer.output(0)) or any(consumers_reason(n, n.output(0)) for n in site.via):
            continue
        yield Hit(
            node,
            f"{site.kind} '{site.layer.label}' adds bias '{site.bias}', which {node.display} cancels by "
            "subtracting the mean; BN's own bias (beta) already plays its role",
            related=(site.layer,),
        )
