"""One meaning for the opset variants of BatchNormalization and Dropout.

BatchNormalization: opset 1-6 train unless `is_test=1`; opset 7-13 train when the running-statistics
outputs are present; opset 14+ has `training_mode`. Opset < 9 has `spatial` (0 = per-activation
statistics, which no per-channel fold can absorb).
Dropout: opset < 7 is a no-op only with `is_test=1`; opset 7-11 is always a no-op at inference;
opset 12+ reads `ratio` and `training_mode` from inputs (absent `training_mode` = inference).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import onnx

from bnlint.graph import Graph, Node

BN_OPS = ("BatchNormalization",)


class BatchNorm:
    """A BN node's meaning: its parameter names, epsilon, and whether it runs in training mode. (A slotted
    class: one is made per BN of every model, and it caches its parameters.)"""

    __slots__ = ("node", "x", "scale", "bias", "mean", "var", "y", "epsilon", "training", "training_reason",
                 "spatial", "_values")

    def __init__(self, node: Node, x: str, scale: str, bias: str, mean: str, var: str, y: str, epsilon: float,
                 training: bool, training_reason: str, spatial: bool):
        self.node, self.x, self.scale, self.bias, self.mean, self.var, self.y = node, x, scale, bias, mean, var, y
        self.epsilon, self.training, self.training_reason, self.spatial = epsilon, training, training_reason, spatial
        self._values = _UNREAD

    def __repr__(self) -> str:
        return f"BatchNorm({self.node!r}, training={self.training})"

    @property
    def inference(self) -> bool:
        return not self.training

    def params_constant(self) -> bool:
        graph = self.node.graph
        return all(graph.is_constant(name) for name in (self.scale, self.bias, self.mean, self.var))

    def params(self) -> dict[str, np.ndarray] | None:
        """scale, bias, mean, var as float64 arrays (read once per BN), or None when any is not constant."""
        if self._values is _UNREAD:
            self._values = self._read_params()
        return self._values

    def _read_params(self) -> dict[str, np.ndarray] | None:
        graph = self.node.graph
        values = {}
        for key in ("scale", "bias", "mean", "var"):
            array = graph.constant(getattr(self, key))
            if array is None:
                return None
            values[key] = np.asarray(array, dtype=np.float64)
        return values


_UNREAD = object()  # BatchNorm.params() not asked yet (None means: not constant)


def batchnorm(node: Node) -> BatchNorm | None:
    """The normalized view of a BatchNormalization node (computed once per node), or None."""
    if not node.is_op(*BN_OPS):
        return None
    view = node.__dict__.get("_batchnorm")
    if view is None:
        view = node.__dict__["_batchnorm"] = _batchnorm(node)
    return view


def batchnorms(graph: Graph) -> list[BatchNorm]:
    """Every standard BatchNormalization of `graph` as its normalized view, in graph order (built once per
    graph: most rules start from this list)."""
    views = graph.__dict__.get("_batchnorms")
    if views is None:
        views = graph.__dict__["_batchnorms"] = [batchnorm(node) for node in graph.nodes_of(*BN_OPS)]
    return views


def _batchnorm(node: Node) -> BatchNorm:
    opset = node.opset
    outputs = node.outputs
    extra_outputs = len(outputs) > 1 and any(outputs[1:])
    attributes = {a.name: a for a in node.proto.attribute}
    if opset >= 14:
        training = bool(_int_attribute(node, attributes, "training_mode", 0))
        reason = "training_mode=1" if training else ""
        if not training and extra_outputs:
            training, reason = True, "running mean/variance outputs are present"
    elif opset >= 7:
        training = extra_outputs
        reason = "running mean/variance outputs are present" if training else ""
    else:
        training = not bool(_int_attribute(node, attributes, "is_test", 0))
        reason = "is_test=0" if training else ""
    spatial = bool(_int_attribute(node, attributes, "spatial", 1)) if opset < 9 else True
    epsilon = attributes.get("epsilon")
    if epsilon is None:
        epsilon = 1e-5
    elif epsilon.type == _FLOAT and not epsilon.ref_attr_name:
        epsilon = epsilon.f
    else:
        epsilon = float(node.attr("epsilon", 1e-5))
    x, scale, bias, mean, var = (node.inputs + _NO_INPUTS)[:5]  # optional inputs may be omitted
    # positional, in field order: one is made per BN of every model
    return BatchNorm(node, x, scale, bias, mean, var, outputs[0] if outputs else "", epsilon, training, reason,
                     spatial)


def _int_attribute(node: Node, attributes: dict, name: str, default: int) -> int:
    """A BN integer attribute read straight from its proto when it is a plain INT (the schema's type at the
    opsets _batchnorm reads it); anything else goes through Node.attr, which resolves function references
    and words a wrong type as a LoadError. (Node.attr's per-call schema lookup was a third of a BN view.)"""
    attribute = attributes.get(name)
    if attribute is None:
        return default
    if attribute.type == _INT and not attribute.ref_attr_name:
        return attribute.i
    return node.attr(name, default)


_FLOAT = onnx.AttributeProto.FLOAT
_INT = onnx.AttributeProto.INT


_NO_INPUTS = ("",) * 5


class Dropout(NamedTuple):
    """A Dropout node's meaning: whether it is a no-op at inference, and why (or why unknown)."""

    node: Node
    noop: bool
    reason: str
    mask_used: bool


def dropout(node: Node) -> Dropout | None:
    """The normalized view of a Dropout node, or None for any other node."""
    if not node.is_op("Dropout"):
        return None
    graph = node.graph
    mask = node.output(1)
    mask_used = bool(mask) and graph.use_count(mask) > 0
    opset = node.opset
    if opset < 7:
        if node.attr("is_test", 0):
            return Dropout(node, True, "is_test=1", mask_used)
        if float(node.attr("ratio", 0.5)) == 0.0:
            return Dropout(node, True, "ratio=0", mask_used)
        return Dropout(node, False, "is_test=0 (training)", mask_used)
    if opset < 12:
        return Dropout(node, True, f"opset {opset} Dropout has no training mode", mask_used)
    training_name = node.input(2)
    ratio = _scalar(graph, node.input(1), default=0.5)
    if not training_name:
        return Dropout(node, True, "no training_mode input", mask_used)
    training = _scalar(graph, training_name, default=None)
    if training is None:
        if ratio == 0.0:
            return Dropout(node, True, "ratio=0", mask_used)
        return Dropout(node, False, "training_mode is computed at run time", mask_used)
    if not training:
        return Dropout(node, True, "training_mode=false", mask_used)
    if ratio == 0.0:
        return Dropout(node, True, "ratio=0", mask_used)
    return Dropout(node, False, "training_mode=true", mask_used)


def _scalar(graph, name: str, default):
    """A constant scalar input's value; `default` when the input is absent, None when not constant."""
    if not name:
        return default
    value = graph.constant(name)
    if value is None or value.size != 1:
        return None
    return value.reshape(-1)[0].item()
