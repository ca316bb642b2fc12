"""The fast path of verification: models whose outputs agree within 4u of each channel's scale pass
without a float64 reference; anything farther apart is decided by the reference (or the fallback)."""

from __future__ import annotations

import shutil

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

import bnlint.reference64
import bnlint.verify
from bnlint.verify import AGREEMENT_MODE, VerifyOptions, agreement_checks, agreement_limit, compare_models
from test_verify_tolerance import conv_bn, save_pair, shift_bias

U32 = 2.0**-24


def channel_scaler(factors, channels: int = 3) -> onnx.ModelProto:
    """y = x * factors (one per channel): a pair of these differs by exactly what the factors differ."""
    graph = helper.make_graph(
        [helper.make_node("Mul", ["x", "f"], ["y"])], "g",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2, channels, 4, 4])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [2, channels, 4, 4])],
        [numpy_helper.from_array(np.asarray(factors, np.float32).reshape(channels, 1, 1), "f")])
    return helper.make_model(graph, ir_version=8, opset_imports=[helper.make_opsetid("", 17)])


def save(tmp_path, name: str, model: onnx.ModelProto) -> str:
    path = tmp_path / name
    onnx.save(model, path)
    return str(path)


@pytest.fixture
def no_reference_allowed(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the float64 reference was built")
    monkeypatch.setattr(bnlint.reference64, "float64_copy", refuse)


def test_identical_models_pass_without_a_reference(tmp_path, no_reference_allowed):
    a, b = save_pair(tmp_path, conv_bn(scale=[1, 2], bias=[0.1, 0.2], mean=[0.0, 0.1], var=[1, 2]))
    shutil.copy(a, b)
    result = compare_models(a, b, VerifyOptions())
    assert result.ok and result.mode == AGREEMENT_MODE
    assert result.mode.startswith("float64 reference not needed")
    check = result.outputs[0]
    assert check.err_first is None and check.err_second == 0.0 and check.limit == pytest.approx(4 * U32)
    assert result.to_dict()["outputs"][0]["err_rewritten"] == 0.0


def test_a_difference_within_the_tolerance_passes_without_a_reference(tmp_path, no_reference_allowed):
    a = save(tmp_path, "a.onnx", channel_scaler([1.0, 1.0, 1.0]))
    b = save(tmp_path, "b.onnx", channel_scaler([1.0, 1.0 + 2 * U32, 1.0]))  # the next float32 after 1
    result = compare_models(a, b, VerifyOptions())
    assert result.ok and result.mode == AGREEMENT_MODE
    assert 0 < result.outputs[0].err_second <= result.outputs[0].limit


@pytest.mark.parametrize("steps", [3, 4, 64, 2**13])  # 6u, 8u, 128u, 1.6e-5 x the channel's scale
def test_the_fast_path_cannot_accept_a_rewrite_off_by_more_than_the_tolerance(tmp_path, steps):
    a = save(tmp_path, "a.onnx", channel_scaler([1.0, 1.0, 1.0]))
    b = save(tmp_path, "b.onnx", channel_scaler([1.0, 1.0, 1.0 + steps * 2 * U32]))
    first, second = (bnlint.verify.session(p) for p in (a, b))
    feeds = bnlint.verify.make_input_sets(onnx.load(a), VerifyOptions(), a)
    runs = [[dict(zip(["y"], s.run(None, feed))) for feed in feeds] for s in (first, second)]
    _checks, worst = agreement_checks(["y"], *runs)
    assert worst > 1.0
    result = compare_models(a, b, VerifyOptions())
    assert result.mode != AGREEMENT_MODE  # the float64 reference decided
    assert result.mode.startswith("float64 reference: err(new) <= 8 x err(original)")
    assert any(note.startswith("the outputs differ from the original's by") for note in result.notes)
    assert not result.ok  # Mul is exact in double: err(original) is below u, so 6u and more fail


def test_a_wrong_fold_just_above_rounding_is_caught(tmp_path):
    model = conv_bn(scale=[1, 2, 0.5], bias=[0.1, 0.2, 0.0], mean=[0.0, 0.1, 0.0], var=[1, 2, 1])
    # ~1e-5 of channel 1's largest value (~160u): far above the fast path's 4u, so the reference decides
    a, b = save_pair(tmp_path, model, corrupt=shift_bias(1, 2e-4))
    result = compare_models(a, b, VerifyOptions())
    assert not result.ok
    assert result.mode.startswith("float64 reference: err(new)")


def test_whatever_the_fast_path_accepts_the_reference_accepts(tmp_path, monkeypatch):
    accepted = 0
    for seed in range(6):
        rng = np.random.default_rng(200 + seed)
        model = conv_bn(scale=rng.uniform(-2, 2, 4), bias=rng.standard_normal(4), mean=rng.standard_normal(4),
                        var=10.0 ** rng.uniform(-3, 1, 4), seed=seed)
        folder = tmp_path / str(seed)
        folder.mkdir()
        a, b = save_pair(folder, model)
        fast = compare_models(a, b, VerifyOptions(seed=seed))
        assert fast.ok
        if fast.mode != AGREEMENT_MODE:
            continue
        accepted += 1
        with monkeypatch.context() as patch:
            patch.setattr(bnlint.verify, "AGREEMENT_ULPS", 0.0)
            full = compare_models(a, b, VerifyOptions(seed=seed))
        assert full.ok and full.mode.startswith("float64 reference: err(new)"), full.outputs
        for quick, checked in zip(fast.outputs, full.outputs):
            assert checked.err_second <= checked.err_first + quick.err_second * (1 + checked.err_first) + 1e-12
    assert accepted  # a single Conv+BN fold agrees within 4u for some seeds


def test_no_fast_path_where_no_reference_can_be_made(tmp_path, monkeypatch):
    monkeypatch.setattr(bnlint.reference64, "MAX_REFERENCE_BYTES", 0)
    a, b = save_pair(tmp_path, conv_bn(scale=[1, 2], bias=[0.1, 0.2], mean=[0.0, 0.1], var=[1, 2]))
    shutil.copy(a, b)
    result = compare_models(a, b, VerifyOptions())
    assert result.ok and result.mode.startswith("fixed tolerance (no float64 reference)")
    assert any("too large for a float64 copy" in note for note in result.notes)


def test_fixed_tolerance_options_skip_the_fast_path(tmp_path, no_reference_allowed):
    a = save(tmp_path, "a.onnx", channel_scaler([1.0, 1.0, 1.0]))
    result = compare_models(a, a, VerifyOptions(rtol=1e-3))
    assert result.ok and result.mode.startswith("fixed tolerance: |new - original|")


def test_shape_and_integer_differences_are_never_agreement():
    first = [{"y": np.zeros((2, 3), np.float32), "i": np.arange(3)}]
    assert agreement_checks(["y", "i"], first, [{"y": np.zeros((2, 4), np.float32), "i": np.arange(3)}])[1] == np.inf
    assert agreement_checks(["y", "i"], first, [{"y": np.zeros((2, 3), np.float32), "i": np.arange(3) + 1}])[1] \
        == np.inf
    assert agreement_checks(["y", "i"], first, first)[1] == 0.0


def test_the_tolerance_also_implies_the_fixed_fallback():
    for dtype, (_rtol, atol) in bnlint.verify.FALLBACK_TOLERANCE.items():
        assert 0 < agreement_limit(dtype) <= atol
    assert agreement_limit("float32") == 4 * U32
    assert agreement_limit("float64") == 4 * 2.0**-53
