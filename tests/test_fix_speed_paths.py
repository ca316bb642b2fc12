"""The bulk fold (bnlint.fix.bulk) gives exactly what the general passes give, and steps aside otherwise.

Every model here is fixed twice: with the bulk path, and with it switched off (the general passes, and
also the one-by-one reference of test_fix_batched). Models, reports and counts must be identical. The
plain deep graphs must actually take the bulk path; the others must leave it untouched.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import helper, numpy_helper

from bnlint import safe_io
from bnlint.errors import LoadError
from bnlint.fix import bulk
from bnlint.fix.pipeline import FIX_CODES
from bnlint.safe_io import WriteError, prepare_save

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_fix_batched import Chain, fixed, one_by_one  # noqa: E402
from test_fix_property import models  # noqa: E402

FLOAT = onnx.TensorProto.FLOAT


@pytest.fixture
def bulk_calls(monkeypatch):
    """What bulk.fold_all answered, call by call."""
    answers = []
    original = bulk.fold_all

    def spy(*args):
        answers.append(original(*args))
        return answers[-1]

    monkeypatch.setattr(bulk, "fold_all", spy)
    return answers


def general(model: onnx.ModelProto, codes=FIX_CODES):
    bulk.ENABLED = False
    try:
        return fixed(model, codes)
    finally:
        bulk.ENABLED = True


def assert_bulk_matches(model: onnx.ModelProto, answers: list, *, taken: bool, codes=FIX_CODES):
    """Bulk result == general passes == one-by-one reference; `taken`: whether the bulk path must run."""
    fast = fixed(model, codes)
    assert answers and answers[0] is taken
    reference = general(model, codes)
    assert fast[1] == reference[1]
    assert fast[0] == reference[0]
    with one_by_one():
        slow = fixed(model, codes)
    assert fast == slow
    return fast


def plain_chain(blocks: int = 12, seed: int = 0, **conv) -> Chain:
    chain = Chain(channels=4, seed=seed)
    for k in range(blocks):
        chain.conv(4, 3 if k % 2 else 1, with_bias=k % 4 != 3, **conv)
        chain.bn()
        chain.relu()
    return chain


def node(model: onnx.ModelProto, name: str) -> onnx.NodeProto:
    return next(n for n in model.graph.node if n.name == name)


def tensor(model: onnx.ModelProto, name: str) -> onnx.TensorProto:
    return next(t for t in model.graph.initializer if t.name == name)


def bns(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    return [n for n in model.graph.node if n.op_type == "BatchNormalization"]


# -- graphs the bulk path takes -----------------------------------------------------------------------
@pytest.mark.parametrize("opset", [9, 13, 15])
def test_plain_deep_chain_is_folded_in_bulk(bulk_calls, opset):
    _, report = assert_bulk_matches(plain_chain().model(opset=opset), bulk_calls, taken=True)
    assert report["bn"]["folded"] == 12 and report["bn"]["kept"] == []
    assert report["nodes"] == (36, 24)


def test_unnamed_nodes_and_taken_names(bulk_calls):
    """Labels of unnamed nodes come from their first output; a new name already in use gets a suffix."""
    model = plain_chain(6).model()
    for proto in model.graph.node:
        proto.name = ""
    first_conv = model.graph.node[0].output[0]
    model.graph.initializer.append(numpy_helper.from_array(np.ones(2, np.float32), f"Conv@{first_conv}_weight_bnfold"))
    model.graph.initializer.append(numpy_helper.from_array(np.ones(2, np.float32), "Conv@conv5_bias_bnfold_1"))
    fast, _ = assert_bulk_matches(model, bulk_calls, taken=True)
    folded = onnx.load_from_string(fast)
    assert folded.graph.node[0].input[1] == f"Conv@{first_conv}_weight_bnfold_1"
    assert any(t.name == f"Conv@{first_conv}_weight_bnfold" for t in folded.graph.initializer)  # unused: kept


def test_shared_tensors_go_only_when_nothing_reads_them(bulk_calls):
    """A BN parameter shared by two BNs goes with both; a weight another Conv still reads stays; a BN
    parameter that is also a Conv bias goes once neither reads it."""
    chain = plain_chain(4)
    model = chain.model()
    graph = model.graph
    first, second = bns(model)[:2]
    second.input[1] = first.input[1]  # shared scale
    convs = [n for n in graph.node if n.op_type == "Conv"]
    convs[2].input[2] = bns(model)[2].input[2]  # Conv bias == the BN's beta (same length)
    extra = helper.make_node("Conv", [graph.output[0].name, convs[1].input[1]], ["side"], name="side_conv")
    graph.node.append(extra)
    graph.output.append(helper.make_tensor_value_info("side", FLOAT, None))
    fast, _ = assert_bulk_matches(model, bulk_calls, taken=True)
    folded = onnx.load_from_string(fast)
    names = {t.name for t in folded.graph.initializer}
    assert first.input[1] not in names and bns(model)[2].input[2] not in names
    assert convs[1].input[1] in names


def test_value_info_graph_outputs_and_attributes(bulk_calls):
    """value_info of the Conv outputs that go away is dropped, a BN output that is a graph output moves
    onto its Conv, and momentum / training_mode=0 attributes are fine."""
    chain = plain_chain(5)
    model = chain.model()
    graph = model.graph
    for proto in graph.node:
        graph.value_info.append(helper.make_tensor_value_info(proto.output[0], FLOAT, None))
        if proto.op_type == "BatchNormalization":
            proto.attribute.append(helper.make_attribute("momentum", 0.9))
            proto.attribute.append(helper.make_attribute("training_mode", 0))
    middle = bns(model)[2].output[0]
    graph.output.append(helper.make_tensor_value_info(middle, FLOAT, None))
    fast, _ = assert_bulk_matches(model, bulk_calls, taken=True)
    folded = onnx.load_from_string(fast)
    assert len(folded.graph.value_info) == 10
    assert any(n.op_type == "Conv" and n.output[0] == middle for n in folded.graph.node)


def _empty_bias_slot(model):
    conv = [n for n in model.graph.node if n.op_type == "Conv"][3]  # the block built without a bias
    conv.input.append("")


def _custom_domain_bn(model):
    """Not a BN to bnlint: only a reader of some parameters, which therefore stay."""
    graph = model.graph
    bn = bns(model)[1]
    relu = next(n for n in graph.node if n.input[0] == bn.output[0])
    graph.node.append(helper.make_node("BatchNormalization", [relu.output[0], *bn.input[1:]], ["custom"],
                                       name="custom_bn", domain="com.example"))
    graph.output.append(helper.make_tensor_value_info("custom", FLOAT, None))
    model.opset_import.append(helper.make_opsetid("com.example", 1))


def _grouped_and_zero_scale(model):
    conv = [n for n in model.graph.node if n.op_type == "Conv"][1]
    conv.attribute.append(helper.make_attribute("group", 1))
    scale = tensor(model, bns(model)[1].input[1])
    scale.CopyFrom(numpy_helper.from_array(np.array([0.0, -1.5, 2.0, -0.0], np.float32), scale.name))


TAKEN = {"empty bias slot": _empty_bias_slot, "custom-domain BN": _custom_domain_bn,
         "group attribute, zero and negative scales": _grouped_and_zero_scale}


@pytest.mark.parametrize("change", TAKEN.values(), ids=TAKEN.keys())
def test_variants_of_the_plain_pattern_are_folded_in_bulk(bulk_calls, change):
    model = plain_chain(6).model()
    change(model)
    assert_bulk_matches(model, bulk_calls, taken=True)


# -- graphs the bulk path leaves to the general passes ------------------------------------------------
def _training(model):
    bns(model)[3].attribute.append(helper.make_attribute("training_mode", 1))


def _identity(model):
    graph = model.graph
    bn = bns(model)[1]
    graph.node.append(helper.make_node("Identity", [bn.input[0]], ["through"], name="through"))
    bn.input[0] = "through"


def _bn_chain(model):
    graph = model.graph
    bn = bns(model)[2]
    reader = next(n for n in graph.node if bn.output[0] in n.input)
    second = helper.make_node("BatchNormalization", [bn.output[0], *bn.input[1:]], ["again"], name="again")
    graph.node.append(second)
    reader.input[0] = "again"


def _reader_op(op):
    def damage(model):
        graph = model.graph
        bn = bns(model)[2]
        reader = next(n for n in graph.node if bn.output[0] in n.input)
        graph.node.append(helper.make_node(op, [bn.output[0]], ["extra"], name="extra"))
        reader.input[0] = "extra"
    return damage


def _custom_reader(model):
    """The general passes look at op types only here (bnlint.fix.bias._fold_may_absorb)."""
    graph = model.graph
    bn = bns(model)[2]
    graph.node.append(helper.make_node("BatchNormalization", [bn.output[0], *bn.input[1:]], ["custom"],
                                       name="custom_bn", domain="com.example"))
    graph.output.append(helper.make_tensor_value_info("custom", FLOAT, None))
    model.opset_import.append(helper.make_opsetid("com.example", 1))


def _fan_out(model):
    conv = next(n for n in model.graph.node if n.op_type == "Conv")
    model.graph.output.append(helper.make_tensor_value_info(conv.output[0], FLOAT, None))


def _set(which: int, value: float):
    def damage(model):
        name = bns(model)[1].input[which]
        tensor_ = tensor(model, name)
        array = numpy_helper.to_array(tensor_).copy()
        array[0] = value
        tensor_.CopyFrom(numpy_helper.from_array(array, name))
    return damage


def _huge_conv_bias(model):
    conv = [n for n in model.graph.node if n.op_type == "Conv"][0]
    bias = tensor(model, conv.input[2])
    mean = tensor(model, bns(model)[0].input[3])
    mean.CopyFrom(numpy_helper.from_array(np.full(4, 3e38, np.float32), mean.name))
    bias.CopyFrom(numpy_helper.from_array(np.full(4, -3e38, np.float32), bias.name))


def _float16_bn(model):
    for which in range(1, 5):
        name = bns(model)[0].input[which]
        tensor_ = tensor(model, name)
        tensor_.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(tensor_).astype(np.float16), name))


def _big_weight(model):
    conv = [n for n in model.graph.node if n.op_type == "Conv"][1]
    weight = tensor(model, conv.input[1])
    array = np.ones((4, 4, 33, 33), np.float32)  # > 64 KiB: folded alone by the general passes
    weight.CopyFrom(numpy_helper.from_array(array, weight.name))
    conv.attribute[0].CopyFrom(helper.make_attribute("pads", [16] * 4))


def _weight_input(model):
    conv = [n for n in model.graph.node if n.op_type == "Conv"][1]
    model.graph.input.append(helper.make_tensor_value_info(conv.input[1], FLOAT, [4, 4, 3, 3]))


def _weight_value_info(model):
    conv = [n for n in model.graph.node if n.op_type == "Conv"][2]
    model.graph.value_info.append(helper.make_tensor_value_info(conv.input[1], FLOAT, [4, 4, 3, 3]))


def _duplicate_initializer(model):
    model.graph.initializer.append(numpy_helper.from_array(np.ones(3, np.float32), "unused"))
    model.graph.initializer.append(numpy_helper.from_array(np.ones(3, np.float32), "unused"))


def _param_is_graph_output(model):
    model.graph.output.append(helper.make_tensor_value_info(bns(model)[3].input[4], FLOAT, None))


def _param_from_constant(model):
    bn = bns(model)[2]
    values = numpy_helper.to_array(tensor(model, bn.input[4]))
    model.graph.node.insert(0, helper.make_node("Constant", [], ["var_c"], name="var_c",
                                                value=numpy_helper.from_array(values, "v")))
    bn.input[4] = "var_c"


def _subgraph(model):
    graph = model.graph
    branch = helper.make_graph([helper.make_node("Identity", [graph.output[0].name], ["inside"])], "b", [],
                               [helper.make_tensor_value_info("inside", FLOAT, None)])
    graph.node.append(helper.make_node("If", ["flag"], ["chosen"], name="if", then_branch=branch,
                                       else_branch=branch))
    graph.input.append(helper.make_tensor_value_info("flag", onnx.TensorProto.BOOL, []))
    graph.output.append(helper.make_tensor_value_info("chosen", FLOAT, None))


def _dropout(model):
    _reader_op("Dropout")(model)


def _maxpool(model):
    graph = model.graph
    relu = [n for n in graph.node if n.op_type == "Relu"][1]
    reader = next(n for n in graph.node if relu.output[0] in n.input)
    graph.node.append(helper.make_node("MaxPool", [relu.output[0]], ["pooled"], name="pool", kernel_shape=[1, 1]))
    reader.input[0] = "pooled"


FALLBACKS = {
    "training BN": _training, "Identity before BN": _identity, "BN chain": _bn_chain,
    "Identity after BN": _reader_op("Identity"), "custom op named like BN after BN": _custom_reader, "Conv output read twice": _fan_out,
    "NaN scale": _set(1, np.nan), "var + eps <= 0": _set(4, -1.0), "new mean overflows": _huge_conv_bias,
    "huge scale overflows the weight": _set(1, 3e38), "float16 BN": _float16_bn, "large weight": _big_weight,
    "weight is a graph input": _weight_input, "BN parameter from a Constant": _param_from_constant,
    "BN parameter is a graph output": _param_is_graph_output, "weight has value_info": _weight_value_info,
    "duplicate initializer names": _duplicate_initializer,
    "subgraph": _subgraph, "Dropout": _dropout, "MaxPool": _maxpool,
}


@pytest.mark.parametrize("damage", FALLBACKS.values(), ids=FALLBACKS.keys())
def test_graphs_off_the_plain_pattern_take_the_general_passes(bulk_calls, damage):
    model = plain_chain(6).model()
    damage(model)
    with np.errstate(all="ignore"):
        assert_bulk_matches(model, bulk_calls, taken=False)


@pytest.mark.parametrize("codes", [("BN004",), ("BN003",), ("BN003", "BN004", "BN008")])
def test_bulk_path_needs_both_bn003_and_bn004(bulk_calls, codes):
    assert_bulk_matches(plain_chain(5).model(), bulk_calls, taken="BN003" in codes and "BN004" in codes,
                        codes=codes)


def test_ir3_models_take_the_general_passes(bulk_calls):
    assert_bulk_matches(plain_chain(5).model(ir_version=3, opset=8), bulk_calls, taken=False)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=models())
def test_random_graphs_fix_the_same_with_and_without_the_bulk_path(case):
    model, _training = case
    with np.errstate(all="ignore"):
        assert fixed(model) == general(model)


@st.composite
def plain_chains(draw):
    """Conv -> BN (-> Relu) chains of random widths, some nodes unnamed, some BN parameters shared, some
    values described by value_info: the bulk path's own ground."""
    chain = Chain(channels=draw(st.sampled_from([1, 2, 4])), seed=draw(st.integers(0, 1000)))
    for _ in range(draw(st.integers(1, 8))):
        chain.conv(draw(st.sampled_from([1, 2, 5])), draw(st.sampled_from([1, 3])), with_bias=draw(st.booleans()))
        chain.bn()
        if draw(st.booleans()):
            chain.relu()
    model = chain.model(opset=draw(st.sampled_from([9, 13, 15, 17])))
    graph = model.graph
    for proto in graph.node:
        if draw(st.booleans()):
            proto.name = ""
        if draw(st.booleans()):
            graph.value_info.append(helper.make_tensor_value_info(proto.output[0], FLOAT, None))
    norms = bns(model)
    first, second, which = draw(st.integers(0, 99)), draw(st.integers(0, 99)), draw(st.integers(1, 4))
    a, b = norms[first % len(norms)], norms[second % len(norms)]
    if tensor(model, a.input[which]).dims == tensor(model, b.input[which]).dims:
        b.input[which] = a.input[which]  # one parameter shared by two BNs (or by the same one)
    return model


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(model=plain_chains())
def test_random_plain_chains_fold_in_bulk_as_in_the_general_passes(model):
    answers = []
    original = bulk.fold_all

    def spy(*args):
        answers.append(original(*args))
        return answers[-1]

    bulk.fold_all = spy
    try:
        fast = fixed(model)
    finally:
        bulk.fold_all = original
    assert answers == [True]
    assert fast == general(model)


# -- the checked write --------------------------------------------------------------------------------
def checked_chain() -> onnx.ModelProto:
    """A small chain the ONNX checker accepts (its output has a shape)."""
    model = plain_chain(2).model()
    output = model.graph.output[0]
    output.CopyFrom(helper.make_tensor_value_info(output.name, FLOAT, [1, 4, 8, 8]))
    return model


def test_a_model_the_checker_rejects_leaves_no_file(tmp_path):
    """The checker runs beside the write: a rejection still removes the written file."""
    model = checked_chain()
    model.graph.node[0].op_type = "NoSuchOp"
    with pytest.raises(WriteError, match="checker rejects"):
        prepare_save(model, tmp_path / "out.onnx", source_path=tmp_path / "in.onnx", external=False)
    assert list(tmp_path.iterdir()) == []


def test_a_failed_write_stops_the_checker_and_leaves_no_file(tmp_path, monkeypatch):
    def broken(plan, handle):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(safe_io, "write_plan", broken)
    with pytest.raises(WriteError, match="No space left"):
        prepare_save(checked_chain(), tmp_path / "out.onnx", source_path=tmp_path / "in.onnx",
                     external=False)
    assert list(tmp_path.iterdir()) == []


def test_skeleton_check_reads_bytes_and_zeroes_large_tensors():
    model = checked_chain()
    plain = model.SerializeToString()
    safe_io._check_skeleton_task(plain, [], "m.onnx")
    model.graph.initializer[0].ClearField("raw_data")  # as plan_inline leaves a large tensor
    safe_io._check_skeleton_task(model.SerializeToString(), [0], "m.onnx")  # declared empty: accepted
    model.graph.node[0].op_type = "NoSuchOp"
    with pytest.raises(LoadError, match="checker rejects"):
        safe_io._check_skeleton_task(model.SerializeToString(), [], "m.onnx")
