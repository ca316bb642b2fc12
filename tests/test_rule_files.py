"""Rule files: schema-valid, cited, one check per file and one file per check, rendered by `bnlint rule`."""

import json

import pytest

from bnlint.registry import META_CODES, all_checks
from bnlint.ruledocs import all_rule_docs, parse_rule_file, rules_dir, validate

RULE_FILES = sorted(rules_dir().glob("BN*.toml"))


def test_rule_files_and_checks_match():
    assert {p.stem for p in RULE_FILES} == set(all_checks()) | set(META_CODES)
    assert not set(all_checks()) & set(META_CODES)  # a meta code is reported by the pipeline, never a check


@pytest.mark.parametrize("path", RULE_FILES, ids=lambda p: p.stem)
def test_rule_file_is_valid_and_cited(path):
    doc = parse_rule_file(path)
    assert doc.citations
    assert all(c.link.startswith("http") for c in doc.citations)
    if doc.contested:
        assert doc.evidence_against
        assert any(c.stance == "against" for c in doc.citations)


def test_validation_catches_problems(tmp_path):
    bad = {"id": "BN999", "slug": "Not Kebab", "title": "t", "severity": "fatal", "tags": ["contested"],
           "summary": "s", "rationale": "r", "example": "e", "evidence": {"for": "", "against": ""},
           "fix": {"available": True, "safety": "none", "description": ""},
           "citations": [{"authors": ["A"], "title": "T", "venue": "V", "year": 2000, "arxiv": "", "doi": "",
                          "url": "", "section": "", "claim": "", "stance": "maybe"}]}
    problems = " | ".join(validate(bad, tmp_path / "BN998.toml"))
    for needle in ("does not match id", "kebab-case", "severity", "fix safety", "arxiv id", "stance",
                   "section and a claim", "citation against"):
        assert needle in problems
    assert validate({}, tmp_path / "BN001.toml")[0].startswith("missing key")


@pytest.mark.parametrize("code", sorted(all_rule_docs()))
def test_rule_command_renders(run_cli, code):
    result = run_cli("rule", code)
    assert result.exit_code == 0
    doc = all_rule_docs()[code]
    assert result.stdout.startswith(f"{code} {doc.slug}: {doc.title}")
    for section in ("## What it does", "## Why it matters", "## Evidence for", "## Evidence against",
                    "## Fix safety", "## References"):
        assert section in result.stdout
    for citation in doc.citations:
        assert citation.title in result.stdout.replace("\n   ", " ")


def test_rule_all_json_and_slug_lookup(run_cli):
    result = run_cli("rule", "--all", "--format", "json")
    data = json.loads(result.stdout)
    assert [d["id"] for d in data] == sorted(all_rule_docs())
    assert all(d["citations"] for d in data)
    by_slug = run_cli("rule", "bn-after-activation")
    assert by_slug.exit_code == 0 and by_slug.stdout.startswith("BN001")


def test_rule_unknown_and_missing(run_cli):
    unknown = run_cli("rule", "BN999")
    assert unknown.exit_code == 2 and "unknown rule" in unknown.stderr
    assert run_cli("rule").exit_code == 2
