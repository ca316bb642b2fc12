"""Small, serializable pictures of the subgraph around a finding (for the Markdown report and `fix --diff`).

Reporters are pure functions of findings and never see the model, so the picture is cut out of the graph
where the model is loaded (in `lint_target`, in the worker process) and travels with the result as plain
data. A picture holds the node at fault, the related nodes the rule named, their producer chain and their
consumers, capped at `cap` nodes so a finding in a 10,000-node model still draws a readable diagram.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from bnlint.findings import Finding
from bnlint.graph import Graph, Model, Node

DEFAULT_CAP = 12
UP_DEPTH = 3
DOWN_DEPTH = 2
MAX_TERMINALS = 4

FINDING, RELATED, CONTEXT, INPUT, OUTPUT = "finding", "related", "context", "input", "output"


@dataclass(frozen=True)
class PictureNode:
    """One box: an op (`op_type` set) or a graph input/output (role INPUT/OUTPUT, `op_type` empty)."""

    id: str
    op_type: str
    label: str
    role: str


@dataclass(frozen=True)
class Picture:
    """Nodes in graph order, edges between them, and which boxes have neighbours left out of the picture."""

    graph: str
    nodes: tuple[PictureNode, ...]
    edges: tuple[tuple[str, str], ...]
    cut_above: tuple[str, ...] = ()
    cut_below: tuple[str, ...] = ()


PictureKey = tuple[str, str, str, str, tuple[str, ...]]


def picture_key(finding: Finding) -> PictureKey:
    """What identifies a finding's picture: rule, file, graph, node and the related nodes."""
    loc = finding.location
    return (finding.code, loc.file, loc.graph, loc.node, finding.related)


def _data_inputs(node: Node) -> list[str]:
    """Inputs that carry data, not weights: constants (initializers, Constant outputs) are left out."""
    graph = node.graph
    return [name for name in node.inputs if name and not graph.is_constant(name)]


def _local_producer(graph: Graph, name: str) -> Node | None:
    producer = graph.producer(name)
    return producer if producer is not None and producer.graph is graph else None


def _neighbours_up(node: Node) -> list[Node]:
    graph = node.graph
    found = []
    for name in _data_inputs(node):
        producer = _local_producer(graph, name)
        if producer is not None and not producer.is_op("Constant") and producer not in found:
            found.append(producer)
    return found


def _neighbours_down(node: Node) -> list[Node]:
    found: list[Node] = []
    for name in node.outputs:
        for consumer in node.graph.consumers(name) if name else ():
            if consumer not in found:
                found.append(consumer)
    return found


def picture_around(graph: Graph, focus: Sequence[Node], related: Sequence[Node] = (),
                   cap: int = DEFAULT_CAP) -> Picture:
    """The subgraph around `focus` (drawn as the finding) and `related` nodes, at most `cap` op nodes.

    Nodes are taken by distance, alternating producers and consumers, so the picture stays centred on the
    finding; graph inputs and outputs touching the chosen nodes are drawn as terminals.
    """
    chosen: dict[int, tuple[Node, str]] = {}

    def take(node: Node, role: str) -> None:
        if len(chosen) < cap and id(node) not in chosen:
            chosen[id(node)] = (node, role)

    for node in focus:
        take(node, FINDING)
    for node in related:
        take(node, RELATED)
    up_frontier = down_frontier = [node for node, _ in chosen.values()]
    for depth in range(max(UP_DEPTH, DOWN_DEPTH)):
        if depth < UP_DEPTH:
            up_frontier = [p for n in up_frontier for p in _neighbours_up(n) if id(p) not in chosen]
            for node in up_frontier:
                take(node, CONTEXT)
        if depth < DOWN_DEPTH:
            down_frontier = [c for n in down_frontier for c in _neighbours_down(n) if id(c) not in chosen]
            for node in down_frontier:
                take(node, CONTEXT)
    return _assemble(graph, [n for n, _ in chosen.values()], {id(n): role for n, role in chosen.values()})


def _assemble(graph: Graph, nodes: list[Node], roles: dict[int, str]) -> Picture:
    ordered = sorted(nodes, key=lambda n: n.index)
    ids = {id(node): f"n{k}" for k, node in enumerate(ordered)}
    boxes = [PictureNode(ids[id(n)], n.op_type, n.label, roles[id(n)]) for n in ordered]
    edges: list[tuple[str, str]] = []
    inputs: dict[str, str] = {}
    outputs: dict[str, str] = {}
    cut_above: list[str] = []
    cut_below: list[str] = []
    for node in ordered:
        me = ids[id(node)]
        for name in _data_inputs(node):
            producer = _local_producer(graph, name)
            if producer is not None and id(producer) in ids:
                edge = (ids[id(producer)], me)
            elif producer is None and name in graph.input_names and (name in inputs or len(inputs) < MAX_TERMINALS):
                edge = (inputs.setdefault(name, f"i{len(inputs)}"), me)
            else:
                if me not in cut_above:
                    cut_above.append(me)
                continue
            if edge not in edges:
                edges.append(edge)
        for name in node.outputs:
            if not name:
                continue
            if any(id(c) not in ids for c in graph.consumers(name)) and me not in cut_below:
                cut_below.append(me)
            if graph.is_graph_output(name):
                if name in outputs or len(outputs) < MAX_TERMINALS:
                    edge = (me, outputs.setdefault(name, f"o{len(outputs)}"))
                    if edge not in edges:
                        edges.append(edge)
                elif me not in cut_below:
                    cut_below.append(me)
    terminals = [PictureNode(key, "", name, INPUT) for name, key in inputs.items()]
    terminals += [PictureNode(key, "", name, OUTPUT) for name, key in outputs.items()]
    return Picture(graph=graph.path, nodes=tuple(terminals[: len(inputs)] + boxes + terminals[len(inputs):]),
                   edges=tuple(edges), cut_above=tuple(cut_above), cut_below=tuple(cut_below))


def _nodes_by_label(graph: Graph) -> dict[str, Node]:
    return {node.label: node for node in graph.nodes}


def pictures_for(model: Model, findings: Iterable[Finding],
                 cap: int = DEFAULT_CAP) -> tuple[tuple[PictureKey, Picture], ...]:
    """A picture for each finding whose node can be found in `model` (keyed by `picture_key`)."""
    graphs = {graph.path: graph for graph in model.all_graphs()}
    labels: dict[str, dict[str, Node]] = {}
    pictures = []
    for finding in findings:
        loc = finding.location
        graph = graphs.get(loc.graph)
        if graph is None:
            continue
        by_label = labels.get(loc.graph)
        if by_label is None:  # once per graph: setdefault would rebuild the index for every finding
            by_label = labels[loc.graph] = _nodes_by_label(graph)
        node = by_label.get(loc.node)
        if node is None:
            continue
        related = [by_label[label] for label in finding.related if label in by_label]
        pictures.append((picture_key(finding), picture_around(graph, [node], related, cap=cap)))
    return tuple(pictures)


def change_pictures(before: Graph, after: Graph, touched: Iterable[str],
                    cap: int = DEFAULT_CAP) -> tuple[Picture, Picture]:
    """Before/after pictures of a rewrite: `touched` are the node names the rewrite removed or changed.

    The after picture is centred on the touched nodes that survive, or, when the rewrite removed them all,
    on their surviving neighbours in the before graph (e.g. the Conv a BN was folded into).
    """
    touched = [t for t in touched if t]
    old = _nodes_by_label(before)
    new = _nodes_by_label(after)
    old_focus = [old[t] for t in touched if t in old]
    before_picture = picture_around(before, old_focus, cap=cap)
    new_focus = [new[t] for t in touched if t in new]
    if not new_focus:
        neighbours = [n.label for node in old_focus for n in (*_neighbours_up(node), *_neighbours_down(node))]
        new_focus = [new[label] for label in dict.fromkeys(neighbours) if label in new]
    if not new_focus:
        # Nothing recognisable survived (e.g. a whole graph rewritten): draw the first nodes of the result.
        new_focus = after.nodes[:1]
    after_picture = picture_around(after, new_focus, cap=cap)
    return before_picture, after_picture
