"""Every fixture in fixtures/fix: the rewrites it must get (by kind), the ops left, the reasons for what
was left alone, onnx.checker, and numerically equal outputs through onnxruntime (optimizations off)."""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper

from bnlint.fix import fix_model

FIXTURE_DIR = Path(__file__).resolve().parent.parent / "fixtures" / "fix"
sys.path.insert(0, str(FIXTURE_DIR))
from fix_fixture import all_fixtures, load_fixture  # noqa: E402

KINDS = {"remove-dropout", "remove-bias", "merge-bn", "fold", "fold-forward", "swap-maxpool"}


def ort_session(model: onnx.ModelProto):
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def random_feeds(model: onnx.ModelProto, sets: int = 3, dynamic: int = 3) -> list[dict[str, np.ndarray]]:
    initializers = {t.name for t in model.graph.initializer}
    feeds = []
    for seed in range(sets):
        rng = np.random.default_rng(seed)
        feed = {}
        for value in model.graph.input:
            if value.name in initializers:
                continue
            tensor_type = value.type.tensor_type
            shape = [d.dim_value if d.dim_value > 0 else dynamic for d in tensor_type.shape.dim]
            dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tensor_type.elem_type))
            if dtype.kind == "b":
                feed[value.name] = rng.integers(0, 2, shape).astype(bool)
            else:
                feed[value.name] = rng.standard_normal(shape).astype(dtype)
        feeds.append(feed)
    return feeds


def assert_same_outputs(original: onnx.ModelProto, rewritten: onnx.ModelProto, rtol: float | None = None) -> None:
    """Same output names, shapes, dtypes and NaN pattern; values within float rounding of the output scale."""
    first, second = ort_session(original), ort_session(rewritten)
    names = [o.name for o in original.graph.output]
    for feed in random_feeds(original):
        for name, a, b in zip(names, first.run(names, feed), second.run(names, feed)):
            assert a.shape == b.shape and a.dtype == b.dtype, name
            if a.dtype.kind != "f":
                np.testing.assert_array_equal(a, b, err_msg=name)
                continue
            tolerance = rtol or (1e-2 if a.dtype == np.float16 else 1e-4)
            finite = np.abs(a[np.isfinite(a)].astype(np.float64))
            scale = max(1.0, float(finite.max()) if finite.size else 1.0)
            np.testing.assert_allclose(b.astype(np.float64), a.astype(np.float64), rtol=tolerance,
                                       atol=tolerance * scale, equal_nan=True, err_msg=name)


def signature(model: onnx.ModelProto):
    return [(o.name, o.type.SerializeToString()) for o in model.graph.output]


@pytest.mark.parametrize("name", all_fixtures())
def test_fixture(name):
    fixture = load_fixture(name)
    original = fixture.model()
    onnx.checker.check_model(original, full_check=True)
    rewritten = onnx.ModelProto()
    rewritten.CopyFrom(original)
    outcome = fix_model(rewritten, "model.onnx", fixture.codes)

    assert set(fixture.expect) <= KINDS, "fixture names an unknown change kind"
    assert dict(Counter(change.kind for change in outcome.changes)) == fixture.expect
    if fixture.ops_after is not None:
        assert [node.op_type for node in rewritten.graph.node] == fixture.ops_after
    reasons = [kept.reason for kept in outcome.kept] + [reason for _, _, reason in outcome.bn.kept]
    for expected in fixture.kept:
        assert any(expected in reason for reason in reasons), (expected, reasons)
    onnx.checker.check_model(rewritten, full_check=True)
    assert signature(rewritten) == signature(original), "graph outputs must keep name, type and shape"
    removed = {label for change in outcome.changes for label in change.removed_nodes}
    surviving = {node.name for node in rewritten.graph.node}
    assert {n.name for n in original.graph.node if n.name and n.name not in removed} <= surviving
    if not fixture.expect:
        assert rewritten.SerializeToString() == original.SerializeToString(), "a refused fix must not touch the model"
    if fixture.run == "ort":
        assert_same_outputs(original, rewritten)


def test_every_change_kind_has_a_fixture():
    kinds = set()
    for name in all_fixtures():
        kinds |= set(load_fixture(name).expect)
    assert kinds == KINDS


def _fixed(name: str, codes=None):
    fixture = load_fixture(name)
    model = fixture.model()
    outcome = fix_model(model, "model.onnx", codes or fixture.codes)
    return fixture, model, outcome


def test_shared_weight_is_never_modified_in_place():
    fixture, model, outcome = _fixed("shared_weight")
    before = {t.name: t.raw_data for t in fixture.model().graph.initializer}
    after = {t.name: t.raw_data for t in model.graph.initializer}
    assert after["w"] == before["w"]
    conv1, conv2 = [n for n in model.graph.node if n.op_type == "Conv"]
    assert conv2.input[1] == "w" and conv1.input[1] != "w"
    assert conv1.output[0] == "y1"


def test_ir3_initializers_stay_listed_as_inputs():
    _fixture, model, outcome = _fixed("ir3_initializer_inputs")
    inputs = {v.name for v in model.graph.input}
    initializers = {t.name for t in model.graph.initializer}
    assert initializers <= inputs, "IR 3 requires every initializer to be a graph input"
    assert inputs - initializers == {"x"}
    assert {"w", "b", "s", "bb", "m", "v"}.isdisjoint(inputs)
    assert any("IR version 3" in note for note in outcome.notes)


def test_constant_node_parameters_are_folded_and_the_constants_removed():
    _fixture, model, outcome = _fixed("bn_params_constant_nodes")
    assert [n.op_type for n in model.graph.node] == ["Conv"]
    assert any("Constant/ConstantOfShape" in note for note in outcome.notes)


def test_float16_fold_reports_precision_loss_and_keeps_float16():
    _fixture, model, outcome = _fixed("fp16_conv_bn")
    fold = next(c for c in outcome.changes if c.kind == "fold")
    assert any(note.startswith("float16 rounding of folded values: max relative error") for note in fold.notes)
    assert {t.data_type for t in model.graph.initializer} == {onnx.TensorProto.FLOAT16}


def test_fold_computes_in_float64_before_rounding():
    """The folded float16 weights equal float64 math rounded once (not float16 math step by step)."""
    fixture, model, outcome = _fixed("fp16_conv_bn", ("BN004",))
    params = {t.name: numpy_helper.to_array(t).astype(np.float64) for t in fixture.model().graph.initializer}
    s = params["s"] / np.sqrt(params["v"] + 1e-5)
    expected = (params["w"] * s[:, None, None, None]).astype(np.float16)
    folded = next(t for t in model.graph.initializer if t.name.endswith("_weight_bnfold"))
    np.testing.assert_array_equal(numpy_helper.to_array(folded), expected)


def test_subgraph_fold_removes_unused_outer_initializers():
    _fixture, model, outcome = _fixed("subgraph_if")
    assert {t.name for t in model.graph.initializer} == set()
    assert all(c.graph.startswith("main/") for c in outcome.changes)


def test_dropout_graph_output_keeps_the_output_name():
    _fixture, model, _outcome = _fixed("dropout_graph_output")
    assert [o.name for o in model.graph.output] == ["y"]
    assert model.graph.node[0].output[0] == "y"


def test_bn_summary_counts_and_reasons():
    _fixture, _model, outcome = _fixed("refuse_conv_fanout")
    assert outcome.bn.total == 1 and outcome.bn.removed == 0
    ((graph, node, reason),) = outcome.bn.kept
    assert graph == "main"
    assert reason.startswith("BatchNormalization 'BatchNormalization@y' kept: Conv 'conv' output has 2 consumers")


def test_selection_limits_the_passes():
    _fixture, model, outcome = _fixed("dropout_opset7", ("BN005",))
    assert [c.kind for c in outcome.changes] == ["remove-dropout"]
    assert [n.op_type for n in model.graph.node] == ["Conv", "BatchNormalization"]
    assert "BN004 (fold) is not selected" in outcome.bn.kept[0][2]


def test_parameter_bytes_and_nodes_are_counted():
    _fixture, _model, outcome = _fixed("conv2d_bn")
    assert outcome.nodes_before - outcome.nodes_after == 1
    assert outcome.bytes_saved == 4 * 4 * 4  # BN's four vectors; the bias is replaced


@pytest.mark.parametrize("name", ["refuse_negative_epsilon", "refuse_var_eps_nonpositive", "refuse_nonfinite"])
def test_lint_never_suggests_a_fold_the_fixer_refuses(name):
    from bnlint.engine import lint_model
    from bnlint.graph import build_model

    model = build_model(load_fixture(name).model(), "model.onnx")
    assert [f for f in lint_model(model, codes=["BN004"]) if f.code == "BN004"] == []
    assert [f.code for f in lint_model(build_model(load_fixture("conv2d_nobias_bn").model(), "m.onnx"),
                                       codes=["BN004"])] == ["BN004"]
