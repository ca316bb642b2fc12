"""Findings are values: frozen, sortable, and independent of how they are reported."""

from __future__ import annotations

from enum import Enum
from typing import NamedTuple


class Severity(str, Enum):
    INFO = "info"
    WARNING = "warning"
    ERROR = "error"

    @property
    def rank(self) -> int:
        return _RANK[self]

    @classmethod
    def parse(cls, text: str) -> Severity:
        try:
            return cls(text.lower())
        except ValueError:
            raise ValueError(f"unknown severity {text!r} (expected info, warning or error)") from None


_RANK = {Severity.INFO: 0, Severity.WARNING: 1, Severity.ERROR: 2}


class Location(NamedTuple):
    """Where a finding points: the model file, graph path and node; for PyTorch also module and source.
    (Named tuples, like the other small records made per finding or per BN: created, pickled to the parent
    process and unpickled 3x faster than frozen dataclasses.)"""

    file: str
    graph: str
    node: str
    op_type: str
    index: int
    module: str | None = None
    module_class: str | None = None
    source_file: str | None = None
    source_line: int | None = None

    @property
    def source(self) -> str | None:
        if self.source_file is None:
            return None
        return f"{self.source_file}:{self.source_line}" if self.source_line else self.source_file


class CitationRef(NamedTuple):
    """A short form of a citation carried by each finding (the rule file has the full text)."""

    short: str
    section: str
    link: str
    stance: str
    claim: str


class Finding(NamedTuple):
    """One rule hit, as every report format and the baseline see it (a named tuple: tens of thousands are
    created, pickled from worker processes and sorted per run)."""

    code: str
    slug: str
    severity: Severity
    message: str
    location: Location
    related: tuple[str, ...] = ()
    fixable: bool = False
    tags: tuple[str, ...] = ()
    citations: tuple[CitationRef, ...] = ()  # the rule's, so equal codes carry equal citations

    def sort_key(self):
        loc = self.location
        return (loc.file, loc.graph != "main", loc.graph, loc.index, self.code, self.message)

    def to_dict(self) -> dict:
        # Written out rather than dataclasses.asdict, which deep-copies every field: with 40,000 findings
        # asdict alone took longer than linting the model.
        return {
            "code": self.code,
            "slug": self.slug,
            "severity": self.severity.value,
            "message": self.message,
            "location": self.location._asdict(),
            "related": list(self.related),
            "fixable": self.fixable,
            "tags": list(self.tags),
            "citations": [c._asdict() for c in self.citations],
        }


def sort_findings(findings) -> list[Finding]:
    return sorted(findings, key=Finding.sort_key)
