"""Property test: on random small graphs (Conv, ConvTranspose, Gemm, MatMul(+Add), BN in either mode,
activations, Dropout, MaxPool, shared weights, fan-out, graph outputs in the middle, Concat/Add merges)
`fix` keeps every output within tolerance, never drops an output and never folds a training-mode BN."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import onnx
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from onnx import helper, numpy_helper

from bnlint.fix import fix_model
from bnlint.verify import VerifyOptions, compare_models

FLOAT = onnx.TensorProto.FLOAT


class Builder:
    def __init__(self, draw, rank: int):
        self.draw = draw
        self.nodes, self.inits, self.outputs, self.training = [], [], [], []
        self.weights: dict[tuple, str] = {}
        self.count = 0
        self.rng = np.random.default_rng(draw(st.integers(0, 2**16)))
        if rank == 4:
            self.shape = [2, 3, 6, 6]
        else:
            self.shape = [3, 5]
        self.inputs = [helper.make_tensor_value_info("x", FLOAT, list(self.shape))]
        self.cur = "x"

    def name(self, stem: str) -> str:
        self.count += 1
        return f"{stem}{self.count}"

    def tensor(self, stem: str, array) -> str:
        name = self.name(stem)
        self.inits.append(numpy_helper.from_array(np.asarray(array, np.float32), name))
        return name

    def weight(self, shape: tuple) -> str:
        if shape in self.weights and self.draw(st.booleans()):
            return self.weights[shape]  # shared with an earlier layer
        name = self.tensor("w", self.rng.standard_normal(shape) / np.sqrt(np.prod(shape[1:])))
        self.weights[shape] = name
        return name

    def node(self, op: str, inputs, n_out: int = 1, **attrs) -> list[str]:
        outs = [self.name(op.lower()) for _ in range(n_out)]
        self.nodes.append(helper.make_node(op, list(inputs), outs, name=self.name(f"{op}_"), **attrs))
        return outs

    def maybe_expose(self, value: str) -> None:
        choice = self.draw(st.sampled_from(["none"] * 6 + ["output", "branch"]))
        if choice == "output":
            self.outputs.append(value)
        elif choice == "branch":
            self.outputs.append(self.node("Relu", [value])[0])

    # -- layers ---------------------------------------------------------------------------------
    def conv(self) -> None:
        channels, height = self.shape[1], self.shape[2]
        out = self.draw(st.integers(2, 4))
        depthwise = out == channels and self.draw(st.booleans())
        kernel = self.draw(st.sampled_from([1, 1, 3]))
        pad = kernel == 3 and (height < 4 or self.draw(st.booleans()))
        weight = self.weight((out, 1 if depthwise else channels, kernel, kernel))
        inputs = [self.cur, weight]
        if self.draw(st.booleans()):
            inputs.append(self.tensor("b", self.rng.standard_normal(out)))
        self.cur = self.node("Conv", inputs, group=channels if depthwise else 1,
                             pads=[1, 1, 1, 1] if pad else [0, 0, 0, 0])[0]
        size = height if pad or kernel == 1 else height - 2
        self.shape = [2, out, size, size]

    def conv_transpose(self) -> None:
        channels, height = self.shape[1], self.shape[2]
        out = self.draw(st.integers(2, 4))
        weight = self.weight((channels, out, 2, 2))
        self.cur = self.node("ConvTranspose", [self.cur, weight], strides=[2, 2])[0]
        self.shape = [2, out, 2 * height, 2 * height]

    def merge(self) -> None:
        channels = self.shape[1]
        if len(self.shape) == 4:
            branch = self.node("Conv", [self.cur, self.weight((channels, channels, 1, 1))])[0]
        else:
            branch = self.node("Gemm", [self.cur, self.weight((channels, channels))])[0]
        if self.draw(st.booleans()):
            self.cur = self.node("Add", [self.cur, branch])[0]
        else:
            self.cur = self.node("Concat", [self.cur, branch], axis=1)[0]
            self.shape[1] = 2 * channels

    def gemm(self) -> None:
        features = self.shape[1]
        out = self.draw(st.integers(2, 5))
        trans_b = self.draw(st.booleans())
        inputs = [self.cur, self.weight((out, features) if trans_b else (features, out))]
        if self.draw(st.booleans()):
            inputs.append(self.tensor("c", self.rng.standard_normal(out)))
        alpha = float(self.draw(st.sampled_from([1.0, 0.5])))
        self.cur = self.node("Gemm", inputs, transB=int(trans_b), alpha=alpha)[0]
        self.shape = [self.shape[0], out]

    def matmul(self) -> None:
        features = self.shape[1]
        out = self.draw(st.integers(2, 5))
        self.cur = self.node("MatMul", [self.cur, self.weight((features, out))])[0]
        if self.draw(st.booleans()):
            self.cur = self.node("Add", [self.cur, self.tensor("bias", self.rng.standard_normal(out))])[0]
        self.shape = [self.shape[0], out]

    # -- what may follow a layer ------------------------------------------------------------------
    def tail(self) -> None:
        self.maybe_expose(self.cur)
        if self.draw(st.booleans()):
            self.cur = self.node("Dropout", [self.cur])[0]
        if self.draw(st.integers(0, 3)):
            self.batchnorm()
            if self.draw(st.integers(0, 3)) == 0:
                self.batchnorm()  # BN -> BN
        activation = self.draw(st.sampled_from(["Relu", "Sigmoid", None, None]))
        if activation:
            self.cur = self.node(activation, [self.cur])[0]
        if len(self.shape) == 4 and self.shape[2] >= 4 and self.draw(st.booleans()):
            self.cur = self.node("MaxPool", [self.cur], kernel_shape=[2, 2], strides=[2, 2])[0]
            self.shape = [2, self.shape[1], self.shape[2] // 2, self.shape[3] // 2]
        if self.draw(st.integers(0, 4)) == 0:
            self.outputs.append(self.cur)  # a graph output in the middle

    def batchnorm(self) -> None:
        channels = self.shape[1]
        params = [self.tensor("scale", self.rng.uniform(0.5, 2.0, channels) * self.rng.choice([-1, 1], channels)),
                  self.tensor("beta", self.rng.standard_normal(channels)),
                  self.tensor("mean", self.rng.standard_normal(channels)),
                  self.tensor("var", self.rng.uniform(0.3, 3.0, channels))]
        training = self.draw(st.integers(0, 3)) == 0
        if training:
            outs = self.node("BatchNormalization", [self.cur, *params], n_out=3, training_mode=1)
            self.training.append(self.nodes[-1].name)
        else:
            outs = self.node("BatchNormalization", [self.cur, *params], epsilon=1e-3)
        self.cur = outs[0]

    def model(self) -> onnx.ModelProto:
        outputs = list(dict.fromkeys([*self.outputs, self.cur]))
        graph = helper.make_graph(self.nodes, "random", self.inputs, [], self.inits)
        model = helper.make_model(graph, ir_version=8, opset_imports=[helper.make_opsetid("", 15)])
        inferred = {v.name: v for v in onnx.shape_inference.infer_shapes(model).graph.value_info}
        for name in outputs:
            model.graph.output.append(inferred[name])
        return model


@st.composite
def models(draw):
    rank = draw(st.sampled_from([4, 2]))
    builder = Builder(draw, rank)
    layers = ["conv", "conv", "conv_transpose", "merge"] if rank == 4 else ["gemm", "matmul", "merge"]
    for _ in range(draw(st.integers(1, 3))):
        layer = draw(st.sampled_from(layers))
        if layer == "conv_transpose" and builder.shape[2] > 4:
            layer = "conv"
        getattr(builder, layer)()
        builder.tail()
    return builder.model(), tuple(builder.training)


@settings(max_examples=int(os.environ.get("BNLINT_PROPERTY_EXAMPLES", "300")), deadline=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(case=models())
def test_fix_preserves_outputs_and_never_folds_training_bn(case):
    model, training = case
    onnx.checker.check_model(model, full_check=True)
    rewritten = onnx.ModelProto()
    rewritten.CopyFrom(model)
    outcome = fix_model(rewritten, "model.onnx", ["BN003", "BN004", "BN005", "BN008", "BN009"])
    onnx.checker.check_model(rewritten, full_check=True)
    assert [o.name for o in rewritten.graph.output] == [o.name for o in model.graph.output]
    survivors = {n.name: n for n in rewritten.graph.node}
    for name in training:
        assert name in survivors and survivors[name].op_type == "BatchNormalization", name
        assert any(a.name == "training_mode" and a.i == 1 for a in survivors[name].attribute)
    for change in outcome.changes:
        event(change.kind)
    folded = {c.node for c in outcome.changes if c.kind in ("fold", "fold-forward", "merge-bn")}
    assert not folded & set(training)
    with tempfile.TemporaryDirectory() as folder:
        original, fixed = Path(folder) / "a.onnx", Path(folder) / "b.onnx"
        onnx.save(model, original)
        onnx.save(rewritten, fixed)
        result = compare_models(str(original), str(fixed), VerifyOptions())
    assert result.ok, (outcome.changes, result.outputs, result.notes)
    assert result.mode.startswith("float64 reference"), result.notes
