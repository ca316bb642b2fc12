"""Large folded weights stay numpy arrays until the writer streams them (bnlint.inline_writer), and
large inline tensors are written from their own buffers: the files must load as the same model."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from conftest import conv_bn_model
from onnx import TensorProto, numpy_helper

from bnlint.fix import fix_model
from bnlint.inline_writer import plan_inline
from bnlint.safe_io import prepare_save
from bnlint.tensors import to_array

CHANNELS = 128  # 128 x 128 x 3 x 3 float32 = 576 KiB; x2 below makes the Conv weight > 1 MiB


def _model(channels: int = CHANNELS) -> onnx.ModelProto:
    unused = np.random.default_rng(1).standard_normal((1 << 19,)).astype(np.float32)  # 2 MiB, unchanged by the fix
    return conv_bn_model(channels, extra={"unused_big": unused})


def _initializers(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


def test_detached_weights_are_not_in_the_protobuf_until_materialized():
    model = _model()
    outcome = fix_model(model, "m.onnx", ["BN004"], detach=True)
    assert list(outcome.detached) == ["conv_weight_bnfold"]
    stub = next(t for t in model.graph.initializer if t.name == "conv_weight_bnfold")
    assert not stub.HasField("raw_data")
    expected = outcome.detached["conv_weight_bnfold"].copy()
    outcome.materialize()
    assert np.array_equal(numpy_helper.to_array(stub), expected)
    assert outcome.detached == {}


def test_default_fix_model_returns_a_complete_model():
    model = _model()
    outcome = fix_model(model, "m.onnx", ["BN004"])
    assert outcome.detached == {}
    onnx.checker.check_model(model)


@pytest.mark.parametrize("external", [False, True])
def test_streamed_file_equals_the_materialized_model(tmp_path, external):
    reference = _model()
    fix_model(reference, "m.onnx", ["BN004"])
    model = _model()
    outcome = fix_model(model, "m.onnx", ["BN004"], detach=True)
    out = tmp_path / "out.onnx"
    pending = prepare_save(model, out, source_path=tmp_path / "m.onnx", external=external, arrays=outcome.detached)
    pending.commit()
    written = onnx.load(str(out))
    onnx.checker.check_model(str(out))
    assert [n.op_type for n in written.graph.node] == [n.op_type for n in reference.graph.node]
    got, want = _initializers(written), _initializers(reference)
    assert got.keys() == want.keys()
    for name in want:
        assert np.array_equal(got[name], want[name]), name
    assert (pending.data_path is not None) == external


def test_inline_plan_splices_every_large_tensor():
    model = _model()
    plan = plan_inline(model, {})
    assert sorted(plan.large) == [0, 1]  # the untouched Conv weight and the unused 2 MiB tensor
    data = b"".join(bytes(piece) for piece, _ in plan.pieces)
    parsed = onnx.ModelProto()
    parsed.ParseFromString(data)
    assert parsed.graph.initializer[0].name == "w"
    assert np.array_equal(_initializers(parsed)["unused_big"], _initializers(_model())["unused_big"])


def test_a_checker_rejection_writes_nothing(tmp_path):
    from bnlint.safe_io import WriteError

    model = _model()
    model.graph.node[0].input[0] = "missing"
    with pytest.raises(WriteError, match="checker"):
        prepare_save(model, tmp_path / "out.onnx", source_path=tmp_path / "m.onnx", external=False)
    assert list(tmp_path.iterdir()) == []


def test_external_tensor_read_directly_into_an_array(tmp_path):
    values = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    (tmp_path / "w.bin").write_bytes(b"\0" * 16 + values.tobytes())
    tensor = TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[2, 3, 4])
    tensor.data_location = TensorProto.EXTERNAL
    for key, value in (("location", "w.bin"), ("offset", "16"), ("length", str(values.nbytes))):
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value
    got = to_array(tensor, str(tmp_path / "m.onnx"), tmp_path)
    assert got.dtype == np.float32 and np.array_equal(got, values)


def _external_tensor(folder, values: np.ndarray, offset: int) -> TensorProto:
    (folder / "w.bin").write_bytes(b"\1" * offset + values.tobytes() + b"\2" * 8)
    tensor = TensorProto(name="w", data_type=TensorProto.FLOAT, dims=list(values.shape))
    tensor.data_location = TensorProto.EXTERNAL
    for key, value in (("location", "w.bin"), ("offset", str(offset)), ("length", str(values.nbytes))):
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value
    return tensor


@pytest.mark.parametrize("offset", [0, 16, 5000])  # 5000: not on a page boundary, past the first page
def test_large_external_tensor_is_mapped_copy_on_write(tmp_path, monkeypatch, offset):
    import bnlint.tensors as tensors

    monkeypatch.setattr(tensors, "MAP_BYTES", 64)
    values = np.arange(96, dtype=np.float32).reshape(8, 12)
    tensor = _external_tensor(tmp_path, values, offset)
    before = (tmp_path / "w.bin").read_bytes()
    assert isinstance(tensors.read_external_into(str(tmp_path / "m.onnx"), tmp_path, tensor), memoryview)
    got = to_array(tensor, str(tmp_path / "m.onnx"), tmp_path)
    assert np.array_equal(got, values)
    got *= 2  # the array is the caller's: writable, and writes stay in this process
    del got
    assert (tmp_path / "w.bin").read_bytes() == before


def test_a_file_system_that_cannot_map_is_read_instead(tmp_path, monkeypatch):
    import mmap

    import bnlint.tensors as tensors

    def refuse(*args, **kwargs):
        raise OSError(19, "No such device")  # ENODEV: what mmap raises on file systems without it

    monkeypatch.setattr(tensors, "MAP_BYTES", 64)
    monkeypatch.setattr(mmap, "mmap", refuse)
    values = np.arange(96, dtype=np.float32).reshape(8, 12)
    tensor = _external_tensor(tmp_path, values, 16)
    assert isinstance(tensors.read_external_into(str(tmp_path / "m.onnx"), tmp_path, tensor), bytearray)
    assert np.array_equal(to_array(tensor, str(tmp_path / "m.onnx"), tmp_path), values)


@pytest.mark.parametrize("kernel", ["copies", "refuses"])
def test_unchanged_external_tensors_are_copied_byte_for_byte(tmp_path, monkeypatch, kernel):
    """copy_file_range where the kernel takes it; the read/write loop where it refuses (EXDEV: across file
    systems on older kernels), from where the kernel stopped."""
    import errno
    import os

    import bnlint.safe_io as safe_io

    calls = []
    if kernel == "refuses":
        def refuse(*args):
            calls.append(args)
            raise OSError(errno.EXDEV, "Invalid cross-device link")
        monkeypatch.setattr(os, "copy_file_range", refuse, raising=False)
    monkeypatch.setattr(safe_io._KERNEL_COPY, "works", True)
    onnx.save(_model(), str(tmp_path / "m.onnx"), save_as_external_data=True, location="m.onnx.data",
              size_threshold=0)
    loaded = onnx.load(str(tmp_path / "m.onnx"), load_external_data=False)
    out = tmp_path / "out.onnx"
    prepare_save(loaded, out, source_path=tmp_path / "m.onnx", external=True).commit()
    got, want = _initializers(onnx.load(str(out))), _initializers(_model())
    assert got.keys() == want.keys()
    for name in want:
        assert np.array_equal(got[name], want[name]), name
    assert safe_io._KERNEL_COPY.works == (kernel == "copies")
    assert len(calls) == (1 if kernel == "refuses" else 0)  # refused once, then never asked again
