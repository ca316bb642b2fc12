"""The fast paths of the report layer give the text of their plain versions."""

from __future__ import annotations

import json

import pytest

from bnlint.findings import Finding, Location, Severity
from bnlint.report.json_layout import ROOT, dumps
from bnlint.report.text import _block, render_full

DOCUMENTS = [
    {"a": [1, 2.5, {"b": [], "c": {}}], "rows": [{"x": [1, 2]}, {"y": "é\u2028\x1b"}, [3, [4]]], "n": None},
    [{"q": 1}, {"r": [True, False]}],
    [[1, [2]], [3]],
    [], {}, "text", 3,
]


@pytest.mark.parametrize("document", DOCUMENTS)
@pytest.mark.parametrize("ensure_ascii", [True, False])
def test_without_rows_the_layout_is_json_dumps_indent_2(document, ensure_ascii):
    assert dumps(document, rows=(), ensure_ascii=ensure_ascii) == json.dumps(document, indent=2,
                                                                            ensure_ascii=ensure_ascii)


@pytest.mark.parametrize("ensure_ascii", [True, False])
def test_rows_are_one_compact_line_each_and_parse_the_same(ensure_ascii):
    document = DOCUMENTS[0]
    text = dumps(document, rows=("rows",), ensure_ascii=ensure_ascii)
    assert json.loads(text) == document
    lines = text.split("\n")  # not splitlines: it also splits at U+2028
    start = lines.index('  "rows": [')
    assert lines[start + 1:start + 4] == ['    {"x": [1, 2]},',
                                          '    ' + json.dumps({"y": "é\u2028\x1b"}, ensure_ascii=ensure_ascii) + ",",
                                          '    [3, [4]]']
    assert '      "b": [],' in lines  # containers outside the rows stay indented


def test_a_document_that_is_a_list_of_rows():
    text = dumps(DOCUMENTS[1], rows=(ROOT,))
    assert text == '[\n  {"q": 1},\n  {"r": [true, false]}\n]'
    nested = dumps(DOCUMENTS[2], rows=("2",))  # a key that names no list: nested lists keep their layout
    assert nested == json.dumps(DOCUMENTS[2], indent=2)


def _finding(code, node, *, message="a message", file="m.onnx", graph="main", module=None, tags=()):
    return Finding(code, "slug", Severity.WARNING, message, Location(file, graph, node, "Relu", 3, module), (),
                   True, tags, ())


CASES = [
    _finding("BN001", "a"),
    _finding("BN001", "b", tags=("contested",)),
    _finding("BN001", "evil\x1b[2J"),                    # escaped: the general path
    _finding("BN001", "c", message="line\nbreak"),
    _finding("BN001", "d", file="dir/\u202emodel.onnx"),
    _finding("BN005", "e", module="features.3"),         # provenance: the general path
    _finding("BN005", b"re\xecu1"),                      # a name protobuf could not decode comes as bytes
    _finding("BN005", "f"),
]


def test_the_one_string_block_is_the_general_block():
    sources: dict = {}
    explained: set[str] = set()
    expected = []
    for finding in CASES:
        first = finding.code not in explained
        explained.add(finding.code)
        expected.append(_block(finding, False, None, sources, first=first))
    assert render_full(CASES) == "\n".join(expected)
    assert "\x1b" not in render_full(CASES) and "\\x1b[2J" in render_full(CASES)
