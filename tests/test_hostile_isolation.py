"""bnlint.isolation: native crashes, runaway memory and hangs in isolated work become one-line errors."""

from __future__ import annotations

import ctypes
import os
import signal
import threading
import time

import make_corpus
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

import bnlint.isolation as isolation
from bnlint.errors import BnlintError, LoadError
from bnlint.isolation import IsolationError, check_model, infer_shapes, run_isolated


def add(a, b, *, c=0):
    return a + b + c


def segfault():
    ctypes.string_at(0)  # reads address 0: SIGSEGV in native code


def allocate(nbytes):
    return len(bytearray(nbytes))


def allocate_numpy(nbytes):
    return int(np.ones(nbytes // 8, np.float64).sum())


def sleep_forever():
    time.sleep(3600)


def raise_load_error(path):
    raise LoadError(path, "bad tensor")


def raise_value_error():
    raise ValueError("boom\nsecond line")


def pid():
    return os.getpid()


def test_result_comes_back():
    assert run_isolated(add, 1, 2, c=3) == 6
    assert run_isolated(pid) != os.getpid()
    array = run_isolated(np.arange, 5)
    np.testing.assert_array_equal(array, np.arange(5))


def test_segfault_becomes_an_error_naming_the_work():
    with pytest.raises(IsolationError, match=r"m\.onnx: checker: crashed with SIGSEGV") as info:
        run_isolated(segfault, label="m.onnx: checker")
    assert info.value.reason == "crash" and "\n" not in str(info.value)


def test_memory_cap():
    with pytest.raises(IsolationError, match="ran out of memory") as info:
        run_isolated(allocate, 4 << 30, memory_bytes=256 << 20, label="bomb.onnx")
    assert info.value.reason == "memory"
    with pytest.raises(IsolationError) as info:
        run_isolated(allocate_numpy, 4 << 30, memory_bytes=256 << 20, label="bomb.onnx")
    assert info.value.reason in ("memory", "crash")
    assert run_isolated(allocate, 64 << 20, memory_bytes=512 << 20) == 64 << 20


def test_timeout_stops_the_child():
    started = time.monotonic()
    with pytest.raises(IsolationError, match=r"slow\.onnx: timed out after 0\.5 s") as info:
        run_isolated(sleep_forever, timeout=0.5, label="slow.onnx")
    assert info.value.reason == "timeout" and time.monotonic() - started < 30


def test_errors_keep_their_message():
    with pytest.raises(LoadError, match="m.onnx: bad tensor") as info:
        run_isolated(raise_load_error, "m.onnx")
    assert info.value.path == "m.onnx" and info.value.problem == "bad tensor"
    with pytest.raises(IsolationError, match="x: failed: ValueError: boom$") as info:
        run_isolated(raise_value_error, label="x")
    assert isinstance(info.value, BnlintError)


def test_a_fresh_interpreter_is_used_when_threads_make_fork_unsafe():
    stop = threading.Event()
    worker = threading.Thread(target=stop.wait)
    worker.start()
    try:
        assert isolation._context().get_start_method() == "forkserver"
        assert run_isolated(add, 2, 3) == 5
        with pytest.raises(IsolationError, match="crashed with SIGSEGV"):
            run_isolated(segfault, label="threaded")
    finally:
        stop.set()
        worker.join()


def test_check_model_accepts_valid_and_names_rejections(tmp_path):
    good = tmp_path / "good.onnx"
    make_corpus.save(make_corpus.conv_bn_relu(), good)
    check_model(good)
    bad_model = make_corpus.conv_bn_relu()
    bad_model.graph.node[1].input[0] = "nowhere"
    bad = tmp_path / "bad.onnx"
    make_corpus.save(bad_model, bad)
    with pytest.raises(LoadError, match=r"bad\.onnx: the ONNX checker rejects the model"):
        check_model(bad)


def test_infer_shapes_isolated():
    model = make_corpus.conv_bn_relu()
    del model.graph.value_info[:]
    inferred = infer_shapes(model, "m.onnx")
    shapes = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim] for v in inferred.graph.value_info}
    assert shapes["c"] == [1, 2, 4, 4] and shapes["n"] == [1, 2, 4, 4]


def test_onnxruntime_session_on_a_memory_bomb_is_stopped(tmp_path):
    """An Expand to 2 GiB of floats, which this machine could allocate: under a 1 GiB cap it fails cleanly."""
    shape = helper.make_tensor("shape", TensorProto.INT64, [2], [1 << 14, 1 << 15])
    graph = helper.make_graph([helper.make_node("Expand", ["x", "shape"], ["y"])], "bomb",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [shape])
    path = tmp_path / "bomb.onnx"
    onnx.save(helper.make_model(graph, ir_version=10, opset_imports=[helper.make_opsetid("", 15)]), path)
    with pytest.raises(IsolationError, match=r"bomb\.onnx") as info:
        run_isolated(run_session, str(path), {"x": np.ones(1, np.float32)}, memory_bytes=1 << 30,
                     timeout=120, label=f"{path.name}: onnxruntime")
    assert info.value.reason == "memory"


def run_session(path, feed):
    import onnxruntime as ort

    return ort.InferenceSession(path, providers=["CPUExecutionProvider"]).run(None, feed)


def test_child_signal_is_not_the_parents():
    """The parent survives and can run more work after a child was killed."""
    with pytest.raises(IsolationError, match="k: crashed with SIGKILL"):
        run_isolated(_self_kill, label="k")
    assert run_isolated(add, 1, 1) == 2


def _self_kill():
    os.kill(os.getpid(), signal.SIGKILL)
