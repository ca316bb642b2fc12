"""GitHub Actions workflow commands: one `::error`/`::warning`/`::notice` annotation per finding.

Escaping follows GitHub's workflow-command rules: in the message `%`, CR and LF are percent-encoded; in
property values (`file`, `title`) `:` and `,` are too, since they separate the properties.
"""

from __future__ import annotations

from pathlib import Path

from bnlint.findings import Finding, Severity
from bnlint.fingerprints import artifact_path, relative_to_root, source_path
from bnlint.report.safe_text import printable

_COMMAND = {Severity.ERROR: "error", Severity.WARNING: "warning", Severity.INFO: "notice"}
_CRLF = "\r\n"


def escape_data(text: str) -> str:
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def escape_property(text: str) -> str:
    return escape_data(text).replace(":", "%3A").replace(",", "%2C")


def _command(kind: str, properties: dict[str, object], message: str) -> str:
    """Control characters other than CR and LF (which GitHub's own escaping encodes) are written as
    `\x1b`-style escapes: job logs render ANSI sequences, so a node name must not carry one."""
    props = ",".join(f"{key}={escape_property(printable(str(value), keep=_CRLF))}"
                     for key, value in properties.items() if value is not None)
    data = escape_data(printable(message, keep=_CRLF))
    return f"::{kind} {props}::{data}" if props else f"::{kind}::{data}"


def annotation(finding: Finding, root: Path, source_root: str | None = None) -> str:
    """The annotation for one finding: at the Python source line when known, else on the model file."""
    loc = finding.location
    if loc.source_file:
        properties = {"file": relative_to_root(source_path(loc.source_file, source_root), root),
                      "line": loc.source_line}
        where = f"{loc.module or loc.node} in {loc.file}"
    else:
        properties = {"file": relative_to_root(artifact_path(loc.file), root), "line": None}
        where = f"{loc.graph}/{loc.node}"
    properties["title"] = f"bnlint ({finding.code})"
    return _command(_COMMAND[finding.severity], properties, f"{where}: {finding.message}")


def render_github(findings: list[Finding], errors: list[tuple[str, str]], *, root: Path,
                  source_root: str | None = None) -> str:
    lines = [annotation(finding, root, source_root) for finding in findings]
    lines += [_command("error", {"file": relative_to_root(path, root), "title": "bnlint (load error)"}, message)
              for path, message in errors]
    return "".join(line + "\n" for line in lines)
