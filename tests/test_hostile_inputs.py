"""Hostile and broken model files: one clear error line naming the file, exit 2, no traceback, nothing
written. The cases live in tests/make_corpus.py (one per catalogue item of issue 7)."""

from __future__ import annotations

import hashlib
import os
import stat
import subprocess
import sys
from pathlib import Path

import make_corpus
import numpy as np
import onnx
from onnx import numpy_helper
import pytest
from conftest import REPO

import bnlint.tensors
from bnlint.errors import LoadError
from bnlint.graph import build_model
from bnlint.onnx_loader import check_acyclic, load_onnx, model_size_limit
from bnlint.tensors import MAX_MATERIALIZED_BYTES, constant_of_shape, to_array


def snapshot(root: Path) -> dict[str, str]:
    """Every entry under `root` with its kind and content hash (symlinks and FIFOs are not followed)."""
    entries = {}
    for folder, subfolders, files in os.walk(root):
        for name in subfolders + files:
            path = Path(folder) / name
            info = os.lstat(path)
            if stat.S_ISLNK(info.st_mode):
                entries[str(path)] = "link:" + os.readlink(path)
            elif stat.S_ISREG(info.st_mode) and info.st_size < (1 << 30):
                entries[str(path)] = hashlib.sha256(path.read_bytes()).hexdigest()
            else:
                entries[str(path)] = f"mode:{stat.S_IFMT(info.st_mode)}:size:{info.st_size}:mtime:{info.st_mtime_ns}"
    return entries


@pytest.fixture
def corpus(tmp_path, monkeypatch):
    """Build one corpus case and run from inside its working tree."""

    def _build(name: str):
        tree, case = make_corpus.build(tmp_path, name)
        monkeypatch.chdir(tree)
        return case

    return _build


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("bnlint: error:")]


@pytest.mark.parametrize("name", list(make_corpus.CASES))
def test_refused_with_one_line_exit_2_and_nothing_written(name, corpus, run_cli, tmp_path):
    case = corpus(name)
    before = snapshot(tmp_path)
    result = run_cli("check", case.target, *case.args)
    assert result.exit_code == 2, result.output
    errors = error_lines(result.stderr)
    assert len(errors) == 1, result.stderr
    assert errors[0].startswith(f"bnlint: error: {case.target}: "), errors[0]
    assert case.needle in errors[0]
    assert "Traceback" not in result.output and "internal error" not in result.output
    assert result.stdout == ""
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("name", list(make_corpus.ACCEPTED))
def test_hostile_looking_but_valid_models_are_linted(name, corpus, run_cli, tmp_path):
    case = corpus(name)
    before = snapshot(tmp_path)
    result = run_cli("check", case.target)
    assert result.exit_code in (0, 1), result.output
    assert error_lines(result.stderr) == []
    assert snapshot(tmp_path) == before


def test_subprocess_runs_end_with_exit_2_not_a_signal(tmp_path):
    """The real entry point on several refused files at once (parallel workers): one line each, no
    traceback, no signal."""
    built = make_corpus.build_all(tmp_path)
    names = ["fifo", "character_device", "external_symlinked_file", "nested_past_protobuf_limit", "cycle",
             "constant_of_shape_bomb", "attribute_of_wrong_type", "git_lfs_pointer", "symlink_outside_tree"]
    targets = [built[name].target for name in names]
    run = subprocess.run([sys.executable, "-m", "bnlint", "check", "--jobs", "2", *targets],
                         cwd=tmp_path / "tree", capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL,
                         env={**os.environ, "PYTHONPATH": str(REPO)})
    assert run.returncode == 2, run.stderr
    assert "Traceback" not in run.stderr
    errors = error_lines(run.stderr)
    assert len(errors) == len(names)
    for name in names:
        assert any(built[name].needle in line and built[name].target in line for line in errors), name


def test_a_folder_is_not_a_model(tmp_path):
    (tmp_path / "model.onnx").mkdir()
    with pytest.raises(LoadError, match="is a directory"):
        load_onnx(tmp_path / "model.onnx")


def test_size_cap_from_config_and_invalid_sizes(tmp_path, monkeypatch, run_cli):
    monkeypatch.chdir(tmp_path)
    make_corpus.save(make_corpus.conv_bn_relu(), tmp_path / "m.onnx")
    (tmp_path / "bnlint.toml").write_text('max-model-size = "100B"\n')
    result = run_cli("check", "m.onnx")
    assert result.exit_code == 2 and "over the 100 bytes limit" in result.stderr
    assert run_cli("check", "m.onnx", "--max-model-size", "1MiB").exit_code in (0, 1)  # option beats config
    result = run_cli("check", "m.onnx", "--max-model-size", "lots")
    assert result.exit_code == 2 and "'lots' is not a size" in result.stderr
    (tmp_path / "bnlint.toml").write_text("max-model-size = -5\n")
    result = run_cli("check", "m.onnx")
    assert result.exit_code == 2 and "max-model-size" in result.stderr


def test_size_limit_context_restores_the_default(tmp_path):
    path = tmp_path / "m.onnx"
    make_corpus.save(make_corpus.conv_bn_relu(), path)
    with model_size_limit(10), pytest.raises(LoadError, match="over the 10 bytes limit"):
        load_onnx(path)
    assert load_onnx(path).graph.node


def test_loading_never_reads_external_weight_bytes(tmp_path, monkeypatch):
    model = make_corpus.conv_bn_relu()
    model.graph.initializer[0].CopyFrom(onnx.numpy_helper.from_array(np.ones((2, 2, 16, 16), np.float32), "w"))
    make_corpus.externalize(model, tmp_path)
    assert (tmp_path / "w.bin").stat().st_size > 1024
    make_corpus.save(model, tmp_path / "m.onnx")

    def no_read(*args):
        raise AssertionError("load_onnx read external data")

    monkeypatch.setattr(bnlint.tensors.os, "pread", no_read)
    monkeypatch.setattr(bnlint.tensors.os, "read", no_read)
    loaded = load_onnx(tmp_path / "m.onnx")
    assert all(t.data_location == onnx.TensorProto.EXTERNAL for t in loaded.graph.initializer)


def test_to_array_reads_checked_external_data(tmp_path):
    model = make_corpus.conv_bn_relu()
    expected = onnx.numpy_helper.to_array(model.graph.initializer[1])
    make_corpus.externalize(model, tmp_path)
    path = str(tmp_path / "m.onnx")
    make_corpus.save(model, Path(path))
    np.testing.assert_array_equal(to_array(load_onnx(path).graph.initializer[1], path, tmp_path), expected)
    (tmp_path / "w.bin").unlink()
    (tmp_path / "w.bin").symlink_to(tmp_path / "m.onnx")  # swapped after loading: refused at read time
    with pytest.raises(LoadError, match="symlink"):
        to_array(model.graph.initializer[1], path, tmp_path)


def test_location_word_in_names_does_not_hide_external_tensors(tmp_path):
    """The early stop counts `location` byte strings; names containing the word only make it walk more."""
    model = make_corpus.conv_bn_relu()
    model.graph.node[0].name = "location"
    make_corpus.externalize(model, tmp_path)
    make_corpus.set_external(model.graph.initializer[4], "location", "../escape.bin")
    make_corpus.save(model, tmp_path / "m.onnx")
    with pytest.raises(LoadError, match="escapes the model's folder"):
        load_onnx(tmp_path / "m.onnx")


def test_weight_heavy_model_still_validates_every_external_tensor(tmp_path):
    """A file with many bytes per node is validated by walking its tensors instead of scanning its bytes:
    an escaping external reference next to a large inline weight is still refused."""
    model = make_corpus.conv_bn_relu()
    make_corpus.externalize(model, tmp_path)
    make_corpus.set_external(model.graph.initializer[4], "location", "../escape.bin")
    model.graph.initializer.append(numpy_helper.from_array(np.zeros(1 << 16, np.float32), "ballast"))
    make_corpus.save(model, tmp_path / "m.onnx")
    assert (tmp_path / "m.onnx").stat().st_size > 4096 * len(model.graph.node)
    with pytest.raises(LoadError, match="escapes the model's folder"):
        load_onnx(tmp_path / "m.onnx")


def test_constant_of_shape_guards():
    fill = np.ones(1, np.float32)
    assert constant_of_shape("m.onnx", "c", np.array([2, 3], np.int64), fill).shape == (2, 3)
    limit_elements = MAX_MATERIALIZED_BYTES // 4
    with pytest.raises(LoadError, match="would allocate"):
        constant_of_shape("m.onnx", "c", np.array([limit_elements + 1], np.int64), fill)
    with pytest.raises(LoadError, match="negative dimension"):
        constant_of_shape("m.onnx", "c", np.array([-1, 4], np.int64), fill)
    with pytest.raises(LoadError, match="not a 1-D integer tensor"):
        constant_of_shape("m.onnx", "c", np.array([2.0]), fill)
    with pytest.raises(LoadError, match="exactly 1"):
        constant_of_shape("m.onnx", "c", np.array([2], np.int64), np.ones(3, np.float32))


def test_cycle_check_tells_unsorted_from_cyclic():
    producers = {"b": 0, "a": 1}  # value -> index of the node that makes it
    outputs = [("b",), ("a",), ()]
    check_acyclic("m.onnx", "main", producers, [(), (), ("a", "b")], outputs)  # sorted
    check_acyclic("m.onnx", "main", producers, [("a",), ("x",), ("b",)], outputs)  # node 0 reads a: unsorted
    with pytest.raises(LoadError, match="has a cycle"):
        check_acyclic("m.onnx", "main", producers, [("a",), ("b",), ()], outputs)
    with pytest.raises(LoadError, match="has a cycle"):
        check_acyclic("m.onnx", "main", {"a": 0}, [("a",)], [("a",)])  # a node reading its own output
    with pytest.raises(LoadError, match="has a cycle"):  # through a subgraph's outer reference
        check_acyclic("m.onnx", "main", producers, [("x",), ("b",), ()], outputs, implicit={0: {"a"}})


def test_constant_of_shape_reading_itself_is_a_cycle(tmp_path, run_cli, monkeypatch):
    monkeypatch.chdir(tmp_path)
    model = make_corpus.conv_bn_relu()
    model.graph.node.insert(0, onnx.helper.make_node("ConstantOfShape", ["v2"], ["v2"], name="loop"))
    model.graph.node[2].input[4] = "v2"
    make_corpus.save(model, tmp_path / "m.onnx")
    result = run_cli("check", "m.onnx")
    assert result.exit_code == 2 and "has a cycle" in result.stderr


def test_graph_paths_in_messages_are_one_line(tmp_path):
    model = make_corpus.conv_bn_relu()
    model.graph.node[1].name = "bn\n\x1b[31mred"
    model.graph.node[1].attribute[0].type = onnx.AttributeProto.STRING
    lint_model = __import__("bnlint.engine", fromlist=["lint_model"]).lint_model
    with pytest.raises(LoadError) as info:
        lint_model(build_model(model, "m.onnx"))
    assert "\n" not in str(info.value) and "\x1b" not in str(info.value)
