"""Human-readable output: `full` (with evidence and citations) and `concise` (one line per finding).

Names from the model pass through `printable`, so a hostile node name cannot drive the terminal.
"""

from __future__ import annotations

import os
import textwrap
from collections import Counter
from functools import lru_cache
from pathlib import Path

import click

from bnlint.findings import Finding, Severity
from bnlint.report.safe_text import printable
from bnlint.ruledocs import rule_doc

_SEVERITY_COLOR = {Severity.ERROR: "red", Severity.WARNING: "yellow", Severity.INFO: "blue"}
WIDTH = 100


def _style(text: str, color: bool, **kwargs) -> str:
    return click.style(text, **kwargs) if color else text


def location_text(finding: Finding) -> str:
    """`src/net.py:12` when the Python source is known, else `model.onnx:main/bn1`."""
    loc = finding.location
    if loc.source_file:
        return printable(loc.source)
    return printable(f"{loc.file}:{loc.graph}/{loc.node}")


def headline(finding: Finding, color: bool) -> str:
    sev = finding.severity
    code, where = finding.code, location_text(finding)
    if color:
        code = click.style(code, fg=_SEVERITY_COLOR[sev], bold=True)
        where = click.style(where, bold=True)
    tag = " [contested]" if "contested" in finding.tags else ""
    return f"{where}: {code} [{_SEVERITY_TEXT[sev]}]{tag} {printable(finding.message)}"


_SEVERITY_TEXT = {severity: severity.value for severity in Severity}  # Enum.value is a descriptor call


def render_concise(findings: list[Finding], *, color: bool = False) -> str:
    return "".join(headline(f, color) + "\n" for f in findings)


def _wrapped(prefix: str, text: str) -> list[str]:
    indent = " " * len(prefix)
    return textwrap.wrap(text, WIDTH, initial_indent=prefix, subsequent_indent=indent) or [prefix.rstrip()]


def source_snippet(finding: Finding, source_root: str | None, cache: dict) -> list[str]:
    """The Python line a finding points to, ruff style (`12 |     nn.BatchNorm2d(64),`), when readable."""
    loc = finding.location
    if not loc.source_file or not loc.source_line:
        return []
    path = Path(loc.source_file)
    if not path.is_absolute():
        path = Path(source_root or os.getcwd()) / path
    if path not in cache:
        try:
            cache[path] = path.read_text(encoding="utf-8", errors="replace").splitlines()
        except OSError:
            cache[path] = None
    text = cache[path]
    if not text or loc.source_line > len(text):
        return []
    number = str(loc.source_line)
    gutter = " " * len(number)
    code = printable(text[loc.source_line - 1].expandtabs(4).rstrip())
    if len(code) > WIDTH:
        code = code[:WIDTH - 1] + "…"
    return [f"{gutter} |", f"{number} | {code}", f"{gutter} |"]


@lru_cache(maxsize=None)
def rule_help(code: str) -> tuple[str, ...]:
    """The lines under a finding that come from its rule (rationale, citations, fix); rule files do not
    change while bnlint runs, so each code is wrapped once per process."""
    doc = rule_doc(code)
    if doc is None:
        return ()
    lines = _wrapped("   = why: ", doc.summary)
    for citation in doc.citations:
        label = {"for": "for", "against": "against", "context": "see"}[citation.stance]
        lines += _wrapped(f"   = {label}: ",
                          f"{citation.short_authors} {citation.year}, {citation.section}: {citation.claim} "
                          f"<{citation.link}>")
    if doc.fix_available:
        lines.append(f"   = fix: `bnlint fix` ({doc.fix_safety})")
    lines.append(f"   = docs: bnlint rule {code}")
    return tuple(lines)


def render_full(findings: list[Finding], *, color: bool = False, source_root: str | None = None) -> str:
    """Each finding with its node and the Python line it points to (when the file exists); its rule's rationale
    and citations under the first finding of each code only, so a model with hundreds of findings stays
    readable (later findings point back with their `docs` line)."""
    report = FullReport(color=color, source_root=source_root)
    report.add("", findings)
    return report.text()


class FullReport:
    """render_full in two steps, so `bnlint check` can render each model's findings as its result arrives,
    while worker processes lint the others: `add` writes every block with the short `docs` line, `text` puts
    the rule's evidence under the first finding of each code, in order of the keys (the models' shown paths,
    the report order). A key added twice (two targets shown under one path, whose findings the report
    interleaves) makes `text` return None: render the findings with render_full instead."""

    def __init__(self, *, color: bool = False, source_root: str | None = None):
        self.color, self.source_root = color, source_root
        self._sources: dict = {}
        self._parts: dict[str, tuple[list[Finding], list[str]]] = {}
        self._repeated = False

    # A LintObserver too: run_lint hands it each model's result as it arrives.
    def started(self, total: int) -> None:
        pass

    def finished(self, outcome) -> None:
        if outcome.error is None:
            self.add(outcome.shown, outcome.findings)

    def add(self, key: str, findings) -> None:
        if key in self._parts:
            self._repeated = True
        self._parts[key] = (findings, self._blocks(findings))

    def text(self) -> str | None:
        if self._repeated:
            return None
        explained: set[str] = set()
        blocks: list[str] = []
        for key in sorted(self._parts):
            findings, rendered = self._parts[key]
            for i, finding in enumerate(findings):
                if finding.code not in explained:  # rustc-style: the rule's evidence once, at its first finding
                    explained.add(finding.code)
                    rendered[i] = _block(finding, self.color, self.source_root, self._sources, first=True)
            blocks += rendered
        return "\n".join(blocks)

    def _blocks(self, findings) -> list[str]:
        blocks = []
        color, source_root, sources = self.color, self.source_root, self._sources
        for finding in findings:
            code, _slug, severity, message, loc, _related, _fixable, tags, _citations = finding
            file, graph, node, op_type, index, module, module_class, source_file, _line = loc
            try:
                plain = (message.isprintable() and node.isprintable() and file.isprintable() and graph.isprintable()
                         and op_type.isprintable())
            except AttributeError:  # a name protobuf could not decode arrives as bytes: shown by _block
                plain = False
            if color or source_file or module or module_class or not plain:
                blocks.append(_block(finding, color, source_root, sources, first=False))
                continue
            # The common block (a plain ONNX finding, nothing to escape) in one f-string, fields unpacked at
            # once (Severity's value read directly: hashing an Enum is a Python call): 116,000 findings of
            # 1,000 models in two thirds of the time. Same text as _block.
            tag = " [contested]" if "contested" in tags else ""
            blocks.append(f"{file}:{graph}/{node}: {code} [{severity._value_}]{tag} {message}\n"
                          f"  --> {file} graph {graph}, node #{index} {op_type} '{node}'\n"
                          f"   = docs: bnlint rule {code} (evidence above)\n")
        return blocks


def _block(finding: Finding, color: bool, source_root: str | None, sources: dict, *, first: bool) -> str:
    """One finding of render_full: headline, node, Python line, and its rule's evidence when it is the first
    finding of its code (else a line pointing back to it)."""
    loc = finding.location
    lines = [headline(finding, color)]
    node_line = f"  --> {loc.file} graph {loc.graph}, node #{loc.index} {loc.op_type} '{loc.node}'"
    if loc.module:
        node_line += f", module {loc.module}" + (f" ({loc.module_class})" if loc.module_class else "")
    elif loc.module_class:
        node_line += f", in {loc.module_class}.forward"
    lines.append(_style(printable(node_line), color, dim=True))
    if loc.source_file:
        lines += source_snippet(finding, source_root, sources)
    if first:
        lines += rule_help(finding.code)
    else:
        lines.append(f"   = docs: bnlint rule {finding.code} (evidence above)")
    return "\n".join(lines) + "\n"


def render_statistics(findings: list[Finding]) -> str:
    counts = Counter(f.code for f in findings)
    rows = []
    for code in sorted(counts):
        doc = rule_doc(code)
        fixable = "[*]" if doc is not None and doc.fix_available else "   "
        severity = next(f.severity.value for f in findings if f.code == code)
        slug = doc.slug if doc else ""
        rows.append(f"{counts[code]:>6}  {code}  {fixable} {slug:<32} {severity}")
    return "".join(row + "\n" for row in rows)


def summary_line(findings: list[Finding], files: int, errors: int) -> str:
    models = f"{files} model{'s' if files != 1 else ''}"
    if not findings:
        text = f"No findings in {models}."
    else:
        by = Counter(f.severity for f in findings)
        parts = [f"{by[s]} {s.value}{'s' if by[s] != 1 and s is not Severity.INFO else ''}"
                 for s in (Severity.ERROR, Severity.WARNING, Severity.INFO) if by[s]]
        fixable = sum(1 for f in findings if f.fixable)
        text = f"Found {len(findings)} finding{'s' if len(findings) != 1 else ''} ({', '.join(parts)}) in {models}."
        if fixable:
            text += f" {fixable} fixable with `bnlint fix`."
    if errors:
        text += f" {errors} file{'s' if errors != 1 else ''} could not be read."
    return text
