"""`bnlint fix` and `bnlint verify` run onnxruntime and the ONNX checker in a child process: a memory bomb,
a model that never finishes, or a native crash ends in exit 2 with one line, and nothing is written."""

from __future__ import annotations

import ctypes
import multiprocessing
import os
import signal
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import bnlint.isolation as isolation
import bnlint.verify as verify
from bnlint.verify import MEMORY_FACTOR, MEMORY_FLOOR, VerifyOptions, memory_cap


def conv_bn_plus(extra_nodes, extra_outputs, extra_inits=()) -> onnx.ModelProto:
    """x -> Conv -> BN -> y (one fold for `fix` to verify) beside `extra_nodes`, which read x."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((2, 2, 1, 1)).astype(np.float32), "w")]
    inits += [numpy_helper.from_array((rng.random(2) + 0.5).astype(np.float32), name) for name in "sbmv"]
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv"),
             helper.make_node("BatchNormalization", ["c", "s", "b", "m", "v"], ["y"], name="bn"), *extra_nodes]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 4, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 4, 4]), *extra_outputs],
                              [*inits, *extra_inits])
    return helper.make_model(graph, ir_version=10, opset_imports=[helper.make_opsetid("", 17)])


def memory_bomb() -> onnx.ModelProto:
    """A 4 kB model whose Expand allocates 2 GiB when run (survivable if a cap were not applied)."""
    shape = numpy_helper.from_array(np.array([1 << 14, 1 << 15], np.int64), "shape")
    nodes = [helper.make_node("ReduceMax", ["x"], ["one"], keepdims=0, name="max"),
             helper.make_node("Expand", ["one", "shape"], ["big"], name="bomb"),
             helper.make_node("ReduceSum", ["big"], ["z"], keepdims=0, name="sum")]
    return conv_bn_plus(nodes, [helper.make_tensor_value_info("z", TensorProto.FLOAT, [])], [shape])


def endless_loop() -> onnx.ModelProto:
    """A valid model whose Loop runs 2**40 times: onnxruntime never finishes it."""
    body = helper.make_graph(
        [helper.make_node("Identity", ["cond_in"], ["cond_out"]), helper.make_node("Identity", ["acc_in"], ["acc_out"])],
        "body",
        [helper.make_tensor_value_info("i", TensorProto.INT64, []),
         helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
         helper.make_tensor_value_info("acc_in", TensorProto.FLOAT, [1, 2, 4, 4])],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info("acc_out", TensorProto.FLOAT, [1, 2, 4, 4])])
    trips = numpy_helper.from_array(np.array(1 << 40, np.int64), "trips")
    loop = helper.make_node("Loop", ["trips", "", "x"], ["z"], body=body, name="spin")
    return conv_bn_plus([loop], [helper.make_tensor_value_info("z", TensorProto.FLOAT, [1, 2, 4, 4])], [trips])


def state(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.iterdir()}


def one_error_line(result) -> str:
    assert result.stdout == ""
    assert result.stderr.startswith("bnlint: error: ") and result.stderr.count("\n") == 1, result.stderr
    assert "Traceback" not in result.stderr
    return result.stderr


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path


def use_fork(monkeypatch):
    """Fork the isolated children (pytest has onnxruntime loaded, so bnlint would start them from its fork
    server), so that this test's monkeypatches reach them."""
    monkeypatch.setattr(isolation, "_context", lambda: multiprocessing.get_context("fork"))


def test_memory_bomb_in_fix_verification_exits_2_and_writes_nothing(in_tmp, run_cli):
    onnx.save(memory_bomb(), "bomb.onnx")
    before = state(in_tmp)
    result = run_cli("fix", "bomb.onnx", "--verify-memory", "512MiB")
    assert result.exit_code == 2
    line = one_error_line(result)
    assert "bomb.onnx: verifying the rewrite: ran out of memory (cap 512 MiB; raise it with --verify-memory)" in line
    assert line.rstrip().endswith("nothing was written")
    assert state(in_tmp) == before


def test_memory_bomb_in_verify_exits_2(in_tmp, run_cli):
    onnx.save(memory_bomb(), "bomb.onnx")
    result = run_cli("verify", "bomb.onnx", "bomb.onnx", "--verify-memory", "256MiB")
    assert result.exit_code == 2
    assert "bomb.onnx: verification against bomb.onnx: ran out of memory (cap 256 MiB" in one_error_line(result)


def test_endless_model_hits_the_timeout(in_tmp, run_cli):
    onnx.save(endless_loop(), "spin.onnx")
    before = state(in_tmp)
    started = time.monotonic()
    result = run_cli("fix", "spin.onnx", "-o", "out.onnx", "--verify-timeout", "1")
    assert result.exit_code == 2
    line = one_error_line(result)
    assert "spin.onnx: verifying the rewrite: timed out after 1 s (stopped; raise it with --verify-timeout)" in line
    assert state(in_tmp) == before
    assert time.monotonic() - started < 60
    assert run_cli("verify", "spin.onnx", "spin.onnx", "--verify-timeout", "0.5").exit_code == 2


def _slow_compare(*args, **kwargs):
    time.sleep(3600)


def test_monkeypatched_slow_verification_is_stopped(in_tmp, run_cli, monkeypatch):
    onnx.save(conv_bn_plus([], []), "m.onnx")
    use_fork(monkeypatch)
    monkeypatch.setattr(verify, "compare_models", _slow_compare)
    before = state(in_tmp)
    result = run_cli("fix", "m.onnx", "--verify-timeout", "0.5")
    assert result.exit_code == 2 and "timed out after 0.5 s" in one_error_line(result)
    assert state(in_tmp) == before


def _segfault(*args, **kwargs):
    ctypes.string_at(0)


def _abort(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGABRT)


@pytest.mark.parametrize("target, replacement, signal_name", [
    ("onnx.checker.check_model", _segfault, "SIGSEGV"),  # the check of the written model
    ("bnlint.verify.compare_models", _segfault, "SIGSEGV"),  # the onnxruntime comparison
    ("bnlint.verify.compare_models", _abort, "SIGABRT"),  # a C++ abort (e.g. an uncaught bad_alloc)
])
def test_a_native_crash_in_isolated_work_is_exit_2(in_tmp, run_cli, monkeypatch, target, replacement, signal_name):
    onnx.save(conv_bn_plus([], []), "m.onnx")
    use_fork(monkeypatch)
    monkeypatch.setattr(target, replacement)
    before = state(in_tmp)
    result = run_cli("fix", "m.onnx", "-o", "out.onnx")
    assert result.exit_code == 2
    assert f"crashed with {signal_name}" in one_error_line(result)
    assert state(in_tmp) == before


def test_the_checker_crash_names_the_output(in_tmp, run_cli, monkeypatch):
    onnx.save(conv_bn_plus([], []), "m.onnx")
    use_fork(monkeypatch)
    monkeypatch.setattr("onnx.checker.check_model", _segfault)
    line = one_error_line(run_cli("fix", "m.onnx", "-o", "out.onnx", "--no-verify"))
    assert "out.onnx: cannot write the model: the ONNX checker: crashed with SIGSEGV in an isolated process" in line


def test_verification_runs_in_another_process(in_tmp, run_cli, monkeypatch):
    """Not a stub: the comparison really leaves this process (its pid differs) and still passes."""
    onnx.save(conv_bn_plus([], []), "m.onnx")
    use_fork(monkeypatch)
    original = verify.compare_models

    def recording(*args, **kwargs):
        Path(f"pid-{os.getpid()}").write_text("")
        return original(*args, **kwargs)

    monkeypatch.setattr(verify, "compare_models", recording)
    result = run_cli("fix", "m.onnx", "-q")
    assert result.exit_code == 0, result.stderr
    seen = [p.name for p in in_tmp.glob("pid-*")]
    assert len(seen) == 1 and seen[0] != f"pid-{os.getpid()}"


def test_default_memory_cap_grows_with_the_models():
    assert memory_cap(VerifyOptions(), 0) == MEMORY_FLOOR
    assert memory_cap(VerifyOptions(), 100 << 20) == MEMORY_FLOOR + MEMORY_FACTOR * (100 << 20)
    assert memory_cap(VerifyOptions(memory=1 << 30), 100 << 20) == 1 << 30
    assert memory_cap(VerifyOptions(memory=0), 100 << 20) is None


@pytest.mark.parametrize("args, message", [
    (("--verify-memory", "lots"), "--verify-memory: 'lots' is not a size"),
    (("--verify-timeout", "-1"), "--verify-timeout"),
])
def test_bad_limits_are_usage_errors(in_tmp, run_cli, args, message):
    onnx.save(conv_bn_plus([], []), "m.onnx")
    result = run_cli("fix", "m.onnx", *args)
    assert result.exit_code == 2 and message in result.stderr
    assert sorted(p.name for p in in_tmp.iterdir()) == ["m.onnx"]


def test_no_limits_still_verify(in_tmp, run_cli):
    onnx.save(conv_bn_plus([], []), "m.onnx")
    result = run_cli("fix", "m.onnx", "--verify-memory", "0", "--verify-timeout", "0", "--format", "json")
    assert result.exit_code == 0, result.stderr
    assert '"verified": true' in result.stdout
