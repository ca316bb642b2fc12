"""Rule checks register here under the code of their rule file."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import NamedTuple

from bnlint.findings import Severity
from bnlint.graph import Graph, Node


class Hit(NamedTuple):
    """What a check reports: the node at fault, a message, other nodes involved, an optional severity."""

    node: Node
    message: str
    related: tuple[Node, ...] = ()
    severity: Severity | None = None


Check = Callable[[Graph], Iterable[Hit]]
CHECKS: dict[str, Check] = {}


def check(code: str) -> Callable[[Check], Check]:
    """Register the check for rule `code` (one check per rule file, enforced by a test)."""

    def register(function: Check) -> Check:
        if code in CHECKS:
            raise RuntimeError(f"duplicate check for {code}")
        CHECKS[code] = function
        return function

    return register


def all_checks() -> dict[str, Check]:
    import bnlint.checks  # noqa: F401  (registers every check)

    return dict(sorted(CHECKS.items()))


# Codes that have a rule file but no graph check: the lint pipeline itself reports them.
META_CODES: dict[str, str] = {
    "BN010": "bnlint.torch_frontend.folded: a layer torch's exporter marked as having absorbed a BN (loader fact)",
    "BN100": "bnlint.suppression: an unused or unknown `# bnlint: ignore[...]` comment in Python source",
}


def known_codes() -> list[str]:
    """Every selectable code: the registered checks and the meta codes."""
    return sorted({*all_checks(), *META_CODES})
