"""Op vocabularies shared by rules and rewrites, and recognisers for decomposed activations."""

from __future__ import annotations

from bnlint.graph import Graph, Node

# Elementwise nonlinearities as single ONNX ops.
NONLINEAR_OPS = frozenset({
    "Relu", "LeakyRelu", "PRelu", "Elu", "Selu", "Celu", "ThresholdedRelu", "Sigmoid", "HardSigmoid",
    "HardSwish", "Tanh", "Softplus", "Softsign", "Gelu", "Mish", "Swish", "Clip",
})

# Ops that reshape, copy, subsample or (at inference) pass values through without changing whether the
# values are "the output of a nonlinearity".
SHAPE_OPS = frozenset({"Identity", "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Cast", "Transpose"})
POOL_OPS = frozenset({"MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "LpPool", "GlobalLpPool"})

WEIGHT_OPS = frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul", "ConvInteger", "MatMulInteger", "QLinearConv",
                        "QLinearMatMul", "Einsum", "LSTM", "GRU", "RNN"})

# Ops that preserve the rank of their first input.
_RANK_PRESERVING = NONLINEAR_OPS | {"Identity", "Cast", "Dropout", "BatchNormalization", "Add", "Sub", "Mul",
                                    "Div", "Neg", "Abs", "Sqrt", "Exp", "Log", "Erf", "Pow", "Softmax",
                                    "LogSoftmax", "InstanceNormalization", "LayerNormalization"}


def nonlinearity_name(node: Node) -> str | None:
    """A human name when the node computes a nonlinearity (also SiLU/GELU decomposed into Mul), else None."""
    if not node.is_onnx_op:
        return None
    if node.op_type == "Clip":
        return _clip_name(node)
    if node.op_type in NONLINEAR_OPS:
        return node.op_type
    if node.op_type == "Mul":
        return _decomposed_activation(node)
    return None


def _clip_name(node: Node) -> str | None:
    graph = node.graph
    if node.opset < 11:
        low, high = node.attr("min"), node.attr("max")
    else:
        low_value = graph.constant(node.input(1)) if node.input(1) else None
        high_value = graph.constant(node.input(2)) if node.input(2) else None
        low = None if low_value is None else float(low_value.reshape(-1)[0])
        high = None if high_value is None else float(high_value.reshape(-1)[0])
        if (node.input(1) and low_value is None) or (node.input(2) and high_value is None):
            return "Clip"
    if low is None and high is None:
        return None
    if low == 0.0 and high == 6.0:
        return "Clip (ReLU6)"
    if low == 0.0:
        return "Clip (ReLU)"
    return "Clip"


def _decomposed_activation(mul: Node) -> str | None:
    """SiLU = x * Sigmoid(x), HardSwish = x * HardSigmoid(x), GELU = 0.5 * x * (1 + Erf(x / sqrt 2))."""
    graph = mul.graph
    a, b = mul.input(0), mul.input(1)
    for gate, other in ((a, b), (b, a)):
        producer = graph.producer(gate)
        if producer is not None and producer.is_op("Sigmoid", "HardSigmoid") and producer.input(0) == other:
            return "SiLU" if producer.op_type == "Sigmoid" else "HardSwish"
    for name in (a, b):
        if _has_erf_within(graph, name, depth=3):
            return "GELU"
    return None


def _has_erf_within(graph: Graph, name: str, depth: int) -> bool:
    producer = graph.producer(name)
    if producer is None or depth == 0:
        return False
    if producer.is_op("Erf"):
        return True
    if producer.is_op("Add", "Mul"):
        return any(_has_erf_within(graph, x, depth - 1) for x in producer.inputs[:2])
    return False


def value_rank(graph: Graph, name: str, depth: int = 16) -> int | None:
    """The rank of a value when declared or easily derived (Gemm, Flatten, rank-preserving chains)."""
    shape = graph.shape_of(name)
    if shape is not None:
        return len(shape)
    producer = graph.producer(name)
    if producer is None or depth == 0 or not producer.is_onnx_op:
        return None
    op = producer.op_type
    if op in ("Gemm", "Flatten"):
        return 2
    if op == "MatMul":
        left = value_rank(producer.graph, producer.input(0), depth - 1)
        right = value_rank(producer.graph, producer.input(1), depth - 1)
        if left is None or right is None:
            return None
        return max(left, right)
    if op == "Reshape":
        target = producer.graph.shape_of(producer.input(1))
        return int(target[0]) if target and isinstance(target[0], int) else None
    if op in _RANK_PRESERVING or op in POOL_OPS:
        return value_rank(producer.graph, producer.input(0), depth - 1)
    return None
