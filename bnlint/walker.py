"""Follow data flow through ops a rule treats as transparent.

Most rules read "A reaches B through ops that do not change the question": BN001 looks up from a BN
through Dropout/pooling/reshapes for a nonlinearity, BN002 looks down from a Dropout through anything but
a weight layer for a BN. Which ops are transparent is the rule's choice; the walking is done here, once.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import NamedTuple

from bnlint.graph import Graph, Node

NodePredicate = Callable[[Node], bool]

WEIGHT_OPS = frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul", "ConvInteger", "MatMulInteger", "QLinearConv",
                        "QLinearMatMul", "Einsum", "LSTM", "GRU", "RNN"})


def op_in(op_types) -> NodePredicate:
    """A predicate true for standard ONNX ops whose type is in `op_types`."""
    types = frozenset(op_types)
    return lambda node: node.is_onnx_op and node.op_type in types


class Path(NamedTuple):
    """A walk's result: the node reached and the transparent nodes passed on the way, in walk order."""

    end: Node
    via: tuple[Node, ...]

    def describe_via(self) -> str:
        if not self.via:
            return ""
        return " (through " + ", ".join(node.display for node in self.via) + ")"


def walk_up(graph: Graph, value: str, transparent: NodePredicate) -> Path | None:
    """From a value, go to its producer; while that producer is transparent, continue from its first
    input. Returns the first non-transparent producer and the chain passed, or None at a graph input
    or constant."""
    node = graph.producer(value)
    if node is None:
        return None
    if not transparent(node):  # the common case (BN right after its layer), without the bookkeeping below
        return Path(node, ())
    via: list[Node] = []
    seen: set[int] = set()
    while node is not None and transparent(node):
        if id(node) in seen:
            return None
        seen.add(id(node))
        via.append(node)
        node = node.graph.producer(node.input(0))
    if node is None:
        return None
    return Path(end=node, via=tuple(via))


def walk_down(
    graph: Graph, value: str, *, target: NodePredicate, stop: NodePredicate
) -> Iterator[Path]:
    """Every target node reachable from `value` through nodes that are not `stop` nodes.

    Breadth first over consumers, each node visited once, so a walk costs at most the size of the region
    it explores. Targets are not walked through. Paths are reported in discovery order.
    """
    frontier: list[tuple[str, tuple[Node, ...]]] = [(value, ())]
    visited: set[int] = set()
    while frontier:
        next_frontier = []
        for name, via in frontier:
            for node in graph.consumers(name):
                if id(node) in visited:
                    continue
                visited.add(id(node))
                if target(node):
                    yield Path(end=node, via=via)
                elif not stop(node):
                    next_frontier.extend((out, via + (node,)) for out in node.outputs if out)
        frontier = next_frontier


def single_consumer(graph: Graph, value: str) -> Node | None:
    """The only reader of a value that is not a graph output, else None."""
    if graph.is_graph_output(value):
        return None
    readers = graph.consumers(value)
    return readers[0] if len(readers) == 1 else None
