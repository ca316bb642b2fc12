"""GitHub: workflow-command annotations with GitHub's escaping, and the composite action (action.yml)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import FIXTURES, REPO

from bnlint.findings import Finding, Location, Severity
from bnlint.report.github import annotation, escape_data, escape_property, render_github

_COMMAND = re.compile(r"^::(?P<kind>\w+)(?: (?P<props>[^:]*))?::(?P<data>.*)$")


def unescape_data(text: str) -> str:
    return text.replace("%0D", "\r").replace("%0A", "\n").replace("%25", "%")


def unescape_property(text: str) -> str:
    return unescape_data(text.replace("%3A", ":").replace("%2C", ","))


def parse_command(line: str) -> tuple[str, dict[str, str], str]:
    """Read a workflow command the way the runner does: properties split on `,` then the first `=`."""
    match = _COMMAND.match(line)
    assert match, line
    props = {}
    for pair in (match["props"] or "").split(","):
        if pair:
            key, _, value = pair.partition("=")
            props[key] = unescape_property(value)
    return match["kind"], props, unescape_data(match["data"])


def make(message="msg", severity=Severity.WARNING, **location) -> Finding:
    fields = dict(file="models/net.onnx", graph="main", node="bn1", op_type="BatchNormalization", index=0)
    fields.update(location)
    return Finding(code="BN001", slug="bn-after-activation", severity=severity, message=message,
                   location=Location(**fields))


def test_escape_data_encodes_percent_cr_lf():
    assert escape_data("100% done\r\nnext") == "100%25 done%0D%0Anext"
    assert escape_data("%0A literal") == "%250A literal"  # already-escaped-looking text survives


def test_escape_property_also_encodes_colon_and_comma():
    assert escape_property("a:b,c%d\ne") == "a%3Ab%2Cc%25d%0Ae"


def test_annotation_round_trips_hostile_names_and_messages(tmp_path):
    hostile = make(message="first line\nsecond: 50%, done\r", file=str(tmp_path / "we,ird:dir" / "m%1.onnx"),
                   node="a,b:c")
    line = annotation(hostile, tmp_path)
    assert "\n" not in line and "\r" not in line
    kind, props, data = parse_command(line)
    assert kind == "warning"
    assert props == {"file": "we,ird:dir/m%1.onnx", "title": "bnlint (BN001)"}
    assert data == "main/a,b:c: first line\nsecond: 50%, done\r"


def test_levels_map_to_error_warning_notice(tmp_path):
    kinds = [parse_command(annotation(make(severity=s), tmp_path))[0]
             for s in (Severity.ERROR, Severity.WARNING, Severity.INFO)]
    assert kinds == ["error", "warning", "notice"]


def test_python_source_gives_file_and_line(tmp_path):
    pytorch = make(file="net.py:build", module="features.3.bn", source_file=str(tmp_path / "src" / "net.py"),
                   source_line=12)
    kind, props, data = parse_command(annotation(pytorch, tmp_path))
    assert props == {"file": "src/net.py", "line": "12", "title": "bnlint (BN001)"}
    assert data.startswith("features.3.bn in net.py:build: ")


def test_load_errors_are_error_annotations(tmp_path):
    lines = render_github([], [(str(tmp_path / "x.onnx"), "the file is empty")], root=tmp_path).splitlines()
    assert [parse_command(line) for line in lines] == [
        ("error", {"file": "x.onnx", "title": "bnlint (load error)"}, "the file is empty")]


# -- the composite action ---------------------------------------------------------------------------------

ACTION = yaml.safe_load((REPO / "action.yml").read_text(encoding="utf-8"))
STEPS = ACTION["runs"]["steps"]


def step(name: str) -> dict:
    return next(s for s in STEPS if s.get("name") == name)


def test_action_is_composite_and_uploads_sarif():
    assert ACTION["runs"]["using"] == "composite"
    upload = next(s for s in STEPS if "upload-sarif" in s.get("uses", ""))
    assert upload["uses"].startswith("github/codeql-action/upload-sarif@")
    assert upload["with"]["sarif_file"] == "${{ inputs.sarif-file }}"
    assert "always()" in upload["if"]
    assert "--format sarif" in step("Run bnlint")["run"]
    assert "pip install" in step("Install bnlint")["run"]
    for s in STEPS:
        if "run" in s:
            assert s["shell"] == "bash"
            assert "${{" not in s["run"], "inputs reach scripts through env:, never by text substitution"
    used_inputs = set(re.findall(r"inputs\.([\w-]+)", yaml.safe_dump(ACTION["runs"])))
    assert used_inputs == set(ACTION["inputs"])


def run_step(name: str, env: dict, tmp_path: Path) -> tuple[subprocess.CompletedProcess, dict]:
    """Run one `run:` script of the action with bash, as the runner would, and read its outputs."""
    output = tmp_path / "github_output"
    output.write_text("")
    full_env = {**os.environ, "GITHUB_OUTPUT": str(output), **env}
    full_env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{full_env['PATH']}"
    done = subprocess.run(["bash", "-c", step(name)["run"]], env=full_env, cwd=tmp_path, capture_output=True,
                          text=True, timeout=120)
    outputs = dict(line.split("=", 1) for line in output.read_text().splitlines() if "=" in line)
    return done, outputs


def test_action_run_step_writes_sarif_summary_and_exit_code(tmp_path):
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "m.onnx").write_bytes((FIXTURES / "rules" / "BN008.fires.onnx").read_bytes())
    summary = tmp_path / "summary.md"
    done, outputs = run_step("Run bnlint", {
        "BNLINT_PATHS": "models", "BNLINT_ARGS": "--select BN008", "BNLINT_SARIF": "out.sarif",
        "BNLINT_SUMMARY": "true", "GITHUB_STEP_SUMMARY": str(summary)}, tmp_path)
    assert done.returncode == 0, done.stderr  # the step itself never fails: the last step decides
    assert outputs == {"exit-code": "1", "sarif-written": "true"}
    results = json.loads((tmp_path / "out.sarif").read_text())["runs"][0]["results"]
    assert [r["ruleId"] for r in results] == ["BN008"]
    assert "```mermaid" in summary.read_text()


def test_action_last_step_fails_on_findings_and_errors(tmp_path):
    for code, fail_on_findings, expected in (("0", "true", 0), ("1", "true", 1), ("1", "false", 0),
                                             ("2", "false", 2), ("", "true", 2)):
        done, _ = run_step("Report the result", {"BNLINT_EXIT": code, "BNLINT_FAIL_ON_FINDINGS": fail_on_findings},
                           tmp_path)
        assert done.returncode == expected, (code, fail_on_findings, done.stdout)


@pytest.mark.parametrize("name", ["Install bnlint", "Run bnlint", "Report the result"])
def test_action_scripts_are_valid_bash(name):
    assert subprocess.run(["bash", "-n", "-c", step(name)["run"]], capture_output=True).returncode == 0
