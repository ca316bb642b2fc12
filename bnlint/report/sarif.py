"""SARIF 2.1.0 output in the subset GitHub code scanning accepts.

- `tool.driver.rules` documents every rule from its TOML file: summary -> shortDescription, rationale ->
  fullDescription, the full `bnlint rule` text and its Markdown twin -> help, README anchor -> helpUri.
- Results carry `level` note/warning/error, a `partialFingerprints` entry that does not depend on node
  indices, and a primary location: the Python source line when a PyTorch front end recorded it (and it
  lies inside the project), the model file otherwise. GitHub needs `region.startLine`, so a model file
  location points at line 1; the graph/node path goes in `logicalLocations`.
- Load errors become `toolExecutionNotifications` and make `executionSuccessful` false.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from urllib.parse import quote

from bnlint import __version__
from bnlint.findings import Finding, Severity
from bnlint.fingerprints import FINGERPRINT_VERSION, artifact_path, relative_to_root, source_path, unique_fingerprints
from bnlint.report.json_layout import dumps
from bnlint.report.links import HOMEPAGE, rule_url
from bnlint.report.markdown import render_rule_markdown
from bnlint.report.ruledoc_text import render_rule_text
from bnlint.ruledocs import RuleDoc, all_rule_docs
from bnlint.report.safe_text import json_text

SCHEMA_URI = "https://json.schemastore.org/sarif-2.1.0.json"
SRCROOT = "%SRCROOT%"
FINGERPRINT_KEY = f"bnlintFingerprint/{FINGERPRINT_VERSION}"
GITHUB_TEXT_LIMIT = 1024  # GitHub truncates or rejects longer short/full descriptions
_LEVEL = {Severity.INFO: "note", Severity.WARNING: "warning", Severity.ERROR: "error"}
_PROBLEM_SEVERITY = {Severity.INFO: "recommendation", Severity.WARNING: "warning", Severity.ERROR: "error"}


def _limit(text: str, limit: int = GITHUB_TEXT_LIMIT) -> str:
    """Whole sentences of `text` up to `limit` characters (the full text stays in `help`)."""
    text = " ".join(text.split())
    if len(text) <= limit:
        return text
    cut = text[: limit - 1]
    end = cut.rfind(". ")
    return (cut[: end + 1] if end > limit // 2 else cut.rsplit(" ", 1)[0]) + "…"


def _rule(doc: RuleDoc) -> dict:
    return {
        "id": doc.id,
        "name": doc.slug,
        "shortDescription": {"text": _limit(doc.summary)},
        "fullDescription": {"text": _limit(doc.rationale)},
        "help": {"text": render_rule_text(doc), "markdown": render_rule_markdown(doc)},
        "helpUri": rule_url(doc.id),
        "defaultConfiguration": {"level": _LEVEL[doc.severity]},
        "properties": {
            "tags": ["bnlint", *doc.tags],
            "precision": "medium" if doc.contested else "high",
            "problem.severity": _PROBLEM_SEVERITY[doc.severity],
        },
    }


def _uri(path: str, root: Path) -> dict:
    """An artifactLocation: relative to %SRCROOT% inside the project, an absolute file URI outside."""
    uri, base = _uri_fields(relative_to_root(path, root))
    return {"uri": uri} if base is None else {"uri": uri, "uriBaseId": base}


@lru_cache(maxsize=4096)  # the findings of one model share its file
def _uri_fields(relative: str) -> tuple[str, str | None]:
    if relative.startswith("/"):
        return Path(relative).as_uri(), None
    return quote(relative), SRCROOT


def _inside(path: str, root: Path) -> bool:
    return not relative_to_root(path, root).startswith("/")


def _logical(finding: Finding) -> list[dict]:
    loc = finding.location
    node = {"name": loc.node, "fullyQualifiedName": f"{loc.graph}/{loc.node}", "kind": "member",
            "properties": {"opType": loc.op_type}}
    if loc.module:
        return [{"name": loc.module.rsplit(".", 1)[-1], "fullyQualifiedName": loc.module, "kind": "module"}, node]
    return [node]


def _model_location(finding: Finding, root: Path) -> dict:
    return {"physicalLocation": {"artifactLocation": _uri(artifact_path(finding.location.file), root),
                                 "region": {"startLine": 1}},
            "logicalLocations": _logical(finding)}


def _locations(finding: Finding, root: Path, source_root: str | None) -> tuple[list[dict], list[dict]]:
    """Primary location and related locations of a finding."""
    loc = finding.location
    model = _model_location(finding, root)
    source_file = source_path(loc.source_file, source_root) if loc.source_file else None
    if source_file and _inside(source_file, root):
        source = {"physicalLocation": {"artifactLocation": _uri(source_file, root),
                                       "region": {"startLine": max(loc.source_line or 1, 1)}},
                  "logicalLocations": _logical(finding)}
        model_related = dict(model, id=0, message={"text": f"in model {loc.file}, node {loc.graph}/{loc.node}"})
        return [source], [model_related]
    related = [
        {"id": k, "message": {"text": f"related node {label}"},
         "logicalLocations": [{"name": label, "fullyQualifiedName": f"{loc.graph}/{label}", "kind": "member"}]}
        for k, label in enumerate(finding.related)
    ]
    return [model], related


def _result(finding: Finding, fingerprint: str, rule_index: dict[str, int], root: Path,
            source_root: str | None) -> dict:
    locations, related = _locations(finding, root, source_root)
    result = {
        "ruleId": finding.code,
        "level": _LEVEL[finding.severity],
        "message": {"text": finding.message},
        "locations": locations,
        "partialFingerprints": {FINGERPRINT_KEY: fingerprint},
        "properties": {"slug": finding.slug, "fixable": finding.fixable, "tags": list(finding.tags)},
    }
    if finding.code in rule_index:
        result["ruleIndex"] = rule_index[finding.code]
    if related:
        result["relatedLocations"] = related
    return result


def _notification(path: str, message: str, root: Path) -> dict:
    return {
        "level": "error",
        "message": {"text": f"{path}: {message}"},
        "locations": [{"physicalLocation": {"artifactLocation": _uri(path, root)}}],
        "descriptor": {"id": "load-error"},
    }


def render_sarif(findings: list[Finding], errors: list[tuple[str, str]], *, root: Path,
                 source_root: str | None = None) -> str:
    docs = list(all_rule_docs().values())
    rule_index = {doc.id: i for i, doc in enumerate(docs)}
    fingerprints = unique_fingerprints(findings, root)
    run = {
        "tool": {"driver": {
            "name": "bnlint",
            "version": __version__,
            "semanticVersion": __version__,
            "informationUri": HOMEPAGE,
            "rules": [_rule(doc) for doc in docs],
        }},
        "originalUriBaseIds": {SRCROOT: {"uri": root.resolve().as_uri().rstrip("/") + "/"}},
        "invocations": [{
            "executionSuccessful": not errors,
            "toolExecutionNotifications": [_notification(path, message, root) for path, message in errors],
        }],
        "results": [_result(f, fp, rule_index, root, source_root) for f, fp in zip(findings, fingerprints)],
    }
    document = {"$schema": SCHEMA_URI, "version": "2.1.0", "runs": [run]}
    return json_text(dumps(document, rows=("results",), ensure_ascii=False)) + "\n"
