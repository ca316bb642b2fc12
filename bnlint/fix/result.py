"""What a rewrite pass did: each change (with the value that must not change) and each candidate it left.

Changes, checkpoints and kept candidates are named tuples: a deep model's fix makes thousands, and a frozen
dataclass costs four times as much to create."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple


class Checkpoint(NamedTuple):
    """A value of the original model and the value of the rewritten model that must equal it.

    Verification exposes both as extra outputs to find the first rewrite whose local result diverges, so
    it compares the folded layer's output with the removed BN's output, not tensors that share a name."""

    original: str
    rewritten: str


class Change(NamedTuple):
    code: str
    graph: str
    node: str
    message: str
    kind: str = ""
    removed_nodes: tuple[str, ...] = ()
    new_tensors: tuple[str, ...] = ()
    checkpoint: Checkpoint | None = None
    notes: tuple[str, ...] = ()

    def to_dict(self) -> dict:
        data = {"code": self.code, "graph": self.graph, "node": self.node, "kind": self.kind,
                "message": self.message, "removed_nodes": list(self.removed_nodes),
                "new_tensors": list(self.new_tensors), "notes": list(self.notes)}
        return data


class Kept(NamedTuple):
    """A candidate the pass left alone, with the one reason why."""

    code: str
    graph: str
    node: str
    op_type: str
    reason: str

    def to_dict(self) -> dict:
        return {"code": self.code, "graph": self.graph, "node": self.node, "op_type": self.op_type,
                "reason": self.reason}


@dataclass
class PassResult:
    code: str
    title: str
    changes: list[Change] = field(default_factory=list)
    kept: list[Kept] = field(default_factory=list)

    def extend(self, other: PassResult) -> None:
        self.changes.extend(other.changes)
        self.kept.extend(other.kept)
