"""The verification child started before the rewrite exists (start_verification), the model interface the
CLI hands it instead of a second parse, the first session freed after its runs, and huge-page children for
big models: each gives the verdicts compare_models gives, and nothing is left running."""

from __future__ import annotations

import multiprocessing
import os

import numpy as np
import onnx
import pytest

import bnlint.isolation as isolation
import bnlint.verify as verify
from bnlint.onnx_loader import load_onnx
from bnlint.reference64 import refusal
from bnlint.verify import (AGREEMENT_MODE, Checkpoint, ModelInterface, VerifyError, VerifyOptions, compare_models,
                           feedable_inputs, make_input_sets, model_footprint, start_verification)
from test_verify_agreement import U32, channel_scaler, save
from test_verify_tolerance import conv_bn, save_pair, shift_bias


def _start(path: str, options: VerifyOptions | None = None, *, with_model: bool = True, footprint: int = 0):
    model = load_onnx(path)
    return start_verification(path, options or VerifyOptions(), ModelInterface.of(model),
                              model=model if with_model else None, footprint=footprint, label="test")


def test_the_interface_holds_what_a_loaded_model_gives():
    model = conv_bn(scale=[1, 2], bias=[0.1, 0.2], mean=[0.0, 0.1], var=[1, 2])
    interface = ModelInterface.of(model)
    assert [v.name for v in interface.inputs] == [v.name for v in feedable_inputs(model)] == ["x"]
    assert interface.output_names == ["y"]
    assert interface.tensor_bytes == model_footprint(model) > 0
    assert interface.no_reference is None and interface.no_reference == refusal(model)
    options = VerifyOptions()
    for mine, theirs in zip(make_input_sets(interface, options, "m"), make_input_sets(model, options, "m")):
        np.testing.assert_array_equal(mine["x"], theirs["x"])
    model.graph.input[0].name = "renamed"  # the CLI rewrites the proto the interface was taken from
    assert interface.inputs[0].name == "x"


def test_the_census_is_skipped_for_the_second_model():
    interface = ModelInterface.of(conv_bn(scale=[1], bias=[0], mean=[0], var=[1]), census=False)
    assert interface.tensor_bytes is None and interface.no_reference is None


def test_the_census_refuses_a_reference_like_refusal(monkeypatch):
    monkeypatch.setattr("bnlint.reference64.MAX_REFERENCE_BYTES", 0)
    model = conv_bn(scale=[1, 2], bias=[0.1, 0.2], mean=[0.0, 0.1], var=[1, 2])
    assert ModelInterface.of(model).no_reference == refusal(model) is not None


def test_gather_bounds_come_from_the_table_initializer():
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("Gather", ["table", "i"], ["y"], axis=0)], "g",
        [onnx.helper.make_tensor_value_info("i", onnx.TensorProto.INT64, [5])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [5, 2])],
        [onnx.numpy_helper.from_array(np.zeros((7, 2), np.float32), "table")])
    interface = ModelInterface.of(onnx.helper.make_model(graph))
    assert interface.index_bounds == {"i": 7}
    feeds = make_input_sets(interface, VerifyOptions(runs=5), "m")
    assert all(0 <= feed["i"].min() and feed["i"].max() < 7 for feed in feeds)


@pytest.mark.parametrize("with_model", [True, False])
def test_a_started_verification_gives_the_verdict_of_compare_models(tmp_path, with_model):
    a, b = save_pair(tmp_path, conv_bn(scale=[1, 2e-4, 3], bias=[0.1, 0.2, 0.3], mean=[0.0, 0.1, 1.0],
                                       var=[1, 2, 1e-3]))
    expected = compare_models(a, b, VerifyOptions())
    result = _start(a, with_model=with_model).finish(b, ModelInterface.of(load_onnx(b), census=False))
    assert result.ok == expected.ok is True
    assert result.mode == expected.mode and result.input_sets == expected.input_sets
    for got, want in zip(result.outputs, expected.outputs):
        assert (got.name, got.err_first, got.err_second, got.limit) == (want.name, want.err_first, want.err_second,
                                                                         want.limit)


def test_a_started_verification_catches_a_wrong_fold_and_names_it(tmp_path):
    model = conv_bn(scale=[1, 2, 0.5], bias=[0.1, 0.2, 0.0], mean=[0.0, 0.1, 0.0], var=[1, 2, 1])
    a, b = save_pair(tmp_path, model, corrupt=shift_bias(1, 0.05))
    result = _start(a).finish(b, None, [Checkpoint("BN004 fold", "y", "y")])  # None: the child loads b
    assert not result.ok and result.mode.startswith("float64 reference: err(new)")
    assert result.divergence == "BN004 fold"


def test_a_started_verification_accepts_agreement_without_the_reference(tmp_path):
    a = save(tmp_path, "a.onnx", channel_scaler([1.0, 1.0, 1.0]))
    b = save(tmp_path, "b.onnx", channel_scaler([1.0, 1.0 + 2 * U32, 1.0]))
    result = _start(a).finish(b)
    assert result.ok and result.mode == AGREEMENT_MODE


def test_an_interface_mismatch_is_reported_by_the_started_child(tmp_path):
    a = save(tmp_path, "a.onnx", channel_scaler([1.0, 1.0, 1.0]))
    b = save(tmp_path, "b.onnx", channel_scaler([1.0, 1.0], channels=2))
    with pytest.raises(VerifyError, match="inputs differ"):
        _start(a).finish(b)


def test_a_cancelled_verification_leaves_no_child(tmp_path):
    a = save(tmp_path, "a.onnx", channel_scaler([1.0, 1.0, 1.0]))
    pending = _start(a)
    pending.cancel()
    assert not pending.isolated.child.is_alive()
    assert multiprocessing.active_children() == []


def test_the_first_session_is_reopened_for_more_input_sets(tmp_path):
    a = save(tmp_path, "a.onnx", channel_scaler([1.0, 2.0, 3.0]))
    model = load_onnx(a)
    prepared = verify._Prepared(a, ModelInterface.of(model), VerifyOptions(), model)
    try:
        assert isinstance(prepared.session, verify._Reopened) and prepared.session.session is None
        feed = make_input_sets(model, VerifyOptions(seed=9), a)[0]
        (y,) = prepared.session.run(["y"], feed)
        np.testing.assert_array_equal(y, feed["x"] * np.asarray([1, 2, 3], np.float32).reshape(3, 1, 1))
        assert [o.name for o in prepared.session.get_outputs()] == ["y"]
    finally:
        prepared.close()


def _tunables() -> str | None:
    return os.environ.get("GLIBC_TUNABLES")


@pytest.mark.skipif(not isolation.huge_pages_available(), reason="no transparent huge pages here")
def test_a_huge_page_task_runs_in_a_fresh_interpreter_with_the_tunable():
    before = os.environ.get("GLIBC_TUNABLES")
    assert not isolation.forks(huge_pages=True)
    seen = isolation.start_isolated(_tunables, huge_pages=True, timeout=120).result()
    assert isolation.HUGE_PAGE_TUNABLE in seen.split(":")
    assert os.environ.get("GLIBC_TUNABLES") == before  # this process's environment is restored


@pytest.mark.skipif(not isolation.huge_pages_available(), reason="no transparent huge pages here")
def test_a_big_model_verifies_in_a_huge_page_child(tmp_path, monkeypatch):
    monkeypatch.setattr(verify, "HUGE_PAGES_FROM", 0)
    a, b = save_pair(tmp_path, conv_bn(scale=[1, 2], bias=[0.1, 0.2], mean=[0.0, 0.1], var=[1, 2]))
    assert _start(a).finish(b).ok


def test_fix_with_nothing_to_change_in_place_stops_the_early_child(in_tmp, run_cli):
    onnx.save(channel_scaler([1.0, 1.0, 1.0]), "m.onnx")
    before = open("m.onnx", "rb").read()
    result = run_cli("fix", "m.onnx", "--in-place")
    assert result.exit_code == 0, result.stderr
    assert open("m.onnx", "rb").read() == before
    assert multiprocessing.active_children() == []


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _stuck(*args, **kwargs):
    import time

    time.sleep(3600)


def test_a_child_stuck_before_the_rewrite_exists_times_out(tmp_path, monkeypatch):
    import time

    from bnlint.isolation import IsolationError

    monkeypatch.setattr(isolation, "_context", lambda: multiprocessing.get_context("fork"))
    monkeypatch.setattr(verify, "make_input_sets", _stuck)  # the first half never ends
    a, b = save_pair(tmp_path, conv_bn(scale=[1, 2], bias=[0.1, 0.2], mean=[0.0, 0.1], var=[1, 2]))
    pending = _start(a, VerifyOptions(timeout=1.0))
    many = [Checkpoint("x" * 200, "y", "y")] * 5000  # more than a pipe holds: a blind send would block
    started = time.monotonic()
    with pytest.raises(IsolationError, match="timed out after 1 s"):
        pending.finish(b, None, many)
    assert time.monotonic() - started < 30
    assert not pending.isolated.child.is_alive()


def _conv_chain(blocks: int, rng_seed: int = 0) -> onnx.ModelProto:
    """Conv + BN + Relu blocks, with the output of block 1 exposed as a second graph output."""
    rng = np.random.default_rng(rng_seed)
    nodes, inits, x = [], [], "x"
    for k in range(blocks):
        inits.append(onnx.numpy_helper.from_array(rng.standard_normal((3, 3, 3, 3)).astype(np.float32), f"w{k}"))
        for name, values in (("s", rng.uniform(0.5, 2, 3)), ("b", rng.standard_normal(3)),
                             ("m", rng.standard_normal(3)), ("v", rng.uniform(0.5, 2, 3))):
            inits.append(onnx.numpy_helper.from_array(values.astype(np.float32), f"{name}{k}"))
        nodes += [onnx.helper.make_node("Conv", [x, f"w{k}"], [f"c{k}"], pads=[1, 1, 1, 1]),
                  onnx.helper.make_node("BatchNormalization", [f"c{k}", f"s{k}", f"b{k}", f"m{k}", f"v{k}"], [f"n{k}"]),
                  onnx.helper.make_node("Relu", [f"n{k}"], [f"r{k}"])]
        x = f"r{k}"
    graph = onnx.helper.make_graph(nodes, "chain", [onnx.helper.make_tensor_value_info("x", 1, [1, 3, 5, 5])],
                                   [onnx.helper.make_tensor_value_info(x, 1, [1, 3, 5, 5]),
                                    onnx.helper.make_tensor_value_info("r1", 1, [1, 3, 5, 5])], inits)
    return onnx.helper.make_model(graph, ir_version=8, opset_imports=[onnx.helper.make_opsetid("", 17)])


def test_a_deep_copy_in_segments_computes_exactly_what_one_session_computes():
    from bnlint.reference64 import float64_copy, segments

    model = _conv_chain(6)
    copy = float64_copy(model, "chain.onnx")
    pieces = segments(copy, max_nodes=5)
    assert pieces is not None and len(pieces) > 2
    assert sum(len(piece.graph.node) for piece in pieces) == len(copy.graph.node)
    # cut only between the original model's values (a lowered Conv's added values stay in one piece), whose
    # types the copy keeps from its one shape inference
    crossing = {value.name for piece in pieces for value in (*piece.graph.input, *piece.graph.output)}
    assert crossing and not any(name.startswith("ref64/") for name in crossing)
    assert all(len(piece.graph.node) >= 5 for piece in pieces[:-1])
    whole, split = verify.session(copy), verify._SegmentedSession([verify.session(p) for p in pieces])
    names = ["r5", "r1"]  # r1 comes out of an early segment
    for feed in make_input_sets(model, VerifyOptions(), "chain.onnx"):
        wide = verify._widen_feed(feed)
        for got, want in zip(split.run(names, wide), whole.run(names, wide)):
            assert got.dtype == np.float64
            np.testing.assert_array_equal(got, want)


def test_small_copies_and_copies_with_subgraphs_stay_whole(monkeypatch):
    from bnlint.reference64 import float64_copy, segments

    copy = float64_copy(_conv_chain(2), "chain.onnx")
    assert segments(copy) is None  # under SEGMENT_NODES
    branch = onnx.helper.make_graph([onnx.helper.make_node("Identity", ["r1"], ["out"])], "then", [],
                                    [onnx.helper.make_tensor_value_info("out", onnx.TensorProto.DOUBLE, None)])
    copy.graph.node.append(onnx.helper.make_node("If", ["flag"], ["chosen"], then_branch=branch, else_branch=branch))
    assert segments(copy, max_nodes=2) is None
    monkeypatch.setattr("bnlint.reference64.SEGMENT_NODES", 2)
    assert isinstance(verify._copy_session(float64_copy(_conv_chain(2), "chain.onnx")), verify._SegmentedSession)


def test_segments_of_a_float64_copy_need_no_second_shape_inference(monkeypatch):
    """float64_copy keeps the inferred types of the original values, which are all segments() needs;
    a copy that lost them is inferred again."""
    from bnlint import reference64
    from bnlint.reference64 import float64_copy, segments

    copy = float64_copy(_conv_chain(6), "chain.onnx")
    calls = []
    real = reference64._infer
    monkeypatch.setattr(reference64, "_infer", lambda model: calls.append(1) or real(model))
    assert segments(copy, max_nodes=5) is not None and calls == []
    del copy.graph.value_info[:]
    assert segments(copy, max_nodes=5) is not None and calls == [1]
