"""Graph patterns shared by a rule and its rewrite, so that lint and fix agree on what they match."""

from __future__ import annotations

from typing import NamedTuple

from bnlint.graph import Node
from bnlint.ops import value_rank
from bnlint.semantics import BatchNorm, batchnorm
from bnlint.walker import Path, op_in, walk_up

THROUGH_IDENTITY = op_in({"Identity"})


def layer_kind(layer: Node) -> str:
    """How messages name a bias layer: a MatMul+Add site is represented by its Add node."""
    return "MatMul+Add" if layer.op_type == "Add" else layer.op_type


class BiasSite(NamedTuple):
    """A layer whose bias a BN cancels: the layer (a MatMul+Add is its Add), the Identity chain between
    them, and the bias value's name."""

    layer: Node
    via: tuple[Node, ...]
    bias: str

    @property
    def kind(self) -> str:
        return layer_kind(self.layer)


def cancelled_bias(layer: Node, bn_scale: str) -> str | None:
    """The bias value name of `layer` when it is constant per channel of the BN whose scale is `bn_scale`
    (so BN's mean removes it)."""
    graph = layer.graph
    if layer.is_op("Conv", "ConvTranspose"):
        return layer.input(2) or None
    if layer.is_op("Gemm"):
        bias = layer.input(2)
        if not bias or float(layer.attr("beta", 1.0)) == 0.0:
            return None
        shape = graph.shape_of(bias)
        if shape is not None and len(shape) == 2 and shape[0] != 1:
            return None  # a C that varies along the batch axis is not a per-channel bias
        return bias
    if layer.is_op("Add"):
        for left, right in ((layer.input(0), layer.input(1)), (layer.input(1), layer.input(0))):
            producer = graph.producer(left)
            if producer is None or not producer.is_op("MatMul") or not graph.is_constant(right):
                continue
            rank = value_rank(graph, left)
            shape = graph.shape_of(right)
            if rank not in (2, None) or shape is None:
                continue
            if rank is None and not _matches_channels(shape, graph.shape_of(bn_scale)):
                continue
            if len(shape) <= 1 or all(d == 1 for d in shape[:-1]):
                return right
    return None


def _matches_channels(bias_shape: tuple, scale_shape: tuple | None) -> bool:
    return bool(bias_shape and scale_shape) and bias_shape[-1] == scale_shape[0]


# What the node right before a BN must be for bias_site to find a layer.
_BIAS_FIRST_STEPS = frozenset({"Identity", "Conv", "ConvTranspose", "Gemm", "Add"})


def bias_site(bn: BatchNorm) -> BiasSite | None:
    """The layer right before `bn` (through Identity) when its bias is constant per BN channel."""
    graph = bn.node.graph
    first = graph.local_producer_op(bn.x)
    if first == "Conv" or first == "ConvTranspose":  # the common case, without a walk
        layer = graph.producer(bn.x)
        bias = layer.input(2)
        return BiasSite(layer, (), bias) if bias else None
    if first is not None and first not in _BIAS_FIRST_STEPS:
        return None
    path = walk_up(graph, bn.x, THROUGH_IDENTITY)
    if path is None:
        return None
    bias = cancelled_bias(path.end, bn.scale)
    return BiasSite(path.end, path.via, bias) if bias is not None else None


def preceding_bn(bn: BatchNorm) -> tuple[BatchNorm, Path] | None:
    """The BN that feeds `bn` directly (through Identity at most), with the path between them."""
    path = walk_up(bn.node.graph, bn.x, THROUGH_IDENTITY)
    if path is None:
        return None
    first = batchnorm(path.end)
    return (first, path) if first is not None else None
