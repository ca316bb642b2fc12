"""Rule documentation: one TOML file per rule, shipped in the wheel as `bnlint/_rules`.

The same text serves `bnlint rule`, SARIF help and the README's rule table.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cached_property, lru_cache
from pathlib import Path
from typing import NamedTuple

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

from bnlint.findings import CitationRef, Severity

STANCES = ("for", "against", "context")
SAFETIES = ("safe", "unsafe", "none")
REQUIRED = ("id", "slug", "title", "severity", "tags", "summary", "rationale", "example", "evidence", "fix",
            "citations")
CITATION_KEYS = ("authors", "title", "venue", "year", "arxiv", "doi", "url", "section", "claim", "stance")


@lru_cache(maxsize=1)
def rules_dir() -> Path:
    """The installed copy inside the package, or the repository's `rules/` in a source checkout."""
    packaged = Path(__file__).parent / "_rules"
    if packaged.is_dir():
        return packaged
    return Path(__file__).parent.parent / "rules"


class Citation(NamedTuple):
    authors: tuple[str, ...]
    title: str
    venue: str
    year: int
    arxiv: str
    doi: str
    url: str
    section: str
    claim: str
    stance: str

    @property
    def short_authors(self) -> str:
        # a person's surname; an organisation ("ONNX contributors") keeps its full name
        surnames = [a.split()[-1] if " " in a and a.split()[-1][:1].isupper() else a for a in self.authors]
        if len(surnames) == 1:
            return surnames[0]
        if len(surnames) == 2:
            return f"{surnames[0]} & {surnames[1]}"
        return f"{surnames[0]} et al."

    @property
    def link(self) -> str:
        if self.arxiv:
            return f"https://arxiv.org/abs/{self.arxiv}"
        if self.doi:
            return f"https://doi.org/{self.doi}"
        return self.url

    @property
    def reference(self) -> str:
        """`Ioffe & Szegedy (2015), ICML 2015, arXiv:1502.03167` style."""
        ident = f"arXiv:{self.arxiv}" if self.arxiv else (f"doi:{self.doi}" if self.doi else self.url)
        return f"{self.short_authors} ({self.year}), {self.venue}, {ident}"

    def ref(self) -> CitationRef:
        return CitationRef(short=f"{self.short_authors} {self.year}", section=self.section, link=self.link,
                           stance=self.stance, claim=self.claim)


@dataclass(frozen=True)
class RuleDoc:
    id: str
    slug: str
    title: str
    severity: Severity
    tags: tuple[str, ...]
    summary: str
    rationale: str
    example: str
    evidence_for: str
    evidence_against: str
    fix_available: bool
    fix_safety: str
    fix_description: str
    citations: tuple[Citation, ...]
    source: Path

    @property
    def contested(self) -> bool:
        return "contested" in self.tags

    def citation_refs(self) -> tuple[CitationRef, ...]:
        return self._citation_refs

    @cached_property
    def _citation_refs(self) -> tuple[CitationRef, ...]:
        return tuple(c.ref() for c in self.citations)

    def to_dict(self) -> dict:
        return {
            "id": self.id, "slug": self.slug, "title": self.title, "severity": self.severity.value,
            "tags": list(self.tags), "summary": self.summary, "rationale": self.rationale,
            "example": self.example,
            "evidence": {"for": self.evidence_for, "against": self.evidence_against},
            "fix": {"available": self.fix_available, "safety": self.fix_safety,
                    "description": self.fix_description},
            "citations": [
                {"authors": list(c.authors), "title": c.title, "venue": c.venue, "year": c.year,
                 "arxiv": c.arxiv, "doi": c.doi, "url": c.url, "section": c.section, "claim": c.claim,
                 "stance": c.stance, "link": c.link}
                for c in self.citations
            ],
        }


def validate(data: dict, source: Path) -> list[str]:
    """Problems with one rule file's content; empty when it follows rules/SCHEMA.md."""
    problems = [f"missing key {key!r}" for key in REQUIRED if key not in data]
    if problems:
        return problems
    if not re.fullmatch(r"BN\d{3}", str(data["id"])):
        problems.append(f"id {data['id']!r} is not of the form BN000")
    if source.stem != data["id"]:
        problems.append(f"file name {source.name} does not match id {data['id']}")
    if not re.fullmatch(r"[a-z0-9]+(-[a-z0-9]+)*", str(data["slug"])):
        problems.append(f"slug {data['slug']!r} is not kebab-case")
    if data["severity"] not in ("info", "warning", "error"):
        problems.append(f"severity {data['severity']!r} is not info/warning/error")
    if not isinstance(data["tags"], list):
        problems.append("tags must be a list")
    for key in ("title", "summary", "rationale", "example"):
        if not str(data[key]).strip():
            problems.append(f"{key} is empty")
    evidence = data["evidence"]
    if not isinstance(evidence, dict) or "for" not in evidence or "against" not in evidence:
        problems.append("evidence needs 'for' and 'against'")
    fix = data["fix"]
    if not isinstance(fix, dict) or not {"available", "safety", "description"} <= set(fix):
        problems.append("fix needs available, safety and description")
    elif fix["safety"] not in SAFETIES or (fix["available"] and fix["safety"] == "none"):
        problems.append(f"fix safety {fix['safety']!r} is invalid for available={fix['available']}")
    citations = data["citations"]
    if not isinstance(citations, list) or not citations:
        problems.append("at least one citation is required")
        return problems
    for i, citation in enumerate(citations):
        missing = [key for key in CITATION_KEYS if key not in citation]
        if missing:
            problems.append(f"citation {i} misses {', '.join(missing)}")
            continue
        if not (citation["arxiv"] or citation["doi"] or citation["url"]):
            problems.append(f"citation {i} needs an arxiv id, a DOI or a URL")
        if citation["stance"] not in STANCES:
            problems.append(f"citation {i} stance {citation['stance']!r} is not for/against/context")
        if not citation["claim"].strip() or not citation["section"].strip():
            problems.append(f"citation {i} needs a section and a claim")
    if "contested" in data["tags"] and not any(c.get("stance") == "against" for c in citations):
        problems.append("a contested rule needs at least one citation against it")
    return problems


def parse_rule_file(path: Path) -> RuleDoc:
    with open(path, "rb") as handle:
        data = tomllib.load(handle)
    problems = validate(data, path)
    if problems:
        raise ValueError(f"{path}: " + "; ".join(problems))
    return RuleDoc(
        id=data["id"], slug=data["slug"], title=data["title"], severity=Severity(data["severity"]),
        tags=tuple(data["tags"]), summary=data["summary"].strip(), rationale=data["rationale"].strip(),
        example=data["example"].strip("\n"), evidence_for=data["evidence"]["for"].strip(),
        evidence_against=data["evidence"]["against"].strip(), fix_available=bool(data["fix"]["available"]),
        fix_safety=data["fix"]["safety"], fix_description=data["fix"]["description"].strip(),
        citations=tuple(
            Citation(authors=tuple(c["authors"]), title=c["title"], venue=c["venue"], year=int(c["year"]),
                     arxiv=c["arxiv"], doi=c["doi"], url=c["url"], section=c["section"], claim=c["claim"].strip(),
                     stance=c["stance"])
            for c in data["citations"]
        ),
        source=path,
    )


@lru_cache(maxsize=None)
def _parsed(path: Path) -> RuleDoc:
    return parse_rule_file(path)


@lru_cache(maxsize=1)
def all_rule_docs() -> dict[str, RuleDoc]:
    """Every rule document, keyed and ordered by code."""
    docs = [_parsed(path) for path in sorted(rules_dir().glob("BN*.toml"))]
    return {doc.id: doc for doc in docs}


_CODE = re.compile(r"[A-Z]+[0-9]+")


@lru_cache(maxsize=None)
def rule_doc(code: str) -> RuleDoc | None:
    """One rule's document; only its own file is parsed (lint needs the docs of the rules that fired)."""
    code = code.upper()
    if _CODE.fullmatch(code):
        path = rules_dir() / f"{code}.toml"
        if path.is_file():
            doc = _parsed(path)
            if doc.id == code:
                return doc
    return all_rule_docs().get(code)
