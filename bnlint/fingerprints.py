"""Stable identities for findings: the same problem gets the same fingerprint across runs and machines.

A fingerprint is built from the rule code, the model path relative to the project root (the git root, else
the folder of the config file, else the current directory) and the node's stable identity: its PyTorch
module path when known, else its graph path and node name. The node *index* is never part of it, so
inserting or reordering nodes elsewhere in the model does not turn an old finding into a new one.
Baselines, SARIF `partialFingerprints` and GitLab `fingerprint`s all use it.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterable
from functools import lru_cache
from pathlib import Path

from bnlint.findings import Finding

FINGERPRINT_VERSION = "v1"


def git_root(start: Path) -> Path | None:
    """The nearest folder at or above `start` holding `.git` (a folder, or a file for worktrees)."""
    start = start.resolve()
    for folder in (start, *start.parents):
        if (folder / ".git").exists():
            return folder
    return None


def project_root(config_source: Path | None = None, cwd: Path | None = None) -> Path:
    """The folder paths are reported relative to: git root, else the config's folder, else cwd."""
    cwd = (cwd or Path.cwd()).resolve()
    found = git_root(cwd)
    if found is not None:
        return found
    if config_source is not None:
        return Path(config_source).resolve().parent
    return cwd


def relative_to_root(path: str, root: Path) -> str:
    """`path` (as shown, relative to cwd or absolute) as a POSIX path relative to `root`.

    Paths outside the root stay absolute. A PyTorch factory target `file.py:build` keeps its `:build`.
    """
    return _relative(path, root, os.getcwd())


@lru_cache(maxsize=4096)  # every finding of a model asks for the same file (keyed by cwd: `path` may be relative)
def _relative(path: str, root: Path, cwd: str) -> str:
    suffix = ""
    head, sep, tail = path.rpartition(":")
    if sep and head.endswith(".py") and tail and "/" not in tail and "\\" not in tail:
        path, suffix = head, f":{tail}"
    return _relative_absolute(os.path.normpath(os.path.join(cwd, path)), root) + suffix


def _relative_absolute(path: str, root: Path) -> str:
    absolute = Path(path)
    try:
        return absolute.relative_to(root).as_posix()
    except ValueError:
        pass
    try:  # the root may be reached through a symlink (e.g. /tmp on macOS)
        return absolute.resolve().relative_to(root.resolve()).as_posix()
    except (ValueError, OSError):
        return absolute.as_posix()


def source_path(path: str, source_root: str | None = None) -> str:
    """A finding's Python source path made absolute: front ends show it relative to --source-root (cwd)."""
    if os.path.isabs(path):
        return path
    return os.path.join(os.path.abspath(source_root or os.getcwd()), path)


def artifact_path(file: str) -> str:
    """The file behind a finding's model path: `net.py:build` (a PyTorch factory) is the file `net.py`."""
    head, sep, tail = file.rpartition(":")
    if sep and head.endswith(".py") and tail.isidentifier():
        return head
    return file


def node_identity(finding: Finding) -> str:
    """`module:features.3.bn` when the PyTorch module is known, else `node:main/bn1`."""
    loc = finding.location
    if loc.module:
        return f"module:{loc.module}"
    return f"node:{loc.graph}/{loc.node}"


def fingerprint(finding: Finding, root: Path) -> str:
    """A 32-hex-digit hash of rule, model path relative to the root and node identity."""
    import hashlib  # here: plain `check` runs never fingerprint

    key = "\x1f".join((FINGERPRINT_VERSION, finding.code, relative_to_root(finding.location.file, root),
                       node_identity(finding)))
    return hashlib.sha256(key.encode("utf-8")).hexdigest()[:32]


def unique_fingerprints(findings: Iterable[Finding], root: Path) -> list[str]:
    """One fingerprint per finding, made unique by an occurrence number when several findings share one
    (e.g. two findings of one rule on one PyTorch module). Needed where the consumer requires uniqueness
    (GitLab, GitHub code scanning); occurrence numbers follow the deterministic finding order."""
    seen: Counter[str] = Counter()
    unique = []
    for finding in findings:
        base = fingerprint(finding, root)
        seen[base] += 1
        unique.append(base if seen[base] == 1 else f"{base}:{seen[base] - 1}")
    return unique
