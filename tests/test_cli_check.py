"""`bnlint check`: exit codes, selection, formats, configuration, errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import FIXTURES, REPO

BN001_FIRES = FIXTURES / "rules" / "BN001.fires.onnx"
NO_BN = """
<ir_version: 8, opset_import: ["" : 15]>
g (float[1, 2, 4, 4] x) => (float[1, 2, 4, 4] y)
<float[2, 2, 1, 1] w = {1.0, 0.0, 0.0, 1.0}>
{ [conv] c = Conv (x, w)  [relu] y = Relu (c) }
"""
INFO_ONLY = """
<ir_version: 8, opset_import: ["" : 15]>
g (float[1, 2] x) => (float[1, 2] y) { [drop] y = Dropout (x) }
"""


@pytest.fixture(autouse=True)
def isolated_cwd(tmp_path, monkeypatch):
    """Run every test from an empty folder so no repository config is discovered."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("NO_COLOR", raising=False)
    monkeypatch.delenv("BNLINT_OUTPUT_FORMAT", raising=False)


def test_no_bn_model_is_silent_and_exits_0(run_cli, save_text):
    result = run_cli("check", save_text(NO_BN))
    assert result.exit_code == 0
    assert result.stdout == ""
    assert "No findings in 1 model" in result.stderr


def test_findings_exit_1_and_go_to_stdout(run_cli):
    result = run_cli("check", BN001_FIRES)
    assert result.exit_code == 1
    assert "BN001 [warning] [contested]" in result.stdout
    assert "= against: Mishkin" in result.stdout and "bnlint rule BN001" in result.stdout
    assert "Found" in result.stderr and "Found" not in result.stdout


def test_bare_path_means_check(run_cli):
    assert run_cli(BN001_FIRES, "--format", "concise").stdout == run_cli("check", BN001_FIRES, "--format",
                                                                          "concise").stdout


def test_corrupt_file_prints_one_line_and_exits_2(run_cli, tmp_path):
    bad = tmp_path / "corrupt.onnx"
    bad.write_bytes(b"\x08\x07\x12\xff\xff garbage that is not protobuf")
    result = run_cli("check", bad)
    assert result.exit_code == 2
    errors = [line for line in result.stderr.splitlines() if line.startswith("bnlint: error:")]
    assert len(errors) == 1 and "corrupt.onnx" in errors[0]
    assert "Traceback" not in result.stderr and result.stdout == ""


def test_missing_file_exits_2(run_cli):
    result = run_cli("check", "nope.onnx")
    assert result.exit_code == 2 and "nope.onnx: no such file" in result.stderr


def test_fail_on_and_exit_zero(run_cli, save_text):
    info_model = save_text(INFO_ONLY)
    assert run_cli("check", info_model).exit_code == 0  # info is below the default fail level
    assert run_cli("check", info_model, "--fail-on", "info").exit_code == 1
    assert run_cli("check", BN001_FIRES, "--fail-on", "error").exit_code == 0
    assert run_cli("check", BN001_FIRES, "--exit-zero").exit_code == 0


@pytest.mark.parametrize("args, expected", [
    (("--select", "BN001"), {"BN001"}),
    (("--select", "BN00"), {"BN001", "BN002", "BN005"}),
    (("--select", "ALL", "--ignore", "BN002,BN005"), {"BN001"}),
    (("--select", "BN001", "--extend-select", "BN005"), {"BN001", "BN005"}),
    (("--ignore", "BN001", "--ignore", "BN002"), {"BN005"}),
])
def test_selection(run_cli, args, expected):
    result = run_cli("check", BN001_FIRES, "--format", "json", *args)
    assert {f["code"] for f in json.loads(result.stdout)["findings"]} == expected


def test_unknown_selector_is_a_usage_error(run_cli):
    result = run_cli("check", BN001_FIRES, "--select", "XYZ1")
    assert result.exit_code == 2 and "unknown rule selector 'XYZ1'" in result.stderr


def test_json_format(run_cli):
    result = run_cli("check", BN001_FIRES, "--format", "json")
    data = json.loads(result.stdout)
    first = data["findings"][0]
    assert set(first) >= {"code", "slug", "severity", "message", "location", "fixable", "citations", "related"}
    assert set(first["location"]) >= {"file", "graph", "node", "op_type", "index"}
    assert first["citations"][0]["link"].startswith("https://")
    assert data["summary"]["findings"] == len(data["findings"])
    indices = [(f["location"]["index"], f["code"]) for f in data["findings"]]
    assert indices == sorted(indices)


def test_output_file_and_statistics(run_cli, tmp_path):
    out = tmp_path / "report.txt"
    result = run_cli("check", BN001_FIRES, "--format", "concise", "--output-file", out)
    assert result.stdout == "" and out.read_text().count(": BN001 [") == 4
    stats = run_cli("check", BN001_FIRES, "--statistics")
    assert "     4  BN001" in stats.stdout and "bn-after-activation" in stats.stdout


def test_quiet_and_verbose(run_cli):
    assert run_cli("check", BN001_FIRES, "-q").stderr == ""
    assert "finding(s)" in run_cli("check", BN001_FIRES, "-v").stderr


def test_color(run_cli):
    plain = run_cli("check", BN001_FIRES, "--color", "never").stdout
    colored = run_cli("check", BN001_FIRES, "--color", "always").stdout
    assert "\x1b[" not in plain and "\x1b[" in colored
    assert "\x1b[" not in run_cli("check", BN001_FIRES, env={"NO_COLOR": "1"}).stdout


def test_folder_is_searched_for_onnx(run_cli, tmp_path, save_text):
    (tmp_path / "sub").mkdir()
    save_text(NO_BN, "sub/a.onnx")
    save_text(INFO_ONLY, "sub/b.onnx")
    (tmp_path / "sub" / "notes.txt").write_text("not a model")
    result = run_cli("check", tmp_path, "--format", "json")
    data = json.loads(result.stdout)
    assert data["summary"]["models"] == 2
    assert [f["location"]["file"] for f in data["findings"]] == ["sub/b.onnx"]


def test_pyproject_config(run_cli, tmp_path, save_text):
    save_text(INFO_ONLY, "models/drop.onnx")
    (tmp_path / "pyproject.toml").write_text(
        '[tool.bnlint]\nselect = ["BN00"]\nfail-on = "info"\n[tool.bnlint.severity]\nBN005 = "error"\n')
    result = run_cli("check", "models/drop.onnx", "--format", "json")
    assert result.exit_code == 1
    assert json.loads(result.stdout)["findings"][0]["severity"] == "error"


def test_per_file_ignores_and_dot_bnlint_precedence(run_cli, tmp_path, save_text):
    save_text(INFO_ONLY, "models/drop.onnx")
    (tmp_path / "pyproject.toml").write_text('[tool.bnlint]\nignore = ["BN005"]\n')
    (tmp_path / ".bnlint.toml").write_text('fail-on = "info"\n[per-file-ignores]\n"other*.onnx" = ["BN005"]\n')
    result = run_cli("check", "models/drop.onnx")
    assert result.exit_code == 1  # .bnlint.toml wins over pyproject.toml: BN005 is not ignored here
    (tmp_path / ".bnlint.toml").write_text('fail-on = "info"\n[per-file-ignores]\n"models/*.onnx" = ["BN005"]\n')
    assert run_cli("check", "models/drop.onnx").exit_code == 0


def test_config_discovered_from_parent_folder(run_cli, tmp_path, save_text, monkeypatch):
    save_text(INFO_ONLY, "deep/er/drop.onnx")
    (tmp_path / "bnlint.toml").write_text('fail-on = "info"\n')
    monkeypatch.chdir(tmp_path / "deep" / "er")
    assert run_cli("check", "drop.onnx").exit_code == 1


@pytest.mark.parametrize("content, needle", [
    ('[tool.bnlint]\nselekt = ["BN001"]\n', "unknown key(s) selekt"),
    ('[tool.bnlint]\nfail-on = "fatal"\n', "unknown severity 'fatal'"),
    ('[tool.bnlint\n', "cannot parse TOML"),
])
def test_config_errors_exit_2(run_cli, tmp_path, content, needle):
    (tmp_path / "pyproject.toml").write_text(content)
    result = run_cli("check", BN001_FIRES)
    assert result.exit_code == 2 and needle in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_explicit_config_option(run_cli, tmp_path):
    config = tmp_path / "custom.toml"
    config.write_text('select = ["BN005"]\n')
    result = run_cli("check", BN001_FIRES, "--config", config, "--format", "json")
    assert {f["code"] for f in json.loads(result.stdout)["findings"]} == {"BN005"}


def test_python_dash_m_and_console_script_do_not_import_heavy_modules(tmp_path):
    code = ("import atexit, sys\n"
            "atexit.register(lambda: print('heavy:', 'onnxruntime' in sys.modules or 'torch' in sys.modules))\n"
            f"from bnlint.cli import main; sys.argv=['bnlint','check','--format','concise',{str(BN001_FIRES)!r}]\n"
            "main()")
    script = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path)
    assert script.returncode == 1 and script.stdout.rstrip().endswith("heavy: False")
    module = subprocess.run([sys.executable, "-m", "bnlint", "check", str(BN001_FIRES), "--format", "concise"],
                            capture_output=True, text=True, cwd=tmp_path)
    assert module.returncode == 1 and "BN001" in module.stdout


@pytest.mark.parametrize("code, status, stderr", [(None, 0, ""), (0, 0, ""), (3, 3, ""), ("bad input", 1, "bad input")])
def test_the_console_script_exits_without_teardown_but_as_sys_exit_would(tmp_path, code, status, stderr):
    """main() ends with os._exit (no interpreter teardown): exit handlers still run, buffered output is
    still written, the status is what SystemExit(code) gives."""
    script = ("import atexit, sys\nfrom bnlint.cli import exit_without_teardown\n"
              "atexit.register(lambda: sys.stdout.write(' and the exit handler'))\n"
              f"sys.stdout.write('buffered output'); exit_without_teardown({code!r})")
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path)
    assert (run.returncode, run.stdout, run.stderr.strip()) == (status, "buffered output and the exit handler", stderr)


def test_console_script_output_arrives_whole_with_its_exit_code(tmp_path):
    """Large output through a pipe is flushed before the process ends; findings exit 1, a bad file 2."""
    models = tmp_path / "models"
    models.mkdir()
    for i in range(40):
        (models / f"m{i}.onnx").write_bytes(BN001_FIRES.read_bytes())
    run = subprocess.run([sys.executable, "-m", "bnlint", "check", "models", "--format", "json"],
                         capture_output=True, text=True, cwd=tmp_path)
    assert run.returncode == 1
    report = json.loads(run.stdout)
    assert len({f["location"]["file"] for f in report["findings"]}) == 40
    missing = subprocess.run([sys.executable, "-m", "bnlint", "check", "missing.onnx"], capture_output=True,
                             text=True, cwd=tmp_path)
    assert missing.returncode == 2 and "missing.onnx" in missing.stderr


def test_help_lists_commands(run_cli):
    result = run_cli("--help")
    assert result.exit_code == 0 and "check" in result.stdout and "rule" in result.stdout


def test_full_format_explains_each_rule_once(run_cli):
    """The bundled example has several findings of one code: the rationale and citations come with the
    first of them, later ones point back with their docs line (rustc prints a lint's note once, too)."""
    result = run_cli("check", FIXTURES / "example" / "small_cnn.onnx", "--format", "full")
    assert result.exit_code == 1
    codes = [line.split(": ")[1].split()[0] for line in result.stdout.splitlines() if ": BN0" in line]
    repeated = {code for code in codes if codes.count(code) > 1}
    assert repeated, "the example should have a code with several findings"
    for code in repeated:
        assert result.stdout.count(f"   = docs: bnlint rule {code}\n") == 1
        assert result.stdout.count(f"   = docs: bnlint rule {code} (evidence above)\n") == codes.count(code) - 1
    assert result.stdout.count("   = why: ") == len(set(codes))
