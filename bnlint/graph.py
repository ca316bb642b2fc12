"""The one in-memory graph every rule sees, whatever front end produced it.

A thin, read-only view over ONNX protobuf: nodes with producer/consumer lookup, constants (initializers,
Constant and ConstantOfShape outputs, IR-3 initializers listed as inputs) resolved lazily, subgraphs of
If/Loop/Scan and model-local functions as child graphs with a path. onnx-ir was measured and not used
for this view: deserializing a 60,000-node model took 4.5 s against 0.2 s for onnx.load, and lint must
stay within a small factor of reading the file.
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import cached_property
from pathlib import Path
from typing import NamedTuple

import numpy as np
import onnx

from bnlint.errors import LoadError
from bnlint.onnx_loader import (check_acyclic, check_duplicate_outputs, check_subgraph_depth, checked_attribute_value,
                                 shown)
from bnlint.tensors import constant_of_shape, to_array

ONNX_DOMAINS = ("", "ai.onnx")


class Provenance(NamedTuple):
    """Where a node came from in the user's code (set by PyTorch front ends and exporter metadata)."""

    module: str | None = None
    module_class: str | None = None
    source_file: str | None = None
    source_line: int | None = None


class ModelInfo:
    """Facts about the file shared by all graphs of one model. (Plain classes here and for Model: building a
    dataclass costs ~0.5 ms of every run's start-up.)"""

    def __init__(self, path: str, base_dir: Path, ir_version: int, opsets: dict[str, int],
                 proto: onnx.ModelProto | None = None, provenance: dict[str, Provenance] | None = None,
                 exporter_folded: dict[str, str] | None = None):
        self.path, self.base_dir, self.ir_version, self.opsets, self.proto = path, base_dir, ir_version, opsets, proto
        self.provenance = {} if provenance is None else provenance
        self.exporter_folded = {} if exporter_folded is None else exporter_folded


class Node:
    """One node: op type, name, input/output names, attributes on demand, and its graph.

    Nodes are created lazily by their graph (most rules look at a few op types only), from name tuples the
    graph already extracted, so creating one never touches protobuf again.
    """

    __slots__ = ("graph", "index", "proto", "op_type", "domain", "name", "inputs", "outputs", "__dict__")

    def __init__(self, graph: Graph, index: int, proto: onnx.NodeProto, op_type: str | None = None,
                 inputs: tuple[str, ...] | None = None, outputs: tuple[str, ...] | None = None,
                 domain: str | None = None):
        self.graph = graph
        self.index = index
        self.proto = proto
        self.op_type = proto.op_type if op_type is None else op_type
        self.domain = proto.domain if domain is None else domain
        name = proto.name
        # protobuf hands a name that is not valid UTF-8 over as bytes: shown as text with \x escapes, so every
        # report (JSON among them) can hold it
        self.name = name if name.__class__ is str else name.decode("utf-8", "backslashreplace")
        self.inputs = tuple(proto.input) if inputs is None else inputs
        self.outputs = tuple(proto.output) if outputs is None else outputs

    def __repr__(self) -> str:
        return f"Node({self.op_type} {self.label!r} in {self.graph.path})"

    @property
    def label(self) -> str:
        """The node's name, or a stable stand-in built from its first output when unnamed."""
        if self.name:
            return self.name
        first = next((o for o in self.outputs if o), "")
        if first.__class__ is not str:
            first = first.decode("utf-8", "backslashreplace")
        return f"{self.op_type}@{first}" if first else f"{self.op_type}#{self.index}"

    @property
    def display(self) -> str:
        return f"{self.op_type} '{self.label}'"

    @property
    def is_onnx_op(self) -> bool:
        return self.domain in ONNX_DOMAINS

    def is_op(self, *op_types: str) -> bool:
        return self.domain in ONNX_DOMAINS and self.op_type in op_types

    @property
    def attrs(self) -> dict[str, onnx.AttributeProto]:
        """Attributes by name, built on first use (by hand: functools.cached_property takes a lock on
        Python 3.11, which costs more than building the dict of a BN's three attributes)."""
        attrs = self.__dict__.get("_attrs")
        if attrs is None:
            attrs = self.__dict__["_attrs"] = {a.name: a for a in self.proto.attribute}
        return attrs

    def attr(self, name: str, default=None):
        """An attribute's Python value; `default` when absent or bound to a function attribute."""
        attribute = self.attrs.get(name)
        if attribute is None or attribute.ref_attr_name:
            return default
        return checked_attribute_value(self.graph.model.path, self, attribute)

    def input(self, i: int) -> str:
        """Input i's value name, or '' when absent (optional inputs may be omitted or empty)."""
        return self.inputs[i] if i < len(self.inputs) else ""

    def output(self, i: int) -> str:
        return self.outputs[i] if i < len(self.outputs) else ""

    @property
    def opset(self) -> int:
        return self.graph.opset(self.domain)

    @property
    def provenance(self) -> Provenance | None:
        return self.graph.model.provenance.get(self.name) if self.name else None


# What Graph.__init__ sets; everything else in a graph's __dict__ is a cache that release() drops.
_GRAPH_CORE = frozenset({"model", "path", "parent", "depth", "_opsets", "input_names", "output_names",
                         "output_order", "_protos", "_initializer_protos", "_value_info_protos", "_node_cache"})

# Standard ops that carry subgraphs; nodes of other domains are checked for graph attributes too.
SUBGRAPH_OPS = frozenset({"If", "Loop", "Scan", "SequenceMap"})


class Graph:
    """A graph (main, subgraph or function body) with lazy lookups; parent scopes for outer names.

    Building the view costs one pass over the node protos (op types, input and output names as tuples);
    producer/consumer maps, Node objects, initializer and value_info tables are built on first use.
    """

    memoize_shapes = True  # a subclass that edits initializers or value_info must turn this off

    def __init__(
        self,
        model: ModelInfo,
        nodes,
        *,
        path: str,
        inputs: tuple[str, ...] = (),
        outputs: tuple[str, ...] = (),
        initializers=(),
        value_info=(),
        parent: Graph | None = None,
        opsets: dict[str, int] | None = None,
    ):
        self.model = model
        self.path = path
        self.parent = parent
        self.depth = 0 if parent is None else parent.depth + 1
        check_subgraph_depth(model.path, self.depth, path)
        self._opsets = opsets
        self.input_names = inputs
        self.output_names = frozenset(outputs)
        self.output_order = outputs
        self._protos = list(nodes)
        self._initializer_protos = initializers
        self._value_info_protos = value_info
        self._node_cache: list[Node | None] = [None] * len(self._protos)

    @classmethod
    def from_graph_proto(cls, model: ModelInfo, proto: onnx.GraphProto, *, path: str, parent=None) -> Graph:
        return cls(
            model,
            proto.node,
            path=path,
            inputs=tuple(v.name for v in proto.input),
            outputs=tuple(v.name for v in proto.output),
            initializers=proto.initializer,
            value_info=(proto.input, proto.output, proto.value_info),
            parent=parent,
        )

    def __repr__(self) -> str:
        return f"Graph({self.path}, {len(self._protos)} nodes)"

    # -- node tables -------------------------------------------------------------------------------
    @cached_property
    def _node_table(self) -> tuple[list[str], list[str], list[tuple[str, ...]], list[tuple[str, ...]]]:
        """Op types, domains, inputs and outputs of every node, read in one pass: on a deep model the node
        protos outgrow the caches, and four passes took ~1.5 us a node at 60,000 nodes against ~1.0 for one."""
        op_types: list[str] = []
        domains: list[str] = []
        inputs: list[tuple[str, ...]] = []
        outputs: list[tuple[str, ...]] = []
        add_op, add_domain, add_inputs, add_outputs = op_types.append, domains.append, inputs.append, outputs.append
        for proto in self._protos:
            add_op(proto.op_type)
            add_domain(proto.domain)
            add_inputs(tuple(proto.input[:]))  # slicing first: 2x faster with upb
            add_outputs(tuple(proto.output[:]))
        return op_types, domains, inputs, outputs

    @cached_property
    def _op_types(self) -> list[str]:
        return self._node_table[0]

    @cached_property
    def _domains(self) -> list[str]:
        return self._node_table[1]

    @cached_property
    def _inputs(self) -> list[tuple[str, ...]]:
        return self._node_table[2]

    @cached_property
    def _outputs(self) -> list[tuple[str, ...]]:
        return self._node_table[3]

    @cached_property
    def _op_index(self) -> dict[str, list[int]]:
        index: dict[str, list[int]] = {}
        for i, op_type in enumerate(self._op_types):
            bucket = index.get(op_type)
            if bucket is None:
                index[op_type] = [i]
            else:
                bucket.append(i)
        return index

    def node_at(self, index: int) -> Node:
        node = self._node_cache[index]
        if node is None:
            node = Node(self, index, self._protos[index], self._op_types[index], self._inputs[index],
                        self._outputs[index], self._domains[index])
            self._node_cache[index] = node
        return node

    def __len__(self) -> int:
        return len(self._protos)

    @cached_property
    def nodes(self) -> list[Node]:
        """Every node in graph order (creates all Node objects: prefer nodes_of in rules)."""
        return [self.node_at(i) for i in range(len(self._protos))]

    def nodes_of(self, *op_types: str) -> list[Node]:
        """Standard-domain nodes of the given op types, in graph order."""
        index = self._op_index
        if len(op_types) == 1:
            positions = index.get(op_types[0], ())
        else:
            positions = sorted(i for op in op_types for i in index.get(op, ()))
        nodes = (self.node_at(i) for i in positions)
        return [node for node in nodes if node.domain in ONNX_DOMAINS]

    def release(self) -> None:
        """Drop node objects, normalized views and lookup tables. They point back at this graph, so without
        this the memory waits for the cyclic collector; the graph must not be used afterwards."""
        for node in self._node_cache:
            if node is not None:
                node.__dict__.clear()
        self._node_cache = []
        for key in [key for key in self.__dict__ if key not in _GRAPH_CORE]:
            del self.__dict__[key]

    # -- scopes and opsets -------------------------------------------------------------------------
    def opset(self, domain: str) -> int:
        opsets = self._opsets if self._opsets is not None else self.model.opsets
        if domain in ONNX_DOMAINS:
            return opsets.get("", opsets.get("ai.onnx", 1))
        return opsets.get(domain, 1)

    def scopes(self) -> Iterator[Graph]:
        graph: Graph | None = self
        while graph is not None:
            yield graph
            graph = graph.parent

    # -- producers and consumers -------------------------------------------------------------------
    @cached_property
    def _producers(self) -> dict[str, int]:
        producers = {name: i for i, names in enumerate(self._outputs) for name in names if name}
        self._check_structure(producers)
        return producers

    def _check_structure(self, producers: dict[str, int]) -> None:
        """Refuse what would make data-flow answers wrong: an untyped node, a value produced twice, a cycle.
        Runs once per graph, when its data flow is first used; costs two C-level set operations per node."""
        path = self.model.path
        if "" in self._op_types:
            raise LoadError(path, f"node #{self._op_types.index('')} of graph {shown(self.path)} has no op_type")
        check_duplicate_outputs(path, self.path, self._outputs, producers)
        implicit = {i: _node_free_names(self._protos[i]) for i in self._subgraph_owners}
        check_acyclic(path, self.path, producers, self._inputs, self._outputs, implicit)

    @cached_property
    def _consumers(self) -> dict[str, list[int]]:
        consumers: dict[str, list[int]] = {}
        get = consumers.get
        for i, names in enumerate(self._inputs):
            for name in names:
                readers = get(name)
                if readers is None:
                    consumers[name] = [i]
                elif readers[-1] != i:  # Mul(x, x) reads x once; nodes come in order, so lists stay sorted
                    readers.append(i)
        for i in self._subgraph_owners:
            for name in _node_free_names(self._protos[i]):
                readers = consumers.setdefault(name, [])
                if i not in readers:
                    readers.append(i)
                    readers.sort()
        consumers.pop("", None)
        return consumers

    @cached_property
    def _subgraph_owners(self) -> list[int]:
        """Indices of nodes that carry subgraphs (control flow, or custom ops with graph attributes)."""
        owners = []
        for i, (op_type, domain) in enumerate(zip(self._op_types, self._domains)):
            if (op_type in SUBGRAPH_OPS and domain in ONNX_DOMAINS) or domain not in ONNX_DOMAINS:
                if any(_attribute_graphs(a) for a in self._protos[i].attribute):
                    owners.append(i)
        return owners

    def producer(self, name: str) -> Node | None:
        """The node whose output `name` is, searching enclosing graphs for outer-scope names."""
        if not name:
            return None
        if self.parent is None:
            index = self._producers.get(name)
            return None if index is None else self.node_at(index)
        for graph in self.scopes():
            index = graph._producers.get(name)
            if index is not None:
                return graph.node_at(index)
            if graph.defines_locally(name):
                return None
        return None

    def local_producer_op(self, name: str) -> str | None:
        """The op type of the node of this graph that produces `name` ('' when its domain is not ONNX's), or
        None when unknown: no node here produces it (a graph input, a constant, an outer-scope value). A
        rule that matches only a few producer types skips most BNs with this one lookup instead of a walk."""
        index = self._producers.get(name)
        if index is None:
            return None
        return self._op_types[index] if self._domains[index] in ONNX_DOMAINS else ""

    def consumers(self, name: str) -> list[Node]:
        """Nodes of this graph that read `name` (a node whose subgraph reads it counts as a reader)."""
        return [self.node_at(i) for i in self._consumers.get(name, ())]

    def consumer_count(self, name: str) -> int:
        return len(self._consumers.get(name, ()))

    def is_graph_output(self, name: str) -> bool:
        return name in self.output_names

    def use_count(self, name: str) -> int:
        """Readers of a value, counting a graph output as one more reader."""
        return self.consumer_count(name) + (1 if self.is_graph_output(name) else 0)

    def defines_locally(self, name: str) -> bool:
        return name in self._producers or name in self._initializers or name in self.input_names

    # -- constants ---------------------------------------------------------------------------------
    @cached_property
    def _initializers(self) -> dict[str, onnx.TensorProto]:
        return {t.name: t for t in self._initializer_protos}

    @cached_property
    def _value_info(self) -> dict[str, onnx.ValueInfoProto]:
        return {v.name: v for group in self._value_info_protos for v in group}

    def initializer(self, name: str) -> onnx.TensorProto | None:
        if self.parent is None:
            return self._initializers.get(name)
        graph = self
        while graph is not None:
            tensor = graph._initializers.get(name)
            if tensor is not None:
                return tensor
            if graph.parent is None or name in graph._producers or name in graph.input_names:
                return None
            graph = graph.parent
        return None

    def is_constant(self, name: str) -> bool:
        """True when `name` is fixed at load time: an initializer (also when listed as an IR-3 input),
        or the output of Constant / ConstantOfShape with a constant shape."""
        if not name:
            return False
        if self.initializer(name) is not None:
            return True
        node = self.producer(name)
        if node is None:
            return False
        if node.is_op("Constant"):
            return True
        if node.is_op("ConstantOfShape"):
            return node.graph.is_constant(node.input(0))
        return False

    def constant(self, name: str) -> np.ndarray | None:
        """A constant's values (read on demand, external data included), or None when not constant."""
        tensor = self.initializer(name)
        if tensor is not None:
            return tensor_values(tensor, self.model)
        node = self.producer(name)
        if node is None:
            return None
        if node.is_op("Constant"):
            return constant_node_value(node)
        if node.is_op("ConstantOfShape"):
            shape = node.graph.constant(node.input(0))
            if shape is None:
                return None
            value = node.attr("value")
            fill = tensor_values(value, self.model) if value is not None else None
            return constant_of_shape(self.model.path, node.label, shape, fill)
        return None

    def shape_of(self, name: str) -> tuple | None:
        """Static shape from value_info / inputs / outputs / constants (dims may be strings), or None.
        Remembered per name: several rules ask for the same BN and weight shapes."""
        if not self.memoize_shapes:
            return self._find_shape(name)
        shapes = self._shapes
        if name in shapes:
            return shapes[name]
        shape = shapes[name] = self._find_shape(name)
        return shape

    @cached_property
    def _shapes(self) -> dict[str, tuple | None]:
        return {}

    def _find_shape(self, name: str) -> tuple | None:
        if self.parent is None and name not in self._value_info:  # the common case: a main-graph weight
            tensor = self._initializers.get(name)
            if tensor is not None:
                return tuple(tensor.dims)
        for graph in self.scopes():
            info = graph._value_info.get(name)
            if info is not None and info.type.HasField("tensor_type") and info.type.tensor_type.HasField("shape"):
                return tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or None)
                             for d in info.type.tensor_type.shape.dim)
            tensor = graph._initializers.get(name)
            if tensor is not None:
                return tuple(tensor.dims)
        node = self.producer(name)
        if node is not None and node.is_op("Constant"):
            value = node.attrs.get("value")
            if value is not None and value.type == onnx.AttributeProto.TENSOR:
                return tuple(value.t.dims)
        return None

    # -- subgraphs ---------------------------------------------------------------------------------
    def subgraph_outer_names(self, node: Node) -> set[str]:
        """Names a node's subgraphs read from outside themselves (their implicit inputs)."""
        return _node_free_names(node.proto)

    @cached_property
    def subgraphs(self) -> list[Graph]:
        children = []
        for i in self._subgraph_owners:
            node = self.node_at(i)
            for attribute in node.proto.attribute:
                subs = _attribute_graphs(attribute)
                for k, sub in enumerate(subs):
                    suffix = attribute.name if len(subs) == 1 else f"{attribute.name}[{k}]"
                    children.append(
                        Graph.from_graph_proto(self.model, sub, path=f"{self.path}/{node.label}.{suffix}", parent=self)
                    )
        return children

    def walk_graphs(self) -> Iterator[Graph]:
        """This graph and every nested subgraph, depth first, in node order."""
        stack = [self]
        while stack:
            graph = stack.pop()
            yield graph
            stack.extend(reversed(graph.subgraphs))


_FAST_DTYPES = {
    onnx.TensorProto.FLOAT: np.dtype("<f4"), onnx.TensorProto.DOUBLE: np.dtype("<f8"),
    onnx.TensorProto.FLOAT16: np.dtype("<f2"), onnx.TensorProto.INT64: np.dtype("<i8"),
    onnx.TensorProto.INT32: np.dtype("<i4"),
}


def tensor_values(tensor: onnx.TensorProto, model: ModelInfo) -> np.ndarray:
    """A tensor's values, read-only: raw little-endian data straight from the buffer, anything else
    (typed fields, external data, exotic types) via tensors.to_array."""
    dtype = _FAST_DTYPES.get(tensor.data_type)
    if dtype is not None and tensor.data_location != onnx.TensorProto.EXTERNAL:
        raw = tensor.raw_data
        if raw:
            dims = tuple(tensor.dims)
            count = 1
            for dim in dims:
                count *= dim
            if len(raw) == count * dtype.itemsize and all(dim >= 0 for dim in dims):
                return np.frombuffer(raw, dtype=dtype).reshape(dims)
    return to_array(tensor, model.path, model.base_dir)


def _node_free_names(proto: onnx.NodeProto) -> set[str]:
    names: set[str] = set()
    for attribute in proto.attribute:
        for sub in _attribute_graphs(attribute):
            names |= _free_names(sub)
    return names


def _attribute_graphs(attribute: onnx.AttributeProto) -> list[onnx.GraphProto]:
    if attribute.type == onnx.AttributeProto.GRAPH:
        return [attribute.g]
    if attribute.type == onnx.AttributeProto.GRAPHS:
        return list(attribute.graphs)
    return []


def _free_names(graph: onnx.GraphProto) -> set[str]:
    """Names a graph (and its nested subgraphs) reads but does not define."""
    defined = {v.name for v in graph.input} | {t.name for t in graph.initializer}
    used: set[str] = set()
    for node in graph.node:
        used.update(n for n in node.input if n)
        for attribute in node.attribute:
            for sub in _attribute_graphs(attribute):
                used |= _free_names(sub)
        defined.update(node.output)
    used.update(v.name for v in graph.output)
    return used - defined


def constant_node_value(node: Node) -> np.ndarray | None:
    """The value of a Constant node in any of its attribute forms."""
    for key in ("value", "value_float", "value_floats", "value_int", "value_ints"):
        attribute = node.attrs.get(key)
        if attribute is None or attribute.ref_attr_name:
            continue
        value = node.attr(key)  # type-checked against the Constant schema
        if key == "value":
            return tensor_values(value, node.graph.model)
        dtype = np.float32 if "float" in key else np.int64
        return np.asarray(value, dtype=dtype)
    return None


class Model:
    """A loaded model: its main graph, its local functions, and shared file facts."""

    def __init__(self, info: ModelInfo, main: Graph, functions: list[Graph]):
        self.info, self.main, self.functions = info, main, functions

    def all_graphs(self) -> Iterator[Graph]:
        yield from self.main.walk_graphs()
        for function in self.functions:
            yield from function.walk_graphs()

    def release(self) -> None:
        """Break the graph views' reference cycles once the model is done with (see Graph.release)."""
        for graph in list(self.all_graphs()):
            graph.release()


def model_info(proto: onnx.ModelProto, path: str) -> ModelInfo:
    """The file facts build_model records, without building any graph (the fixer builds its own views)."""
    opsets = {op.domain: op.version for op in proto.opset_import}
    if proto.ir_version < 3 and "" not in opsets and "ai.onnx" not in opsets:
        opsets[""] = 1
    return ModelInfo(path=str(path), base_dir=Path(path).parent, ir_version=proto.ir_version, opsets=opsets,
                     proto=proto)


def build_model(proto: onnx.ModelProto, path: str, *, provenance: dict[str, Provenance] | None = None) -> Model:
    """Wrap a ModelProto (already loaded, external data not read) in the bnlint graph view."""
    opsets = {op.domain: op.version for op in proto.opset_import}
    if proto.ir_version < 3 and "" not in opsets and "ai.onnx" not in opsets:
        opsets[""] = 1
    info = ModelInfo(
        path=str(path),
        base_dir=Path(path).parent,
        ir_version=proto.ir_version,
        opsets=opsets,
        proto=proto,
        provenance=dict(provenance or {}),
    )
    main = Graph.from_graph_proto(info, proto.graph, path="main")
    functions = [
        Graph(
            info,
            function.node,
            path=f"function:{function.domain}.{function.name}" if function.domain else f"function:{function.name}",
            inputs=tuple(function.input),
            outputs=tuple(function.output),
            opsets={op.domain: op.version for op in function.opset_import} or opsets,
        )
        for function in proto.functions
    ]
    return Model(info=info, main=main, functions=functions)
