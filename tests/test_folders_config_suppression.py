"""Suppression without comments: per-file-ignores and per-node-ignores in config, unused entries reported."""

from __future__ import annotations

import json

import pytest
from conftest import model_from_text

from bnlint.config import parse_config
from bnlint.engine import lint_model
from bnlint.errors import ConfigError
from bnlint.findings import Finding, Location, Severity
from bnlint.ignores import ConfigIgnores, IgnoreEntry
from bnlint.registry import all_checks

MODEL = """<ir_version: 8, opset_import: ["" : 15]>
g (float[1, 2, 4, 4] x) => (float[1, 2, 4, 4] y)
<float[2, 2, 1, 1] w = {1.0, 0.5, -0.5, 1.0}, float[2] s = {1.0, 1.0}, float[2] b = {0.0, 0.0},
 float[2] m = {0.0, 0.0}, float[2] v = {1.0, 1.0}>
{
  [backbone_conv] c = Conv (x, w)
  [backbone_bn] n = BatchNormalization (c, s, b, m, v)
  [head_relu] r = Relu (n)
  [head_bn] y = BatchNormalization (r, s, b, m, v)
}"""  # BN004 on backbone_bn, BN001 on head_bn


@pytest.fixture(autouse=True)
def project(tmp_path, monkeypatch, save_text):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("BNLINT_OUTPUT_FORMAT", raising=False)
    save_text(MODEL, "models/net.onnx")
    save_text(MODEL, "models/other.onnx")
    return tmp_path


def codes_by_file(result) -> list[tuple[str, str, str]]:
    return [(r["location"]["file"], r["code"], r["location"]["node"])
            for r in map(json.loads, result.stdout.splitlines())]


def warnings(result) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.startswith("bnlint: warning:")]


def test_per_node_ignores_match_node_names(run_cli, project):
    (project / "bnlint.toml").write_text('[per-node-ignores]\n"backbone_*" = ["BN004"]\n')
    result = run_cli("check", "models", "--format", "json-lines")
    assert codes_by_file(result) == [("models/net.onnx", "BN001", "head_bn"), ("models/other.onnx", "BN001", "head_bn")]
    assert warnings(result) == []


def test_per_file_and_per_node_ignores_combine(run_cli, project):
    (project / "bnlint.toml").write_text('[per-file-ignores]\n"other.onnx" = ["BN001"]\n'
                                         '[per-node-ignores]\n"main/backbone_bn" = ["BN00"]\n')
    result = run_cli("check", "models", "--format", "json-lines")
    assert codes_by_file(result) == [("models/net.onnx", "BN001", "head_bn")]
    assert warnings(result) == []


def test_unused_entries_are_reported_when_they_applied(run_cli, project):
    (project / "bnlint.toml").write_text(
        '[per-file-ignores]\n"net.onnx" = ["BN006"]\n"missing/*.onnx" = ["BN001"]\n'
        '[per-node-ignores]\n"head_*" = ["BN001", "BN008"]\n"nowhere_*" = ["BN004"]\n')
    result = run_cli("check", "models", "--format", "json-lines")
    assert {code for _, code, _ in codes_by_file(result)} == {"BN004"}
    assert warnings(result) == [
        f'bnlint: warning: unused per-file-ignores."net.onnx" = ["BN006"] in bnlint.toml: it suppressed no finding',
        f'bnlint: warning: unused per-node-ignores."head_*" = ["BN008"] in bnlint.toml: it suppressed no finding',
    ]  # "missing/*" and "nowhere_*" matched no checked file or node: a partial run stays quiet


def test_unused_check_respects_rule_selection_and_quiet(run_cli, project):
    (project / "bnlint.toml").write_text('[per-node-ignores]\n"head_*" = ["BN008"]\n')
    assert warnings(run_cli("check", "models", "--select", "BN001")) == []  # BN008 did not run
    assert warnings(run_cli("check", "models", "--quiet")) == []
    assert len(warnings(run_cli("check", "models"))) == 1


def test_module_paths_match_for_pytorch_provenance(project):
    def on(node, module):
        return Finding("BN001", "bn-after-activation", Severity.WARNING, "m",
                       Location("net.py:build", "main", node, "BatchNormalization", 0, module=module))

    config = parse_config({"per-node-ignores": {"features.*.bn": ["BN001"]}}, project / "bnlint.toml")
    ignores = ConfigIgnores(config, all_checks().keys())
    outcome = ignores.apply([on("batch_norm_1", "features.3.bn"), on("batch_norm_2", "classifier.bn")],
                            "net.py:build", None)
    assert [f.location.module for f in outcome.kept] == ["classifier.bn"]
    assert outcome.used == {IgnoreEntry("per-node-ignores", "features.*.bn", "BN001")}


def test_bad_per_node_ignores_are_config_errors(project):
    with pytest.raises(ConfigError, match="per-node-ignores"):
        parse_config({"per-node-ignores": ["x"]}, project / "bnlint.toml")
    config = parse_config({"per-node-ignores": {"x": ["BN999"]}}, project / "bnlint.toml")
    with pytest.raises(ConfigError, match="unknown rule selector 'BN999'"):
        ConfigIgnores(config, all_checks().keys())


def test_rules_in_per_file_ignores_still_run_so_usage_is_known():
    model = model_from_text(MODEL)
    assert {f.code for f in lint_model(model)} == {"BN001", "BN004"}
