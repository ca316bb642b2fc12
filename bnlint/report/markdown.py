"""Markdown output: a report for `$GITHUB_STEP_SUMMARY` and pull-request comments, with a Mermaid picture
of the subgraph behind each finding; and each rule's documentation as Markdown (SARIF `help.markdown`).

Sizes are capped so the report fits where it is posted: a pull-request comment holds 65,536 characters
(a step summary 1 MiB). The table stops at MAX_TABLE_ROWS rows or TABLE_BUDGET characters, the detailed
sections (with pictures) at MAX_DETAILED or when the whole report would pass TOTAL_BUDGET characters; a
note then says how many were left out.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Mapping

from bnlint.findings import Finding, Severity
from bnlint.pictures import Picture, PictureKey, picture_key
from bnlint.report.links import rule_url
from bnlint.report.mermaid import mermaid_block
from bnlint.report.safe_text import printable
from bnlint.ruledocs import RuleDoc, rule_doc

MAX_TABLE_ROWS = 500
MAX_DETAILED = 50
TABLE_BUDGET = 25_000
TOTAL_BUDGET = 60_000
_BADGE = {Severity.ERROR: "🔴 error", Severity.WARNING: "🟠 warning", Severity.INFO: "🔵 info"}
# `_` only matters at a word boundary (GFM ignores intraword underscores), `#` only at the start.
_SPECIAL = re.compile(r"([\\*\[\]<>|~`]|(?<![A-Za-z0-9])_|_(?![A-Za-z0-9])|^#)")
_CODE_SPAN = re.compile(r"(`+)(.+?)\1")


def code(text: str) -> str:
    """`text` as an inline code span, whatever backticks it contains (control characters escaped)."""
    text = printable(text, keep="\r\n").replace("\r", " ").replace("\n", " ")
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    fence = "`" * (longest + 1)
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def escape(text: str) -> str:
    """Prose safe in Markdown: syntax characters escaped, `code spans` written by rule authors kept,
    control characters written as escapes (line breaks become spaces)."""
    text = printable(text, keep="\r\n")
    out, last = [], 0
    for match in _CODE_SPAN.finditer(text):
        out.append(_SPECIAL.sub(r"\\\g<0>", text[last:match.start()]))
        out.append(match.group(0))
        last = match.end()
    out.append(_SPECIAL.sub(r"\\\g<0>", text[last:]))
    return "".join(out).replace("\r", " ").replace("\n", " ")


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def _where(finding: Finding) -> str:
    loc = finding.location
    if loc.source:
        return f"{code(loc.source)} ({code(loc.file)} {code(loc.graph + '/' + loc.node)})"
    return f"{code(loc.file)} {code(loc.graph + '/' + loc.node)}"


def _count(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def _headline(findings: list[Finding], files: int, errors: list[tuple[str, str]]) -> str:
    if not findings:
        text = f"No findings in {_count(files, 'model')}."
    else:
        by = Counter(f.severity for f in findings)
        parts = ", ".join(_count(by[s], s.value) if s is not Severity.INFO else f"{by[s]} info"
                          for s in (Severity.ERROR, Severity.WARNING, Severity.INFO) if by[s])
        text = f"**{_count(len(findings), 'finding')}** ({parts}) in {_count(files, 'model')}."
    if errors:
        text += f" **{_count(len(errors), 'file')} could not be read.**"
    return text


def _citations(finding: Finding) -> list[str]:
    lines = []
    for citation in finding.citations:
        stance = {"for": "supports", "against": "disputes", "context": "context"}.get(citation.stance, citation.stance)
        lines.append(f"- [{escape(citation.short)}]({citation.link}), {escape(citation.section)} ({stance}): "
                     f"{escape(citation.claim)}")
    return lines


def _section(number: int, finding: Finding, picture: Picture | None) -> str:
    doc = rule_doc(finding.code)
    title = f"### {number}. {finding.code} {finding.slug}"
    lines = [title, "", f"{_BADGE[finding.severity]} · {_where(finding)}", "", escape(finding.message), ""]
    if picture is not None:
        lines += [mermaid_block(picture).rstrip("\n"), ""]
    if doc is not None:
        lines += [f"**Why:** {escape(doc.summary)}", ""]
    cited = _citations(finding)
    if cited:
        lines += ["<details><summary>References</summary>", "", *cited, "", "</details>", ""]
    docs_line = (f"Rule documentation: [{finding.code}]({rule_url(finding.code)}) or "
                 f"{code('bnlint rule ' + finding.code)}")
    if finding.fixable:
        docs_line += f" · fixable with {code('bnlint fix')}"
    lines += [docs_line, ""]
    return "\n".join(lines)


def render_markdown(
    findings: list[Finding],
    errors: list[tuple[str, str]],
    *,
    files: int = 0,
    pictures: Mapping[PictureKey, Picture] | None = None,
) -> str:
    pictures = pictures or {}
    out = ["## bnlint report", "", _headline(findings, files, errors), ""]
    tail = []
    if errors:
        tail += ["### Files that could not be read", ""]
        tail += [f"- {code(path)}: {escape(message)}" for path, message in errors[:100]]
        if len(errors) > 100:
            tail.append(f"- … and {len(errors) - 100} more")
        tail.append("")
    if findings:
        out += ["| Severity | Rule | Location | Message |", "| --- | --- | --- | --- |"]
        size = 0
        rows = 0
        for finding in findings[:MAX_TABLE_ROWS]:
            row = (f"| {_BADGE[finding.severity]} | [{finding.code}]({rule_url(finding.code)}) | "
                   f"{_cell(_where(finding))} | {_cell(escape(finding.message))} |")
            if size + len(row) > TABLE_BUDGET:
                break
            out.append(row)
            size += len(row) + 1
            rows += 1
        if rows < len(findings):
            out.append(f"\n… and {len(findings) - rows} more (use `--format sarif` or `json` for all).")
        out.append("")
        used = sum(len(line) + 1 for line in out) + sum(len(line) + 1 for line in tail)
        detailed = 0
        for number, finding in enumerate(findings[:MAX_DETAILED], 1):
            section = _section(number, finding, pictures.get(picture_key(finding)))
            if used + len(section) > TOTAL_BUDGET:
                break
            out.append(section)
            used += len(section) + 1
            detailed += 1
        if detailed < len(findings):
            out += [f"Only the first {detailed} findings are shown in detail.", ""]
    return "\n".join(out + tail).rstrip("\n") + "\n"


def render_rule_markdown(doc: RuleDoc) -> str:
    """A rule's documentation as Markdown, with the same sections as `bnlint rule` prints."""
    fix = f"{'available' if doc.fix_available else 'not available'} ({doc.fix_safety})"
    refs = []
    for i, c in enumerate(doc.citations, 1):
        ident = " · ".join(x for x in (f"arXiv:{c.arxiv}" if c.arxiv else "", f"doi:{c.doi}" if c.doi else "") if x)
        refs.append(f"{i}. **[{c.stance}]** {escape(', '.join(c.authors))} ({c.year}). "
                    f"[{escape(c.title)}]({c.link}). {escape(c.venue)}.{' ' + ident if ident else ''}  \n"
                    f"   {escape(c.section)}: {escape(c.claim)}")
    sections = [
        f"## {doc.id} {doc.slug}: {escape(doc.title)}",
        f"Default severity: **{doc.severity.value}** · tags: {', '.join(doc.tags) or '-'} · fix: {fix}",
        "### What it does\n\n" + doc.summary,
        "### Why it matters\n\n" + doc.rationale,
        "### Example\n\n```text\n" + doc.example + "\n```",
        "### Evidence for\n\n" + doc.evidence_for,
        "### Evidence against\n\n" + (doc.evidence_against or "None known."),
        "### Fix safety\n\n" + doc.fix_description,
        "### References\n\n" + "\n".join(refs),
    ]
    return "\n\n".join(sections) + "\n"
