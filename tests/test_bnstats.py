"""The vectorised BN facts agree with the one-BN-at-a-time computation they replace."""

import numpy as np
import onnx
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

from bnlint.bnstats import graph_bn_facts
from bnlint.foldable import inference_affine
from bnlint.graph import build_model
from bnlint.semantics import batchnorm

SPECIAL = st.sampled_from([0.0, -1.0, 1.0, 1e-8, -1e-8, np.nan, np.inf, -np.inf, 3.5, 1e30])


def bn_chain(params: list[dict], epsilons: list[float]) -> onnx.ModelProto:
    nodes, inits, x = [], [], "x"
    for i, (p, eps) in enumerate(zip(params, epsilons)):
        for key, values in p.items():
            inits.append(numpy_helper.from_array(np.asarray(values, np.float32), f"{key}{i}"))
        nodes.append(helper.make_node("BatchNormalization", [x] + [f"{k}{i}" for k in ("scale", "bias", "mean", "var")],
                                      [f"y{i}"], name=f"bn{i}", epsilon=eps))
        x = f"y{i}"
    channels = len(params[0]["scale"])
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, channels])],
                              [helper.make_tensor_value_info(x, TensorProto.FLOAT, [1, channels])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 15)])


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_facts_match_per_bn_checks(data):
    channels = data.draw(st.integers(1, 4))
    count = data.draw(st.integers(1, 5))
    vector = st.lists(SPECIAL | st.floats(-5, 5), min_size=channels, max_size=channels)
    params = [{k: data.draw(vector) for k in ("scale", "bias", "mean", "var")} for _ in range(count)]
    epsilons = [data.draw(st.sampled_from([1e-5, 0.0, -1e-3, 1e-3])) for _ in range(count)]
    graph = build_model(bn_chain(params, epsilons), "m.onnx").main
    facts = graph_bn_facts(graph)
    assert len(facts) == count
    for node in graph.nodes_of("BatchNormalization"):
        bn = batchnorm(node)
        p = bn.params()
        fact = facts[node.index]
        assert fact.finite == all(np.isfinite(p[k]).all() for k in p)
        assert fact.var_nonnegative == (not (p["var"] < 0).any())
        assert fact.foldable_numerics == (not isinstance(inference_affine(bn), str))
        assert fact.any_scale_zero == bool((p["scale"] == 0).any())
        assert fact.channels == channels
        with np.errstate(invalid="ignore"):
            assert fact.all_scale_positive == bool(((p["scale"] > 0) & (p["var"] + bn.epsilon > 0)).all())


def test_typed_field_parameters_fall_back_to_per_bn_checks():
    model = bn_chain([{k: [1.0, 2.0] for k in ("scale", "bias", "mean", "var")}], [1e-5])
    for tensor in model.graph.initializer:
        values = numpy_helper.to_array(tensor)
        tensor.ClearField("raw_data")
        tensor.float_data.extend(values.tolist())
    assert graph_bn_facts(build_model(model, "m.onnx").main) == {}


def conv_bn(bn_channels: int, conv_channels: int, *, typed_fields: bool) -> onnx.ModelProto:
    """Conv (conv_channels outputs) -> BN (bn_channels): raw float32 parameters (vectorised facts) or
    typed float_data fields (the per-BN path)."""
    inits = [numpy_helper.from_array(np.ones((conv_channels, 2, 1, 1), np.float32), "w")]
    for key in ("scale", "bias", "mean", "var"):
        inits.append(numpy_helper.from_array(np.ones(bn_channels, np.float32), key))
    if typed_fields:
        for tensor in inits[1:]:
            values = numpy_helper.to_array(tensor)
            tensor.ClearField("raw_data")
            tensor.float_data.extend(values.tolist())
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv"),
             helper.make_node("BatchNormalization", ["c", "scale", "bias", "mean", "var"], ["y"], name="bn")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 4, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 15)])


def test_fold_target_compares_channels_on_both_paths():
    from bnlint.foldable import FoldTarget, fold_target

    for typed in (False, True):
        for bn_channels, conv_channels in ((3, 3), (4, 3)):
            graph = build_model(conv_bn(bn_channels, conv_channels, typed_fields=typed), "m.onnx").main
            assert (graph_bn_facts(graph) == {}) == typed
            target = fold_target(batchnorm(graph.nodes_of("BatchNormalization")[0]))
            if bn_channels == conv_channels:
                assert isinstance(target, FoldTarget) and target.layer.label == "conv"
            else:
                assert target.reason == "BN has 4 channels but Conv 'conv' has 3 outputs"
