"""Stable web addresses for bnlint and its rule documentation (used by SARIF helpUri and Markdown links)."""

from __future__ import annotations

HOMEPAGE = "https://github.com/bnlint/bnlint"


def rule_url(code: str) -> str:
    """The rule's section in the README (each rule heading carries the anchor `bn001`, ...)."""
    return f"{HOMEPAGE}#{code.lower()}"
