"""The float64 reference computed in a helper process, beside the two sessions: same outputs as one built
in the verifying process, same verdicts, and no helper left behind when the models agree without it."""

from __future__ import annotations

import importlib
import multiprocessing
import shutil

import numpy as np
import onnx

import bnlint.verify as verify
from bnlint.isolation import run_isolated
from bnlint.onnx_loader import load_onnx
from bnlint.verify import AGREEMENT_MODE, VerifyOptions, compare_isolated, make_input_sets
from test_verify_agreement import U32, channel_scaler, save
from test_verify_tolerance import conv_bn, save_pair


def _helper_outputs(path: str):
    model = load_onnx(path)
    feeds = make_input_sets(model, VerifyOptions(), path)
    names = [o.name for o in model.graph.output]
    helper = verify._start_reference(model, path, feeds, names)
    assert helper is not None  # a fresh isolated child has no onnxruntime loaded: forking is safe
    outputs, notes = helper.result()
    here = verify._reference_session(model, path, [], checked=True)
    expected = [dict(zip(names, here.run(names, verify._widen_feed(feed)))) for feed in feeds]
    return outputs, expected, notes


def test_the_helper_computes_the_same_reference_outputs(tmp_path):
    a, _b = save_pair(tmp_path, conv_bn(scale=[1, 2], bias=[0.1, 0.2], mean=[0.0, 0.1], var=[1, 2]))
    outputs, expected, notes = run_isolated(_helper_outputs, a)
    assert notes == [] and len(outputs) == len(expected) == 3
    for got, want in zip(outputs, expected):
        assert got.keys() == want.keys()
        for name in got:
            assert got[name].dtype == np.float64
            np.testing.assert_array_equal(got[name], want[name])


def test_isolated_verdicts_with_the_helper(tmp_path):
    a = save(tmp_path, "a.onnx", channel_scaler([1.0, 1.0, 1.0]))
    off = save(tmp_path, "off.onnx", channel_scaler([1.0, 1.0, 1.0 + 8 * U32]))
    result = compare_isolated(a, off, VerifyOptions())
    assert not result.ok and result.mode.startswith("float64 reference: err(new)")
    assert result.outputs[0].err_first is not None and result.outputs[0].err_second > result.outputs[0].limit
    folder = tmp_path / "fold"
    folder.mkdir()
    first, second = save_pair(folder, conv_bn(scale=[1, 2e-4, 3], bias=[0.1, 0.2, 0.3], mean=[0.0, 0.1, 1.0],
                                              var=[1, 2, 1e-3]))
    assert compare_isolated(first, second, VerifyOptions()).ok


def _agree_and_count_children(a: str, b: str):
    result = verify.compare_models(a, b, VerifyOptions())
    return result.mode, len(multiprocessing.active_children())


def test_no_helper_is_left_when_the_models_agree(tmp_path):
    a, b = save_pair(tmp_path, conv_bn(scale=[1, 2], bias=[0.1, 0.2], mean=[0.0, 0.1], var=[1, 2]))
    shutil.copy(a, b)
    mode, children = run_isolated(_agree_and_count_children, a, b)
    assert mode == AGREEMENT_MODE and children == 0


def test_in_process_callers_with_onnxruntime_loaded_build_the_reference_themselves(tmp_path):
    importlib.import_module("onnxruntime")  # forking is unsafe from here on

    model = onnx.load(save(tmp_path, "a.onnx", channel_scaler([1.0, 2.0, 3.0])))
    assert verify._start_reference(model, str(tmp_path / "a.onnx"), [], ["y"]) is None
