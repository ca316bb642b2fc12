"""BN010: report the layers into which torch's exporter already folded a BatchNormalization.

The loader records these from node metadata (ModelInfo.exporter_folded, see exporter_metadata); this
turns each into an information finding. It is a meta code, not a graph check: the fact comes from the
exporter's record, which ONNX text fixtures cannot express. Torch-free.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from bnlint.engine import location_of
from bnlint.findings import Finding, Severity
from bnlint.graph import Model
from bnlint.ruledocs import rule_doc

CODE = "BN010"


def exporter_folded_findings(model: Model, *, codes: Iterable[str], display_path: str,
                             severity_overrides: Mapping[str, Severity] | None = None) -> list[Finding]:
    folded = model.info.exporter_folded
    if not folded or CODE not in set(codes):
        return []
    doc = rule_doc(CODE)
    severity = (severity_overrides or {}).get(CODE) or doc.severity
    findings = []
    for graph in model.all_graphs():
        for node in graph.nodes:
            what = folded.get(node.name) if node.name else None
            if what is None:
                continue
            findings.append(Finding(
                code=CODE,
                slug=doc.slug,
                severity=severity,
                message=(f"BN already folded by the exporter: {node.display} absorbed {what}; its placement can no "
                         "longer be checked in this file, lint the PyTorch source (`bnlint check model.py:build`) "
                         "for that"),
                location=location_of(node, display_path),
                tags=doc.tags,
                citations=doc.citation_refs(),
            ))
    return findings
