"""Suppression without comments: `per-file-ignores` and `per-node-ignores` from the config.

Rules run on every model and the entries then drop matching findings, so bnlint knows which entries did
something. An entry that suppressed nothing although it applied (its file glob matched a checked model, or
its node glob matched a node of one) is reported as unused; entries that applied to nothing in this run
are not, so a partial run (pre-commit passes only changed files) stays quiet.

per-node-ignores keys are globs (fnmatch: `*`, `?`, `[..]`) on the node name, the `graph/node` path or
the PyTorch module path, e.g. `"backbone.*" = ["BN001"]`.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable
from typing import NamedTuple

from bnlint.config import Config, _glob_match, _relative_posix
from bnlint.findings import Finding
from bnlint.graph import Model
from bnlint.selection import expand

PER_FILE, PER_NODE = "per-file-ignores", "per-node-ignores"


class IgnoreEntry(NamedTuple):
    """One selector of one config entry: `per-node-ignores."backbone.*"` selector `BN001`."""

    kind: str
    pattern: str
    selector: str

    def describe(self) -> str:
        return f'{self.kind}."{self.pattern}" = ["{self.selector}"]'


class IgnoreOutcome(NamedTuple):
    kept: tuple[Finding, ...]
    used: frozenset[IgnoreEntry]
    applied: frozenset[IgnoreEntry]


class ConfigIgnores:
    def __init__(self, config: Config, known_codes: Iterable[str]):
        known = sorted(known_codes)
        self.root = config.root
        self.entries: list[tuple[IgnoreEntry, frozenset[str]]] = []
        for kind, table in ((PER_FILE, config.per_file_ignores), (PER_NODE, config.per_node_ignores)):
            for pattern, selectors in table:
                for selector in selectors:
                    self.entries.append((IgnoreEntry(kind, pattern, selector), frozenset(expand([selector], known))))
        self._node_regex = {pattern: re.compile(fnmatch.translate(pattern))
                            for pattern, _ in config.per_node_ignores}

    def __bool__(self) -> bool:
        return bool(self.entries)

    def _node_matches(self, pattern: str, finding: Finding) -> bool:
        regex = self._node_regex[pattern]
        loc = finding.location
        return bool(regex.match(loc.node) or regex.match(f"{loc.graph}/{loc.node}")
                    or (loc.module and regex.match(loc.module)))

    def _patterns_seen_in(self, model: Model) -> set[str]:
        """per-node patterns that match at least one node of the model (so the entry applied)."""
        pending = dict(self._node_regex)
        seen: set[str] = set()
        for graph in model.all_graphs():
            for node in graph.nodes:
                provenance = node.provenance
                names = (node.label, f"{graph.path}/{node.label}", provenance.module if provenance else None)
                for pattern, regex in list(pending.items()):
                    if any(name and regex.match(name) for name in names):
                        seen.add(pattern)
                        del pending[pattern]
                if not pending:
                    return seen
        return seen

    def apply(self, findings: Iterable[Finding], target: str, model: Model | None) -> IgnoreOutcome:
        findings = tuple(findings)
        if not self.entries:
            return IgnoreOutcome(findings, frozenset(), frozenset())
        relative = _relative_posix(target, self.root)
        file_entries = [(e, codes) for e, codes in self.entries
                        if e.kind == PER_FILE and _glob_match(relative, e.pattern)]
        node_entries = [(e, codes) for e, codes in self.entries if e.kind == PER_NODE]
        applied = {e for e, _ in file_entries}
        if node_entries and model is not None:
            seen = self._patterns_seen_in(model)
            applied |= {e for e, _ in node_entries if e.pattern in seen}
        used: set[IgnoreEntry] = set()
        kept = []
        for finding in findings:
            hits = [e for e, codes in file_entries if finding.code in codes]
            hits += [e for e, codes in node_entries if finding.code in codes and self._node_matches(e.pattern, finding)]
            if hits:
                used.update(hits)
            else:
                kept.append(finding)
        return IgnoreOutcome(tuple(kept), frozenset(used), frozenset(applied))

    def unused(self, used: set[IgnoreEntry], applied: set[IgnoreEntry], active_codes: set[str]) -> list[IgnoreEntry]:
        """Entries that applied in this run, cover a rule that ran, and suppressed nothing."""
        return [entry for entry, codes in self.entries
                if entry in applied and entry not in used and codes & active_codes]
