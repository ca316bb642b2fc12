"""Markdown report: subgraph pictures (Mermaid), caps, escaping, and the before/after pair for `fix --diff`."""

from __future__ import annotations

import re

from conftest import model_from_text

from bnlint.engine import lint_model
from bnlint.findings import Finding, Location, Severity
from bnlint.pictures import DEFAULT_CAP, FINDING, RELATED, change_pictures, picture_key, pictures_for
from bnlint.report.markdown import MAX_DETAILED, code, escape, render_markdown
from bnlint.report.mermaid import escape_label, render_before_after, render_mermaid

PARAMS = ('<float[2, 2, 1, 1] w = {1.0, 0.5, -0.5, 1.0}, float[2] s = {1.0, 1.0}, float[2] b = {0.0, 0.0}, '
          'float[2] m = {0.0, 0.0}, float[2] v = {1.0, 1.0}>')
CONV_RELU_BN = f"""
<ir_version: 8, opset_import: ["" : 15]>
g (float[1, 2, 4, 4] x) => (float[1, 2, 4, 4] y)
{PARAMS}
{{
  [conv] c = Conv (x, w)
  [relu] r = Relu (c)
  [bn] n = BatchNormalization (r, s, b, m, v)
  [conv2] y = Conv (n, w)
}}
"""


def long_chain(length: int, bn_at: int) -> str:
    lines, value = [], "x"
    for i in range(length):
        out = "y" if i == length - 1 else f"v{i}"
        if i == bn_at:
            lines.append(f"[bn] {out} = BatchNormalization ({value}, s, b, m, v)")
        else:
            lines.append(f"[op{i}] {out} = {'Relu' if i == bn_at - 1 else 'Neg'} ({value})")
        value = out
    body = "\n  ".join(lines)
    return f"""
<ir_version: 8, opset_import: ["" : 15]>
g (float[1, 2, 4, 4] x) => (float[1, 2, 4, 4] y)
{PARAMS}
{{
  {body}
}}
"""


def mermaid_is_well_formed(text: str) -> None:
    """Every line is a declaration, an edge between declared ids, a classDef or a class assignment."""
    lines = text.strip().splitlines()
    assert lines[0] == "flowchart TD"
    declared = set()
    for line in lines[1:]:
        line = line.strip()
        if m := re.fullmatch(r'(\w+)(\["[^"\n]*"\]|\(\["[^"\n]*"\]\))', line):
            declared.add(m[1])
        elif m := re.fullmatch(r"(\w+) (-->|-\.->) (\w+)", line):
            assert m[1] in declared and m[3] in declared, line
        elif line.startswith("classDef "):
            continue
        elif m := re.fullmatch(r"class ([\w,]+) (\w+)", line):
            assert set(m[1].split(",")) <= declared, line
        else:
            raise AssertionError(f"unexpected Mermaid line: {line!r}")


def findings_and_pictures(text: str):
    model = model_from_text(text)
    findings = lint_model(model)
    return findings, dict(pictures_for(model, findings))


def test_picture_shows_the_bn_its_producer_chain_and_consumers():
    findings, pictures = findings_and_pictures(CONV_RELU_BN)
    bn001 = next(f for f in findings if f.code == "BN001")
    picture = pictures[picture_key(bn001)]
    roles = {n.label: n.role for n in picture.nodes}
    assert roles == {"x": "input", "conv": "context", "relu": RELATED, "bn": FINDING, "conv2": "context",
                     "y": "output"}
    ids = {n.label: n.id for n in picture.nodes}
    assert set(picture.edges) == {(ids["x"], ids["conv"]), (ids["conv"], ids["relu"]), (ids["relu"], ids["bn"]),
                                  (ids["bn"], ids["conv2"]), (ids["conv2"], ids["y"])}
    text = render_mermaid(picture)
    mermaid_is_well_formed(text)
    assert f"class {ids['bn']} finding" in text and f"class {ids['relu']} related" in text


def test_pictures_are_capped_and_show_where_the_graph_continues():
    findings, pictures = findings_and_pictures(long_chain(40, 20))
    bn001 = next(f for f in findings if f.code == "BN001")
    picture = pictures[picture_key(bn001)]
    ops = [n for n in picture.nodes if n.op_type]
    assert len(ops) <= DEFAULT_CAP
    assert {"bn", "op19"} <= {n.label for n in ops}
    assert picture.cut_above and picture.cut_below
    assert all(n.role not in ("input", "output") for n in picture.nodes)  # both ends are far away
    mermaid_is_well_formed(render_mermaid(picture))


def test_mermaid_labels_cannot_break_the_diagram():
    hostile = 'a"b<c>#d`e|f[g]{h}\nnext'
    escaped = escape_label(hostile)
    assert not set('"<>`|[]{}\n') & set(escaped)
    assert escaped == "a#quot;b#lt;c#gt;#35;d#96;e#124;f#91;g#93;#123;h#125; next"


def test_report_has_a_table_a_section_per_finding_and_citations():
    findings, pictures = findings_and_pictures(CONV_RELU_BN)
    text = render_markdown(findings, [], files=1, pictures=pictures)
    assert text.startswith("## bnlint report\n")
    assert text.count("```mermaid") == len(findings)
    table_rows = [line for line in text.splitlines() if line.startswith("| ") and "BN0" in line]
    assert len(table_rows) == len(findings)
    assert "[Ioffe & Szegedy 2015](https://arxiv.org/abs/1502.03167)" in text
    assert "(https://github.com/bnlint/bnlint#bn001)" in text
    for block in re.findall(r"```mermaid\n(.*?)```", text, re.S):
        mermaid_is_well_formed(block)


def test_report_caps_detailed_sections():
    many = [Finding("BN005", "noop-dropout", Severity.INFO, f"dropout {i}",
                    Location("m.onnx", "main", f"d{i}", "Dropout", i)) for i in range(MAX_DETAILED + 10)]
    text = render_markdown(many, [], files=1)
    assert text.count("\n### ") == MAX_DETAILED
    assert f"Only the first {MAX_DETAILED} findings" in text


def test_report_escapes_markdown_in_messages_and_table_cells():
    nasty = Finding("BN001", "bn-after-activation", Severity.WARNING, "node *x* | <b> `ok|code` _y_",
                    Location("dir|x.onnx", "main", "n`1", "Relu", 0))
    text = render_markdown([nasty], [("bad|file.onnx", "broken <b>")], files=1)
    row = next(line for line in text.splitlines() if line.startswith("| 🟠"))
    assert row.count(" | ") == 3  # four cells: every | inside a cell is escaped
    assert r"\*x\*" in text and r"\<b\>" in text and r"\_y\_" in text
    assert "``main/n`1``" in text
    assert "could not be read" in text and r"broken \<b\>" in text
    assert code("a`b") == "``a`b``" and escape("bn_relu") == "bn_relu"


def test_clean_run_says_so():
    assert "No findings in 3 models." in render_markdown([], [], files=3)


def test_before_after_pictures_for_a_fold():
    before = model_from_text(CONV_RELU_BN.replace("[relu] r = Relu (c)\n  [bn] n = BatchNormalization (r, s, b, m, v)",
                                                  "[bn] r = BatchNormalization (c, s, b, m, v)\n  [relu] n = Relu (r)"))
    after = model_from_text(CONV_RELU_BN.replace("[relu] r = Relu (c)\n  [bn] n = BatchNormalization (r, s, b, m, v)",
                                                 "[relu] n = Relu (c)"))
    old, new = change_pictures(before.main, after.main, ["bn"])
    assert [n.label for n in old.nodes if n.role == FINDING] == ["bn"]
    assert "bn" not in {n.label for n in new.nodes}
    assert {n.label for n in new.nodes if n.role == FINDING} == {"conv", "relu"}  # the survivors around it
    text = render_before_after(old, new, title="Fold bn into conv")
    assert text.startswith("#### Fold bn into conv") and text.count("```mermaid") == 2
    assert text.index("**Before**") < text.index("**After**")
    for block in re.findall(r"```mermaid\n(.*?)```", text, re.S):
        mermaid_is_well_formed(block)


def test_report_fits_in_a_pull_request_comment():
    """GitHub refuses comments over 65,536 characters; a big model must still give a postable report."""
    findings, pictures = findings_and_pictures(long_chain(40, 20))
    many = [Finding(f.code, f.slug, f.severity, f.message + " " + "x" * 200,
                    Location("models/a_rather_long_folder_name/model.onnx", "main", f"bn{i}", "BatchNormalization", i))
            for i in range(2000) for f in findings[:1]]
    text = render_markdown(many, [("broken.onnx", "bad")] * 3, files=1, pictures=pictures)
    assert len(text) < 65_536
    assert "more (use `--format sarif` or `json` for all)" in text
    assert re.search(r"Only the first \d+ findings are shown in detail", text)
    assert text.rstrip().endswith("`broken.onnx`: bad")  # load errors are never cut off


def test_pictures_index_each_graph_once_however_many_findings(monkeypatch):
    import bnlint.pictures as pictures

    built = []
    real = pictures._nodes_by_label
    monkeypatch.setattr(pictures, "_nodes_by_label", lambda graph: built.append(graph.path) or real(graph))
    model = model_from_text(CONV_RELU_BN)
    findings = lint_model(model)
    many = findings * 50  # a deep model has thousands of findings in one graph
    assert len(pictures_for(model, many)) == len(many)
    assert built == ["main"]  # rebuilt per finding, a 2,000-block model took 6 s to render


def test_only_the_findings_the_report_details_get_a_picture(tmp_path):
    """Cutting a picture walks the graph around the finding; the report details at most MAX_DETAILED
    findings, so linting cuts pictures for each file's first MAX_DETAILED only (4,000 pictures took 0.4 s on
    a 2,000-block model), and the report is the one all pictures would give."""
    from conftest import parse

    from bnlint.config import Config
    from bnlint.lint import LintOptions, run_lint

    blocks = MAX_DETAILED + 10
    body = "\n  ".join(f"[conv{i}] c{i} = Conv ({'x' if i == 0 else f'n{i - 1}'}, w)\n"
                       f"  [bn{i}] {'y' if i == blocks - 1 else f'n{i}'} = BatchNormalization (c{i}, s, b, m, v)"
                       for i in range(blocks))
    text = f"""
<ir_version: 8, opset_import: ["" : 15]>
g (float[1, 2, 4, 4] x) => (float[1, 2, 4, 4] y)
{PARAMS}
{{
  {body}
}}
"""
    path = tmp_path / "deep.onnx"
    path.write_bytes(parse(text).SerializeToString())
    result = run_lint([str(path)], LintOptions(Config(root=tmp_path), pictures=True), jobs=1)
    assert len(result.findings) == blocks and len(result.pictures) == MAX_DETAILED
    model = model_from_text(text)
    every_picture = dict(pictures_for(model, lint_model(model, display_path=result.findings[0].location.file)))
    assert len(every_picture) == blocks
    assert (render_markdown(result.findings, [], files=1, pictures=result.pictures)
            == render_markdown(result.findings, [], files=1, pictures=every_picture))
