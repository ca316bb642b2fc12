"""Safe writing (`bnlint fix`, bnlint.safe_io): whatever fails, and wherever the process dies, the input
model and its external data stay byte-identical, and a failed write leaves no file behind."""

from __future__ import annotations

import errno
import hashlib
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import REPO
from onnx import TensorProto, helper, numpy_helper

import bnlint.safe_io as safe_io
from bnlint.errors import LoadError
from bnlint.onnx_loader import load_onnx
from bnlint.tensors import external_info


def build_model(folder: Path) -> Path:
    """Conv (16x16x3x3, 9 KiB of weights) -> BN -> Relu -> Conv, every initializer in `w.bin` beside the
    model. The fix folds the BN into the first Conv (new weights) and copies the second Conv's weights."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((16, 16, 3, 3)).astype(np.float32), name)
             for name in ("w", "w2")]
    inits += [numpy_helper.from_array((rng.random(16) + 0.5).astype(np.float32), name) for name in "sbmv"]
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("BatchNormalization", ["c", "s", "b", "m", "v"], ["n"], name="bn"),
             helper.make_node("Relu", ["n"], ["r"], name="relu"),
             helper.make_node("Conv", ["r", "w2"], ["y"], name="conv2", pads=[1, 1, 1, 1])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 16, 8, 8])], inits)
    model = helper.make_model(graph, ir_version=8, opset_imports=[helper.make_opsetid("", 15)])
    path = folder / "m.onnx"
    onnx.save(model, path, save_as_external_data=True, all_tensors_to_one_file=True, location="w.bin",
              size_threshold=0)
    return path


def state(folder: Path) -> dict[str, str]:
    """Every file under `folder` (hidden ones included) with its SHA-256; symlinks by target."""
    result = {}
    for path in sorted(folder.rglob("*")):
        key = str(path.relative_to(folder))
        if path.is_symlink():
            result[key] = "link:" + os.readlink(path)
        elif path.is_file():
            result[key] = hashlib.sha256(path.read_bytes()).hexdigest()
    return result


@pytest.fixture
def model(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return build_model(tmp_path)


def test_fix_writes_a_new_data_file_and_never_touches_the_input(model, tmp_path, run_cli):
    before = state(tmp_path)
    result = run_cli("fix", "m.onnx", "-o", "out.onnx", "-q")
    assert result.exit_code == 0, result.output
    after = state(tmp_path)
    assert {k: after[k] for k in before} == before  # m.onnx and w.bin byte-identical
    written = load_onnx(tmp_path / "out.onnx")
    locations = {external_info(t)["location"] for t in written.graph.initializer if external_info(t)}
    assert locations and "w.bin" not in locations
    assert set(after) - set(before) == {"out.onnx", *locations}  # no temp file left


def test_an_existing_data_file_is_never_appended_to(model, tmp_path, run_cli):
    (tmp_path / "out.onnx.data").write_bytes(b"someone else's data")
    before = state(tmp_path)
    assert run_cli("fix", "m.onnx", "-o", "out.onnx", "-q").exit_code == 0
    after = state(tmp_path)
    assert after["out.onnx.data"] == before["out.onnx.data"]
    locations = {external_info(t)["location"] for t in load_onnx(tmp_path / "out.onnx").graph.initializer
                 if external_info(t)}
    assert "out.onnx.data" not in locations


def test_symlinked_output_is_refused(model, tmp_path, run_cli):
    (tmp_path / "target.onnx").write_bytes(b"precious")
    (tmp_path / "out.onnx").symlink_to(tmp_path / "target.onnx")
    before = state(tmp_path)
    result = run_cli("fix", "m.onnx", "-o", "out.onnx")
    assert result.exit_code == 2 and "symlink" in result.stderr
    assert state(tmp_path) == before


def test_failed_verification_writes_nothing(model, tmp_path, run_cli):
    before = state(tmp_path)
    result = run_cli("fix", "m.onnx", "-o", "out.onnx", "--rtol", "0", "--atol", "0")
    assert result.exit_code == 1 and "nothing was written" in result.output
    assert state(tmp_path) == before


def test_in_place_replaces_the_model_but_not_its_data(model, tmp_path, run_cli):
    data_before = state(tmp_path)["w.bin"]
    result = run_cli("fix", "m.onnx", "--in-place", "-q")
    assert result.exit_code == 0, result.output
    assert state(tmp_path)["w.bin"] == data_before
    replaced = load_onnx(tmp_path / "m.onnx")
    assert [n.op_type for n in replaced.graph.node] == ["Conv", "Relu", "Conv"]


def _fail_replace(*args, **kwargs):
    raise OSError(errno.EIO, "Input/output error")


def _fail_fsync(fd):
    raise OSError(errno.ENOSPC, "No space left on device")


def _fail_checker(path, **kwargs):
    raise LoadError(str(path), "the ONNX checker rejects the model: injected checker failure")


def _interrupt(*args, **kwargs):
    raise KeyboardInterrupt


def _copy_half_then_fail(source_path, source_dir, tensor, sink):
    sink.write(b"\1" * 100)
    raise OSError(errno.EIO, "Input/output error")


@pytest.mark.parametrize("target, replacement", [
    ("os.replace", _fail_replace),          # the final rename
    ("os.fsync", _fail_fsync),              # disk full while flushing the data or the model
    ("bnlint.isolation.check_model", _fail_checker),  # the (isolated) ONNX checker rejects the written model
    ("bnlint.safe_io._copy_external", _copy_half_then_fail),  # dies in the middle of the data copy
    ("bnlint.safe_io._check_written", _interrupt),  # Ctrl-C after everything was written, before the rename
])
def test_injected_failure_leaves_input_untouched_and_no_stray_files(model, tmp_path, run_cli, monkeypatch, target,
                                                                     replacement):
    before = state(tmp_path)
    monkeypatch.setattr(target, replacement)
    result = run_cli("fix", "m.onnx", "-o", "out.onnx", "-q")
    assert result.exit_code in (1, 2), result.output
    assert "Traceback" not in result.output
    assert state(tmp_path) == before


KILL_SCRIPT = """
import os, signal, sys
import bnlint.safe_io
def die(*args, **kwargs):
    os.kill(os.getpid(), signal.{signal})
bnlint.safe_io._check_written = die
sys.argv = ["bnlint", "fix", "m.onnx", "-o", "out.onnx", "-q"]
from bnlint.cli import main
main()
"""


def _run_killed(tmp_path: Path, signal_name: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", KILL_SCRIPT.format(signal=signal_name)], cwd=tmp_path,
                          capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL,
                          env={**os.environ, "PYTHONPATH": str(REPO)})


def test_killed_mid_write_input_and_data_untouched(model, tmp_path):
    """SIGKILL after the data and the temporary model were written, before the rename: nothing can clean
    up, but the input, its data and the output path are as they were."""
    before = state(tmp_path)
    run = _run_killed(tmp_path, "SIGKILL")
    assert run.returncode == -signal.SIGKILL, run.stderr
    after = state(tmp_path)
    assert {k: after.get(k) for k in before} == before
    assert "out.onnx" not in after


@pytest.mark.parametrize("signal_name", ["SIGINT", "SIGTERM"])
def test_interrupted_mid_write_cleans_up(model, tmp_path, signal_name):
    """Ctrl-C, or the SIGTERM a CI runner sends on cancel: the temporary files are removed."""
    before = state(tmp_path)
    run = _run_killed(tmp_path, signal_name)
    assert run.returncode != 0
    assert "Traceback" not in run.stderr
    assert state(tmp_path) == before


def test_pending_save_discard_removes_everything(model, tmp_path):
    proto = load_onnx(model)
    before = state(tmp_path)
    pending = safe_io.prepare_save(proto, tmp_path / "out.onnx", source_path=model, external=True)
    assert pending.temp_path.exists() and pending.data_path.exists()
    pending.discard()
    assert state(tmp_path) == before
