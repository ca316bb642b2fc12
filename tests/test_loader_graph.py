"""ONNX loading and the graph view: opsets, IR 3, Constant parameters, external data, subgraphs, functions."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from conftest import model_from_text
from onnx import TensorProto, helper, numpy_helper

import bnlint.graph
from bnlint.engine import lint_model
from bnlint.errors import LoadError
from bnlint.graph import build_model
from bnlint.onnx_loader import load_onnx
from bnlint.semantics import batchnorm, dropout

LATEST = onnx.defs.onnx_opset_version()


def conv_relu_bn(opset: int, *, training: bool = False, ir_version: int | None = None) -> onnx.ModelProto:
    """Conv -> Relu -> BN -> Dropout in the BN/Dropout form of `opset`."""
    init = [numpy_helper.from_array(np.ones((2, 2, 1, 1), np.float32), "w")]
    init += [numpy_helper.from_array(np.full(2, v, np.float32), n) for n, v in
             (("s", 1.0), ("b", 0.0), ("m", 0.0), ("v", 1.0))]
    bn_attrs = {}
    bn_outputs = ["y"]
    if opset < 7:
        bn_attrs["is_test"] = 0 if training else 1
        if training:
            bn_outputs += ["rm", "rv", "sm", "sv"]
    elif opset < 14:
        if training:
            bn_outputs += ["rm", "rv", "sm", "sv"] if opset < 9 else ["rm", "rv"]
    else:
        bn_attrs["training_mode"] = int(training)
        if training:
            bn_outputs += ["rm", "rv"]
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], name="conv"),
        helper.make_node("Relu", ["c"], ["r"], name="relu"),
        helper.make_node("BatchNormalization", ["r", "s", "b", "m", "v"], bn_outputs, name="bn", **bn_attrs),
        helper.make_node("Dropout", ["y"], ["out"], name="drop"),
    ]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 4, 4])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 2, 4, 4])], init)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    if ir_version is not None:
        model.ir_version = ir_version
    return model


@pytest.mark.parametrize("opset", range(7, LATEST + 1))
def test_every_opset_from_7(opset):
    model = conv_relu_bn(opset)
    onnx.checker.check_model(model)
    codes = {f.code for f in lint_model(build_model(model, "m.onnx"))}
    assert "BN001" in codes and "BN005" in codes and "BN006" not in codes
    trained = {f.code for f in lint_model(build_model(conv_relu_bn(opset, training=True), "m.onnx"))}
    assert "BN006" in trained


def test_opset_6_is_test_semantics():
    inference = build_model(conv_relu_bn(6), "m.onnx").main
    training = build_model(conv_relu_bn(6, training=True), "m.onnx").main
    assert not batchnorm(inference.nodes[2]).training
    assert batchnorm(training.nodes[2]).training_reason == "is_test=0"
    assert dropout(inference.nodes[3]).noop is False  # opset-6 Dropout without is_test=1 trains


def test_ir3_initializers_listed_as_inputs_are_constants():
    model = model_from_text("""
        <ir_version: 3, opset_import: ["" : 7]>
        g (float[1, 2, 4, 4] x, float[2, 2, 1, 1] w, float[2] s, float[2] b, float[2] m, float[2] v)
          => (float[1, 2, 4, 4] y)
        <float[2, 2, 1, 1] w = {1.0, 0.0, 0.0, 1.0}, float[2] s = {1.0, 1.0}, float[2] b = {0.0, 0.0},
         float[2] m = {0.0, 0.0}, float[2] v = {1.0, 1.0}>
        { [conv] c = Conv (x, w)  [bn] y = BatchNormalization (c, s, b, m, v) }""")
    graph = model.main
    assert graph.is_constant("w") and graph.is_constant("v") and not graph.is_constant("x")
    assert [f.code for f in lint_model(model)] == ["BN004"]


def test_constant_and_constant_of_shape_parameters():
    model = model_from_text("""
        <ir_version: 8, opset_import: ["" : 15]>
        g (float[1, 2, 4, 4] x) => (float[1, 2, 4, 4] y)
        <float[2, 2, 1, 1] w = {1.0, 0.0, 0.0, 1.0}, int64[1] two = {2}>
        {
          s = Constant <value_floats = [1.0, 0.0]> ()
          b = ConstantOfShape (two)
          m = Constant <value = float[2] {0.0, 0.0}> ()
          v = ConstantOfShape <value = float[1] {-1.0}> (two)
          [conv] c = Conv (x, w)
          [bn] y = BatchNormalization (c, s, b, m, v)
        }""")
    graph = model.main
    np.testing.assert_array_equal(graph.constant("s"), [1.0, 0.0])
    np.testing.assert_array_equal(graph.constant("b"), [0.0, 0.0])
    np.testing.assert_array_equal(graph.constant("v"), [-1.0, -1.0])
    messages = [f.message for f in lint_model(model) if f.code == "BN007"]
    assert any("negative in channels 0, 1" in m for m in messages)
    assert any("scale exactly 0 in channel 1" in m for m in messages)


def save_with_external_data(model: onnx.ModelProto, path) -> None:
    onnx.save(model, path, save_as_external_data=True, all_tensors_to_one_file=True, location="weights.bin",
              size_threshold=0)


def test_external_data_only_bn_parameters_are_read(tmp_path, monkeypatch):
    model = conv_relu_bn(15)
    model.graph.node[2].input[0] = "c"  # Conv -> BN so BN004 and BN007 inspect parameters
    del model.graph.node[1]
    path = tmp_path / "ext.onnx"
    save_with_external_data(model, path)
    read = []
    original = bnlint.graph.to_array
    monkeypatch.setattr(bnlint.graph, "to_array", lambda t, *a: read.append(t.name) or original(t, *a))
    loaded = load_onnx(path)
    assert loaded.graph.initializer[0].data_location == TensorProto.EXTERNAL
    findings = lint_model(build_model(loaded, str(path)))
    assert "BN004" in {f.code for f in findings}
    assert set(read) <= {"s", "b", "m", "v"} and "w" not in read


def test_load_counts_external_tensors_on_both_scan_paths(tmp_path):
    from bnlint.onnx_loader import load_onnx_counted

    model, heavy = conv_relu_bn(15), conv_relu_bn(15)  # saving with external data edits the model
    inline, external = tmp_path / "inline.onnx", tmp_path / "external.onnx"
    onnx.save(model, inline)
    save_with_external_data(model, external)
    assert load_onnx_counted(inline).external_tensors == 0
    assert load_onnx_counted(external).external_tensors == len(model.graph.initializer)
    data_bytes = sum(f.stat().st_size for f in tmp_path.iterdir() if f.suffix not in (".onnx",))
    assert load_onnx_counted(external).external_bytes == data_bytes > 0
    assert load_onnx_counted(inline).external_bytes == 0
    # a weight-heavy file (past 4 kB per node) is walked instead of scanned for `location`
    heavy.graph.initializer.append(numpy_helper.from_array(np.zeros(4096, np.float32), "unused"))
    onnx.save(heavy, inline)
    assert load_onnx_counted(inline).external_tensors == 0
    save_with_external_data(heavy, external)
    assert load_onnx_counted(external).external_tensors == len(heavy.graph.initializer)
    assert load_onnx_counted(external).external_bytes >= 4 * 4096


def test_external_data_missing_or_escaping(tmp_path):
    path = tmp_path / "ext.onnx"
    save_with_external_data(conv_relu_bn(15), path)
    (tmp_path / "weights.bin").unlink()
    with pytest.raises(LoadError, match="not found"):
        load_onnx(path)
    model = onnx.load(path, load_external_data=False)
    for tensor in model.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = "../outside.bin"
    onnx.save(model, path)
    with pytest.raises(LoadError, match="escapes the model's folder"):
        load_onnx(path)


def test_findings_inside_if_and_loop_subgraphs_name_the_graph_path():
    def body(prefix):
        return helper.make_graph(
            [helper.make_node("Relu", ["x"], [f"{prefix}_r"], name=f"{prefix}_relu"),
             helper.make_node("BatchNormalization", [f"{prefix}_r", "s", "b", "m", "v"], [f"{prefix}_y"],
                              name=f"{prefix}_bn")],
            prefix, [], [helper.make_tensor_value_info(f"{prefix}_y", TensorProto.FLOAT, None)])

    init = [numpy_helper.from_array(np.full(2, v, np.float32), n) for n, v in
            (("s", 1.0), ("b", 0.0), ("m", 0.0), ("v", 1.0))]
    graph = helper.make_graph(
        [helper.make_node("If", ["cond"], ["out"], name="branch", then_branch=body("then"),
                          else_branch=body("else"))],
        "main", [helper.make_tensor_value_info("cond", TensorProto.BOOL, []),
                 helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 4, 4])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, None)], init)
    model = build_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 15)]), "m.onnx")
    found = {(f.code, f.location.graph, f.location.node) for f in lint_model(model)}
    assert ("BN001", "main/branch.then_branch", "then_bn") in found
    assert ("BN001", "main/branch.else_branch", "else_bn") in found
    # the If node reads s/b/m/v inside its branches: it counts as their consumer
    assert model.main.consumers("s")[0].op_type == "If"


def test_findings_inside_model_local_functions():
    function = helper.make_function(
        "custom", "ReluBN", ["x", "s", "b", "m", "v"], ["y"],
        [helper.make_node("Relu", ["x"], ["r"], name="f_relu"),
         helper.make_node("BatchNormalization", ["r", "s", "b", "m", "v"], ["y"], name="f_bn")],
        [helper.make_opsetid("", 15)])
    init = [numpy_helper.from_array(np.full(2, v, np.float32), n) for n, v in
            (("s", 1.0), ("b", 0.0), ("m", 0.0), ("v", 1.0))]
    graph = helper.make_graph(
        [helper.make_node("ReluBN", ["x", "s", "b", "m", "v"], ["y"], domain="custom", name="call")], "main",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 4, 4])], init)
    proto = helper.make_model(graph, functions=[function],
                              opset_imports=[helper.make_opsetid("", 15), helper.make_opsetid("custom", 1)])
    onnx.checker.check_model(proto)
    found = [(f.code, f.location.graph, f.location.node) for f in lint_model(build_model(proto, "m.onnx"))]
    assert ("BN001", "function:custom.ReluBN", "f_bn") in found


def _bn_with_attributes(opset: int, *attributes: onnx.AttributeProto):
    node = helper.make_node("BatchNormalization", ["x", "s", "b", "m", "v"], ["y"], name="bn")
    node.attribute.extend(attributes)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2])])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    return batchnorm(build_model(proto, "m.onnx").main.nodes[0])


def _reference(name: str, kind: int) -> onnx.AttributeProto:
    attribute = onnx.AttributeProto(name=name, type=kind)
    attribute.ref_attr_name = f"outer_{name}"
    return attribute


def test_bn_attributes_read_plainly_referenced_or_mistyped():
    """The BN view reads epsilon, training_mode, is_test and spatial straight from plain attributes; a
    function's attribute reference means the default, and a wrong type is a LoadError naming the node."""
    view = _bn_with_attributes(15, helper.make_attribute("epsilon", 0.25), helper.make_attribute("training_mode", 1))
    assert (view.epsilon, view.training, view.training_reason) == (0.25, True, "training_mode=1")
    view = _bn_with_attributes(6, helper.make_attribute("is_test", 1), helper.make_attribute("spatial", 0))
    assert (view.training, view.spatial, view.epsilon) == (False, False, 1e-5)
    view = _bn_with_attributes(15, _reference("epsilon", onnx.AttributeProto.FLOAT),
                               _reference("training_mode", onnx.AttributeProto.INT))
    assert (view.epsilon, view.training) == (1e-5, False)
    with pytest.raises(LoadError, match="attribute 'training_mode' of type FLOAT, but BatchNormalization needs INT"):
        _bn_with_attributes(15, helper.make_attribute("training_mode", 1.0))
    with pytest.raises(LoadError, match="attribute 'epsilon' of type STRING"):
        _bn_with_attributes(15, helper.make_attribute("epsilon", "1e-5"))


def test_unnamed_nodes_get_stable_labels():
    model = model_from_text("""
        <ir_version: 8, opset_import: ["" : 15]>
        g (float[1, 2] x) => (float[1, 2] y) { y = Dropout (x) }""")
    assert [f.location.node for f in lint_model(model)] == ["Dropout@y"]


@pytest.mark.parametrize("content, needle", [
    (b"", "empty"),
    (b"\x80\x04\x95...", "pickle"),
    (b"PK\x03\x04rest", "zip archive"),
    (b"version https://git-lfs.github.com/spec/v1\noid sha256:abc\n", "Git LFS pointer"),
    (b"\xff\xff\xff\xff garbage", "not a valid ONNX model"),
])
def test_bad_files_raise_one_line_load_errors(tmp_path, content, needle):
    path = tmp_path / "bad.onnx"
    path.write_bytes(content)
    with pytest.raises(LoadError) as info:
        load_onnx(path)
    assert needle in str(info.value) and str(path) in str(info.value) and "\n" not in str(info.value)


def test_truncated_model_is_a_load_error(tmp_path):
    data = conv_relu_bn(15).SerializeToString()
    path = tmp_path / "cut.onnx"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(LoadError):
        load_onnx(path)


def test_known_attribute_table_matches_onnx_schemas():
    """The attribute types bnlint reads without asking onnx.defs are exactly what every covered opset's
    schema says, and each entry's opset range is exactly where the schema has the attribute."""
    from bnlint.onnx_loader import KNOWN_ATTRIBUTES

    latest = onnx.defs.onnx_opset_version()
    for (op_type, name), (first, last, kind) in KNOWN_ATTRIBUTES.items():
        for opset in range(1, latest + 1):
            try:
                schema = onnx.defs.get_schema(op_type, opset, "")
            except Exception:
                continue  # the op does not exist yet at this opset
            attribute = schema.attributes.get(name)
            covered = first <= opset <= last
            assert (attribute is not None) == covered, (op_type, name, opset)
            if covered:
                assert int(attribute.type) == kind, (op_type, name, opset)


def test_lint_target_frees_the_graph_view_by_reference_counting(monkeypatch):
    """lint_target pauses the cyclic collector while it lints and breaks the view's cycles when done: the
    graph is gone even with the collector off, and the collector's state is restored afterwards."""
    import gc
    import weakref

    from conftest import FIXTURES

    from bnlint import lint as lint_module

    graphs = []
    real_load = lint_module.load_target

    def load_and_watch(target, torch_options=None):
        model = real_load(target, torch_options)
        graphs.append(weakref.ref(model.main))
        return model

    monkeypatch.setattr(lint_module, "load_target", load_and_watch)
    options = lint_module.LintOptions.from_cli()
    result = lint_module.lint_target(str(FIXTURES / "example" / "small_cnn.onnx"), options)
    assert gc.isenabled()
    assert len(result.findings) == 8
    gc.disable()
    try:
        graphs.clear()
        result = lint_module.lint_target(str(FIXTURES / "example" / "small_cnn.onnx"), options)
        assert len(result.findings) == 8
        assert graphs and graphs[0]() is None
        assert not gc.isenabled()
    finally:
        gc.enable()


def test_shapes_are_remembered_only_by_views_that_never_change():
    """The read-only view answers a repeated shape question from memory; the fixer's LiveGraph, which
    adds and drops initializers, always looks again."""
    from conftest import FIXTURES

    from bnlint.fix.live import LiveGraph
    from bnlint.graph import Graph

    model = onnx.load(str(FIXTURES / "example" / "small_cnn.onnx"))
    graph = bnlint.graph.build_model(model, "m.onnx").main
    name = model.graph.initializer[0].name
    first = graph.shape_of(name)
    assert first == tuple(model.graph.initializer[0].dims)
    model.graph.initializer[0].dims.append(1)  # the protobuf changes under a read-only view: not looked at again
    assert graph.shape_of(name) == first
    assert Graph.memoize_shapes and not LiveGraph.memoize_shapes
