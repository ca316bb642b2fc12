"""`.gitignore`-style patterns for the `exclude` setting: which files and folders a folder scan skips.

Supported, as in git: `*` and `?` within one path segment, `[abc]` classes, `**` across segments, a
trailing `/` (folders only), a leading or inner `/` (anchored at the config file's folder; otherwise the
pattern matches a name at any depth), `!` to re-include, `#` comments; the last matching pattern wins.
As in git, a file inside an excluded folder cannot be re-included.
"""

from __future__ import annotations

import os
import re
from pathlib import Path, PurePosixPath
from typing import NamedTuple

# Folders no one wants scanned: installed packages ship thousands of test .onnx files.
DEFAULT_EXCLUDE = ("node_modules/", "site-packages/", "__pypackages__/", "venv/")


class _Rule(NamedTuple):
    regex: re.Pattern[str]
    negate: bool
    dir_only: bool
    anchored: bool


def _translate(glob: str) -> str:
    out, i, n = [], 0, len(glob)
    while i < n:
        ch = glob[i]
        if ch == "*":
            if glob.startswith("**", i):
                i += 2
                if i < n and glob[i] == "/":
                    out.append("(?:.*/)?")  # `**/`: zero or more folders
                    i += 1
                else:
                    out.append(".*")
                continue
            out.append("[^/]*")
        elif ch == "?":
            out.append("[^/]")
        elif ch == "[":
            end = glob.find("]", i + 2 if glob.startswith("[!", i) or glob.startswith("[^", i) else i + 1)
            if end == -1:
                out.append(re.escape(ch))
            else:
                body = glob[i + 1:end]
                if body[:1] in ("!", "^"):
                    body = "^" + body[1:]
                out.append("[" + body.replace("\\", "\\\\") + "]")
                i = end
        elif ch == "\\" and i + 1 < n:
            i += 1
            out.append(re.escape(glob[i]))
        else:
            out.append(re.escape(ch))
        i += 1
    return "".join(out)


def _compile(pattern: str) -> _Rule | None:
    text = pattern.rstrip()
    if not text or text.startswith("#"):
        return None
    negate = text.startswith("!")
    if negate:
        text = text[1:]
    dir_only = text.endswith("/")
    text = text.rstrip("/")
    anchored = "/" in text
    text = text.lstrip("/")
    if not text:
        return None
    return _Rule(re.compile(_translate(text) + r"\Z", re.DOTALL), negate, dir_only, anchored)


_OUTSIDE = object()  # a folder that resolves outside the root


class ExcludeMatcher:
    """Decides whether a path (relative to `root`) is excluded."""

    def __init__(self, patterns, root: Path):
        self.root = Path(root).resolve()
        self._prefixes = tuple(dict.fromkeys((os.path.abspath(root), str(self.root))))
        self.rules = [rule for rule in map(_compile, patterns) if rule is not None]
        self._resolved_folders: dict[str, object] = {}

    def __bool__(self) -> bool:
        return bool(self.rules)

    def _relative(self, path: str) -> str | None:
        absolute = os.path.abspath(path)
        for prefix in self._prefixes:  # fast path without a system call per file
            if absolute.startswith(prefix.rstrip(os.sep) + os.sep):
                return absolute[len(prefix.rstrip(os.sep)) + 1:].replace(os.sep, "/")
        folder, name = os.path.split(absolute)
        if not os.path.islink(absolute):  # resolve each folder once, not every file in it
            base = self._resolved_folders.get(folder)
            if base is None:
                base = self._resolved_folders[folder] = self._relative_resolved(folder)
            return None if base is _OUTSIDE else (f"{base}/{name}" if base else name)
        found = self._relative_resolved(absolute)
        return None if found is _OUTSIDE else found

    def _relative_resolved(self, absolute: str):
        try:
            relative = Path(absolute).resolve().relative_to(self.root).as_posix()
        except (ValueError, OSError):
            return _OUTSIDE
        return "" if relative == "." else relative

    def _match(self, relative: str | None, name: str, is_dir: bool) -> bool:
        excluded = False
        for rule in self.rules:
            if rule.dir_only and not is_dir:
                continue
            subject = relative if rule.anchored else name
            if subject is not None and rule.regex.match(subject):
                excluded = not rule.negate
        return excluded

    def excludes(self, path: str, is_dir: bool) -> bool:
        """This file or folder itself matches (its parents are not looked at)."""
        relative = self._relative(path)
        return self._match(relative, Path(path).name, is_dir)

    def excludes_with_parents(self, path: str, is_dir: bool = False) -> bool:
        """The path or any folder above it (up to the root) is excluded: for explicitly named paths."""
        relative = self._relative(path)
        if relative is None:
            return self._match(None, Path(path).name, is_dir)
        parts = PurePosixPath(relative).parts
        for depth in range(1, len(parts)):
            folder = "/".join(parts[:depth])
            if self._match(folder, parts[depth - 1], True):
                return True
        return self._match(relative, parts[-1] if parts else "", is_dir)
