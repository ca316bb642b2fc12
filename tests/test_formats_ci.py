"""GitLab Code Quality, JUnit XML and JSON Lines: the shapes CI systems read, and stable fingerprints."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET

import pytest
from conftest import FIXTURES

BN008 = FIXTURES / "rules" / "BN008.fires.onnx"  # two findings (BN004 info, BN008 warning)
CLEAN = """
<ir_version: 8, opset_import: ["" : 15]>
g (float[1, 2] x) => (float[1, 2] y) { [neg] y = Neg (x) }
"""
TWO_BN = """
<ir_version: 8, opset_import: ["" : 15]>
g (float[1, 2, 4, 4] x) => (float[1, 2, 4, 4] y{extra_out})
<float[2] s = {{1.0, 1.0}}, float[2] b = {{0.0, 0.0}}, float[2] m = {{0.0, 0.0}}, float[2] v = {{1.0, 1.0}}>
{{
  {extra}
  [first] t = BatchNormalization (x, s, b, m, v)
  [second] y = BatchNormalization (t, s, b, m, v)
}}
"""


@pytest.fixture(autouse=True)
def isolated_cwd(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("BNLINT_OUTPUT_FORMAT", raising=False)


def test_gitlab_code_quality_issues(run_cli, tmp_path):
    (tmp_path / "broken.onnx").write_bytes(b"")
    result = run_cli("check", BN008, "broken.onnx", "--format", "gitlab")
    assert result.exit_code == 2
    issues = json.loads(result.stdout)
    assert [i["check_name"] for i in issues] == ["BN004", "BN008", "load-error"]
    for issue in issues:
        assert set(issue) == {"description", "check_name", "fingerprint", "severity", "location"}
        assert issue["location"]["lines"]["begin"] >= 1
        assert issue["severity"] in ("info", "minor", "major", "critical", "blocker")
    assert [i["severity"] for i in issues] == ["info", "minor", "critical"]
    assert len({i["fingerprint"] for i in issues}) == 3
    assert issues[2]["location"]["path"] == "broken.onnx"


def test_gitlab_fingerprints_survive_inserted_nodes(run_cli, save_text):
    def prints(extra, extra_out):
        save_text(TWO_BN.format(extra=extra, extra_out=extra_out), "model.onnx")
        return [i["fingerprint"] for i in json.loads(run_cli("check", "model.onnx", "--format", "gitlab").stdout)]

    before = prints("", "")
    after = prints("[side] z = Neg (x)", ", float[1, 2, 4, 4] z")
    assert before and before == after


def test_junit_has_a_suite_per_model_with_failures_passes_and_errors(run_cli, save_text, tmp_path):
    save_text(CLEAN, "clean.onnx")
    (tmp_path / "broken.onnx").write_bytes(b"not onnx at all")
    result = run_cli("check", BN008, "clean.onnx", "broken.onnx", "--format", "junit")
    assert result.exit_code == 2
    root = ET.fromstring(result.stdout)
    assert (root.tag, root.get("tests"), root.get("failures"), root.get("errors")) == ("testsuites", "4", "2", "1")
    suites = {s.get("name"): s for s in root.iter("testsuite")}
    assert set(suites) == {"clean.onnx", "broken.onnx", str(BN008)}
    [passing] = suites["clean.onnx"].findall("testcase")
    assert list(passing) == []
    failures = suites[str(BN008)].findall("testcase/failure")
    assert [f.get("type") for f in failures] == ["BN004 (info)", "BN008 (warning)"]
    assert suites["broken.onnx"].find("testcase/error").get("type") == "load-error"


def test_json_lines_one_finding_per_line_with_fingerprint(run_cli):
    result = run_cli("check", BN008, "--format", "json-lines")
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["code"] for r in records] == ["BN004", "BN008"]
    assert all(len(r["fingerprint"]) == 32 for r in records)
    assert records[1]["location"]["node"] == "bn_second"


def test_json_lines_is_empty_for_a_clean_model(run_cli, save_text):
    save_text(CLEAN, "clean.onnx")
    result = run_cli("check", "clean.onnx", "--format", "json-lines")
    assert (result.exit_code, result.stdout) == (0, "")
