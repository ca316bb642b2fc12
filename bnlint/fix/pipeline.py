"""Run the rewrite passes in their fixed order over every graph of a model and summarize what happened.

Order matters: no-op Dropout goes first so Conv -> Dropout -> BN becomes foldable; BN003 removes biases
before folds make them moot; BN008 merges BN chains so the merged BN can fold; backward folds run before
forward folds (a BN that can fold into the layer before it should); BN009 runs last, on what is left.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import numpy_helper

from bnlint.fix import bias, bulk, dropout, fold, forward, maxpool, merge
from bnlint.fix.live import LiveGraph, NameAllocator
from bnlint.fix.result import Change, Kept, PassResult
from bnlint.gcpause import cyclic_gc_paused
from bnlint.graph import _attribute_graphs, model_info

FIX_CODES = ("BN003", "BN004", "BN005", "BN008", "BN009")

# (module, op type that must be present in a graph for the pass to have anything to do)
PASSES = (
    (dropout, "Dropout"),
    (bias, "BatchNormalization"),
    (merge, "BatchNormalization"),
    (fold, "BatchNormalization"),
    (forward, "BatchNormalization"),
    (maxpool, "MaxPool"),
)

PERTURB_ENV = "BNLINT_TEST_PERTURB_WEIGHT"


@dataclass
class BnSummary:
    total: int = 0
    folded: int = 0
    folded_forward: int = 0
    merged: int = 0
    kept: list[tuple[str, str, str]] = field(default_factory=list)  # (graph, node, reason)

    @property
    def removed(self) -> int:
        return self.folded + self.folded_forward + self.merged

    def to_dict(self) -> dict:
        return {"total": self.total, "folded": self.folded, "folded_forward": self.folded_forward,
                "merged": self.merged,
                "kept": [{"graph": g, "node": n, "reason": r} for g, n, r in self.kept]}


@dataclass
class FixOutcome:
    """The rewritten model (edited in place) and everything the report needs."""

    model: onnx.ModelProto
    codes: tuple[str, ...]
    passes: list[PassResult]
    bn: BnSummary
    nodes_before: int
    nodes_after: int
    bytes_saved: int
    notes: list[str]
    seconds: float
    bytes_added: int = 0  # tensor bytes the rewrite added (bytes_saved nets them against those removed)
    # Main-graph initializers (by name) whose values are still numpy arrays: their TensorProtos hold no
    # data until `materialize()`; bnlint.safe_io writes them straight from the arrays.
    detached: dict[str, np.ndarray] = field(default_factory=dict)

    def materialize(self) -> None:
        """Put every detached array into its TensorProto (for callers that use the model in memory)."""
        for tensor in self.model.graph.initializer:
            array = self.detached.get(tensor.name)
            if array is not None and not tensor.HasField("raw_data"):
                tensor.raw_data = array.tobytes()
        self.detached = {}

    @property
    def changes(self) -> list[Change]:
        return [change for result in self.passes for change in result.changes]

    @property
    def kept(self) -> list[Kept]:
        return [kept for result in self.passes for kept in result.kept]

    @property
    def changed(self) -> bool:
        return bool(self.changes)


def fix_model(model: onnx.ModelProto, path: str, codes, *, detach: bool = False) -> FixOutcome:
    """Rewrite `model` in place with the fixes of the selected rule codes.

    With `detach`, large new weights stay numpy arrays in `outcome.detached` (their TensorProtos hold no
    data): for a caller that writes the model with bnlint.safe_io, which streams them. Otherwise every
    value is in the model when this returns."""
    started = time.perf_counter()
    codes = tuple(code for code in FIX_CODES if code in set(codes))
    names = NameAllocator(model)
    info = model_info(model, path)
    results = {module.CODE + module.TITLE: PassResult(module.CODE, module.TITLE) for module, _ in PASSES}
    lives: list[LiveGraph] = []
    # The pipeline allocates several objects per node that all stay alive until it returns; automatic
    # collections would walk them again and again (bnlint.gcpause). The graphs are released before the
    # collector runs again: their nodes and views point back at them, and, promoted to the old generation
    # by the first collection, those cycles would otherwise wait for a full one.
    with cyclic_gc_paused(), np.errstate(over="ignore", under="ignore", invalid="ignore", divide="ignore"):
        try:
            main = LiveGraph.open(info, model.graph, path="main", parent=None, names=names,
                                  ir_version=model.ir_version)
            _process(main, codes, results, lives)
            outcome = _outcome(model, codes, results, lives, main, detach)
        finally:
            for live in lives:
                live.release()
    outcome.seconds = time.perf_counter() - started
    return outcome


def _outcome(model, codes, results, lives: list[LiveGraph], main: LiveGraph, detach: bool) -> FixOutcome:
    passes = [results[module.CODE + module.TITLE] for module, _ in PASSES if module.CODE in codes]
    nodes_before = sum(live.original_count for live in lives)
    removed = sum(live.nodes_removed for live in lives)
    saved = sum(live.bytes_removed - live.bytes_added for live in lives)
    outcome = FixOutcome(model, codes, passes, BnSummary(), nodes_before, nodes_before - removed, saved,
                         _notes(lives, model.ir_version), 0.0)
    outcome.detached = {tensor.name: array for tensor, array in main.detached.values()}
    outcome.bytes_added = sum(live.bytes_added for live in lives)
    if os.environ.get(PERTURB_ENV) == "1":
        _perturb_first_new_weight(model, outcome.changes, outcome.detached)
    if not detach:
        outcome.materialize()
    outcome.bn = _summarize_bn(lives, outcome)
    return outcome


def _process(live: LiveGraph, codes, results, lives) -> None:
    """All passes over one graph, then its subgraphs (which may read its values), then one commit."""
    lives.append(live)
    present = live.op_types()
    live.fold_follows = "BN004" in codes  # BN003 may leave to the fold what the fold would undo
    if bulk.fold_all(live, codes, present, results):  # a plain deep graph: every BN folded at once
        live.bn_after = []
        return
    for module, needs in PASSES:
        if module.CODE in codes and needs in present:
            results[module.CODE + module.TITLE].extend(module.run(live))
    bias.settle_all(live)  # normally a no-op: the fold pass settles what it does not absorb
    owners = live.nodes_of("If", "Loop", "Scan", "SequenceMap")
    live.remember_subgraph_reads(owners)
    for node in owners:
        for attribute in node.proto.attribute:
            subs = _attribute_graphs(attribute)
            for k, sub in enumerate(subs):
                suffix = attribute.name if len(subs) == 1 else f"{attribute.name}[{k}]"
                child = LiveGraph.open(live.model, sub, path=f"{live.path}/{node.label}.{suffix}", parent=live,
                                       names=live.names, ir_version=live.ir_version)
                _process(child, codes, results, lives)
    if owners:
        live.refresh_subgraph_reads()
    live.commit()
    live.bn_after = [node.label for node in live.nodes_of("BatchNormalization")]


def _summarize_bn(lives: list[LiveGraph], outcome: FixOutcome) -> BnSummary:
    summary = BnSummary(total=sum(len(live.bn_before) for live in lives))
    for change in outcome.changes:
        if change.kind == "fold":
            summary.folded += 1
        elif change.kind == "fold-forward":
            summary.folded_forward += 1
        elif change.kind == "merge-bn":
            summary.merged += 1
    reasons: dict[tuple[str, str], list[str]] = {}
    for kept in outcome.kept:
        if kept.code == "BN004":
            reasons.setdefault((kept.graph, kept.node), []).append(kept.reason)
    for live in lives:
        for node in live.bn_after:
            found = reasons.get((live.path, node))
            if found:
                reason = "; ".join(found)
            elif "BN004" not in outcome.codes:
                reason = f"BatchNormalization '{node}' kept: BN004 (fold) is not selected"
            else:
                reason = f"BatchNormalization '{node}' kept"
            summary.kept.append((live.path, node, reason))
    return summary


def _notes(lives: list[LiveGraph], ir_version: int) -> list[str]:
    notes = []
    added = sum(len(live.initializers_added) for live in lives)
    removed = sum(len(live.initializers_removed) for live in lives)
    constants = sum(len(live.constants_removed) for live in lives)
    if ir_version < 4 and (added or removed):
        notes.append(f"IR version {ir_version}: every initializer is also a graph input, so {added} new "
                     f"initializer(s) were listed as inputs and {removed} unused one(s) removed with their inputs")
    if constants:
        notes.append(f"{constants} Constant/ConstantOfShape node(s) became unused after folding their values and "
                     "were removed")
    return notes


def _perturb_first_new_weight(model: onnx.ModelProto, changes: list[Change], detached: dict) -> None:
    """Test-only (BNLINT_TEST_PERTURB_WEIGHT=1): damage the first tensor a rewrite created that is still in
    the model, so tests can prove that failed verification writes nothing, exits 1 and names the rewrite."""
    present = {tensor.name: tensor for tensor in model.graph.initializer}
    wanted = next((name for change in changes for name in change.new_tensors if name in present), None)
    if wanted is None:
        return
    tensor = present[wanted]
    values = (detached[wanted] if wanted in detached else numpy_helper.to_array(tensor)).copy()
    flat = values.reshape(-1)
    flat[0] = flat[0] + 1.0 + 10.0 * float(np.max(np.abs(flat.astype(np.float64))))
    if wanted in detached:
        detached[wanted] = values
    else:
        tensor.CopyFrom(numpy_helper.from_array(values, wanted))
