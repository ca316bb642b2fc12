"""The ten orderings of one Conv block from a well-known MNIST experiment, and the BN001-BN003 codes each
must produce for the first block. Shared by the ONNX test and the PyTorch parity test."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

ORDERINGS = {
    "Conv-Act-Drop-BN-Pool": {"BN001", "BN002"},
    "Conv-Act-Drop-Pool-BN": {"BN001", "BN002"},
    "Conv-Act-BN-Pool-Drop": {"BN001"},
    "Conv-Act-BN-Drop-Pool": {"BN001"},
    "Conv-BN-Act-Drop-Pool": {"BN003"},
    "Conv-BN-Act-Pool-Drop": {"BN003"},
    "Conv-BN-Drop-Act-Pool": {"BN003"},
    "Conv-Drop-Act-BN-Pool": {"BN001", "BN002"},
    "Conv-Drop-Act-Pool-BN": {"BN001", "BN002"},
    "Conv-Drop-BN-Act-Pool": {"BN002"},
}
PLACEMENT_CODES = {"BN001", "BN002", "BN003"}


def ordering_model(ordering: str, *, training: bool = False, channels: int = 4) -> onnx.ModelProto:
    """A 2-block model: block 1 (`b1_*` nodes) follows `ordering`; block 2 is Conv(bias) -> Relu -> head.

    `training=True` builds the training-mode graph (BN training_mode=1 with running-stat outputs,
    Dropout with training_mode=true), as a training-mode export would.
    """
    rng = np.random.default_rng(0)
    inits = []

    def const(name, array):
        inits.append(numpy_helper.from_array(np.asarray(array, dtype=np.float32), name))
        return name

    nodes = []
    x = "input"
    const("b1_w", rng.normal(size=(channels, 1, 3, 3)))
    const("b1_b", rng.normal(size=channels))
    for key, values in (("scale", rng.uniform(0.5, 1.5, channels)), ("beta", rng.normal(size=channels)),
                        ("mean", rng.normal(size=channels)), ("var", rng.uniform(0.5, 1.5, channels))):
        const(f"b1_bn_{key}", values)
    if training:
        inits.append(numpy_helper.from_array(np.array(True), "train_on"))
        const("drop_ratio", np.array(0.25))
    for step in ordering.split("-"):
        out = f"b1_{step.lower()}_out"
        if step == "Conv":
            nodes.append(helper.make_node("Conv", [x, "b1_w", "b1_b"], [out], name="b1_conv", pads=[1, 1, 1, 1]))
        elif step == "Act":
            nodes.append(helper.make_node("Relu", [x], [out], name="b1_act"))
        elif step == "Drop":
            inputs = [x, "drop_ratio", "train_on"] if training else [x]
            nodes.append(helper.make_node("Dropout", inputs, [out], name="b1_drop"))
        elif step == "BN":
            outputs = [out, "b1_running_mean", "b1_running_var"] if training else [out]
            nodes.append(helper.make_node(
                "BatchNormalization", [x, "b1_bn_scale", "b1_bn_beta", "b1_bn_mean", "b1_bn_var"], outputs,
                name="b1_bn", training_mode=1 if training else 0))
        elif step == "Pool":
            nodes.append(helper.make_node("MaxPool", [x], [out], name="b1_pool", kernel_shape=[2, 2], strides=[2, 2]))
        x = out
    const("b2_w", rng.normal(size=(channels, channels, 3, 3)))
    const("b2_b", rng.normal(size=channels))
    const("head_w", rng.normal(size=(10, channels)))
    nodes += [
        helper.make_node("Conv", [x, "b2_w", "b2_b"], ["b2_conv_out"], name="b2_conv", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["b2_conv_out"], ["b2_act_out"], name="b2_act"),
        helper.make_node("GlobalAveragePool", ["b2_act_out"], ["gap"], name="head_gap"),
        helper.make_node("Flatten", ["gap"], ["flat"], name="head_flatten"),
        helper.make_node("Gemm", ["flat", "head_w"], ["logits"], name="head_fc", transB=1),
    ]
    graph = helper.make_graph(
        nodes, ordering.replace("-", "_"),
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 1, 28, 28])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 10])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 15)])
    model.ir_version = 8
    return model


def first_block_codes(findings) -> set[str]:
    """BN001-BN003 codes of findings located on first-block nodes."""
    return {f.code for f in findings if f.code in PLACEMENT_CODES and f.location.node.startswith("b1_")}
