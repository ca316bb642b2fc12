"""Rewritten weights go to disk when the model would not fit in memory (bnlint.fix.spill); the output is
the same file either way."""

from __future__ import annotations

import errno
import os

import numpy as np
import onnx
import pytest
from conftest import conv_bn_model

import bnlint.fix.spill as spill
from bnlint.safe_io import WriteError, file_digest


def test_small_arrays_stay_in_memory_large_ones_are_file_backed(tmp_path, monkeypatch):
    monkeypatch.setattr(spill, "SPILL_BYTES", 1024)
    with spill.spilling(tmp_path):
        small = spill.new_array((8,), np.float32)
        large = spill.new_array((64, 8), np.float32)
    outside = spill.new_array((64, 8), np.float32)
    assert type(small) is np.ndarray and type(outside) is np.ndarray
    assert isinstance(large, np.memmap) and large.shape == (64, 8) and large.dtype == np.float32
    large[:] = 3.0
    assert float(large.sum()) == 3.0 * 512
    assert list(tmp_path.iterdir()) == []  # the file is unlinked at once: nothing to clean up, ever


def test_a_full_disk_is_a_write_error_naming_the_folder(tmp_path, monkeypatch):
    def full(*args):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(spill, "SPILL_BYTES", 1024)
    monkeypatch.setattr(os, "posix_fallocate", full, raising=False)
    with spill.spilling(tmp_path), pytest.raises(WriteError, match=f"{tmp_path}: cannot keep 2048 bytes .*No space"):
        spill.new_array((512,), np.float32)
    assert list(tmp_path.iterdir()) == []


def test_the_output_folder_is_used_only_when_the_model_would_not_fit_twice(tmp_path, monkeypatch):
    out = tmp_path / "out.onnx"
    monkeypatch.setattr(spill, "available_memory", lambda: 1000)
    assert spill.spill_folder(out, 400) is None
    assert spill.spill_folder(out, 600) == tmp_path
    assert spill.spill_folder(tmp_path / "missing" / "out.onnx", 600) is None  # the writer reports that
    monkeypatch.setattr(spill, "available_memory", lambda: None)
    assert spill.spill_folder(out, 10**15) is None


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_cgroup_room_is_limit_minus_usage(tmp_path, version):
    membership = tmp_path / "cgroup"
    if version == "v2":
        membership.write_text("0::/job\n")
        folder, limit, usage = tmp_path / "job", "memory.max", "memory.current"
    else:
        membership.write_text("7:cpu,cpuacct:/job\n4:memory:/job\n")
        folder, limit, usage = tmp_path / "memory" / "job", "memory.limit_in_bytes", "memory.usage_in_bytes"
    folder.mkdir(parents=True)
    (folder / limit).write_text("1000000\n")
    (folder / usage).write_text("250000\n")
    assert spill._cgroup_room(str(membership), str(tmp_path)) == 750000
    (folder / limit).write_text("max\n" if version == "v2" else "9223372036854771712\n")
    assert spill._cgroup_room(str(membership), str(tmp_path)) is None  # unlimited
    assert spill._cgroup_room(str(tmp_path / "absent"), str(tmp_path)) is None


def test_fix_with_spilled_weights_writes_the_same_file(tmp_path, monkeypatch, run_cli):
    model = tmp_path / "m.onnx"
    onnx.save(conv_bn_model(channels=64), model, save_as_external_data=True, location="m.onnx.data",
              size_threshold=0)
    plain = run_cli("fix", model, "-o", tmp_path / "plain.onnx", "--no-verify")
    assert plain.exit_code == 0, plain.stderr
    made = []
    real_new_array = spill.new_array
    monkeypatch.setattr(spill, "SPILL_BYTES", 4096)
    monkeypatch.setattr(spill, "available_memory", lambda: 1)
    monkeypatch.setattr("bnlint.fix.numeric.new_array",
                        lambda shape, dtype: made.append(real_new_array(shape, dtype)) or made[-1])
    spilled = run_cli("fix", model, "-o", tmp_path / "spilled.onnx", "--no-verify")
    assert spilled.exit_code == 0, spilled.stderr
    assert made and all(isinstance(array, np.memmap) for array in made)
    assert file_digest(tmp_path / "spilled.onnx.data") == file_digest(tmp_path / "plain.onnx.data")
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".bnlint-spill")]
