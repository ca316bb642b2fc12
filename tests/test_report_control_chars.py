"""A hostile node name ("\\x1b[31mevil\\n") cannot drive the terminal or forge lines in any text output:
check's formats, fix's report and diff, verify's table and error lines. JSON formats keep the exact name."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from bnlint.report.safe_text import json_text, printable

EVIL = "\x1b[31mevil\n"
RAW = ("\x1b", "\x9b", "\u202e", "\x07")  # ESC, C1 CSI, a bidi override, BEL: none may reach the output raw


def hostile_model() -> onnx.ModelProto:
    """Conv -> BN -> BN (BN004 and BN008 fire), the BNs and an output named with control characters."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((2, 2, 1, 1)).astype(np.float32), "w")]
    inits += [numpy_helper.from_array((rng.random(2) + 0.5).astype(np.float32), n) for n in "sbmv"]
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv\x9b2J"),
             helper.make_node("BatchNormalization", ["c", "s", "b", "m", "v"], ["t"], name=EVIL),
             helper.make_node("BatchNormalization", ["t", "s", "b", "m", "v"], ["y\x07\u202e"],
                              name="second\r\n::error::forged")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 4, 4])],
                              [helper.make_tensor_value_info("y\x07\u202e", TensorProto.FLOAT, [1, 2, 4, 4])], inits)
    return helper.make_model(graph, ir_version=8, opset_imports=[helper.make_opsetid("", 15)])


@pytest.fixture
def model(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for name in ("NO_COLOR", "BNLINT_OUTPUT_FORMAT", "GITHUB_ACTIONS"):
        monkeypatch.delenv(name, raising=False)
    onnx.save(hostile_model(), "m.onnx")
    return tmp_path / "m.onnx"


def assert_clean(text: str) -> None:
    for char in RAW:
        assert char not in text, f"raw {char!r} in output"


def test_printable_escapes_controls_and_keeps_text():
    assert printable(EVIL) == "\\x1b[31mevil\\n"
    assert printable("a\u202eb\x9bc\x7fd\u2028") == "a\\u202eb\\x9bc\\x7fd\\u2028"
    assert printable("conv_1/bn·ünï") == "conv_1/bn·ünï"
    assert printable("x\r\ny\x1b", keep="\r\n") == "x\r\ny\\x1b"
    assert json.loads(json_text(json.dumps({"k": "a\x9b\u202e"}, ensure_ascii=False))) == {"k": "a\x9b\u202e"}


@pytest.mark.parametrize("fmt", ["full", "concise", "github", "markdown", "junit"])
def test_text_formats_escape_the_name(model, run_cli, fmt):
    result = run_cli("check", "m.onnx", "--format", fmt, "--select", "BN004,BN008")
    assert result.exit_code == 1, result.stderr
    out = result.stdout
    assert_clean(out)
    assert "\\x1b[31mevil" in out
    if fmt in ("full", "concise"):
        assert "\\x1b[31mevil\\n" in out and "second\\r\\n::error::forged" in out
    assert not [line for line in out.splitlines() if line.lstrip().startswith("::error::")]  # no forged line
    if fmt == "github":
        lines = out.splitlines()
        assert len(lines) == 2 and all(line.startswith(("::warning ", "::notice ")) for line in lines)
        assert "\\x1b[31mevil%0A" in out  # GitHub's own escaping still encodes the line break
    if fmt == "junit":
        root = ET.fromstring(out)  # well-formed XML 1.0 (a raw ESC would not be)
        names = [case.get("name") for case in root.iter("testcase")]
        assert any("\\x1b[31mevil\\n" in name for name in names)


def test_full_format_with_colour_only_has_bnlints_own_sequences(model, run_cli):
    out = run_cli("check", "m.onnx", "--format", "full", "--color", "always").stdout
    sequences = set()
    k = out.find("\x1b")
    while k != -1:
        end = out.find("m", k)
        sequences.add(out[k:end + 1])
        k = out.find("\x1b", end)
    # click.style's sequences only: bold, dim, colours, reset; never the model's "[31m" + "evil"
    assert all(len(s) <= 6 for s in sequences), sequences
    assert "\\x1b[31mevil\\n" in out


def test_markdown_pictures_escape_the_name(model, run_cli):
    out = run_cli("check", "m.onnx", "--format", "markdown", "--select", "BN008").stdout
    assert "```mermaid" in out
    assert_clean(out)
    block = out.split("```mermaid", 1)[1].split("```", 1)[0]
    assert "\\x1b#91;31mevil" in block  # "[" is a Mermaid entity, the ESC an escape


@pytest.mark.parametrize("fmt", ["json", "json-lines", "sarif", "gitlab"])
def test_json_formats_keep_the_exact_name_with_safe_bytes(model, run_cli, fmt):
    result = run_cli("check", "m.onnx", "--format", fmt, "--select", "BN004,BN008")
    assert_clean(result.stdout)
    text = result.stdout
    documents = [json.loads(line) for line in text.splitlines()] if fmt == "json-lines" else [json.loads(text)]
    assert any(EVIL in text for text in strings(documents))


def strings(value):
    """Every string inside a parsed JSON value."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from strings(item)


def test_fix_report_diff_and_verify_escape_names(model, run_cli):
    diff = run_cli("fix", "m.onnx", "--diff")
    assert diff.exit_code == 0, diff.stderr
    assert_clean(diff.stdout + diff.stderr)
    assert "\\x1b[31mevil\\n" in diff.stdout
    fixed = run_cli("fix", "m.onnx", "-o", "out.onnx")
    assert fixed.exit_code == 0, fixed.stderr
    assert_clean(fixed.stderr)
    assert "\\x1b[31mevil\\n" in fixed.stderr and "y\\x07\\u202e" in fixed.stderr  # the output name, in the table
    verified = run_cli("verify", "m.onnx", "out.onnx")
    assert verified.exit_code == 0 and "y\\x07\\u202e" in verified.stdout
    assert_clean(verified.stdout)
    as_json = json.loads(run_cli("fix", "m.onnx", "--diff", "--format", "json").stdout)
    assert as_json["diff"] == diff.stdout  # the diff is display text, one line per entry
    assert any(EVIL in text for text in strings(as_json["passes"]))  # the structured report keeps exact names


def test_error_lines_escape_file_names(tmp_path, monkeypatch, run_cli):
    monkeypatch.chdir(tmp_path)
    name = "bad\x1b[2J\n.onnx"
    (tmp_path / name).write_bytes(b"")
    for command in (("check", name), ("fix", name), ("verify", name, name)):
        result = run_cli(*command)
        assert result.exit_code == 2
        assert_clean(result.stderr)
        assert "bad\\x1b[2J\\n.onnx" in result.stderr
        assert result.stderr.count("\n") == 1 + (command[0] == "check"), result.stderr  # check adds a summary


def test_printable_fast_path_is_sound():
    """`printable` returns text unchanged when Python calls it printable: that is only sound while every
    character it escapes is non-printable to Python."""
    import sys

    from bnlint.report.safe_text import _UNSAFE

    escaped = [chr(c) for c in range(sys.maxunicode + 1) if _UNSAFE.match(chr(c))]
    assert escaped and not any(char.isprintable() for char in escaped)


@pytest.mark.parametrize("fmt", ["full", "concise", "json", "json-lines", "sarif", "github", "gitlab", "junit",
                                 "markdown"])
def test_a_name_that_is_not_utf8_is_shown_with_escapes_in_every_format(tmp_path, monkeypatch, run_cli, fmt):
    """protobuf hands a string field that is not valid UTF-8 over as bytes; the JSON formats crashed on it
    (`bytes is not JSON serializable`, a traceback) and the text ones printed b'...'."""
    monkeypatch.chdir(tmp_path)
    model = hostile_model()
    model.graph.node[1].name = "bnX"
    data = model.SerializeToString().replace(b"bnX", b"b\xecX")  # same length: the framing stays valid
    (tmp_path / "m.onnx").write_bytes(data)
    result = run_cli("check", "m.onnx", "--format", fmt, "--select", "BN004,BN008")
    assert result.exit_code == 1, result.stderr
    if fmt in ("json", "json-lines", "sarif", "gitlab"):
        documents = [json.loads(line) for line in result.stdout.splitlines()] if fmt == "json-lines" else \
            [json.loads(result.stdout)]
        shown = list(strings(documents))
    else:
        shown = [result.stdout]
    assert any("b\\xecX" in text for text in shown)  # the byte as a \x escape, in the name's place
    assert not any("b'" in text for text in shown)
