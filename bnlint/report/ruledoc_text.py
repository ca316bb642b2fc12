"""`bnlint rule`: a rule's documentation as text (ruff-style sections) or JSON."""

from __future__ import annotations

import json
import textwrap

from bnlint.ruledocs import RuleDoc

WIDTH = 100


def _paragraphs(text: str) -> str:
    """Re-wrap prose paragraphs; keep indented or diagram lines as written."""
    out = []
    for block in text.strip().split("\n\n"):
        lines = block.splitlines()
        if any(line.startswith((" ", "\t", "-", "*")) or "->" in line for line in lines):
            out.append(block)
        else:
            out.append(textwrap.fill(" ".join(line.strip() for line in lines), WIDTH))
    return "\n\n".join(out)


def citation_text(index: int, citation) -> str:
    authors = ", ".join(citation.authors)
    ident = " ".join(x for x in (f"arXiv:{citation.arxiv}" if citation.arxiv else "",
                                 f"doi:{citation.doi}" if citation.doi else "", citation.url) if x)
    head = f"{index}. [{citation.stance}] {authors} ({citation.year}). {citation.title}. {citation.venue}. {ident}"
    body = textwrap.fill(f"{citation.section}: {citation.claim}", WIDTH, initial_indent="   ", subsequent_indent="   ")
    return textwrap.fill(head, WIDTH, subsequent_indent="   ") + "\n" + body


def render_rule_text(doc: RuleDoc) -> str:
    fix = f"{'available' if doc.fix_available else 'not available'} ({doc.fix_safety})"
    sections = [
        f"{doc.id} {doc.slug}: {doc.title}",
        f"Default severity: {doc.severity.value} | tags: {', '.join(doc.tags) or '-'} | fix: {fix}",
        "## What it does\n" + _paragraphs(doc.summary),
        "## Why it matters\n" + _paragraphs(doc.rationale),
        "## Example\n" + doc.example,
        "## Evidence for\n" + _paragraphs(doc.evidence_for),
        "## Evidence against\n" + (_paragraphs(doc.evidence_against) or "None known."),
        "## Fix safety\n" + _paragraphs(doc.fix_description),
        "## References\n" + "\n".join(citation_text(i, c) for i, c in enumerate(doc.citations, 1)),
    ]
    return "\n\n".join(sections) + "\n"


def render_rules_json(docs: list[RuleDoc]) -> str:
    return json.dumps([doc.to_dict() for doc in docs], indent=2) + "\n"
