"""The batched fold and the deferred BN003 rewrite give exactly what folding BN by BN gives.

The reference is the same pipeline with the fast paths switched off: no bulk fold (bnlint.fix.bulk),
BN003 edits the graph at once (no deferral), every fold is finished before the next BN is looked at, and
every value is computed alone by fold.fold_one. Models, reports and the bytes written must be identical,
not merely close.
"""

from __future__ import annotations

import contextlib
import gc
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import helper, numpy_helper

from bnlint.fix import batched, bias, bulk, fix_model, fold
from bnlint.fix.fold import Plan
from bnlint.fix.live import LiveGraph, NameAllocator
from bnlint.fix.pipeline import FIX_CODES
from bnlint.foldable import FoldTarget, fold_target
from bnlint.graph import model_info

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_fix_property import models  # noqa: E402

FLOAT, FLOAT16, DOUBLE = onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE


@contextlib.contextmanager
def one_by_one():
    """Switch the fast paths off: the reference behaviour."""
    saved = (bias._fold_may_absorb, fold._depends_on_pending, batched._batchable, batched.bias_raws, bulk.ENABLED)
    bias._fold_may_absorb = lambda *args: False
    fold._depends_on_pending = lambda *args: True
    batched._batchable = lambda *args: None
    batched.bias_raws = lambda *args: None
    bulk.ENABLED = False
    try:
        yield
    finally:
        bias._fold_may_absorb, fold._depends_on_pending, batched._batchable, batched.bias_raws, bulk.ENABLED = saved


def fixed(model: onnx.ModelProto, codes=FIX_CODES):
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    outcome = fix_model(copy, "model.onnx", codes)
    report = {"passes": [(r.code, [c.to_dict() for c in r.changes], [k.to_dict() for k in r.kept])
                         for r in outcome.passes],
              "bn": outcome.bn.to_dict(), "notes": outcome.notes, "saved": outcome.bytes_saved,
              "nodes": (outcome.nodes_before, outcome.nodes_after)}
    return copy.SerializeToString(), report


def assert_same_as_one_by_one(model: onnx.ModelProto, codes=FIX_CODES):
    fast = fixed(model, codes)
    with one_by_one():
        reference = fixed(model, codes)
    assert fast[1] == reference[1]
    assert fast[0] == reference[0]
    return fast


# -- building models -------------------------------------------------------------------------------
class Chain:
    def __init__(self, channels: int = 3, seed: int = 0, weight_type: int = FLOAT):
        self.rng = np.random.default_rng(seed)
        self.nodes, self.inits = [], []
        self.channels, self.cur, self.count = channels, "x", 0
        self.dtype = np.dtype(helper.tensor_dtype_to_np_dtype(weight_type))
        self.inputs = [helper.make_tensor_value_info("x", weight_type, [1, channels, 8, 8])]

    def tensor(self, stem, array, dtype=None) -> str:
        self.count += 1
        name = f"{stem}{self.count}"
        self.inits.append(numpy_helper.from_array(np.asarray(array).astype(dtype or self.dtype), name))
        return name

    def node(self, op, inputs, **attrs) -> str:
        self.count += 1
        out = f"{op.lower()}{self.count}"
        self.nodes.append(helper.make_node(op, inputs, [out], name=f"{op}_{self.count}", **attrs))
        return out

    def conv(self, out: int, kernel: int = 1, with_bias: bool = True, bias_values=None) -> None:
        inputs = [self.cur, self.tensor("w", self.rng.standard_normal((out, self.channels, kernel, kernel)))]
        if with_bias:
            inputs.append(self.tensor("b", self.rng.standard_normal(out) if bias_values is None else bias_values))
        pad = (kernel - 1) // 2
        self.cur = self.node("Conv", inputs, pads=[pad] * 4)
        self.channels = out

    def bn(self, mean=None, training: bool = False, dtype=None) -> None:
        c = self.channels
        params = [self.tensor("scale", self.rng.uniform(0.5, 2, c), dtype),
                  self.tensor("beta", self.rng.standard_normal(c), dtype),
                  self.tensor("mean", self.rng.standard_normal(c) if mean is None else mean, dtype),
                  self.tensor("var", self.rng.uniform(0.5, 2, c), dtype)]
        attrs = {"training_mode": 1} if training else {}
        self.cur = self.node("BatchNormalization", [self.cur, *params], **attrs)

    def relu(self) -> None:
        self.cur = self.node("Relu", [self.cur])

    def model(self, ir_version: int = 8, opset: int = 15) -> onnx.ModelProto:
        elem = self.inputs[0].type.tensor_type.elem_type
        output = helper.make_tensor_value_info(self.cur, elem, None)
        graph = helper.make_graph(self.nodes, "chain", self.inputs, [output], self.inits)
        if ir_version < 4:
            graph.input.extend(helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)) for t in self.inits)
        return helper.make_model(graph, ir_version=ir_version, opset_imports=[helper.make_opsetid("", opset)])


def mixed_chain() -> onnx.ModelProto:
    """Conv+BN blocks with several weight shapes, with and without bias, and one weight too large to stack."""
    chain = Chain(channels=3)
    for out, kernel, with_bias in ((4, 3, True), (4, 3, False), (2, 1, True), (4, 3, True), (3, 1, False),
                                   (64, 1, True), (128, 3, True), (4, 3, True), (2, 1, False)):
        chain.conv(out, kernel, with_bias)
        chain.bn()
        chain.relu()
    return chain.model()


# -- the batched values ----------------------------------------------------------------------------
def open_live(model: onnx.ModelProto) -> LiveGraph:
    return LiveGraph.open(model_info(model, "model.onnx"), model.graph, path="main", parent=None,
                          names=NameAllocator(model), ir_version=model.ir_version)


def test_batched_fold_over_mixed_shapes_equals_folding_one_by_one():
    model = mixed_chain()
    live = open_live(model)
    targets = [fold_target(bn) for _, bn in live.batchnorms()]
    assert all(isinstance(t, FoldTarget) for t in targets)
    plans = [Plan(t, None, k) for k, t in enumerate(targets)]
    stacked = sum(1 for p in plans if batched._batchable(live, p, p.target.affine.channels) is not None)
    assert 0 < stacked < len(plans)  # both paths are exercised: same-shape groups and the one-by-one rest
    with np.errstate(all="ignore"):
        batch = batched.fold_values(live, plans)
        for plan, got in zip(plans, batch):
            weight, new_bias, weight_type, notes = fold.fold_one(live, plan.target, plan.target.affine, absorbed=False)
            assert got[2] == weight_type and got[3] == notes
            for a, b in ((got[0], weight), (got[1], new_bias)):
                assert a.dtype == b.dtype and a.shape == b.shape
                assert a.tobytes() == b.tobytes()  # bit-identical, signed zeros included


def test_mixed_chain_fix_is_identical_to_one_by_one():
    _, report = assert_same_as_one_by_one(mixed_chain())
    assert report["bn"]["folded"] == 9
    kinds = [c["kind"] for code, changes, _ in report["passes"] for c in changes]
    assert kinds.count("remove-bias") == 6  # reported although the fold absorbed them


def test_absorbed_bias_leaves_no_trace_of_the_new_mean():
    data, report = assert_same_as_one_by_one(mixed_chain())
    rewritten = onnx.load_from_string(data)
    names = {t.name for t in rewritten.graph.initializer}
    assert not any(name.endswith("_mean_nobias") for name in names)
    assert all(len(n.input) == 3 for n in rewritten.graph.node if n.op_type == "Conv")


def test_infinite_conv_bias_keeps_the_bn_with_its_new_mean():
    """mean - bias is infinite: the fold refuses once the bias is moved into the mean, so the deferred
    BN003 rewrite is made for real and the BN keeps the new mean (reason worded from it)."""
    chain = Chain(channels=2)
    chain.conv(3, 1, bias_values=np.array([0.5, np.inf, 1.0]))
    chain.bn()
    chain.relu()
    chain.conv(3, 1)
    chain.bn()
    data, report = assert_same_as_one_by_one(chain.model())
    assert report["bn"]["folded"] == 1
    assert "BN mean is NaN or Inf in channel 1" in report["bn"]["kept"][0]["reason"]
    rewritten = onnx.load_from_string(data)
    bn = next(n for n in rewritten.graph.node if n.op_type == "BatchNormalization")
    assert bn.input[3].endswith("_mean_nobias")


def test_training_bn_gets_the_bias_removal_but_no_fold():
    chain = Chain(channels=2)
    chain.conv(3, 1)
    chain.bn(training=True)
    chain.relu()
    chain.conv(2, 3)
    chain.bn()
    data, report = assert_same_as_one_by_one(chain.model())
    rewritten = onnx.load_from_string(data)
    bn = next(n for n in rewritten.graph.node if n.op_type == "BatchNormalization")
    assert bn.input[3].endswith("_mean_nobias")
    conv = next(n for n in rewritten.graph.node if n.op_type == "Conv")
    assert len(conv.input) == 2  # the bias is gone: BN003 was made for real


def test_bn_numerics_fine_only_after_the_bias_moves_into_the_mean():
    """float64 BN whose shift overflows with its own mean (1e308 x s) but not with mean - bias = 0: the
    fold refused before the BN003 rewrite and folds after it."""
    chain = Chain(channels=1, weight_type=DOUBLE)
    chain.conv(1, 1, bias_values=np.array([1e308]))
    chain.bn(mean=np.array([1e308]))
    chain.inits[-4].CopyFrom(numpy_helper.from_array(np.array([8.0]), chain.inits[-4].name))  # scale 8
    _, report = assert_same_as_one_by_one(chain.model())
    assert report["bn"]["folded"] == 1


def test_bn_reading_a_bn_merges_instead_of_deferring():
    chain = Chain(channels=3)
    chain.conv(3, 3)
    chain.bn()
    chain.bn()
    chain.relu()
    _, report = assert_same_as_one_by_one(chain.model())
    assert report["bn"]["merged"] == 1 and report["bn"]["folded"] == 1


def test_float16_and_ir3_models_match_one_by_one():
    chain = Chain(channels=2, weight_type=FLOAT16)
    for _ in range(3):
        chain.conv(2, 3)
        chain.bn()
        chain.relu()
    assert_same_as_one_by_one(chain.model())
    chain = Chain(channels=2)
    for _ in range(3):
        chain.conv(2, 3)
        chain.bn()
        chain.relu()
    _, report = assert_same_as_one_by_one(chain.model(ir_version=3, opset=9))
    assert any("IR version 3" in note for note in report["notes"])


def test_bias_only_selected_makes_every_rewrite_for_real():
    fast, _ = assert_same_as_one_by_one(mixed_chain(), codes=("BN003",))
    rewritten = onnx.load_from_string(fast)
    bns = [n for n in rewritten.graph.node if n.op_type == "BatchNormalization"]
    assert sum(n.input[3].endswith("_mean_nobias") for n in bns) == 6


def test_pipeline_leaves_the_collector_enabled_and_no_cycles_behind():
    """The collector is paused while fixing; the graphs are released so that nothing waits for it."""
    model = mixed_chain()
    assert gc.isenabled()
    gc.collect()
    fixed(model)
    assert gc.isenabled()
    assert gc.collect() == 0


# -- random graphs ---------------------------------------------------------------------------------
SPECIAL = [np.inf, -np.inf, np.nan, 3e38, -3e38, 1e-45, 0.0, -0.0]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=models(), damage=st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 10_000),
                                                 st.sampled_from(SPECIAL)), max_size=2))
def test_random_graphs_fix_identically_to_one_by_one(case, damage):
    """Random Conv/ConvTranspose/Gemm/MatMul graphs with BN chains, shared weights, fan-out, training BNs,
    some with a NaN, an infinity or a float32 extreme in one parameter."""
    model, _training = case
    tensors = list(model.graph.initializer)
    for which, where, value in damage:
        tensor = tensors[which % len(tensors)]
        array = numpy_helper.to_array(tensor).copy()
        if array.size:
            array.reshape(-1)[where % array.size] = value
            tensor.CopyFrom(numpy_helper.from_array(array.astype(np.float32), tensor.name))
    with np.errstate(all="ignore"):
        assert_same_as_one_by_one(model)


@pytest.mark.parametrize("codes", [FIX_CODES, ("BN003", "BN004")])
@pytest.mark.parametrize("max_pending", [fold.MAX_PENDING, 7])  # 7: the folds are finished in chunks
def test_many_blocks_in_one_batch(codes, max_pending, monkeypatch):
    monkeypatch.setattr(fold, "MAX_PENDING", max_pending)
    chain = Chain(channels=4, seed=3)
    for k in range(60):
        chain.conv(4, 3, with_bias=k % 5 != 0)
        chain.bn()
        chain.relu()
    _, report = assert_same_as_one_by_one(chain.model(), codes)
    assert report["bn"]["folded"] == 60
