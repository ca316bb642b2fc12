"""BN009 fix: run MaxPool before a ReLU (or a BN whose scales are all > 0) instead of after it.

Both are non-decreasing per channel, and max commutes with a non-decreasing function, so
MaxPool(f(x)) = f(MaxPool(x)) exactly - also in floating point, where rounding is monotone too. The two
nodes keep their names and swap places; the pool's output name stays on the last node, so readers and
graph outputs are unchanged. A MaxPool whose Indices output is read is left alone.
"""

from __future__ import annotations

from bnlint.checks.bn009_activation_before_maxpool import monotone_increasing
from bnlint.fix.live import LiveGraph
from bnlint.fix.result import Change, Checkpoint, Kept, PassResult
from bnlint.graph import Node

CODE = "BN009"
TITLE = "move ReLU/BN after MaxPool"


def run(live: LiveGraph) -> PassResult:
    result = PassResult(CODE, TITLE)
    graph = live
    for node in live.nodes_of("Relu", "BatchNormalization"):
        if not live.alive(node):
            continue
        readers = graph.consumers(node.output(0))
        if len(readers) != 1 or not readers[0].is_op("MaxPool") or readers[0].input(0) != node.output(0):
            continue
        pool = readers[0]
        reason = _blocker(live, node, pool)
        if reason:
            result.kept.append(Kept(CODE, live.path, node.label, node.op_type,
                                    f"{node.display} stays before {pool.display}: {reason}"))
            continue
        result.changes.append(_swap(live, node, pool))
    return result


def _blocker(live: LiveGraph, node: Node, pool: Node) -> str | None:
    graph = live
    if graph.is_graph_output(node.output(0)):
        return f"its output '{node.output(0)}' is a graph output"
    if any(name and graph.use_count(name) for name in node.outputs[1:]):
        return "its extra outputs are read"
    indices = pool.output(1)
    if indices and graph.use_count(indices):
        return "the MaxPool Indices output is read"
    if node.is_op("BatchNormalization") and monotone_increasing(node) is None:
        return "BN is not known to be increasing in every channel (needs inference mode, constant params, scale > 0)"
    return None


def _swap(live: LiveGraph, node: Node, pool: Node) -> Change:
    x, between, pooled = node.input(0), node.output(0), pool.output(0)
    fresh = live.names.new(f"{pooled}_before_{node.op_type.lower()}")
    live.set_output(pool, 0, fresh)
    live.set_input(pool, 0, x)
    live.set_output(node, 0, pooled)
    live.set_input(node, 0, fresh)
    live.swap_order(node, pool)
    live.dead_values.add(between)
    return Change(CODE, live.path, node.label, f"moved {node.display} after {pool.display}", kind="swap-maxpool",
                  checkpoint=Checkpoint(pooled, pooled))
