"""The rules' shortcuts for the common case (bnlint.foldable._plain_conv_target, Graph.local_producer_op as a
first test in BN001 / BN003 / BN008) answer exactly what the step-by-step path answers.

Every model here is linted twice, with the shortcuts and with them switched off; the findings must be
identical. The cases cover where a shortcut must step aside (value_info over a weight, fan-out, graph
outputs, biases from Constant nodes, channel mismatches, other domains, Identity chains, subgraphs), the
rule fixtures, and random graphs of the fix property test. Two tests check that the shortcuts run at all.
"""

from __future__ import annotations

import sys
from pathlib import Path

import onnx
import pytest
from hypothesis import HealthCheck, given, settings
from onnx import helper, numpy_helper

from bnlint import foldable
from bnlint.engine import lint_model
from bnlint.graph import Graph, build_model
from bnlint.semantics import batchnorms

sys.path.insert(0, str(Path(__file__).resolve().parent))
from conftest import FIXTURES, parse  # noqa: E402
from test_fix_property import models  # noqa: E402

HEADER = '<ir_version: 8, opset_import: ["" : 15, "custom" : 1]>'
PARAMS = "float[2] s = {1.0, 2.0}, float[2] b = {0.5, 0.0}, float[2] m = {0.1, 0.0}, float[2] v = {1.0, 4.0}"
WEIGHT = "float[2, 2, 1, 1] w = {1.0, 0.5, -0.5, 1.0}"


def _slow(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(foldable, "_plain_conv_target", lambda bn, graph: None)
    monkeypatch.setattr(Graph, "local_producer_op", lambda self, name: None)


def lint_both(proto: onnx.ModelProto) -> tuple[list, list]:
    """(findings with the shortcuts, findings without them), each on a fresh graph view."""
    fast = lint_model(build_model(proto, "model.onnx"))
    with pytest.MonkeyPatch.context() as patch:
        _slow(patch)
        slow = lint_model(build_model(proto, "model.onnx"))
    return fast, slow


def model(body: str, *, inits: str = f"{WEIGHT}, {PARAMS}", outputs: str = "float[1, 2, 4, 4] y"
          ) -> onnx.ModelProto:
    text = f"""{HEADER}
g (float[1, 2, 4, 4] x) => ({outputs})
<{inits}>
{{
{body}
}}"""
    return raw(parse(text))


def raw(proto: onnx.ModelProto) -> onnx.ModelProto:
    """Initializers as raw little-endian data, as exporters write them (the text parser writes typed fields,
    which bnlint.bnstats leaves to the one-by-one path, and the fold shortcut with it)."""
    for k, tensor in enumerate(proto.graph.initializer):
        proto.graph.initializer[k].CopyFrom(numpy_helper.from_array(numpy_helper.to_array(tensor), tensor.name))
    return proto


def with_value_info(proto: onnx.ModelProto, name: str, shape: list[int]) -> onnx.ModelProto:
    """A value_info entry that gives `name` another shape than its initializer's dims (shape_of reads it first)."""
    proto.graph.value_info.append(helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, shape))
    return proto


CONV_BN = "  [conv] c = Conv (x, w{bias})\n  [bn] y = BatchNormalization (c, s, b, m, v)"

CASES = {
    "plain conv -> bn": model(CONV_BN.format(bias="")),
    "conv with bias": model(CONV_BN.format(bias=", cb"), inits=f"{WEIGHT}, float[2] cb = {{1.0, 2.0}}, {PARAMS}"),
    "bias from a Constant node": model(
        "  [k] cb = Constant <value = float[2] {1.0, 2.0}> ()\n" + CONV_BN.format(bias=", cb")),
    "bias that is a graph input": raw(parse(f"""{HEADER}
g (float[1, 2, 4, 4] x, float[2] cb) => (float[1, 2, 4, 4] y)
<{WEIGHT}, {PARAMS}>
{{
{CONV_BN.format(bias=", cb")}
}}""")),
    "weight described by value_info": with_value_info(model(CONV_BN.format(bias="")), "w", [3, 2, 1, 1]),
    "conv output read twice": model(CONV_BN.format(bias="") + "\n  [other] r = Relu (c)",
                                    outputs="float[1, 2, 4, 4] y, float[1, 2, 4, 4] r"),
    "conv output is a graph output": model(CONV_BN.format(bias=""), outputs="float[1, 2, 4, 4] y, float[1, 2, 4, 4] c"),
    "channel mismatch": model(CONV_BN.format(bias=""), inits=f"{WEIGHT}, float[3] s = {{1.0, 1.0, 1.0}}, "
                              "float[3] b = {0.0, 0.0, 0.0}, float[3] m = {0.0, 0.0, 0.0}, float[3] v = {1.0, 1.0, 1.0}"),
    "degenerate statistics": model(CONV_BN.format(bias=""), inits=f"{WEIGHT}, float[2] s = {{1.0, 1.0}}, "
                                   "float[2] b = {0.0, 0.0}, float[2] m = {0.0, 0.0}, float[2] v = {-1.0, 1.0}"),
    "training mode": model("  [conv] c = Conv (x, w)\n"
                           "  [bn] y = BatchNormalization <training_mode = 1> (c, s, b, m, v)"),
    "conv of another domain": model("  [conv] c = custom.Conv (x, w)\n  [bn] y = BatchNormalization (c, s, b, m, v)"),
    "conv transpose": model("  [conv] c = ConvTranspose (x, w, cb)\n  [bn] y = BatchNormalization (c, s, b, m, v)",
                            inits=f"{WEIGHT}, float[2] cb = {{1.0, 2.0}}, {PARAMS}"),
    "identity between": model("  [conv] c = Conv (x, w, cb)\n  [id] i = Identity (c)\n"
                              "  [bn] y = BatchNormalization (i, s, b, m, v)",
                              inits=f"{WEIGHT}, float[2] cb = {{1.0, 2.0}}, {PARAMS}"),
    "bn after relu through reshape": model(
        "  [relu] r = Relu (x)\n  [flat] f = Reshape (r, shape)\n  [back] z = Reshape (f, shape2)\n"
        "  [bn] y = BatchNormalization (z, s, b, m, v)",
        inits=f"int64[2] shape = {{1, 32}}, int64[4] shape2 = {{1, 2, 4, 4}}, {PARAMS}"),
    "bn after decomposed silu": model(
        "  [sig] g = Sigmoid (x)\n  [mul] z = Mul (x, g)\n  [bn] y = BatchNormalization (z, s, b, m, v)"),
    "bn after a custom op": model("  [op] z = custom.Relu (x)\n  [bn] y = BatchNormalization (z, s, b, m, v)"),
    "bn on a graph input": model("  [bn] y = BatchNormalization (x, s, b, m, v)"),
    "bn -> identity -> bn": model("  [conv] c = Conv (x, w)\n  [bn1] b1 = BatchNormalization (c, s, b, m, v)\n"
                                  "  [id] i = Identity (b1)\n  [bn2] y = BatchNormalization (i, s, b, m, v)"),
    "bn in an If branch, conv outside": raw(parse(f"""{HEADER}
g (float[1, 2, 4, 4] x, bool cond) => (float[1, 2, 4, 4] y)
<{WEIGHT}, {PARAMS}>
{{
  [conv] c = Conv (x, w)
  [if] y = If (cond) <
    then_branch = t () => (float[1, 2, 4, 4] o1) {{ [bn_t] o1 = BatchNormalization (c, s, b, m, v) }},
    else_branch = e () => (float[1, 2, 4, 4] o2) {{ [relu_e] r = Relu (c)
                                                    [bn_e] o2 = BatchNormalization (r, s, b, m, v) }}
  >
}}""")),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_shortcuts_match_the_full_path(name):
    fast, slow = lint_both(CASES[name])
    assert fast == slow


@pytest.mark.parametrize("path", sorted(p for p in FIXTURES.rglob("*.onnx")), ids=lambda p: p.name)
def test_shortcuts_match_on_fixtures(path):
    fast, slow = lint_both(onnx.load(path))
    assert fast == slow


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=models())
def test_shortcuts_match_on_random_graphs(case):
    fast, slow = lint_both(case[0])
    assert fast == slow


def test_the_fold_shortcut_answers_the_plain_case():
    """A plain Conv -> BN is answered by the shortcut itself (else the tests above compare the slow path
    with itself); a Conv output that is also read elsewhere is not."""
    graph = next(build_model(CASES["conv with bias"], "m.onnx").all_graphs())
    target = foldable._plain_conv_target(batchnorms(graph)[0], graph)
    assert isinstance(target, foldable.FoldTarget) and target.layer.label == "conv" and target.add is None
    shared = next(build_model(CASES["conv output read twice"], "m.onnx").all_graphs())
    assert foldable._plain_conv_target(batchnorms(shared)[0], shared) is None


def test_local_producer_op():
    graph = next(build_model(CASES["bn after a custom op"], "m.onnx").all_graphs())
    assert graph.local_producer_op("z") == ""  # another domain
    assert graph.local_producer_op("y") == "BatchNormalization"
    assert graph.local_producer_op("x") is None and graph.local_producer_op("s") is None
