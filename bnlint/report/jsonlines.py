"""JSON Lines: one finding per line (the `json` format's finding objects plus a stable fingerprint), for
streaming into jq, log pipelines or databases. Load errors go to stderr and the exit code, not here."""

from __future__ import annotations

import json
from pathlib import Path

from bnlint.findings import Finding
from bnlint.fingerprints import unique_fingerprints
from bnlint.report.safe_text import json_text


def render_json_lines(findings: list[Finding], *, root: Path) -> str:
    encode = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode  # one encoder for all lines
    lines = []
    for finding, fingerprint in zip(findings, unique_fingerprints(findings, root)):
        record = finding.to_dict()
        record["fingerprint"] = fingerprint
        lines.append(encode(record))
    return json_text("".join(line + "\n" for line in lines))  # escapes only inside strings: once for all
