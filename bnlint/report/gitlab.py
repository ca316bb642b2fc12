"""GitLab Code Quality report (a JSON array of issues) with fingerprints that survive node reordering."""

from __future__ import annotations

import hashlib
from pathlib import Path

from bnlint.findings import Finding, Severity
from bnlint.fingerprints import artifact_path, relative_to_root, source_path, unique_fingerprints
from bnlint.report.json_layout import ROOT, dumps
from bnlint.report.safe_text import json_text

_SEVERITY = {Severity.INFO: "info", Severity.WARNING: "minor", Severity.ERROR: "major"}


def _issue(finding: Finding, fingerprint: str, root: Path, source_root: str | None) -> dict:
    loc = finding.location
    if loc.source_file:
        path, line = relative_to_root(source_path(loc.source_file, source_root), root), max(loc.source_line or 1, 1)
    else:
        path, line = relative_to_root(artifact_path(loc.file), root), 1
    return {
        "description": f"{finding.code}: {finding.message} [{loc.graph}/{loc.node}]",
        "check_name": finding.code,
        "fingerprint": fingerprint,
        "severity": _SEVERITY[finding.severity],
        "location": {"path": path, "lines": {"begin": line}},
    }


def _error_issue(path: str, message: str, root: Path) -> dict:
    relative = relative_to_root(path, root)
    return {
        "description": f"bnlint could not read this file: {message}",
        "check_name": "load-error",
        "fingerprint": hashlib.sha256(f"load-error\x1f{relative}".encode()).hexdigest()[:32],
        "severity": "critical",
        "location": {"path": relative, "lines": {"begin": 1}},
    }


def render_gitlab(findings: list[Finding], errors: list[tuple[str, str]], *, root: Path,
                  source_root: str | None = None) -> str:
    issues = [_issue(f, fp, root, source_root) for f, fp in zip(findings, unique_fingerprints(findings, root))]
    issues += [_error_issue(path, message, root) for path, message in errors]
    return json_text(dumps(issues, rows=(ROOT,), ensure_ascii=False)) + "\n"
