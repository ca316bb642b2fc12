"""Edit one GraphProto in place while keeping a bnlint graph view of it current.

Why not rebuild the view after every rewrite: that costs a pass over every node each time, and the fixer
must stay within a small factor of load + save. Why not onnx-ir: deserializing a 60,000-node model into it
took 4.5 s against 0.2 s for onnx.load. So all passes share one LiveGraph per graph: a Graph whose
producer/consumer lookups come from tables that every edit updates, while edits change the protobuf
fields of the nodes they touch in place. The node list itself is rebuilt once, in `commit()`, by one sort
(which moves message pointers and never copies a node).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from itertools import count

import numpy as np
import onnx

from bnlint.graph import ONNX_DOMAINS, Graph, Node, _attribute_graphs
from bnlint.semantics import BatchNorm, batchnorm
from bnlint.tensors import tensor_nbytes


class NameAllocator:
    """Fresh value and node names that collide with no name anywhere in the model.

    Names of the graphs being edited are checked against their live tables; names inside subgraphs are
    collected once, on first use, and only when the model has subgraphs."""

    def __init__(self, model: onnx.ModelProto):
        self.model = model
        self.graphs: list[LiveGraph] = []
        self.allocated: set[str] = set()
        self._subgraph_names: set[str] | None = None

    def _taken(self, name: str) -> bool:
        if name in self.allocated:
            return True
        for graph in self.graphs:
            if graph.knows(name):
                return True
        if self._subgraph_names is None:
            self._subgraph_names = _subgraph_names(self.model.graph, self.graphs[0] if self.graphs else None)
        return name in self._subgraph_names

    def new(self, hint: str) -> str:
        name, k = hint or "v", 1
        while self._taken(name):
            name, k = f"{hint}_{k}", k + 1
        self.allocated.add(name)
        return name


def _subgraph_names(graph: onnx.GraphProto, main: LiveGraph | None) -> set[str]:
    names: set[str] = set()
    owners = main.nodes_of(*_SUBGRAPH_OPS) if main is not None else []
    for node in owners:
        for attribute in node.proto.attribute:
            for sub in _attribute_graphs(attribute):
                for inner in _all_graph_protos(sub):
                    names.update(v.name for v in (*inner.input, *inner.output, *inner.value_info))
                    names.update(t.name for t in inner.initializer)
                    for child in inner.node:
                        names.update(child.output)
                        names.add(child.name)
    return names


def _all_graph_protos(graph: onnx.GraphProto):
    yield graph
    for node in graph.node:
        for attribute in node.attribute:
            for sub in _attribute_graphs(attribute):
                yield from _all_graph_protos(sub)


_SUBGRAPH_OPS = ("If", "Loop", "Scan", "SequenceMap")
_REMOVED = math.inf
DETACH_BYTES = 1 << 20  # new main-graph weights at least this large keep their values out of the protobuf


class LiveGraph(Graph):
    """A graph view whose lookups follow the fixer's edits, over a GraphProto edited in place.

    The view's own index tables (built once, from the protobuf) describe the graph as loaded; edits are
    recorded in small overlay tables that lookups consult first, so opening a LiveGraph costs what opening
    the view costs, and each edit costs O(1). Everything else (constants, shapes, attributes, scopes) is
    the ordinary view's code, so passes call the same semantics and foldable helpers as the lint rules.
    """

    memoize_shapes = False  # edits add and drop initializers: shapes are looked up afresh

    @classmethod
    def open(cls, info, proto: onnx.GraphProto, *, path: str, parent: Graph | None, names: NameAllocator,
             ir_version: int) -> LiveGraph:
        live = cls.from_graph_proto(info, proto, path=path, parent=parent)
        # Detached values: {id(tensor): (tensor, array)} for new large weights of the main graph whose
        # TensorProto holds no data yet. Copying a multi-GB result into the protobuf costs a copy (and,
        # since protobuf arenas never shrink, memory until exit); the writer streams the array instead.
        live.detached = parent.detached if isinstance(parent, LiveGraph) else {}
        live._setup(proto, names, ir_version)
        names.graphs.append(live)
        return live

    def _setup(self, proto: onnx.GraphProto, names: NameAllocator, ir_version: int) -> None:
        self.proto = proto
        self.names = names
        self.ir_version = ir_version
        self._producers  # noqa: B018 - the view's structural checks (duplicates, cycles) run here
        self.original_count = len(proto.node)
        self._producer_edits: dict[str, Node | None] = {}
        self._consumer_edits: dict[str, list[Node]] = {}
        self._moved: dict[int, float] = {}  # node index -> rank, for original nodes that changed place
        self._removed_indices: set[int] = set()
        self._retyped: list[Node] = []
        self._sequence = count(1)
        self._initializer_names = list(self._initializers)
        # input_names as a set: with IR < 4 every initializer is an input, and names are looked up per edit
        self._input_set = set(self.input_names)
        self._owner_reads: dict[int, set[str]] = {}
        self.added: list[Node] = []
        self._added_ranks: dict[int, float] = {}
        self.released: set[str] = set()
        self.dead_values: set[str] = set()
        self.initializers_added: list[str] = []
        self.initializers_removed: list[str] = []
        self.constants_removed: list[str] = []
        self.bytes_added = 0
        self.bytes_removed = 0
        # Set by the pipeline when the BN004 backward fold runs after BN003 on this graph (bnlint.fix.bias).
        self.fold_follows = False
        # BN node index -> DeferredBias: BN003 rewrites the backward fold will absorb (see bnlint.fix.bias).
        self.deferred_biases: dict[int, object] = {}
        self._reserved: dict[str, tuple[onnx.TensorProto, np.ndarray]] = {}
        self._abandoned: set[str] = set()
        self.bn_before = [self.label_at(i) for i in self._base_indices_of(("BatchNormalization",))
                          if self._domains[i] in ONNX_DOMAINS]

    def label_at(self, index: int) -> str:
        """Node.label of original node `index` as loaded, without creating the Node (cheaper per BN)."""
        name = self._protos[index].name
        if name:
            return name
        op_type = self._op_types[index]
        first = next((o for o in self._outputs[index] if o), "")
        return f"{op_type}@{first}" if first else f"{op_type}#{index}"

    # -- the view's index tables (the one place that knows their layout) ---------------------------
    def _base_producer(self, name: str) -> Node | None:
        index = self._producers.get(name)
        return None if index is None or index in self._removed_indices else self.node_at(index)

    def local_producer_op(self, name: str) -> str | None:
        return None  # the loaded tables do not follow the edits: callers take the full path

    def _base_consumers(self, name: str) -> list[Node]:
        return [self.node_at(i) for i in self._consumers.get(name, ()) if i not in self._removed_indices]

    def _base_indices_of(self, op_types) -> list[int]:
        index = self._op_index
        return [i for op in op_types for i in index.get(op, ())]

    # -- lookups that follow the edits ---------------------------------------------------------------
    def local_producer(self, name: str) -> Node | None:
        """The node of this graph (not an enclosing one) that produces `name`."""
        if name in self._producer_edits:
            return self._producer_edits[name]
        return self._base_producer(name)

    def producer(self, name: str) -> Node | None:
        if not name:
            return None
        node = self.local_producer(name)
        if node is not None:
            return node
        if self.defines_locally(name) or self.parent is None:
            return None
        return self.parent.producer(name)

    def defines_locally(self, name: str) -> bool:
        return self.local_producer(name) is not None or name in self._initializers or name in self._input_set

    def knows(self, name: str) -> bool:
        """True when `name` is in use in this graph in any role (value, initializer, output, value_info)."""
        return (name in self._initializers or name in self._producers or name in self._consumers
                or name in self._producer_edits or name in self._consumer_edits or name in self._input_set
                or name in self.output_names or name in self._value_info)

    def _consumer_list(self, name: str) -> list[Node]:
        readers = self._consumer_edits.get(name)
        if readers is None:
            removed = self._removed_indices
            readers = self._consumer_edits[name] = [self.node_at(i) for i in self._consumers.get(name, ())
                                                    if i not in removed]
        return readers

    def _drop_reader(self, name: str, node: Node) -> None:
        readers = self._consumer_list(name)
        if node in readers:
            readers.remove(node)
        self.released.add(name)

    def consumers(self, name: str) -> list[Node]:
        readers = self._consumer_edits.get(name)
        return list(readers) if readers is not None else self._base_consumers(name)

    def consumer_count(self, name: str) -> int:
        return len(self.consumers(name))

    def use_count(self, name: str) -> int:
        return self.consumer_count(name) + (1 if self.is_graph_output(name) else 0)

    def initializer(self, name: str) -> onnx.TensorProto | None:
        tensor = self._initializers.get(name)
        if tensor is not None:
            return tensor
        if self.parent is None or self.local_producer(name) is not None or name in self._input_set:
            return None
        return self.parent.initializer(name)

    def constant(self, name: str) -> np.ndarray | None:
        """As Graph.constant, also for detached weights (their TensorProto has no data)."""
        tensor = self.initializer(name)
        if tensor is not None:
            held = self.detached.get(id(tensor))
            if held is not None and held[0] is tensor:
                return held[1]
        return super().constant(name)

    def rank(self, node: Node) -> float:
        if node.index < self.original_count:
            if node.index in self._removed_indices:
                return _REMOVED
            return self._moved.get(node.index, float(node.index))
        return self._added_ranks[id(node)]

    def alive(self, node: Node) -> bool:
        return self.rank(node) != _REMOVED

    @property
    def nodes(self) -> list[Node]:
        """Every live node in its current order (creates all Node objects: passes use nodes_of)."""
        everything = [self.node_at(i) for i in range(self.original_count) if i not in self._removed_indices]
        everything += [n for n in self.added if self.alive(n)]
        return sorted(everything, key=self.rank)

    def nodes_of(self, *op_types: str) -> list[Node]:
        """Live standard-domain nodes of these op types, in their current order."""
        found = {id(n): n for n in (self.node_at(i) for i in self._base_indices_of(op_types))}
        found.update((id(n), n) for n in (*self.added, *self._retyped))
        chosen = [n for n in found.values() if n.is_op(*op_types) and self.alive(n)]
        return sorted(chosen, key=self.rank)

    def batchnorms(self) -> Iterator[tuple[Node, BatchNorm]]:
        """Each BN of the graph with its view, skipping BNs an earlier step of the same pass removed."""
        for node in self.nodes_of("BatchNormalization"):
            if self.alive(node):
                yield node, batchnorm(node)

    def op_types(self) -> set[str]:
        present = {op for op, positions in self._op_index.items()
                   if any(i not in self._removed_indices for i in positions)}
        return present | {n.op_type for n in (*self.added, *self._retyped) if self.alive(n)}

    # -- edits to one node -------------------------------------------------------------------------
    def set_input(self, node: Node, i: int, name: str) -> None:
        """Make input slot i of `node` read `name` (appending empty slots as needed)."""
        proto = node.proto
        if len(node.inputs) <= i:
            while len(proto.input) <= i:
                proto.input.append("")
        old = proto.input[i]
        if old == name:
            return
        proto.input[i] = name
        self._reindex_inputs(node, old, name)

    def truncate_inputs(self, node: Node, length: int) -> None:
        """Drop trailing inputs (an optional bias, Gemm's C)."""
        proto = node.proto
        dropped = list(proto.input[length:])
        del proto.input[length:]
        for old in dropped:
            self._reindex_inputs(node, old, "")

    def _reindex_inputs(self, node: Node, old: str, new: str) -> None:
        node.inputs = tuple(node.proto.input)
        _forget(node)
        if old and not self._still_reads(node, old):
            self._drop_reader(old, node)
        if new:
            readers = self._consumer_list(new)
            if node not in readers:
                readers.append(node)

    def set_output(self, node: Node, i: int, name: str) -> None:
        """Rename output i of `node` (its readers are not changed; see replace_uses)."""
        old = node.proto.output[i]
        node.proto.output[i] = name
        node.outputs = tuple(node.proto.output)
        _forget(node)
        if self.local_producer(old) is node:
            self._producer_edits[old] = None
            self.dead_values.add(old)
        if name:
            self._producer_edits[name] = node
            self.dead_values.discard(name)

    def set_attribute(self, node: Node, name: str, value) -> None:
        """Set (or, with None, remove) an attribute."""
        proto = node.proto
        for k, attribute in enumerate(proto.attribute):
            if attribute.name == name:
                del proto.attribute[k]
                break
        if value is not None:
            proto.attribute.append(onnx.helper.make_attribute(name, value))
        _forget(node)

    def set_op_type(self, node: Node, op_type: str) -> None:
        node.proto.op_type = op_type
        node.op_type = op_type
        _forget(node)
        self._retyped.append(node)

    # -- edits across the graph --------------------------------------------------------------------
    def replace_uses(self, old: str, new: str) -> None:
        """Every reader of `old` in this graph (subgraphs that read it included) reads `new` instead.
        Graph outputs are names, not readers: callers keep output names themselves."""
        for node in self.consumers(old):
            if _owns_subgraphs(node) and old in self.subgraph_outer_names(node):
                for attribute in node.proto.attribute:
                    for sub in _attribute_graphs(attribute):
                        _rename_free_uses(sub, old, new)
                self._owner_reads.pop(node.index, None)
            for k, name in enumerate(node.proto.input):
                if name == old:
                    node.proto.input[k] = new
            self._reindex_inputs(node, old, new)

    def remove_node(self, node: Node) -> None:
        if node.index < self.original_count:
            self._removed_indices.add(node.index)
        else:
            self._added_ranks[id(node)] = _REMOVED
        for name in self._reads(node):
            self._drop_reader(name, node)
        for name in node.outputs:
            if name and self.local_producer(name) is node:
                self._producer_edits[name] = None
                self.dead_values.add(name)

    def add_node(self, op_type: str, inputs: Iterable[str], outputs: Iterable[str], *, anchor: Node,
                 after: bool = False, name: str = "", **attrs) -> Node:
        """A new node placed just before (or after) `anchor` in the final order."""
        proto = self.proto.node.add()
        proto.op_type = op_type
        proto.input.extend(inputs)
        proto.output.extend(outputs)
        if name:
            proto.name = name
        for key, value in sorted(attrs.items()):
            if value is not None:
                proto.attribute.append(onnx.helper.make_attribute(key, value))
        node = Node(self, self.original_count + len(self.added), proto)
        self.added.append(node)
        base = self.rank(anchor)
        step = next(self._sequence)
        # next to the anchor, in creation order: before in [base - 0.25, base), after in [base + 0.25, base + 0.5)
        offset = 0.5 - 0.5 / (1 + step)
        self._added_ranks[id(node)] = base + offset if after else base - 0.5 + offset
        for value in node.inputs:
            if value and node not in self._consumer_list(value):
                self._consumer_list(value).append(node)
        for value in node.outputs:
            if value:
                self._producer_edits[value] = node
                self.dead_values.discard(value)
        return node

    def swap_order(self, first: Node, second: Node) -> None:
        """Exchange the positions of two original nodes (the pass keeps the order topological)."""
        a, b = self.rank(first), self.rank(second)
        self._moved[first.index], self._moved[second.index] = b, a

    def add_array(self, hint: str, array: np.ndarray, data_type: int, *, detach: bool = False) -> str:
        """A new initializer holding `array` (already of the right type) under a fresh name; listed as a
        graph input too when the IR version requires it (IR < 4). With `detach`, a large array of the
        main graph stays a numpy array (see `detached`) until the pipeline or the writer needs its bytes."""
        stored, array = self._new_tensor(hint, array, data_type)
        if detach and self.parent is None and array.nbytes >= DETACH_BYTES and array.dtype.isnative:
            array.flags.writeable = False
            self.detached[id(stored)] = (stored, array)
        else:
            stored.raw_data = array.tobytes()
        self._initializers[stored.name] = stored
        return stored.name

    def _new_tensor(self, hint: str, array: np.ndarray, data_type: int) -> tuple[onnx.TensorProto, np.ndarray]:
        """A TensorProto (name, type, dims; no values yet) at the end of the initializer list."""
        stored = self.proto.initializer.add()
        stored.name = self.names.new(hint)
        stored.data_type = data_type
        stored.dims.extend(array.shape)
        array = np.ascontiguousarray(array)
        self._initializer_names.append(stored.name)
        self.initializers_added.append(stored.name)
        self.bytes_added += array.nbytes
        if self.ir_version < 4 and self.parent is None:
            info = self.proto.input.add()
            info.name = stored.name
            info.type.tensor_type.elem_type = data_type
            for dim in stored.dims:
                info.type.tensor_type.shape.dim.add().dim_value = dim
            self.input_names = (*self.input_names, stored.name)
            self._input_set.add(stored.name)
        return stored, array

    def reserve_array(self, hint: str, array: np.ndarray, data_type: int) -> str:
        """Like add_array, for a tensor a later pass will probably make unused: the name and the place in
        the initializer list are taken now (so names and order match add_array exactly), the values are
        written only by `fill_reserved`. Until then the tensor is invisible to lookups."""
        stored, array = self._new_tensor(hint, array, data_type)
        self._reserved[stored.name] = (stored, array)
        return stored.name

    def fill_reserved(self, name: str) -> None:
        """Give a reserved tensor its values: from now on it is an ordinary initializer."""
        stored, array = self._reserved.pop(name)
        stored.raw_data = array.tobytes()
        self._initializers[name] = stored

    def abandon_reserved(self, name: str) -> None:
        """A reserved tensor nothing will read: it goes at commit, counted as added and removed (as an
        added tensor that became unused would be)."""
        stored, array = self._reserved.pop(name)
        self.bytes_removed += array.nbytes
        self._abandoned.add(name)

    def _still_reads(self, node: Node, name: str) -> bool:
        if _owns_subgraphs(node):
            return name in self._reads(node)
        return name in node.inputs

    def _reads(self, node: Node) -> set[str]:
        """Names a node reads: its inputs and what its subgraphs read from outside."""
        names = {name for name in node.inputs if name}
        if _owns_subgraphs(node):
            reads = self._owner_reads.get(node.index)
            if reads is None:
                reads = self._owner_reads[node.index] = self.subgraph_outer_names(node)
            names |= reads
        return names

    def remember_subgraph_reads(self, owners) -> None:
        """Before subgraphs are rewritten: note what they read from this graph."""
        for node in owners:
            self._reads(node)

    def refresh_subgraph_reads(self) -> None:
        """After subgraphs were rewritten: forget outer values they no longer read."""
        for node in self.nodes_of(*_SUBGRAPH_OPS):
            before = self._reads(node)
            self._owner_reads.pop(node.index, None)
            after = self._reads(node)
            for name in before - after:
                readers = self._consumer_list(name)
                if node in readers:
                    readers.remove(node)
                self.released.add(name)
            for name in after - before:
                self._consumer_list(name).append(node)

    # -- finishing ---------------------------------------------------------------------------------
    def commit(self) -> None:
        """Drop what became unused, then rebuild the node, initializer and value_info lists once each.
        The LiveGraph must not be edited afterwards."""
        if self.deferred_biases:
            raise RuntimeError("deferred BN003 rewrites were not settled before commit")
        self._drop_dead_constants()
        if self._removed_indices or self.added or self._moved:
            self._rebuild_node_list()
        self._drop_value_info()

    def _in_use(self, name: str) -> bool:
        if name in self.output_names:
            return True
        readers = self._consumer_edits.get(name)
        if readers is not None:
            return bool(readers)
        return any(i not in self._removed_indices for i in self._consumers.get(name, ()))

    def _drop_dead_constants(self) -> None:
        """Remove initializers and Constant nodes that edits left without readers (only those: a constant
        that was already unused in the input is the user's business)."""
        pending = [n for n in self.released if n]
        seen: set[str] = set()
        doomed: set[str] = set()
        initializers, edits, outputs = self._initializers, self._consumer_edits, self.output_names
        all_inputs_may_go = self.ir_version < 4
        while pending:
            name = pending.pop()
            if name in seen:
                continue
            readers = edits.get(name)
            if name in outputs or (readers if readers is not None else self._in_use(name)):
                continue
            seen.add(name)
            if name in initializers:
                if all_inputs_may_go or name not in self._input_set:
                    doomed.add(name)
                continue
            node = self.local_producer(name)
            if node is not None and node.is_op("Constant", "ConstantOfShape") and \
                    not any(self._in_use(o) for o in node.outputs if o):
                self.bytes_removed += _constant_bytes(node)
                self.remove_node(node)
                self.constants_removed.append(node.label)
                pending.extend(i for i in node.inputs if i)
        for name in list(self._reserved):  # reserved, never filled: nothing can read it
            self.abandon_reserved(name)
        if not doomed and not self._abandoned:
            return
        for name in doomed:
            tensor = self._initializers.pop(name)
            self.detached.pop(id(tensor), None)
            self.bytes_removed += tensor_nbytes(tensor) or 0
        doomed |= self._abandoned
        flags = [name in doomed for name in self._initializer_names]
        if len(flags) == len(self.proto.initializer):
            self.initializers_removed.extend(name for name, flag in zip(self._initializer_names, flags) if flag)
            _delete_flagged(self.proto.initializer, flags)
        else:  # pragma: no cover - duplicate initializer names: fall back to a scan
            self.initializers_removed.extend(sorted(doomed))
            _delete_where(self.proto.initializer, lambda t: t.name in doomed)
        if not self._input_set.isdisjoint(doomed):
            _delete_where(self.proto.input, lambda v: v.name in doomed)
            self.input_names = tuple(n for n in self.input_names if n not in doomed)
            self._input_set.difference_update(doomed)

    def _rebuild_node_list(self) -> None:
        if not self.added and not self._moved:  # removals only: delete in place
            doomed = self._removed_indices
            _delete_flagged(self.proto.node, [i in doomed for i in range(self.original_count)])
            return
        ranks = list(range(self.original_count))
        for index in self._removed_indices:
            ranks[index] = _REMOVED
        for index, rank in self._moved.items():
            ranks[index] = rank
        ranks += [self._added_ranks[id(n)] for n in self.added]
        if len(ranks) != len(self.proto.node):
            raise RuntimeError("node list changed outside the LiveGraph")
        removed = sum(1 for rank in ranks if rank == _REMOVED)
        order = iter(ranks)
        # Python's sort computes each key once, in list order, so the iterator pairs keys with nodes.
        self.proto.node.sort(key=lambda _node: next(order))
        del self.proto.node[len(ranks) - removed:]

    def _drop_value_info(self) -> None:
        gone = {name for name in self.dead_values if self.local_producer(name) is None}
        if gone:
            _delete_where(self.proto.value_info, lambda v: v.name in gone)

    def release(self) -> None:
        """Break the cycles between this graph, its nodes and their views (as Graph.release does, for the
        nodes the edits added too), so its memory is freed at once even while the cyclic collector is
        paused; the LiveGraph must not be used afterwards."""
        for node in self.added:
            node.__dict__.clear()
        super().release()

    @property
    def nodes_removed(self) -> int:
        """Nodes removed minus nodes added."""
        return len(self._removed_indices) - sum(1 for n in self.added if self.alive(n))


def _owns_subgraphs(node: Node) -> bool:
    return node.op_type in _SUBGRAPH_OPS or not node.is_onnx_op


def _constant_bytes(node: Node) -> int:
    value = node.attrs.get("value")
    return (tensor_nbytes(value.t) or 0) if value is not None else 0


def _forget(node: Node) -> None:
    """Drop what was computed from a node before it was edited (attribute tables, BN/Dropout views)."""
    node.__dict__.clear()


# Deleting runs of entries moves the pointers after each run once: runs x length pointer moves. Past this
# budget one stable sort (doomed entries last) and one truncation are cheaper.
_SLICE_BUDGET = 200_000_000


def _delete_flagged(repeated, flags: list[bool]) -> None:
    """Delete the entries of a repeated message field whose flag is set, keeping the others in order and
    never copying a message. Usually the doomed entries form few runs (a pass removes what it replaced,
    block after block), and deleting each run as one slice, from the end, needs no sort at all."""
    runs = []
    start = None
    for k, doomed in enumerate(flags):
        if doomed and start is None:
            start = k
        elif not doomed and start is not None:
            runs.append((start, k))
            start = None
    if start is not None:
        runs.append((start, len(flags)))
    if not runs:
        return
    if len(runs) * len(flags) <= _SLICE_BUDGET:
        for begin, end in reversed(runs):
            del repeated[begin:end]
        return
    order = iter(flags)
    # Python's sort computes each key once, in list order, so the iterator pairs keys with entries.
    repeated.sort(key=lambda _entry: next(order))
    del repeated[len(flags) - sum(flags):]


def _delete_where(repeated, predicate) -> None:
    """Delete matching entries of a repeated message field without copying the others."""
    doomed = [k for k, item in enumerate(repeated) if predicate(item)]
    for k in reversed(doomed):
        del repeated[k]


def _rename_free_uses(graph: onnx.GraphProto, old: str, new: str) -> None:
    """Rename reads of an outer-scope value inside a subgraph (ONNX forbids shadowing, so every read of
    `old` in the subgraph is the outer value)."""
    for node in graph.node:
        for k, name in enumerate(node.input):
            if name == old:
                node.input[k] = new
        for attribute in node.attribute:
            for sub in _attribute_graphs(attribute):
                _rename_free_uses(sub, old, new)
    for output in graph.output:
        if output.name == old:
            output.name = new


def elem_type(graph: Graph, name: str) -> int | None:
    """A value's element type when declared (value_info, inputs, outputs) or when it is an initializer."""
    for scope in graph.scopes():
        info = scope._value_info.get(name)
        if info is not None and info.type.HasField("tensor_type") and info.type.tensor_type.elem_type:
            return info.type.tensor_type.elem_type
        tensor = scope._initializers.get(name)
        if tensor is not None:
            return tensor.data_type
    return None


def static_shape(graph: Graph, name: str) -> tuple[int, ...] | None:
    shape = graph.shape_of(name)
    if shape is None or not all(isinstance(d, int) and d > 0 for d in shape):
        return None
    return tuple(shape)


def constant_type(graph: Graph, name: str) -> int | None:
    """The element type of a constant value (initializer, Constant or ConstantOfShape output)."""
    tensor = graph.initializer(name)
    if tensor is not None:
        return tensor.data_type
    producer = graph.producer(name)
    if producer is None:
        return None
    if producer.is_op("Constant"):
        for key, attribute in producer.attrs.items():
            if key == "value":
                return attribute.t.data_type
            if key.startswith("value_float"):
                return onnx.TensorProto.FLOAT
            if key.startswith("value_int"):
                return onnx.TensorProto.INT64
        return None
    if producer.is_op("ConstantOfShape"):
        value = producer.attrs.get("value")
        return value.t.data_type if value is not None else onnx.TensorProto.FLOAT
    return elem_type(graph, name)
