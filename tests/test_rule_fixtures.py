"""Per rule: the `fires` fixtures produce exactly the expected findings, the `silent` ones none."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from conftest import FIXTURES

sys.path.insert(0, str(FIXTURES))
from build import compile_text, expectations, main as build_main, sources  # noqa: E402

from bnlint.engine import lint_model  # noqa: E402
from bnlint.graph import build_model  # noqa: E402
from bnlint.onnx_loader import load_onnx  # noqa: E402
from bnlint.registry import all_checks  # noqa: E402

RULE_FIXTURES = sources(FIXTURES / "rules")


def rule_of(path: Path) -> str:
    return path.name.split(".")[0]


def lint_fixture(path: Path):
    binary = path.with_suffix(".onnx")
    return lint_model(build_model(load_onnx(binary), str(binary)))


@pytest.mark.parametrize("path", [p for p in RULE_FIXTURES if ".fires" in p.name], ids=lambda p: p.stem)
def test_fires_exactly_expected(path):
    code = rule_of(path)
    expected = expectations(path)
    assert expected, f"{path.name} declares no `# expect:` lines"
    findings = [f for f in lint_fixture(path) if f.code == code]
    assert sorted((f.code, f.location.node) for f in findings) == sorted((c, n) for c, n, _ in expected)
    severities = {n: s for _, n, s in expected if s}
    for finding in findings:
        if finding.location.node in severities:
            assert finding.severity.value == severities[finding.location.node]


@pytest.mark.parametrize("path", [p for p in RULE_FIXTURES if ".silent" in p.name], ids=lambda p: p.stem)
def test_silent_fixture(path):
    code = rule_of(path)
    assert not expectations(path)
    assert [f for f in lint_fixture(path) if f.code == code] == []


def test_every_rule_has_both_fixtures():
    for code in all_checks():
        names = {p.name for p in RULE_FIXTURES if rule_of(p) == code}
        assert any(".fires" in n for n in names), f"{code} has no fires fixture"
        assert any(".silent" in n for n in names), f"{code} has no silent fixture"


def test_binaries_match_their_text_sources():
    assert build_main(["--check"]) == 0
    for source in sources():
        assert source.with_suffix(".onnx").read_bytes() == compile_text(source)
