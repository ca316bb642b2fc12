"""`# bnlint: ignore[BN001]` on the Python line a finding points to suppresses that finding.

Like ruff's `# noqa: B011`: codes in brackets (comma-separated), or a bare `# bnlint: ignore` for every
code. Only comments on lines the model points to are considered (the lines that built its layers or
called its functional ops), so one file may hold several factories without their comments interfering.
Such a comment that suppresses nothing is reported as BN100 (an unknown code too); a code that is not
selected in this run is not reported, since bnlint cannot tell whether it would have fired (nor is a bare
`ignore` unless every rule ran).

Plain ONNX models without PyTorch provenance skip all of this at the cost of one dict lookup.
"""

from __future__ import annotations

import io
import re
import tokenize
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from bnlint.engine import location_of
from bnlint.findings import Finding, Severity, sort_findings
from bnlint.graph import Model
from bnlint.registry import all_checks, known_codes
from bnlint.ruledocs import rule_doc

UNUSED_CODE = "BN100"
_DIRECTIVE = re.compile(r"#\s*bnlint\s*:\s*ignore\b(?:\s*\[(?P<codes>[^\]]*)\])?", re.IGNORECASE)


@dataclass(frozen=True)
class Directive:
    """One suppression comment: the codes it names, or None for every code."""

    line: int
    codes: frozenset[str] | None
    text: str

    def covers(self, code: str) -> bool:
        return self.codes is None or code in self.codes


def parse_directive(comment: str, line: int) -> Directive | None:
    match = _DIRECTIVE.search(comment)
    if match is None:
        return None
    raw = match.group("codes")
    codes = None if raw is None else frozenset(c.strip().upper() for c in raw.split(",") if c.strip())
    return Directive(line, codes, match.group(0))


def directives_in(text: str) -> dict[int, Directive]:
    """Suppression comments by line, from real comment tokens (a `#` inside a string does not count)."""
    found: dict[int, Directive] = {}
    try:
        for token in tokenize.generate_tokens(io.StringIO(text).readline):
            if token.type == tokenize.COMMENT:
                directive = parse_directive(token.string, token.start[0])
                if directive is not None:
                    found[directive.line] = directive
    except (tokenize.TokenError, IndentationError, SyntaxError):
        for number, line in enumerate(text.splitlines(), 1):  # unfinished file: best effort per line
            directive = parse_directive(line, number) if "#" in line else None
            if directive is not None:
                found[number] = directive
    return found


def read_directives(path: Path) -> dict[int, Directive]:
    try:
        with tokenize.open(path) as handle:
            return directives_in(handle.read())
    except (OSError, SyntaxError, UnicodeDecodeError):
        return {}


def apply_source_suppressions(
    model: Model,
    findings: Iterable[Finding],
    *,
    codes: Iterable[str],
    severity_overrides: Mapping[str, Severity] | None = None,
    display_path: str,
    source_root: str | None = None,
) -> list[Finding]:
    """Findings minus those suppressed in source, plus BN100 for directives that suppressed nothing."""
    findings = list(findings)
    pointed = _lines_pointed_to(model)
    if not pointed:
        return sort_findings(findings)
    from bnlint.torch_frontend.sourcemap import resolve_source

    directives: dict[tuple[str, int], Directive] = {}
    for file, lines in pointed.items():
        table = read_directives(resolve_source(file, source_root))
        directives.update(((file, line), table[line]) for line in lines if line in table)
    if not directives:
        return sort_findings(findings)
    kept, used = [], set()
    for finding in findings:
        loc = finding.location
        directive = directives.get((loc.source_file, loc.source_line))
        if directive is not None and directive.covers(finding.code):
            used.add((loc.source_file, loc.source_line, finding.code))
        else:
            kept.append(finding)
    selected = set(codes)
    if UNUSED_CODE in selected:
        kept += _unused(model, directives, used, selected, severity_overrides or {}, display_path)
    return sort_findings(kept)


def _lines_pointed_to(model: Model) -> dict[str, set[int]]:
    lines: dict[str, set[int]] = {}
    for record in model.info.provenance.values():
        if record.source_file and record.source_line:
            lines.setdefault(record.source_file, set()).add(record.source_line)
    return lines


def _unused(model, directives, used, selected, overrides, display_path) -> list[Finding]:
    known = set(known_codes())
    checks = set(all_checks())
    doc = rule_doc(UNUSED_CODE)
    nodes = _first_node_per_line(model)
    findings = []
    for (file, line), directive in sorted(directives.items()):
        hits = {code for f, l, code in used if (f, l) == (file, line)}
        if directive.codes is None:  # judged only when every rule ran
            problems = [] if hits or not checks <= selected else ["it suppresses no finding on this line"]
        else:
            unknown = sorted(directive.codes - known)
            stale = sorted(c for c in directive.codes & known if c in selected and c not in hits)
            problems = [f"unknown rule code{'s' if len(unknown) > 1 else ''} {', '.join(unknown)}"] if unknown else []
            if stale:
                problems.append(f"no {', '.join(stale)} finding on this line to suppress")
        if not problems:
            continue
        node = nodes[(file, line)]
        findings.append(Finding(
            code=UNUSED_CODE,
            slug=doc.slug,
            severity=overrides.get(UNUSED_CODE) or doc.severity,
            message=f"unused suppression `{directive.text}`: {'; '.join(problems)}",
            location=location_of(node, display_path),
            fixable=False,
            tags=doc.tags,
            citations=doc.citation_refs(),
        ))
    return findings


def _first_node_per_line(model: Model) -> dict[tuple[str, int], object]:
    first = {}
    for graph in model.all_graphs():
        for node in graph.nodes:
            record = node.provenance
            if record is not None and record.source_file and record.source_line:
                first.setdefault((record.source_file, record.source_line), node)
    return first
