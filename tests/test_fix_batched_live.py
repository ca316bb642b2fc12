"""LiveGraph pieces behind the batched fixer: reserved initializers and deleting many entries without a sort."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import helper, numpy_helper

from bnlint.fix import live as live_module
from bnlint.fix.live import LiveGraph, NameAllocator, _delete_flagged
from bnlint.graph import model_info


def tensors(count: int) -> onnx.GraphProto:
    graph = helper.make_graph([], "g", [], [])
    for k in range(count):
        graph.initializer.add().name = f"t{k}"
    return graph


@pytest.mark.parametrize("budget", [live_module._SLICE_BUDGET, 0])  # 0: always the sort fallback
@settings(max_examples=60, deadline=None)
@given(flags=st.lists(st.booleans(), max_size=40))
def test_delete_flagged_keeps_the_others_in_order(budget, flags):
    graph = tensors(len(flags))
    saved = live_module._SLICE_BUDGET
    live_module._SLICE_BUDGET = budget
    try:
        _delete_flagged(graph.initializer, flags)
    finally:
        live_module._SLICE_BUDGET = saved
    assert [t.name for t in graph.initializer] == [f"t{k}" for k, doomed in enumerate(flags) if not doomed]


def open_live(ir_version: int = 8) -> tuple[onnx.ModelProto, LiveGraph]:
    nodes = [helper.make_node("Relu", ["x"], ["y"], name="r")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2])],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [2])],
                              [numpy_helper.from_array(np.ones(2, np.float32), "old")])
    model = helper.make_model(graph, ir_version=ir_version, opset_imports=[helper.make_opsetid("", 15)])
    live = LiveGraph.open(model_info(model, "m.onnx"), model.graph, path="main", parent=None,
                          names=NameAllocator(model), ir_version=model.ir_version)
    return model, live


def test_reserved_tensor_takes_its_name_and_place_but_is_invisible_until_filled():
    model, live = open_live()
    values = np.arange(3, dtype=np.float32)
    first = live.reserve_array("m", values, onnx.TensorProto.FLOAT)
    second = live.add_array("m", values + 1, onnx.TensorProto.FLOAT)
    assert (first, second) == ("m", "m_1")
    assert live.constant(first) is None and live.initializer(first) is None
    live.fill_reserved(first)
    np.testing.assert_array_equal(live.constant(first), values)
    live.released.add("old")
    live.commit()
    assert [t.name for t in model.graph.initializer] == ["m", "m_1"]  # "old" is unused: dropped
    np.testing.assert_array_equal(numpy_helper.to_array(model.graph.initializer[0]), values)


@pytest.mark.parametrize("ir_version", [8, 3])
def test_abandoned_tensor_is_counted_as_added_and_removed(ir_version):
    model, live = open_live(ir_version)
    name = live.reserve_array("m", np.zeros(4, np.float32), onnx.TensorProto.FLOAT)
    kept = live.add_array("k", np.zeros(2, np.float32), onnx.TensorProto.FLOAT)
    live.abandon_reserved(name)
    live.commit()
    assert [t.name for t in model.graph.initializer] == ["old", kept]
    assert live.bytes_added == 24 and live.bytes_removed == 16
    assert live.initializers_added == [name, kept] and live.initializers_removed == [name]
    assert name not in {v.name for v in model.graph.input}
    assert (kept in {v.name for v in model.graph.input}) == (ir_version < 4)


def test_commit_refuses_unsettled_deferred_rewrites():
    _, live = open_live()
    live.deferred_biases[0] = object()
    with pytest.raises(RuntimeError, match="not settled"):
        live.commit()


def test_detached_weights_write_as_external_data_after_the_graphs_are_released(tmp_path):
    """The pipeline frees its graphs before returning; the external-data writer still finds the detached
    weights (it tells them by their TensorProto wrappers, which the outcome keeps alive)."""
    import gc

    from bnlint.fix import fix_model
    from bnlint.fix.pipeline import FIX_CODES
    from bnlint.safe_io import prepare_save

    rng = np.random.default_rng(0)
    weight = rng.standard_normal((192, 192, 3, 3)).astype(np.float32)  # 1.3 MB: detached
    inits = [numpy_helper.from_array(weight, "w")]
    inits += [numpy_helper.from_array(values.astype(np.float32), name) for name, values in
              (("s", rng.uniform(0.5, 2, 192)), ("b", rng.standard_normal(192)), ("m", rng.standard_normal(192)),
               ("v", rng.uniform(0.5, 2, 192)))]
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("BatchNormalization", ["c", "s", "b", "m", "v"], ["y"], name="bn")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 192, 4, 4])],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 192, 4, 4])], inits)
    model = helper.make_model(graph, ir_version=8, opset_imports=[helper.make_opsetid("", 15)])
    source = tmp_path / "m.onnx"
    onnx.save(model, source)
    reference = onnx.ModelProto()
    reference.CopyFrom(model)
    fix_model(reference, str(source), FIX_CODES)
    outcome = fix_model(model, str(source), FIX_CODES, detach=True)
    assert outcome.detached
    gc.collect()
    prepare_save(model, tmp_path / "out.onnx", source_path=source, arrays=outcome.detached, external=True).commit()
    written = onnx.load(tmp_path / "out.onnx")
    expected = {t.name: numpy_helper.to_array(t) for t in reference.graph.initializer}
    for tensor in written.graph.initializer:
        assert numpy_helper.to_array(tensor).tobytes() == expected[tensor.name].tobytes()
