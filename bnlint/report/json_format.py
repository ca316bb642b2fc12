"""Machine-readable output: one JSON document with findings, load errors and a summary."""

from __future__ import annotations

from collections import Counter

from bnlint import __version__
from bnlint.findings import Finding
from bnlint.report.json_layout import dumps


def render_json(findings: list[Finding], errors: list[tuple[str, str]], *, files: int = 0) -> str:
    by_severity = Counter(f.severity.value for f in findings)
    document = {
        "tool": "bnlint",
        "version": __version__,
        "findings": [f.to_dict() for f in findings],
        "errors": [{"file": path, "message": message} for path, message in errors],
        "summary": {
            "models": files,
            "findings": len(findings),
            "by_severity": {k: by_severity.get(k, 0) for k in ("error", "warning", "info")},
            "fixable": sum(1 for f in findings if f.fixable),
        },
    }
    return dumps(document, rows=("findings", "errors")) + "\n"
