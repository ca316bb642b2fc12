"""Finding.to_dict (the JSON, JSON Lines and fix-report shape) and path relativisation used by every CI format."""

from __future__ import annotations

import json
import os

from bnlint.findings import CitationRef, Finding, Location, Severity
from bnlint.fingerprints import relative_to_root


def finding(**location) -> Finding:
    loc = Location(file="m.onnx", graph="main", node="bn", op_type="BatchNormalization", index=3, **location)
    cite = CitationRef(short="Ioffe & Szegedy 2015", section="§3.2", link="https://arxiv.org/abs/1502.03167",
                       stance="for", claim="the bias is cancelled")
    return Finding(code="BN003", slug="bias-before-bn", severity=Severity.WARNING, message="m", location=loc,
                   related=("conv",), fixable=True, tags=("redundancy",), citations=(cite, cite))


def test_to_dict_has_every_field_in_declaration_order_as_plain_json_values():
    f = finding(module="features.1", module_class="BatchNorm2d", source_file="net.py", source_line=12)
    data = f.to_dict()
    assert list(data) == list(Finding._fields)
    assert list(data["location"]) == ["file", "graph", "node", "op_type", "index", "module", "module_class",
                                      "source_file", "source_line"]
    assert data["severity"] == "warning" and data["related"] == ["conv"] and data["tags"] == ["redundancy"]
    assert data["location"]["source_line"] == 12 and data["location"]["module"] == "features.1"
    assert data["citations"][0] == {"short": "Ioffe & Szegedy 2015", "section": "§3.2",
                                     "link": "https://arxiv.org/abs/1502.03167", "stance": "for",
                                     "claim": "the bias is cancelled"}
    assert json.loads(json.dumps(data)) == data  # nothing but JSON types


def test_to_dict_returns_fresh_containers():
    f = finding()
    first = f.to_dict()
    first["location"]["node"] = "changed"
    first["citations"][0]["claim"] = "changed"
    second = f.to_dict()
    assert second["location"]["node"] == "bn" and second["citations"][0]["claim"] == "the bias is cancelled"


def test_relative_paths_follow_the_current_folder(tmp_path, monkeypatch):
    # Results are remembered per absolute path: a relative path must be resolved against the cwd of each call.
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    monkeypatch.chdir(tmp_path / "a")
    assert relative_to_root("m.onnx", tmp_path) == "a/m.onnx"
    monkeypatch.chdir(tmp_path / "b")
    assert relative_to_root("m.onnx", tmp_path) == "b/m.onnx"
    assert relative_to_root("net.py:build", tmp_path) == "b/net.py:build"
    outside = os.path.abspath(os.sep + "elsewhere.onnx")
    assert relative_to_root(outside, tmp_path) == outside
