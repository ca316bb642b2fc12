"""Baselines: accept the findings a project has today so only new ones fail the build.

A baseline file is JSON listing fingerprints (rule + model path relative to the project root + stable node
identity, see bnlint.fingerprints) with a count, so two findings sharing a fingerprint need two entries.
Matching consumes counts: the first `count` findings with a fingerprint are suppressed, later ones are new.
An entry is *stale* when its model was checked in this run with its rule enabled and the finding is gone;
entries for models or rules outside this run are left alone (and never pruned).
"""

from __future__ import annotations

import json
import os
import tempfile
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from bnlint.errors import BnlintError
from bnlint.findings import Finding
from bnlint.report.json_layout import dumps
from bnlint.fingerprints import fingerprint, node_identity, relative_to_root

FORMAT_VERSION = 1


@dataclass(frozen=True)
class BaselineEntry:
    fingerprint: str
    code: str
    file: str  # relative to the project root
    node: str  # stable identity: `node:main/bn1` or `module:features.3.bn`
    message: str
    count: int = 1

    def to_dict(self) -> dict:
        return {"fingerprint": self.fingerprint, "code": self.code, "file": self.file, "node": self.node,
                "count": self.count, "message": self.message}


@dataclass(frozen=True)
class BaselineMatch:
    new: list[Finding]
    suppressed: int
    stale: list[BaselineEntry]  # with `count` = how many of that entry went unmatched


@dataclass(frozen=True)
class Baseline:
    entries: tuple[BaselineEntry, ...]

    @classmethod
    def from_findings(cls, findings: Iterable[Finding], root: Path) -> Baseline:
        grouped: dict[str, BaselineEntry] = {}
        for finding in findings:
            key = fingerprint(finding, root)
            entry = grouped.get(key)
            if entry is None:
                grouped[key] = BaselineEntry(key, finding.code, relative_to_root(finding.location.file, root),
                                             node_identity(finding), finding.message)
            else:
                grouped[key] = BaselineEntry(key, entry.code, entry.file, entry.node, entry.message, entry.count + 1)
        return cls(_sorted(grouped.values()))

    @classmethod
    def load(cls, path: str | os.PathLike) -> Baseline:
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise BnlintError(f"{path}: baseline file not found (create it with --write-baseline)") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise BnlintError(f"{path}: not a readable bnlint baseline: {exc}") from None
        if not isinstance(data, dict) or data.get("bnlint-baseline") != FORMAT_VERSION:
            raise BnlintError(f"{path}: not a bnlint baseline (expected \"bnlint-baseline\": {FORMAT_VERSION})")
        try:
            entries = tuple(
                BaselineEntry(str(e["fingerprint"]), str(e["code"]), str(e["file"]), str(e["node"]),
                              str(e.get("message", "")), int(e.get("count", 1)))
                for e in data["findings"]
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise BnlintError(f"{path}: malformed baseline entry ({type(exc).__name__}: {exc})") from None
        return cls(entries)

    def dumps(self) -> str:
        document = {"bnlint-baseline": FORMAT_VERSION,
                    "findings": [entry.to_dict() for entry in self.entries]}
        return dumps(document, rows=("findings",), ensure_ascii=False) + "\n"

    def write(self, path: str | os.PathLike) -> None:
        """Atomically replace `path` (temp file in the same folder, then os.replace)."""
        write_text_atomic(path, self.dumps())

    def match(self, findings: Iterable[Finding], root: Path, *, checked_files: Iterable[str],
              active_codes: Iterable[str]) -> BaselineMatch:
        """Split findings into new ones and baseline-suppressed ones; list entries that went stale."""
        budget = Counter({entry.fingerprint: entry.count for entry in self.entries})
        new, suppressed = [], 0
        for finding in findings:
            key = fingerprint(finding, root)
            if budget[key] > 0:
                budget[key] -= 1
                suppressed += 1
            else:
                new.append(finding)
        checked = {relative_to_root(path, root) for path in checked_files}
        active = set(active_codes)
        stale = [BaselineEntry(e.fingerprint, e.code, e.file, e.node, e.message, budget[e.fingerprint])
                 for e in self.entries
                 if budget[e.fingerprint] > 0 and e.file in checked and e.code in active]
        return BaselineMatch(new, suppressed, stale)

    def without(self, stale: Iterable[BaselineEntry]) -> Baseline:
        """This baseline with the stale counts removed (entries reaching zero are dropped)."""
        drop = Counter()
        for entry in stale:
            drop[entry.fingerprint] += entry.count
        kept = []
        for entry in self.entries:
            remaining = entry.count - drop[entry.fingerprint]
            if remaining > 0:
                kept.append(BaselineEntry(entry.fingerprint, entry.code, entry.file, entry.node, entry.message,
                                          remaining))
        return Baseline(tuple(kept))


def _sorted(entries: Iterable[BaselineEntry]) -> tuple[BaselineEntry, ...]:
    return tuple(sorted(entries, key=lambda e: (e.file, e.code, e.node, e.fingerprint)))


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write `text` to `path` atomically: a temp file in the same folder, then os.replace."""
    path = Path(path)
    folder = path.parent if str(path.parent) else Path(".")
    try:
        handle, temp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=folder)
    except OSError as exc:
        raise BnlintError(f"{path}: cannot write: {exc.strerror}") from None
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as stream:
            stream.write(text)
        os.chmod(temp, 0o666 & ~_umask())  # mkstemp creates 0600; give the file the usual permissions
        os.replace(temp, path)
    except OSError as exc:
        os.unlink(temp)
        raise BnlintError(f"{path}: cannot write: {exc.strerror}") from None


def _umask() -> int:
    current = os.umask(0o022)
    os.umask(current)
    return current
