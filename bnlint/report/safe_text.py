"""Names from a model are untrusted text: show them so they cannot drive the terminal or break a line.

A node named "\\x1b[2J\\x1b[31mok\\n" would clear a terminal, forge colours or inject a fake line into CI
logs (GitHub renders ANSI colours in job logs). `printable` escapes every control character (C0, DEL and
C1, which covers ESC and the single-byte CSI that start ANSI sequences), the Unicode line and paragraph
separators, and the bidirectional overrides that make text display in a different order than it reads
("Trojan Source"), as Python escapes: `\\x1b`, `\\n`, `\\u202e`. Ordinary Unicode text is kept as it is.
"""

from __future__ import annotations

import re

_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u200e\u200f\u202a-\u202e\u2066-\u2069]")
_JSON_RAW = re.compile("[\x7f-\x9f\u2028\u2029\u200e\u200f\u202a-\u202e\u2066-\u2069]")  # json escapes C0 itself
_SHORT = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(match: re.Match) -> str:
    char = match.group(0)
    if char in _SHORT:
        return _SHORT[char]
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def printable(text: str, keep: str = "") -> str:
    """`text` with control, line-separator and bidi-override characters written as escapes, except the
    characters in `keep` (for formats that encode CR and LF their own way: GitHub, Markdown, Mermaid). A name
    protobuf could not decode as UTF-8 arrives as bytes: its invalid bytes are shown as \\x escapes."""
    if text.__class__ is not str:
        text = text.decode("utf-8", "backslashreplace") if isinstance(text, bytes) else str(text)
    if text.isprintable() or not _UNSAFE.search(text):  # every escaped character is non-printable to Python
        return text
    return _UNSAFE.sub(lambda m: m.group(0) if m.group(0) in keep else _escape(m), text)


def json_text(text: str) -> str:
    """Serialized JSON (ensure_ascii=False) with the characters `printable` escapes that json leaves raw
    (DEL, C1, separators, bidi overrides; json escapes C0 itself) written as \\uXXXX: the same data for any
    JSON reader, safe bytes for a terminal that shows the file. They only occur inside JSON strings."""
    return _JSON_RAW.sub(lambda m: f"\\u{ord(m.group(0)):04x}", text)
