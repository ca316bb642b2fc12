"""Run the selected checks over every graph of a model and turn their hits into findings."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from bnlint.findings import Finding, Location, Severity, sort_findings
from bnlint.graph import Model, Node
from bnlint.registry import Hit, all_checks
from bnlint.ruledocs import rule_doc


def location_of(node: Node, display_path: str) -> Location:
    provenance = node.provenance
    if provenance is None:
        return _plain_location(node, display_path)
    return Location(
        file=display_path,
        graph=node.graph.path,
        node=node.label,
        op_type=node.op_type,
        index=node.index,
        module=provenance.module,
        module_class=provenance.module_class,
        source_file=provenance.source_file,
        source_line=provenance.source_line,
    )


def lint_model(
    model: Model,
    *,
    codes: Iterable[str] | None = None,
    severity_overrides: Mapping[str, Severity] | None = None,
    display_path: str | None = None,
) -> list[Finding]:
    """Findings of the selected rules (all when `codes` is None), sorted deterministically."""
    checks = all_checks()
    selected = sorted(checks) if codes is None else sorted(set(codes) & set(checks))
    overrides = dict(severity_overrides or {})
    shown_path = display_path or model.info.path
    findings = []
    locate = location_of if model.info.provenance else _plain_location
    for graph in model.all_graphs():
        for code in selected:
            doc = None  # read at the rule's first hit: a clean model parses no rule file
            for hit in checks[code](graph):
                if doc is None:
                    doc = rule_doc(code)
                    citations = doc.citation_refs()
                findings.append(_finding(code, doc, hit, overrides, locate(hit.node, shown_path), citations))
    return sort_findings(findings)


def _plain_location(node: Node, display_path: str) -> Location:
    """location_of for a model without provenance (plain ONNX: no per-node lookups)."""
    return Location(display_path, node.graph.path, node.label, node.op_type, node.index)


def _finding(code, doc, hit: Hit, overrides, location: Location, citations) -> Finding:
    severity = overrides.get(code) or hit.severity or doc.severity
    # positional, in Finding's field order: keywords cost a third of building one
    return Finding(code, doc.slug, severity, hit.message, location, tuple([n.label for n in hit.related]),
                   doc.fix_available, doc.tags, citations)
