"""bnlint.safe_io: atomic saves, checked before the rename, external data in a new file, nothing left
behind on failure, inputs never touched."""

from __future__ import annotations

import os
import stat

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

import bnlint.safe_io as safe_io
from bnlint.onnx_loader import load_onnx
from bnlint.safe_io import WriteError, file_digest, prepare_save, save_model_atomic


def matmul_model(columns: int = 300) -> onnx.ModelProto:
    weight = numpy_helper.from_array(np.random.default_rng(0).standard_normal((4, columns)).astype(np.float32), "w")
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2, 4])],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [2, columns])], [weight])
    return helper.make_model(graph, ir_version=8, opset_imports=[helper.make_opsetid("", 17)])


def listing(folder) -> set[str]:
    return {p.name for p in folder.iterdir()}


def test_atomic_save_writes_a_checked_model_and_no_temp_files(tmp_path):
    out = tmp_path / "out.onnx"
    assert save_model_atomic(matmul_model(), out, source_path=tmp_path / "in.onnx") == out
    assert listing(tmp_path) == {"out.onnx"}
    onnx.checker.check_model(str(out))
    assert stat.S_IMODE(out.stat().st_mode) == 0o666 & ~_umask()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_replacing_a_file_keeps_its_permissions(tmp_path):
    out = tmp_path / "out.onnx"
    out.write_bytes(b"old")
    out.chmod(0o640)
    save_model_atomic(matmul_model(), out, source_path=out)
    assert stat.S_IMODE(out.stat().st_mode) == 0o640
    assert load_onnx(out).graph.node[0].op_type == "MatMul"


def test_a_rejecting_hook_leaves_nothing(tmp_path):
    seen = []
    result = save_model_atomic(matmul_model(), tmp_path / "out.onnx", source_path=tmp_path / "in.onnx",
                               external=True, before_commit=lambda temp: seen.append(temp) or False)
    assert result is None
    assert seen and seen[0].name.startswith(".out.onnx.") and seen[0].suffix == ".tmp"
    assert listing(tmp_path) == set()


def test_an_exception_before_the_rename_leaves_nothing_and_keeps_the_old_file(tmp_path):
    out = tmp_path / "out.onnx"
    out.write_bytes(b"previous")

    def explode(temp):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        save_model_atomic(matmul_model(), out, source_path=out, external=True, before_commit=explode)
    assert listing(tmp_path) == {"out.onnx"} and out.read_bytes() == b"previous"


def test_a_failed_check_removes_temp_and_data_files(tmp_path, monkeypatch):
    def broken(temp_path, model):
        raise onnx.checker.ValidationError("simulated checker failure")

    monkeypatch.setattr(safe_io, "_check_written", broken)
    with pytest.raises(WriteError, match="simulated checker failure"):
        prepare_save(matmul_model(), tmp_path / "out.onnx", source_path=tmp_path / "in.onnx", external=True)
    assert listing(tmp_path) == set()


def test_symlinks_folders_and_missing_folders_are_refused(tmp_path):
    target = tmp_path / "real.onnx"
    target.write_bytes(b"x")
    (tmp_path / "link.onnx").symlink_to(target)
    with pytest.raises(WriteError, match="symlink"):
        save_model_atomic(matmul_model(), tmp_path / "link.onnx", source_path=target)
    with pytest.raises(WriteError, match="is a directory"):
        save_model_atomic(matmul_model(), tmp_path, source_path=target)
    with pytest.raises(WriteError, match="does not exist"):
        save_model_atomic(matmul_model(), tmp_path / "nope" / "out.onnx", source_path=target)
    assert target.read_bytes() == b"x"


def test_external_data_is_copied_into_a_new_file_and_the_source_is_untouched(tmp_path):
    source_dir, out_dir = tmp_path / "in", tmp_path / "out"
    source_dir.mkdir(), out_dir.mkdir()
    source = source_dir / "model.onnx"
    onnx.save(matmul_model(), source, save_as_external_data=True, location="weights.bin", size_threshold=0)
    digests = {p.name: file_digest(p) for p in source_dir.iterdir()}
    model = load_onnx(source)
    pending = prepare_save(model, out_dir / "fixed.onnx", source_path=source)
    assert pending.data_path == out_dir / "fixed.onnx.data"
    pending.commit()
    assert {p.name: file_digest(p) for p in source_dir.iterdir()} == digests
    assert listing(out_dir) == {"fixed.onnx", "fixed.onnx.data"}
    loaded = onnx.load(out_dir / "fixed.onnx")
    np.testing.assert_array_equal(numpy_helper.to_array(loaded.graph.initializer[0]),
                                  numpy_helper.to_array(matmul_model().graph.initializer[0]))
    info = {e.key: e.value for e in onnx.load(out_dir / "fixed.onnx", load_external_data=False)
            .graph.initializer[0].external_data}
    assert info["location"] == "fixed.onnx.data" and int(info["offset"]) % 64 == 0


def test_the_data_file_name_never_reuses_an_existing_file(tmp_path):
    taken = [tmp_path / "out.onnx.data", tmp_path / "out.onnx.1.data"]
    for path in taken:
        path.write_bytes(b"not ours")
    pending = prepare_save(matmul_model(), tmp_path / "out.onnx", source_path=tmp_path / "in.onnx", external=True)
    assert pending.data_path == tmp_path / "out.onnx.2.data"
    pending.discard()
    assert listing(tmp_path) == {"out.onnx.data", "out.onnx.1.data"}
    assert all(path.read_bytes() == b"not ours" for path in taken)


def test_small_tensors_stay_inline_and_an_empty_data_file_is_not_left(tmp_path):
    pending = prepare_save(matmul_model(columns=3), tmp_path / "out.onnx", source_path=tmp_path / "in.onnx",
                           external=True)
    assert pending.data_path is None
    pending.commit()
    assert listing(tmp_path) == {"out.onnx"}


def test_models_over_the_protobuf_limit_get_external_data(tmp_path, monkeypatch):
    monkeypatch.setattr(safe_io, "PROTOBUF_LIMIT", 64 << 20 | 2000)  # pretend 2 kB above the margin is the limit
    model = matmul_model(columns=600)  # 9.6 kB of weights
    assert safe_io.needs_external_data(model)
    pending = prepare_save(model, tmp_path / "out.onnx", source_path=tmp_path / "in.onnx")
    assert pending.data_path is not None
    pending.commit()
    assert os.path.getsize(tmp_path / "out.onnx") < 2000
    assert os.path.getsize(tmp_path / "out.onnx.data") >= 4 * 600 * 4


def test_a_failed_rename_is_a_write_error_and_cleans_up(tmp_path, monkeypatch):
    pending = prepare_save(matmul_model(), tmp_path / "out.onnx", source_path=tmp_path / "in.onnx", external=True)

    def fail(*_args):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(safe_io.os, "replace", fail)
    with pytest.raises(WriteError, match="cannot replace the file: Input/output error"):
        pending.commit()
    assert listing(tmp_path) == set()


def test_sigterm_becomes_system_exit_only_while_a_save_is_pending(tmp_path):
    import signal

    before = signal.getsignal(signal.SIGTERM)
    pending = prepare_save(matmul_model(), tmp_path / "out.onnx", source_path=tmp_path / "in.onnx")
    handler = signal.getsignal(signal.SIGTERM)
    assert handler is not before
    with pytest.raises(SystemExit) as exit_info:
        handler(signal.SIGTERM, None)
    assert exit_info.value.code == 128 + signal.SIGTERM
    pending.discard()
    assert signal.getsignal(signal.SIGTERM) is before
