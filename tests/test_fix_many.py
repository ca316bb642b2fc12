"""`bnlint fix A.onnx B.onnx ...` (what the bnlint-fix pre-commit hook passes), and the model-size cap of
`fix`, `verify` and of `check --jobs N` workers started from a fresh interpreter."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import onnx
import pytest
from conftest import parse

import bnlint.parallel as parallel
from bnlint.isolation import fresh_context
from bnlint.safe_io import file_digest

FIXTURE_DIR = Path(__file__).resolve().parent.parent / "fixtures" / "fix"
sys.path.insert(0, str(FIXTURE_DIR))
from fix_fixture import load_fixture  # noqa: E402

CLEAN = '<ir_version: 8, opset_import: ["" : 17]> g (float[2,3] x) => (float[2,3] y) { y = Relu(x) }'


@pytest.fixture
def folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("BNLINT_OUTPUT_FORMAT", raising=False)
    return tmp_path


def write(name: str, fixture: str | None = None) -> str:
    model = load_fixture(fixture).model() if fixture else parse(CLEAN)
    onnx.save(model, name)
    return name


def names(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir()}


def test_several_models_are_each_fixed(folder, run_cli):
    write("a.onnx", "conv2d_bn")
    write("b.onnx", "matmul_bn")
    result = run_cli("fix", "a.onnx", "b.onnx")
    assert result.exit_code == 0, result.stderr
    assert names(folder) == {"a.onnx", "b.onnx", "a.fixed.onnx", "b.fixed.onnx"}
    assert "bnlint fix: a.onnx -> a.fixed.onnx" in result.stderr
    assert "bnlint fix: b.onnx -> b.fixed.onnx" in result.stderr
    assert [n.op_type for n in onnx.load("a.fixed.onnx").graph.node] == ["Conv", "Relu"]
    assert "BatchNormalization" not in [n.op_type for n in onnx.load("b.fixed.onnx").graph.node]


def test_in_place_over_several_models_like_the_pre_commit_hook(folder, run_cli):
    write("a.onnx", "conv2d_nobias_bn")
    write("clean.onnx")
    clean = file_digest("clean.onnx")
    result = run_cli("fix", "--in-place", "a.onnx", "clean.onnx")
    assert result.exit_code == 0, result.stderr
    assert names(folder) == {"a.onnx", "clean.onnx"}
    assert [n.op_type for n in onnx.load("a.onnx").graph.node] == ["Conv"]
    assert file_digest("clean.onnx") == clean  # nothing to fix: not rewritten


def test_output_option_takes_one_model(folder, run_cli):
    write("a.onnx", "conv2d_bn")
    write("b.onnx", "conv2d_bn")
    result = run_cli("fix", "a.onnx", "b.onnx", "-o", "out.onnx")
    assert result.exit_code == 2
    assert "-o/--output takes one MODEL, 2 were given" in result.stderr
    assert names(folder) == {"a.onnx", "b.onnx"}


def test_exit_code_is_the_worst_and_errors_do_not_stop_the_others(folder, run_cli):
    write("clean.onnx")
    write("fold.onnx", "conv2d_bn")
    # exact comparison: the fold's rounding fails it (exit 1); the clean model has nothing to verify
    failed = run_cli("fix", "clean.onnx", "fold.onnx", "--rtol", "0", "--atol", "0")
    assert failed.exit_code == 1
    assert names(folder) == {"clean.onnx", "fold.onnx", "clean.fixed.onnx"}
    (folder / "clean.fixed.onnx").unlink()
    worst = run_cli("fix", "missing.onnx", "clean.onnx", "fold.onnx", "--rtol", "0", "--atol", "0")
    assert worst.exit_code == 2
    errors = [line for line in worst.stderr.splitlines() if line.startswith("bnlint: error: ")]
    assert errors == ["bnlint: error: missing.onnx: no such file"]
    assert "verification FAILED: nothing was written" in worst.stderr
    assert names(folder) == {"clean.onnx", "fold.onnx", "clean.fixed.onnx"}


def test_json_for_several_models_is_one_array(folder, run_cli):
    write("a.onnx", "conv2d_bn")
    write("clean.onnx")
    result = run_cli("fix", "a.onnx", "missing.onnx", "clean.onnx", "--format", "json")
    assert result.exit_code == 2
    reports = json.loads(result.stdout)
    assert [r["model"] for r in reports] == ["a.onnx", "missing.onnx", "clean.onnx"]
    assert [r["exit_code"] for r in reports] == [0, 2, 0]
    assert reports[0]["written"] is True and reports[0]["verified"] is True
    assert reports[1]["error"] == "missing.onnx: no such file"
    one = json.loads(run_cli("fix", "clean.onnx", "--format", "json", "-o", "x.onnx").stdout)
    assert isinstance(one, dict) and one["model"] == "clean.onnx"  # one model: one object, as before


def test_the_same_model_twice_is_fixed_once(folder, run_cli):
    write("a.onnx", "conv2d_bn")
    result = run_cli("fix", "a.onnx", "a.onnx")
    assert result.exit_code == 0 and result.stderr.count("bnlint fix: a.onnx") == 1


def test_max_model_size_for_fix_and_verify(folder, run_cli):
    write("a.onnx", "conv2d_bn")
    size = Path("a.onnx").stat().st_size
    for command in (("fix", "a.onnx"), ("verify", "a.onnx", "a.onnx")):
        refused = run_cli(*command, "--max-model-size", str(size - 1))
        assert refused.exit_code == 2, command
        assert f"a.onnx: the file is {size} bytes, over the {size - 1} bytes limit" in refused.stderr
        assert refused.stderr.count("\n") == 1
    assert names(folder) == {"a.onnx"}
    assert run_cli("fix", "a.onnx", "--max-model-size", str(size), "-q").exit_code == 0
    assert run_cli("verify", "a.onnx", "a.fixed.onnx", "--max-model-size", str(size)).exit_code == 0
    bad = run_cli("fix", "a.onnx", "--max-model-size", "big")
    assert bad.exit_code == 2 and "--max-model-size: 'big' is not a size" in bad.stderr


def test_max_model_size_from_the_config_applies_to_fix(folder, run_cli):
    write("a.onnx", "conv2d_bn")
    (folder / "bnlint.toml").write_text('max-model-size = "100B"\n')
    result = run_cli("fix", "a.onnx")
    assert result.exit_code == 2 and "over the 100 bytes limit" in result.stderr
    assert names(folder) == {"a.onnx", "bnlint.toml"}


@pytest.mark.parametrize("source", ["option", "config"])
def test_check_workers_started_fresh_honour_the_size_cap(folder, run_cli, monkeypatch, source):
    """--jobs 2 with workers from the fork server (no state inherited): the cap travels in the options."""
    for k in range(4):
        write(f"m{k}.onnx")
    monkeypatch.setattr(parallel, "_context", fresh_context)
    assert parallel._context().get_start_method() == "forkserver"
    args = ["check", ".", "--jobs", "2", "--format", "concise"]
    if source == "option":
        args += ["--max-model-size", "64"]
    else:
        (folder / "bnlint.toml").write_text("max-model-size = 64\n")
    result = run_cli(*args)
    assert result.exit_code == 2, result.stderr
    errors = sorted(line for line in result.stderr.splitlines() if line.startswith("bnlint: error: "))
    assert len(errors) == 4 and all("over the 64 bytes limit" in line for line in errors), result.stderr
    if source == "config":
        (folder / "bnlint.toml").unlink()
    assert run_cli("check", ".", "--jobs", "2").exit_code == 0
