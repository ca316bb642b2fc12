"""SARIF 2.1.0: every fixture validates against the OASIS schema; rules, levels, locations, fingerprints."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest
from conftest import FIXTURES

from bnlint.findings import Finding, Location, Severity
from bnlint.report.ruledoc_text import render_rule_text
from bnlint.report.sarif import FINGERPRINT_KEY, GITHUB_TEXT_LIMIT, render_sarif
from bnlint.ruledocs import all_rule_docs

SCHEMA = json.loads((Path(__file__).parent / "schemas" / "sarif-schema-2.1.0.json").read_text(encoding="utf-8"))
VALIDATOR = jsonschema.Draft4Validator(SCHEMA, format_checker=jsonschema.Draft4Validator.FORMAT_CHECKER)
ALL_FIXTURES = sorted(FIXTURES.rglob("*.onnx"))

CONV_BN = """
<ir_version: 8, opset_import: ["" : 15]>
g (float[1, 2, 4, 4] x) => (float[1, 2, 4, 4] y{extra_out})
<float[2, 2, 1, 1] w = {{1.0, 0.5, -0.5, 1.0}}, float[2] s = {{1.0, 1.0}}, float[2] b = {{0.0, 0.0}},
 float[2] m = {{0.0, 0.0}}, float[2] v = {{1.0, 1.0}}>
{{
  {extra}
  [conv] c = Conv (x, w)
  [bn] y = BatchNormalization (c, s, b, m, v)
}}
"""


def validate(document: dict) -> None:
    errors = sorted(VALIDATOR.iter_errors(document), key=lambda e: list(e.path))
    assert not errors, "\n".join(f"{list(e.path)}: {e.message}" for e in errors[:10])


def sarif_of(run_cli, *args) -> dict:
    result = run_cli("check", *args, "--format", "sarif")
    assert result.exit_code in (0, 1, 2), result.stderr
    return json.loads(result.stdout)


def finding(code="BN004", severity=Severity.INFO, node="bn", **location) -> Finding:
    fields = dict(file="model.onnx", graph="main", node=node, op_type="BatchNormalization", index=3)
    fields.update(location)
    return Finding(code=code, slug="slug", severity=severity, message=f"message about {node}",
                   location=Location(**fields), related=("conv",))


def test_format_checker_really_checks_uris_and_dates():
    """Without the format extras jsonschema skips `uri` silently; this keeps the acceptance test honest."""
    assert {"uri", "date-time"} <= set(jsonschema.Draft4Validator.FORMAT_CHECKER.checkers)
    bad = {"version": "2.1.0", "runs": [{"tool": {"driver": {"name": "x", "informationUri": "not a uri"}}}]}
    assert list(VALIDATOR.iter_errors(bad))


def test_there_are_fixtures_to_validate():
    assert len(ALL_FIXTURES) >= 18


@pytest.mark.parametrize("fixture", ALL_FIXTURES, ids=lambda p: str(p.relative_to(FIXTURES)))
def test_fixture_sarif_validates_against_the_oasis_schema(fixture, run_cli):
    validate(sarif_of(run_cli, fixture))


def test_load_errors_become_notifications_and_still_validate(run_cli, tmp_path):
    bad = tmp_path / "broken.onnx"
    bad.write_bytes(b"\x08garbage")
    document = sarif_of(run_cli, bad, FIXTURES / "rules" / "BN008.fires.onnx")
    validate(document)
    invocation = document["runs"][0]["invocations"][0]
    assert invocation["executionSuccessful"] is False
    [note] = invocation["toolExecutionNotifications"]
    assert note["level"] == "error" and "broken.onnx" in note["message"]["text"]
    assert document["runs"][0]["results"]  # the readable model is still reported


def test_rules_come_from_the_rule_files():
    document = json.loads(render_sarif([], [], root=Path.cwd()))
    rules = document["runs"][0]["tool"]["driver"]["rules"]
    docs = all_rule_docs()
    assert [r["id"] for r in rules] == list(docs)
    for rule in rules:
        doc = docs[rule["id"]]
        assert rule["name"] == doc.slug
        assert rule["shortDescription"]["text"] == " ".join(doc.summary.split())
        assert len(rule["fullDescription"]["text"]) <= GITHUB_TEXT_LIMIT
        assert " ".join(doc.rationale.split()).startswith(rule["fullDescription"]["text"].rstrip("…"))
        assert rule["help"]["text"] == render_rule_text(doc)
        for citation in doc.citations:
            assert citation.link in rule["help"]["markdown"]
            assert citation.title.split()[0] in rule["help"]["markdown"]
        assert rule["helpUri"] == f"https://github.com/bnlint/bnlint#{doc.id.lower()}"
        assert rule["defaultConfiguration"]["level"] == {"info": "note", "warning": "warning",
                                                         "error": "error"}[doc.severity.value]


def test_levels_and_rule_index():
    findings = [finding("BN004", Severity.INFO, "a"), finding("BN001", Severity.WARNING, "b"),
                finding("BN006", Severity.ERROR, "c")]
    document = json.loads(render_sarif(findings, [], root=Path.cwd()))
    validate(document)
    run = document["runs"][0]
    assert [r["level"] for r in run["results"]] == ["note", "warning", "error"]
    rules = run["tool"]["driver"]["rules"]
    assert all(rules[r["ruleIndex"]]["id"] == r["ruleId"] for r in run["results"])


def test_model_location_is_relative_to_the_root_with_a_logical_node(tmp_path):
    (tmp_path / "models").mkdir()
    document = json.loads(render_sarif([finding(file=str(tmp_path / "models" / "a b.onnx"))], [], root=tmp_path))
    validate(document)
    [location] = document["runs"][0]["results"][0]["locations"]
    physical = location["physicalLocation"]
    assert physical["artifactLocation"] == {"uri": "models/a%20b.onnx", "uriBaseId": "%SRCROOT%"}
    assert physical["region"] == {"startLine": 1}
    assert location["logicalLocations"][0]["fullyQualifiedName"] == "main/bn"
    assert document["runs"][0]["originalUriBaseIds"]["%SRCROOT%"]["uri"] == tmp_path.resolve().as_uri() + "/"


def test_python_source_line_is_the_primary_location_when_known(tmp_path):
    source = tmp_path / "src" / "net.py"
    pytorch = finding(file="net.py:build", module="features.3.bn", module_class="BatchNorm2d",
                      source_file=str(source), source_line=42)
    document = json.loads(render_sarif([pytorch], [], root=tmp_path))
    validate(document)
    result = document["runs"][0]["results"][0]
    physical = result["locations"][0]["physicalLocation"]
    assert physical["artifactLocation"]["uri"] == "src/net.py"
    assert physical["region"]["startLine"] == 42
    assert result["locations"][0]["logicalLocations"][0] == {
        "name": "bn", "fullyQualifiedName": "features.3.bn", "kind": "module"}
    assert "in model net.py:build" in result["relatedLocations"][0]["message"]["text"]


def test_source_outside_the_project_falls_back_to_the_model_file(tmp_path):
    outside = finding(file=str(tmp_path / "model.onnx"), source_file="/usr/lib/python3/site-packages/tv/resnet.py",
                      source_line=7)
    document = json.loads(render_sarif([outside], [], root=tmp_path))
    validate(document)
    uri = document["runs"][0]["results"][0]["locations"][0]["physicalLocation"]["artifactLocation"]["uri"]
    assert uri == "model.onnx"


def test_fingerprints_do_not_depend_on_node_index(save_text, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    from bnlint.lint import LintOptions, run_lint
    from bnlint.config import Config

    plain = save_text(CONV_BN.format(extra="", extra_out=""), "a/model.onnx")
    shifted = save_text(CONV_BN.format(extra="[side] z = Neg (x)", extra_out=", float[1, 2, 4, 4] z"), "b/model.onnx")
    options = LintOptions(Config(root=tmp_path))

    def fingerprints(path):
        result = run_lint([str(path)], options)
        assert [f.location.index for f in result.findings] == ([1] if path == plain else [2])
        document = json.loads(render_sarif(result.findings, [], root=path.parent))
        return [r["partialFingerprints"][FINGERPRINT_KEY] for r in document["runs"][0]["results"]]

    assert fingerprints(plain) == fingerprints(shifted)


def test_equal_fingerprints_are_made_unique():
    twins = [finding(node="bn", module="block.bn"), finding(node="bn_1", module="block.bn")]
    document = json.loads(render_sarif(twins, [], root=Path.cwd()))
    prints = [r["partialFingerprints"][FINGERPRINT_KEY] for r in document["runs"][0]["results"]]
    assert len(set(prints)) == 2 and prints[1].startswith(prints[0])


def test_a_pytorch_factory_target_points_at_its_python_file(tmp_path):
    factory = finding(file=str(tmp_path / "net.py") + ":build")
    document = json.loads(render_sarif([factory], [], root=tmp_path))
    validate(document)
    uri = document["runs"][0]["results"][0]["locations"][0]["physicalLocation"]["artifactLocation"]["uri"]
    assert uri == "net.py"
