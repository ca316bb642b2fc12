"""Can an inference BN be folded into the layer that produces its input? One answer for lint and fix.

Folding uses the inference identity BN(y) = s * y + t with s = scale / sqrt(var + eps) and
t = bias - mean * s, per channel. For Conv and ConvTranspose the channel is the output-channel axis of the
weight; for Gemm and MatMul over rank-2 activations it is the output-feature axis. Every refusal carries
a reason that the fixer reports verbatim. Numeric refusals (epsilon < 0, var + epsilon <= 0, NaN or Inf
parameters) live here too, so lint never suggests a fold that the fixer would refuse.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from bnlint.bnstats import bn_facts
from bnlint.graph import ONNX_DOMAINS, Node
from bnlint.ops import value_rank
from bnlint.semantics import BatchNorm

FOLD_INTO = ("Conv", "ConvTranspose", "Gemm", "MatMul")


class Affine(NamedTuple):
    """An inference BN as the per-channel map y = s * x + t, in float64."""

    s: np.ndarray
    t: np.ndarray

    @property
    def channels(self) -> int:
        return int(self.s.shape[0])


class FoldTarget(NamedTuple):
    """A BN that can be folded, the weight layer it folds into, and the bias Add of MatMul+Add. (A named
    tuple: lint makes one per foldable BN.)"""

    bn: BatchNorm
    layer: Node
    add: Node | None = None

    @property
    def affine(self) -> Affine:
        """BN's per-channel map, computed when a rewrite needs it (fold_target already vetted it)."""
        affine = inference_affine(self.bn)
        assert not isinstance(affine, str), affine
        return affine

    @property
    def kind(self) -> str:
        return "MatMul+Add" if self.add is not None else self.layer.op_type


class Refusal(NamedTuple):
    """Why a BN cannot be folded (and the layer in the way, if any)."""

    bn: BatchNorm
    reason: str
    layer: Node | None = None


def inference_affine(bn: BatchNorm) -> Affine | str:
    """BN's per-channel affine map, or the reason it cannot be computed safely."""
    if not np.isfinite(bn.epsilon) or bn.epsilon < 0:
        return f"epsilon is {bn.epsilon:.6g} (must be finite and >= 0)"
    params = bn.params()
    if params is None:
        return "BN parameters are not constants"
    scale, bias, mean, var = params["scale"], params["bias"], params["mean"], params["var"]
    if scale.ndim != 1 or not scale.shape == bias.shape == mean.shape == var.shape:
        return "BN parameters are not equal-length per-channel vectors " + \
            ", ".join(f"{key}{list(value.shape)}" for key, value in params.items())
    denominator = var + bn.epsilon
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        s = scale / np.sqrt(denominator)
        t = bias - mean * s
    if np.isfinite(s).all() and np.isfinite(t).all() and np.isfinite(denominator).all() and (denominator > 0).all():
        return Affine(s, t)
    return _affine_problem(params, denominator, s, t)


def _affine_problem(params, denominator, s, t) -> str:
    """Which check failed, naming the first channel (the slow path, only for refused BNs)."""
    for key in ("scale", "bias", "mean", "var"):
        bad = np.flatnonzero(~np.isfinite(params[key]))
        if bad.size:
            return f"BN {key} is NaN or Inf in channel {int(bad[0])}"
    bad = np.flatnonzero(~(denominator > 0))
    if bad.size:
        return f"var + epsilon <= 0 in channel {int(bad[0])} ({denominator[bad[0]]:.3g})"
    bad = np.flatnonzero(~(np.isfinite(s) & np.isfinite(t)))
    return f"folded scale or shift is not finite in channel {int(bad[0])}"


def output_channels(layer: Node) -> int | None:
    """How many output channels (features) a weight layer has, from its weight's static shape."""
    shape = layer.graph.shape_of(layer.input(1))
    if not shape:
        return None
    op_type = layer.op_type
    if op_type == "Conv":
        channels = shape[0]
    elif op_type == "ConvTranspose":
        channels = shape[1] if len(shape) > 1 else None
        if isinstance(channels, int):
            channels *= int(layer.attr("group", 1))
    elif op_type == "Gemm":
        channels = shape[0] if layer.attr("transB", 0) else shape[-1]
    elif op_type == "MatMul":
        channels = shape[-1]
    else:
        return None
    return channels if isinstance(channels, int) else None


def consumers_reason(node: Node, value: str) -> str | None:
    """Why `value` cannot be rewritten freely: it has other readers or is a graph output."""
    graph = node.graph
    readers = graph.consumer_count(value)
    if graph.is_graph_output(value):
        return f"{node.display} output '{value}' is a graph output"
    if readers != 1:
        return f"{node.display} output has {readers} consumers"
    return None


def fold_target(bn: BatchNorm) -> FoldTarget | Refusal:
    """The layer `bn` folds into, or the reason it cannot be folded."""
    graph = bn.node.graph
    if graph.memoize_shapes and graph.parent is None:  # a main graph as loaded (lint): try the common case
        target = _plain_conv_target(bn, graph)
        if target is not None:
            return target
    if bn.training:
        return Refusal(bn, f"BN is in training mode ({bn.training_reason}); see BN006")
    if not bn.spatial:
        return Refusal(bn, "BN has spatial=0 (per-activation statistics), which a per-channel fold cannot absorb")
    facts = bn_facts(bn)  # facts exist only for BNs whose parameters are all float32 initializers
    if facts is None and not bn.params_constant():
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
    channels = output_channels(layer)
    bn_channels = facts.channels if facts is not None else _leading_dim(graph.shape_of(bn.scale))
    if channels is not None and bn_channels is not None and bn_channels != channels:
        return Refusal(bn, f"BN has {bn_channels} channels but {layer.display} has {channels} outputs", layer)
    if facts is None or not facts.foldable_numerics:
        affine = inference_affine(bn)
        if isinstance(affine, str):
            return Refusal(bn, affine, layer)
    return FoldTarget(bn, layer, add)


def _plain_conv_target(bn: BatchNorm, graph) -> FoldTarget | None:
    """fold_target's answer for the common case, read straight from the graph's tables: an inference BN whose
    parameters bnlint.bnstats found foldable, right after a standard Conv that only it reads, with initializer
    weight (and bias) whose first dimension is BN's channel count. None: anything else, which fold_target
    then decides step by step (so this can only ever agree with it; tests/test_rule_fast_paths.py compares
    the two). Lint asks this once per BN of every model: on a deep CNN this answer takes a few dictionary
    lookups where the step-by-step path makes some twenty calls through the graph view."""
    if bn.training or not bn.spatial:
        return None
    facts = bn_facts(bn)
    if facts is None or not facts.foldable_numerics:
        return None
    x = bn.x
    conv = graph._producers.get(x)
    if conv is None or graph._op_types[conv] != "Conv" or graph._domains[conv] not in ONNX_DOMAINS:
        return None
    if graph._outputs[conv][0] != x or len(graph._consumers.get(x, ())) != 1 or x in graph.output_names:
        return None
    inputs = graph._inputs[conv]
    if len(inputs) < 2 or len(inputs) > 3:
        return None
    initializers = graph._initializers
    weight = initializers.get(inputs[1])
    if weight is None or inputs[1] in graph._value_info or (len(inputs) == 3 and inputs[2]
                                                             and inputs[2] not in initializers):
        return None
    dims = weight.dims
    if not dims or dims[0] != facts.channels:
        return None
    return FoldTarget(bn, graph.node_at(conv), None)


def _leading_dim(shape: tuple | None) -> int | None:
    return shape[0] if shape and isinstance(shape[0], int) else None


def _matmul_and_bias(add: Node) -> tuple[Node | None, str | None]:
    """The MatMul (constant weight) and the constant bias of an Add, in either input order."""
    graph = add.graph
    for left, right in ((add.input(0), add.input(1)), (add.input(1), add.input(0))):
        producer = graph.producer(left)
        if producer is not None and producer.is_op("MatMul") and graph.is_constant(right):
            return producer, right
    return None, None
