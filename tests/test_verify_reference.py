"""The float64 copy used as verification reference: the lowered Conv / ConvTranspose / pools compute the
same function as onnxruntime's float32 kernels, in double precision."""

from __future__ import annotations

import numpy as np
import onnx
import onnx.parser
import pytest

import bnlint.reference64
from bnlint.reference64 import NoReference, float64_copy, wrap_in_float32
from bnlint.verify import session

HEAD = '<ir_version: 8, opset_import: ["" : {opset}]>'


def _model(body: str, signature: str, opset: int = 17, weights: dict[str, tuple] = (), seed: int = 0):
    model = onnx.parser.parse_model(HEAD.format(opset=opset) + f"\ng {signature} {{\n{body}\n}}")
    rng = np.random.default_rng(seed)
    for name, shape in dict(weights).items():
        values = rng.standard_normal(shape).astype(np.float32)
        model.graph.initializer.append(onnx.numpy_helper.from_array(values, name))
    keep = [v for v in model.graph.input if v.name not in dict(weights)]
    del model.graph.input[:]
    model.graph.input.extend(keep)
    return model


def _compare(model: onnx.ModelProto, shape, rtol=2e-5):
    """float32 onnxruntime vs the float64 copy: equal up to float32 rounding."""
    x = np.random.default_rng(1).standard_normal(shape).astype(np.float32)
    expected = session(model).run(None, {"x": x})[0]
    copy = float64_copy(model, "model.onnx")
    ops = {n.op_type for n in copy.graph.node}
    assert not ops & {"Conv", "ConvTranspose", "GlobalAveragePool", "GlobalMaxPool"}, ops
    got = session(copy).run(None, {"x": x.astype(np.float64)})[0]
    assert got.dtype == np.float64 and got.shape == expected.shape
    scale = max(1.0, float(np.abs(got).max()))
    np.testing.assert_allclose(expected, got, rtol=rtol, atol=rtol * scale)
    return got


CONVS = [
    ("pads", "float[4,3,3,3]", "<pads = [1, 2, 0, 1]>", (2, 3, 7, 6)),
    ("strides", "float[4,3,3,3]", "<strides = [2, 3]>", (1, 3, 9, 10)),
    ("dilations", "float[4,3,3,2]", "<dilations = [2, 3], pads = [1, 1, 1, 1]>", (1, 3, 9, 9)),
    ("groups", "float[6,2,3,3]", "<group = 2, pads = [1, 1, 1, 1]>", (2, 4, 5, 5)),
    ("depthwise", "float[4,1,3,3]", "<group = 4, strides = [2, 2]>", (1, 4, 7, 7)),
    ("same_upper", "float[4,3,4,4]", '<auto_pad = "SAME_UPPER", strides = [2, 2]>', (1, 3, 7, 7)),
    ("same_lower", "float[4,3,4,4]", '<auto_pad = "SAME_LOWER">', (1, 3, 6, 6)),
    ("valid", "float[4,3,3,3]", '<auto_pad = "VALID">', (1, 3, 6, 6)),
    ("conv1d", "float[5,3,4]", "<pads = [1, 2], strides = [2]>", (2, 3, 11)),
    ("conv3d", "float[2,3,2,3,2]", "<pads = [1, 0, 1, 0, 1, 0]>", (1, 3, 4, 5, 4)),
]


@pytest.fixture(params=["gathered", "taps"])
def lowering(request, monkeypatch):
    """Both forms of a lowered convolution: one gathered Einsum (static spatial shapes, the default) and
    the sum of per-tap MatMuls (dynamic shapes, or windows too large to gather)."""
    if request.param == "taps":
        monkeypatch.setattr(bnlint.reference64, "MAX_GATHERED_ELEMENTS", 0)
    return request.param


def _assert_form(model: onnx.ModelProto, lowering: str) -> None:
    ops = {n.op_type for n in float64_copy(model, "model.onnx").graph.node}
    assert ("Einsum" in ops) == (lowering == "gathered"), ops
    assert ("MatMul" in ops) == (lowering == "taps"), ops


@pytest.mark.parametrize("name, weight, attrs, shape", CONVS, ids=[c[0] for c in CONVS])
def test_conv_lowering(name, weight, attrs, shape, lowering):
    w_shape = tuple(int(d) for d in weight[6:-1].split(","))
    body = f"  y = Conv {attrs} (x, w, b)"
    signature = f"(float[{','.join(map(str, shape))}] x) => (float y)"
    model = _model(body, signature, weights={"w": w_shape, "b": (w_shape[0],)})
    _assert_form(model, lowering)
    _compare(model, shape)


def test_dynamic_spatial_shapes_use_the_taps_form():
    model = _model("  y = Conv <pads = [1, 1, 1, 1], strides = [2, 2]> (x, w, b)", "(float[N,3,H,W] x) => (float y)",
                   weights={"w": (4, 3, 3, 3), "b": (4,)})
    _assert_form(model, "taps")
    _compare(model, (2, 3, 7, 6))


def test_convs_of_one_geometry_share_their_index_table_and_shapes():
    body = "\n".join(f"  y{k} = Conv <pads = [1, 1, 1, 1]> ({'x' if k == 0 else f'y{k - 1}'}, w{k}, b{k})"
                     for k in range(4)) + "\n  y = Identity (y3)"
    weights = {name: shape for k in range(4) for name, shape in ((f"w{k}", (3, 3, 3, 3)), (f"b{k}", (3,)))}
    model = _model(body, "(float[1,3,5,5] x) => (float y)", weights=weights)
    copy = float64_copy(model, "model.onnx")
    integer_tensors = [t for t in copy.graph.initializer if t.data_type == onnx.TensorProto.INT64]
    assert len(integer_tensors) == len({(tuple(t.dims), t.raw_data) for t in integer_tensors}) <= 4
    _compare(model, (1, 3, 5, 5))


def test_conv_lowering_is_more_accurate_than_float32():
    """Against a numpy float64 convolution the copy is exact to double rounding; float32 is not."""
    model = _model("  y = Conv <pads = [1, 1, 1, 1]> (x, w)", "(float[1,3,6,6] x) => (float y)",
                   weights={"w": (4, 3, 3, 3)})
    x = np.random.default_rng(1).standard_normal((1, 3, 6, 6)).astype(np.float32)
    w = onnx.numpy_helper.to_array(model.graph.initializer[0]).astype(np.float64)
    padded = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (1, 1), (1, 1)))
    windows = np.lib.stride_tricks.sliding_window_view(padded, (3, 3), axis=(2, 3))  # [1,3,6,6,3,3]
    exact = np.einsum("nchwij,mcij->nmhw", windows, w)
    got = session(float64_copy(model, "m.onnx")).run(None, {"x": x.astype(np.float64)})[0]
    single = session(model).run(None, {"x": x})[0]
    assert np.abs(got - exact).max() < 1e-12
    assert np.abs(single - exact).max() > 1e-8


CONV_TRANSPOSES = [
    ("strides_pads_output_padding", "float[3,4,3,3]",
     "<strides = [2, 2], pads = [1, 1, 1, 1], output_padding = [1, 1]>", (2, 3, 4, 5)),
    ("groups", "float[4,3,3,3]", "<group = 2, strides = [2, 2], pads = [1, 0, 1, 0]>", (1, 4, 4, 4)),
    ("dilations", "float[2,3,2,2]", "<dilations = [2, 2], strides = [3, 1]>", (1, 2, 3, 4)),
    ("output_shape", "float[2,3,3,3]", "<strides = [2, 2], output_shape = [10, 9]>", (1, 2, 4, 4)),
    ("same_upper", "float[2,3,3,3]", '<strides = [2, 2], auto_pad = "SAME_UPPER">', (1, 2, 4, 4)),
    ("same_lower", "float[2,3,3,3]", '<strides = [2, 2], auto_pad = "SAME_LOWER">', (1, 2, 4, 4)),
    ("conv1d", "float[3,2,4]", "<strides = [3], pads = [1, 2]>", (2, 3, 5)),
]


@pytest.mark.parametrize("name, weight, attrs, shape", CONV_TRANSPOSES, ids=[c[0] for c in CONV_TRANSPOSES])
def test_conv_transpose_lowering(name, weight, attrs, shape, lowering):
    w_shape = tuple(int(d) for d in weight[6:-1].split(","))
    groups = 2 if "group = 2" in attrs else 1
    body = f"  y = ConvTranspose {attrs} (x, w, b)"
    signature = f"(float[{','.join(map(str, shape))}] x) => (float y)"
    model = _model(body, signature, weights={"w": w_shape, "b": (w_shape[1] * groups,)})
    _assert_form(model, lowering)
    _compare(model, shape)


@pytest.mark.parametrize("op", ["GlobalAveragePool", "GlobalMaxPool"])
@pytest.mark.parametrize("opset", [13, 18])
def test_global_pool_lowering(op, opset):
    model = _model(f"  y = {op} (x)", "(float[2,3,5,4] x) => (float[2,3,1,1] y)", opset=opset)
    _compare(model, (2, 3, 5, 4))


def test_float_types_everywhere_become_double():
    text = '''<ir_version: 8, opset_import: ["" : 17]>
    g (float16[2,3] x) => (float16[2,3] y) {
      c = Constant <value_floats = [1.0, 2.0, 3.0]> ()
      h = Cast <to = 10> (c)
      z = Mul (x, h)
      y = Relu (z)
    }'''
    copy = float64_copy(onnx.parser.parse_model(text), "m.onnx")
    assert copy.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.DOUBLE
    assert copy.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.DOUBLE
    cast = next(n for n in copy.graph.node if n.op_type == "Cast")
    assert cast.attribute[0].i == onnx.TensorProto.DOUBLE
    x = np.ones((2, 3))
    assert session(copy).run(None, {"x": x})[0].tolist() == [[1.0, 2.0, 3.0]] * 2


def test_ops_without_double_kernel_are_computed_in_float32_between_casts():
    model = _model("  y = Erf (x)", "(float[2,3] x) => (float[2,3] y)")
    copy = float64_copy(model, "m.onnx")
    assert wrap_in_float32(copy, "Erf") == 1
    assert [n.op_type for n in copy.graph.node] == ["Cast", "Erf", "Cast"]
    x = np.linspace(-1, 1, 6).reshape(2, 3)
    got = session(copy).run(None, {"x": x})[0]
    assert got.dtype == np.float64
    np.testing.assert_allclose(got, session(model).run(None, {"x": x.astype(np.float32)})[0], rtol=1e-6)


def test_resize_scales_stay_float32():
    text = '''<ir_version: 8, opset_import: ["" : 17]>
    g (float[1,1,2,2] x) => (float[1,1,4,4] y) {
      scales = Constant <value = float[4] {1.0, 1.0, 2.0, 2.0}> ()
      y = Resize (x, , scales)
    }'''
    copy = float64_copy(onnx.parser.parse_model(text), "m.onnx")
    constant = next(n for n in copy.graph.node if n.op_type == "Constant")
    assert constant.attribute[0].t.data_type == onnx.TensorProto.FLOAT


def test_no_reference_for_models_with_local_functions():
    text = '''<ir_version: 8, opset_import: ["" : 17, "local" : 1]>
    g (float[2] x) => (float[2] y) { y = local.twice (x) }
    <domain: "local", opset_import: ["" : 17]>
    twice (a) => (b) { b = Add (a, a) }'''
    with pytest.raises(NoReference, match="local functions"):
        float64_copy(onnx.parser.parse_model(text), "m.onnx")
