"""Can an inference BN be folded into the layer that produces its input? One answer for lint and fix.

Folding uses the inference identity BN(y) = s * y + t with s = scale / sqrt(var + eps) and
t = bias - mean * s, per channel. For Conv and ConvTranspose the channel is the output-channel axis of the
weight; for Gemm and MatMul over rank-2 activations it is the output-feature axis. Every refusal carries
a reason that the fixer reports verbatim.
"""

from __future__ import annotations

from dataclasses import dataclass

from bnlint.graph import Node
from bnlint.ops import value_rank
from bnlint.semantics import BatchNorm

FOLD_INTO = ("Conv", "ConvTranspose", "Gemm", "MatMul")


@dataclass(frozen=True)
class FoldTarget:
    """A BN that can be folded, the weight layer it folds into, and the bias Add of MatMul+Add."""

    bn: BatchNorm
    layer: Node
    add: Node | None = None

    @property
    def kind(self) -> str:
        return "MatMul+Add" if self.add is not None else self.layer.op_type


@dataclass(frozen=True)
class Refusal:
    bn: BatchNorm
    reason: str
    layer: Node | None = None


def consumers_reason(node: Node, value: str) -> str | None:
    """Why `value` cannot be rewritten freely: it has other readers or is a graph output."""
    graph = node.graph
    readers = len(graph.consumers(value))
    if graph.is_graph_output(value):
        return f"{node.display} output '{value}' is a graph output"
    if readers != 1:
        return f"{node.display} output has {readers} consumers"
    return None


def fold_target(bn: BatchNorm) -> FoldTarget | Refusal:
    """The layer `bn` folds into, or the reason it cannot be folded."""
    graph = bn.node.graph
    if bn.training:
        return Refusal(bn, f"BN is in training mode ({bn.training_reason}); see BN006")
    if not bn.spatial:
        return Refusal(bn, "BN has spatial=0 (per-activation statistics), which a per-channel fold cannot absorb")
    if not bn.params_constant():
        return Refusal(bn, "BN parameters are not constants")
    producer = graph.producer(bn.x)
    if producer is None:
        return Refusal(bn, "BN input is a graph input or constant, not a layer output")
    add = None
    layer = producer
    if producer.is_op("Add"):
        matmul, bias = _matmul_and_bias(producer)
        if matmul is None:
            return Refusal(bn, f"BN follows {producer.display}, which is not a MatMul+Add with a constant bias",
                           producer)
        add, layer = producer, matmul
    if not layer.is_op(*FOLD_INTO):
        return Refusal(bn, f"BN follows {layer.display}, not Conv/ConvTranspose/Gemm/MatMul", layer)
    if add is not None:
        reason = consumers_reason(add, add.output(0)) or consumers_reason(layer, layer.output(0))
    else:
        reason = consumers_reason(layer, layer.output(0))
    if reason:
        return Refusal(bn, reason, layer)
    weight = layer.input(1)
    if not graph.is_constant(weight) or (layer.input(2) and not graph.is_constant(layer.input(2))):
        return Refusal(bn, f"{layer.display} weight or bias is not a constant", layer)
    if layer.op_type == "MatMul":
        weight_rank = value_rank(graph, weight)
        activation_rank = value_rank(graph, layer.input(0))
        if weight_rank != 2:
            return Refusal(bn, f"{layer.display} weight is not 2-D", layer)
        if activation_rank != 2:
            known = "unknown" if activation_rank is None else str(activation_rank)
            return Refusal(bn, f"{layer.display} activation rank is {known}, not 2 (BN channel axis would not "
                               "be the MatMul output axis)", layer)
    return FoldTarget(bn, layer, add)


def _matmul_and_bias(add: Node) -> tuple[Node | None, str | None]:
    """The MatMul (constant weight) and the constant bias of an Add, in either input order."""
    graph = add.graph
    for left, right in ((add.input(0), add.input(1)), (add.input(1), add.input(0))):
        producer = graph.producer(left)
        if producer is not None and producer.is_op("MatMul") and graph.is_constant(right):
            return producer, right
    return None, None
