"""Which rules run: ruff-style select / extend-select / ignore over codes and prefixes, and `ALL`."""

from __future__ import annotations

from collections.abc import Iterable
from typing import NamedTuple

from bnlint.errors import ConfigError


def expand(selectors: Iterable[str], known: Iterable[str]) -> set[str]:
    """Codes matched by selectors (exact codes, prefixes such as `BN00`, or `ALL`)."""
    known = sorted(known)
    codes: set[str] = set()
    for raw in selectors:
        selector = raw.strip().upper()
        if not selector:
            continue
        matched = known if selector == "ALL" else [code for code in known if code.startswith(selector)]
        if not matched:
            raise ConfigError(f"unknown rule selector {raw!r} (known rules: {', '.join(known)})")
        codes.update(matched)
    return codes


class Selection(NamedTuple):
    select: tuple[str, ...] = ("ALL",)
    extend_select: tuple[str, ...] = ()
    ignore: tuple[str, ...] = ()

    def codes(self, known: Iterable[str]) -> set[str]:
        known = list(known)
        chosen = expand(self.select, known) | expand(self.extend_select, known)
        return chosen - expand(self.ignore, known)


def split_codes(values: Iterable[str]) -> tuple[str, ...]:
    """Accept both repeated options and comma-separated lists."""
    return tuple(part.strip() for value in values for part in value.split(",") if part.strip())
