"""The verification rule: valid folds pass and wrong ones fail even where a fixed atol gets it wrong
(huge-scale and tiny-scale channels); fixed and fallback tolerances; input generation."""

from __future__ import annotations

import numpy as np
import onnx
import onnx.parser
import pytest
from onnx import helper, numpy_helper

import bnlint.reference64
import bnlint.verify
from bnlint.fix import fix_model
from bnlint.verify import Comparator, VerifyError, VerifyOptions, compare_models, make_input_sets


def conv_bn(scale, bias, mean, var, epsilon=1e-5, seed=0) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    channels = len(scale)
    tensors = {"w": rng.standard_normal((channels, 3, 3, 3)), "s": scale, "bb": bias, "m": mean, "v": var}
    initializers = [numpy_helper.from_array(np.asarray(v, np.float32), k) for k, v in tensors.items()]
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("BatchNormalization", ["c", "s", "bb", "m", "v"], ["y"], epsilon=epsilon)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2, 3, 6, 6])],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [2, channels, 6, 6])],
                              initializers)
    return helper.make_model(graph, ir_version=8, opset_imports=[helper.make_opsetid("", 17)])


def save_pair(tmp_path, model, corrupt=None):
    original = tmp_path / "a.onnx"
    onnx.save(model, original)
    rewritten = onnx.ModelProto()
    rewritten.CopyFrom(model)
    fix_model(rewritten, str(original), ["BN004"])
    if corrupt is not None:
        corrupt(rewritten)
    onnx.save(rewritten, tmp_path / "b.onnx")
    return str(original), str(tmp_path / "b.onnx")


def shift_bias(channel: int, amount: float):
    def corrupt(model):
        tensor = next(t for t in model.graph.initializer if t.name.endswith("_bias_bnfold"))
        values = numpy_helper.to_array(tensor).copy()
        values[channel] += amount
        tensor.CopyFrom(numpy_helper.from_array(values, tensor.name))
    return corrupt


def test_valid_fold_of_a_huge_scale_channel_passes_where_a_fixed_atol_fails(tmp_path):
    # channel 0: var = eps = 1e-10, so s ~ 7e4 and BN's shift cancels most of each value
    model = conv_bn(scale=[1, 1, 1], bias=[0, 0.5, -0.5], mean=[3.0, 0.1, -0.2], var=[1e-10, 1, 2], epsilon=1e-10)
    a, b = save_pair(tmp_path, model)
    result = compare_models(a, b, VerifyOptions())
    assert result.ok, result.outputs
    assert result.mode.startswith("float64 reference")
    fixed = compare_models(a, b, VerifyOptions(atol=1e-4))  # an absolute tolerance alone
    assert not fixed.ok and fixed.outputs[0].violations > 0
    assert fixed.outputs[0].max_abs > 1e-2


def test_wrong_fold_of_a_tiny_scale_channel_fails_where_a_fixed_atol_passes(tmp_path):
    # channel 2 has gamma 1e-4: a bias error of 10% of that channel's values is below any usual atol
    model = conv_bn(scale=[1, 2, 1e-4], bias=[0.1, 0.2, 0.0], mean=[0.0, 0.1, 0.0], var=[1, 2, 1])
    a, b = save_pair(tmp_path, model, corrupt=shift_bias(2, 5e-5))
    result = compare_models(a, b, VerifyOptions())
    assert not result.ok
    check = result.outputs[0]
    assert check.err_second > 100 * check.limit
    assert "exceeds 8 x the original's" in check.problem
    assert compare_models(a, b, VerifyOptions(rtol=1e-4, atol=1e-4)).ok  # what a fixed atol would accept


def test_valid_folds_pass_over_many_seeds(tmp_path):
    for seed in range(6):
        rng = np.random.default_rng(100 + seed)
        channels = 5
        model = conv_bn(scale=rng.uniform(-2, 2, channels), bias=rng.standard_normal(channels),
                        mean=rng.standard_normal(channels) * 3, var=10.0 ** rng.uniform(-6, 2, channels),
                        epsilon=1e-6, seed=seed)
        folder = tmp_path / str(seed)
        folder.mkdir()
        a, b = save_pair(folder, model)
        result = compare_models(a, b, VerifyOptions(seed=seed))
        assert result.ok, (seed, result.outputs)


def test_fallback_without_reference_is_channel_scaled_and_says_so(tmp_path, monkeypatch):
    monkeypatch.setattr(bnlint.reference64, "MAX_REFERENCE_BYTES", 0)
    model = conv_bn(scale=[1, 2, 1e-4], bias=[0.1, 0.2, 0.0], mean=[0.0, 0.1, 0.0], var=[1, 2, 1])
    a, b = save_pair(tmp_path, model)
    good = compare_models(a, b, VerifyOptions())
    assert good.ok
    assert good.mode.startswith("fixed tolerance (no float64 reference)")
    assert any("too large for a float64 copy" in note for note in good.notes)
    folder = tmp_path / "bad"
    folder.mkdir()
    a, b = save_pair(folder, model, corrupt=shift_bias(2, 5e-5))
    assert not compare_models(a, b, VerifyOptions()).ok


def test_a_reference_the_original_disagrees_with_is_not_trusted(tmp_path, monkeypatch):
    real_copy = bnlint.reference64.float64_copy

    def broken_copy(model, path, **kwargs):
        copy = real_copy(model, path, **kwargs)
        for tensor in copy.graph.initializer:
            if tensor.name.startswith(("ref64/tap", "ref64/weight")):  # a lowered Conv weight
                values = numpy_helper.to_array(tensor) * 1.5
                tensor.CopyFrom(numpy_helper.from_array(values, tensor.name))
        return copy

    monkeypatch.setattr(bnlint.reference64, "float64_copy", broken_copy)
    monkeypatch.setattr(bnlint.verify, "AGREEMENT_ULPS", 0.0)  # no fast agreement: the reference decides
    model = conv_bn(scale=[1, 2], bias=[0.1, 0.2], mean=[0.0, 0.1], var=[1, 2])
    a, b = save_pair(tmp_path, model)
    result = compare_models(a, b, VerifyOptions())
    assert result.ok
    assert result.mode.startswith("fixed tolerance (no float64 reference)")
    assert any("float64 reference disagrees with the original" in note for note in result.notes)


def test_float16_models_verify_against_the_reference(tmp_path):
    model = conv_bn(scale=[1, 2], bias=[0.1, 0.2], mean=[0.0, 0.1], var=[1, 2])
    half = onnx.ModelProto()
    half.CopyFrom(model)
    for tensor in half.graph.initializer:
        tensor.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(tensor).astype(np.float16), tensor.name))
    for value in (*half.graph.input, *half.graph.output):
        value.type.tensor_type.elem_type = onnx.TensorProto.FLOAT16
    a, b = save_pair(tmp_path, half)
    result = compare_models(a, b, VerifyOptions())
    assert result.ok and result.outputs[0].dtype == "float16"
    assert result.mode.startswith("float64 reference")


@pytest.mark.parametrize("first, second, problem", [
    (np.array([1.0, np.nan], np.float32), np.array([1.0, 2.0], np.float32), "NaN pattern differs at 1 position(s)"),
    (np.array([1.0, np.inf], np.float32), np.array([1.0, -np.inf], np.float32), "+Inf pattern differs"),
    (np.zeros((2, 3), np.float32), np.zeros((3, 2), np.float32), "shape [2, 3] vs [3, 2]"),
    (np.zeros(2, np.float32), np.zeros(2, np.float64), "dtype float32 vs float64"),
    (np.array([1, 2], np.int64), np.array([1, 3], np.int64), "1 value(s) differ"),
])
def test_comparator_problems(first, second, problem):
    check = Comparator(VerifyOptions(), use_reference=False).check("y", [first], [second])
    assert not check.ok and problem in check.problem


def test_comparator_equal_integers_and_matching_nonfinite_pass():
    comparator = Comparator(VerifyOptions(), use_reference=False)
    assert comparator.check("i", [np.array([1, 2])], [np.array([1, 2])]).ok
    values = np.array([[1.0, np.nan], [np.inf, 2.0]], np.float32)
    assert comparator.check("f", [values], [values.copy()]).ok


def test_inputs_are_seeded_typed_and_in_range():
    text = '''<ir_version: 8, opset_import: ["" : 17]>
    g (int64[batch, seq] ids, bool[batch] flag, float16[batch, 4] h) => (float[batch, seq, 3] y) {
      table = Constant <value = float[7, 3] {0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20}> ()
      y = Gather (table, ids)
    }'''
    model = onnx.parser.parse_model(text)
    model.graph.initializer.append(numpy_helper.from_array(np.zeros((7, 3), np.float32), "table"))
    del model.graph.node[0]
    sets = make_input_sets(model, VerifyOptions(dims={"seq": 50}), "m.onnx")
    assert len(sets) == 3
    first = sets[0]
    assert first["ids"].shape == (2, 50) and first["ids"].dtype == np.int64
    assert first["ids"].min() >= 0 and first["ids"].max() < 7 and first["ids"].max() > 2
    assert first["flag"].dtype == bool and first["h"].dtype == np.float16
    again = make_input_sets(model, VerifyOptions(dims={"seq": 50}), "m.onnx")
    assert all(np.array_equal(first[k], again[0][k]) for k in first)
    assert not np.array_equal(sets[0]["h"], sets[1]["h"])


def test_string_inputs_need_real_data():
    model = onnx.parser.parse_model('<ir_version: 8, opset_import: ["" : 17]> g (string[2] s) => (string[2] t) '
                                    '{ t = Identity (s) }')
    with pytest.raises(VerifyError, match="string tensor; give real inputs with --inputs"):
        make_input_sets(model, VerifyOptions(), "m.onnx")


def test_runs_are_deterministic(tmp_path):
    model = conv_bn(scale=[1, 2], bias=[0.1, 0.2], mean=[0.0, 0.1], var=[1, 2])
    a, b = save_pair(tmp_path, model)
    first = compare_models(a, b, VerifyOptions()).to_dict()
    second = compare_models(a, b, VerifyOptions()).to_dict()
    assert first == second
