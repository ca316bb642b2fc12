"""A float64 copy of a model, so verification can measure each model's rounding error against it.

Float initializers, constants, inputs, outputs and Cast targets become double. onnxruntime's CPU provider
has no double kernel for Conv, ConvTranspose, GlobalAveragePool or GlobalMaxPool, so those are rewritten
into ops it does run in double: a convolution becomes, when its input's spatial shape is known, one Gather
of every window of the padded input and one Einsum with the weight (few nodes keep the session cheap),
else one MatMul per kernel tap over strided slices of the padded input (a transposed convolution first
inserts zeros between input elements); global pools become ReduceMean / ReduceMax. Any other op without a
double kernel is computed in float32 between two Casts, and the verification report says which ops were.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

from bnlint.graph import _attribute_graphs
from bnlint.onnx_loader import iter_all_tensors
from bnlint.tensors import tensor_nbytes, to_array

DOUBLE = onnx.TensorProto.DOUBLE
FLOAT = onnx.TensorProto.FLOAT
NARROW_FLOATS = frozenset({onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16})
INT64_MAX = np.iinfo(np.int64).max
# Inputs whose type the ONNX schema fixes to float32 whatever the data type is.
FLOAT32_ONLY_INPUTS = {("Resize", 2), ("Upsample", 1)}
LOWERED = ("Conv", "ConvTranspose", "GlobalAveragePool", "GlobalMaxPool")
MAX_REFERENCE_BYTES = 1 << 30  # float parameters this large (2 GiB as double) get no float64 reference


class NoReference(Exception):
    """The model cannot be turned into a float64 copy; the message says why."""


def refusal(model: onnx.ModelProto) -> str | None:
    """Why no float64 copy of `model` is made (None: one can be tried); cheap, nothing is copied."""
    float_bytes = sum(tensor_nbytes(t) or 0 for t, _ in iter_all_tensors(model) if t.data_type in NARROW_FLOATS)
    return refusal_for(float_bytes, bool(model.functions))


def refusal_for(float_bytes: int, has_functions: bool) -> str | None:
    """refusal() from a census the caller already took (the tensor walk costs ~0.3 s on 20000 blocks)."""
    if float_bytes > MAX_REFERENCE_BYTES:
        return f"{float_bytes / 2**30:.1f} GiB of float parameters is too large for a float64 copy"
    if has_functions:
        return "the model has local functions"
    return None


def float64_copy(model: onnx.ModelProto, model_path: str, *, checked: bool = False) -> onnx.ModelProto:
    """A float64 copy of `model` (external data read into it), with ops lowered for onnxruntime;
    `checked`: the caller has already seen refusal(model) return None."""
    reason = None if checked else refusal(model)
    if reason is not None:
        raise NoReference(reason)
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    base_dir = Path(model_path).parent
    keep_float32 = _float32_only_names(copy.graph)
    for graph in _graphs(copy.graph):
        _widen_graph(graph, model_path, base_dir, keep_float32)
    lowered_inputs = {n.input[0] for n in copy.graph.node if n.op_type in LOWERED and n.input}
    inferred = _infer(copy)
    _lower(copy, _inferred_shapes(copy, lowered_inputs, inferred))
    if inferred is not copy:  # the original values keep their inferred types: segments() cuts between them
        del copy.graph.value_info[:]
        copy.graph.value_info.extend(inferred.graph.value_info)
    return copy


def wrap_in_float32(model: onnx.ModelProto, op_type: str) -> int:
    """Compute every `op_type` node in float32 between Casts (for ops without a double kernel)."""
    types = {name: info[0] for name, info in _inferred_shapes(model).items()}
    wrapped = 0
    for graph in _graphs(model.graph):
        names = _Names(graph)
        rebuilt = []
        for node in graph.node:
            if node.op_type != op_type or node.domain not in ("", "ai.onnx"):
                rebuilt.append(node)
                continue
            wrapped += 1
            for k, name in enumerate(node.input):
                if name and types.get(name) == DOUBLE:
                    narrow = names.new(f"{name}_f32")
                    rebuilt.append(helper.make_node("Cast", [name], [narrow], to=FLOAT))
                    node.input[k] = narrow
            widen = []
            for k, name in enumerate(node.output):
                if name and types.get(name) in (DOUBLE, None):
                    narrow = names.new(f"{name}_f32")
                    node.output[k] = narrow
                    widen.append(helper.make_node("Cast", [narrow], [name], to=DOUBLE))
            rebuilt.append(node)
            rebuilt.extend(widen)
        _replace_nodes(graph, rebuilt)
    return wrapped


# -- widening --------------------------------------------------------------------------------------
def _graphs(graph: onnx.GraphProto):
    yield graph
    for node in graph.node:
        for attribute in node.attribute:
            for sub in _attribute_graphs(attribute):
                yield from _graphs(sub)


def _float32_only_names(graph: onnx.GraphProto) -> set[str]:
    names = set()
    for sub in _graphs(graph):
        for node in sub.node:
            for k, name in enumerate(node.input):
                if (node.op_type, k) in FLOAT32_ONLY_INPUTS:
                    names.add(name)
    return names


def _widen_type(value: onnx.ValueInfoProto) -> None:
    tensor_type = value.type.tensor_type if value.type.HasField("tensor_type") else None
    if tensor_type is not None and tensor_type.elem_type in NARROW_FLOATS:
        tensor_type.elem_type = DOUBLE


def _widen_tensor(tensor: onnx.TensorProto, model_path: str, base_dir: Path) -> None:
    if tensor.data_type not in NARROW_FLOATS:
        return
    raw = tensor.raw_data if tensor.data_type == FLOAT and tensor.data_location != onnx.TensorProto.EXTERNAL else b""
    if raw and len(raw) == tensor_nbytes(tensor):  # the common case, without to_array's general checks
        values = np.frombuffer(raw, "<f4").astype("<f8")
    else:
        values = to_array(tensor, model_path, base_dir).astype("<f8")
    name, dims = tensor.name, list(tensor.dims)
    tensor.Clear()
    tensor.name, tensor.data_type, tensor.raw_data = name, DOUBLE, values.tobytes()
    tensor.dims.extend(dims)


def _widen_graph(graph: onnx.GraphProto, model_path: str, base_dir: Path, keep_float32: set[str]) -> None:
    for value in (*graph.input, *graph.output, *graph.value_info):
        if value.name not in keep_float32:
            _widen_type(value)
    for tensor in graph.initializer:
        if tensor.name not in keep_float32:
            _widen_tensor(tensor, model_path, base_dir)
    for node in graph.node:
        if node.output and all(o in keep_float32 for o in node.output if o):
            continue
        for attribute in list(node.attribute):
            if attribute.type == onnx.AttributeProto.TENSOR:
                _widen_tensor(attribute.t, model_path, base_dir)
            elif attribute.name in ("to", "dtype") and attribute.type == onnx.AttributeProto.INT \
                    and attribute.i in NARROW_FLOATS:
                attribute.i = DOUBLE
            elif node.op_type == "Constant" and attribute.name in ("value_float", "value_floats"):
                values = np.asarray(helper.get_attribute_value(attribute), dtype=np.float64)
                node.attribute.remove(attribute)
                node.attribute.append(helper.make_attribute("value", numpy_helper.from_array(values)))


def _infer(model: onnx.ModelProto) -> onnx.ModelProto:
    """`model` with ONNX shape inference's value_info, or `model` itself when inference fails (it is best
    effort: lowering then falls back per op)."""
    try:
        return onnx.shape_inference.infer_shapes(model, strict_mode=False)
    except Exception:
        return model


def _inferred_shapes(model: onnx.ModelProto, wanted: set[str] | None = None,
                     inferred: onnx.ModelProto | None = None) -> dict[str, tuple[int, tuple | None]]:
    """name -> (elem_type, shape with None for unknown dims) from ONNX shape inference (`inferred`: its
    result, already computed; `model` itself: the types it declares); only the `wanted` names when given
    (reading every value of a deep model costs more than the inference)."""
    inferred = _infer(model) if inferred is None else inferred
    found = {}
    for graph in _graphs(inferred.graph):
        for value in (*graph.input, *graph.output, *graph.value_info):
            if (wanted is not None and value.name not in wanted) or not value.type.HasField("tensor_type"):
                continue
            tensor_type = value.type.tensor_type
            shape = None
            if tensor_type.HasField("shape"):
                shape = tuple(d.dim_value if d.HasField("dim_value") else None for d in tensor_type.shape.dim)
            found[value.name] = (tensor_type.elem_type, shape)
        if wanted is None or not wanted <= found.keys():
            for tensor in graph.initializer:
                found[tensor.name] = (tensor.data_type, tuple(tensor.dims))
    return found


# -- lowering --------------------------------------------------------------------------------------
ADDED = "ref64/"  # prefix of every value the lowering adds


class _Names:
    def __init__(self, graph: onnx.GraphProto):
        self.used = {v.name for v in (*graph.input, *graph.output, *graph.value_info)}
        self.used |= {t.name for t in graph.initializer}
        self.used |= {o for n in graph.node for o in n.output}
        self.next_suffix: dict[str, int] = {}
        self.shared: dict[tuple, str] = {}  # small integer constants already added, by content

    def new(self, hint: str) -> str:
        """A fresh name; the suffix counter per hint keeps this O(1) (scanning from 0 was quadratic)."""
        k = self.next_suffix.get(hint, 0)
        name = f"{ADDED}{hint}" if k == 0 else f"{ADDED}{hint}_{k}"
        while name in self.used:
            k += 1
            name = f"{ADDED}{hint}_{k}"
        self.next_suffix[hint] = k + 1
        self.used.add(name)
        return name


class _Emitter:
    """Builds replacement nodes for one lowered node, opset-aware (attribute vs input forms)."""

    def __init__(self, graph: onnx.GraphProto, names: _Names, opset: int, constants=None):
        self.graph, self.names, self.opset = graph, names, opset
        self.constants = constants if constants is not None else {}
        self.nodes: list[onnx.NodeProto] = []

    def const(self, array: np.ndarray, hint: str) -> str:
        """An initializer holding `array`; integer arrays (shapes, axes, pads, gather indices) are shared
        by every node that needs the same values: each initializer costs onnxruntime session time."""
        array = np.ascontiguousarray(array)
        key = (array.dtype.str, array.shape, array.tobytes()) if array.dtype.kind in "iu" else None
        if key is not None and key in self.names.shared:
            return self.names.shared[key]
        name = self.names.new(hint)
        self.graph.initializer.append(numpy_helper.from_array(array, name))
        if key is not None:
            self.names.shared[key] = name
        return name

    def op(self, op_type: str, inputs, hint: str, output: str | None = None, **attrs) -> str:
        out = output or self.names.new(hint)
        self.nodes.append(helper.make_node(op_type, list(inputs), [out], **attrs))
        return out

    def pad(self, x: str, rank: int, begin, end) -> str:
        """Zero-pad (positive) or crop (negative) the trailing spatial axes of a rank-`rank` tensor."""
        spatial = len(begin)
        grow_b, grow_e = [max(b, 0) for b in begin], [max(e, 0) for e in end]
        if any(grow_b) or any(grow_e):
            pads = [0] * (rank - spatial) + grow_b + [0] * (rank - spatial) + grow_e
            if self.opset >= 11:
                x = self.op("Pad", [x, self.const(np.asarray(pads, np.int64), "pads")], "padded")
            else:
                x = self.op("Pad", [x], "padded", pads=pads)
        if any(b < 0 for b in begin) or any(e < 0 for e in end):
            axes = list(range(rank - spatial, rank))
            starts = [-min(b, 0) for b in begin]
            ends = [min(e, 0) if e < 0 else INT64_MAX for e in end]
            x = self.slice(x, starts, ends, axes, [1] * spatial)
        return x

    def slice(self, x: str, starts, ends, axes, steps) -> str:
        if self.opset >= 10:
            inputs = [x] + [self.const(np.asarray(v, np.int64), k) for k, v in
                            (("starts", starts), ("ends", ends), ("axes", axes), ("steps", steps))]
            return self.op("Slice", inputs, "slice")
        if any(s != 1 for s in steps):
            raise _CannotLower("strided Slice needs opset 10")
        return self.op("Slice", [x], "slice", starts=list(starts), ends=list(ends), axes=list(axes))

    def unsqueeze(self, x: str, axes) -> str:
        if self.opset >= 13:
            return self.op("Unsqueeze", [x, self.const(np.asarray(axes, np.int64), "axes")], "unsqueezed")
        return self.op("Unsqueeze", [x], "unsqueezed", axes=list(axes))

    def reduce(self, op_type: str, x: str, axes, output: str) -> str:
        if self.opset >= 18:
            return self.op(op_type, [x, self.const(np.asarray(axes, np.int64), "axes")], "reduced", output, keepdims=1)
        return self.op(op_type, [x], "reduced", output, axes=list(axes), keepdims=1)


class _CannotLower(Exception):
    pass


def _lower(model: onnx.ModelProto, shapes) -> None:
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 1)
    graph = model.graph
    constants = {t.name: t for t in graph.initializer}
    names = _Names(graph)
    rebuilt = []
    for node in graph.node:
        if node.op_type not in LOWERED or node.domain not in ("", "ai.onnx"):
            rebuilt.append(node)
            continue
        emitter = _Emitter(graph, names, opset, constants)
        try:
            if node.op_type == "Conv":
                _lower_conv(emitter, node, constants, shapes)
            elif node.op_type == "ConvTranspose":
                _lower_conv_transpose(emitter, node, constants, shapes)
            else:
                _lower_global_pool(emitter, node, shapes)
        except _CannotLower:
            rebuilt.append(node)  # left for wrap_in_float32 when onnxruntime refuses it
            continue
        rebuilt.extend(emitter.nodes)
    _replace_nodes(graph, rebuilt)


def _replace_nodes(graph: onnx.GraphProto, nodes) -> None:
    kept = [onnx.NodeProto() for _ in nodes]
    for target, source in zip(kept, nodes):
        target.CopyFrom(source)
    del graph.node[:]
    graph.node.extend(kept)


def _attr(node: onnx.NodeProto, name: str, default):
    for attribute in node.attribute:
        if attribute.name == name:
            value = helper.get_attribute_value(attribute)
            return value.decode() if isinstance(value, bytes) else value
    return default


def _weight(node: onnx.NodeProto, constants) -> np.ndarray:
    tensor = constants.get(node.input[1]) if len(node.input) > 1 else None
    if tensor is None:
        raise _CannotLower("weight is not an initializer")
    return numpy_helper.to_array(tensor).astype(np.float64)


def _spatial_shape(name: str, shapes, spatial: int):
    shape = shapes.get(name, (None, None))[1]
    if shape is None or len(shape) != spatial + 2 or any(d is None for d in shape[2:]):
        return None
    return shape[2:]


def _same_pads(auto_pad: str, sizes, kernel, strides, dilations):
    begin, end = [], []
    for size, k, s, d in zip(sizes, kernel, strides, dilations):
        out = -(-size // s)
        total = max((out - 1) * s + (k - 1) * d + 1 - size, 0)
        small, large = total // 2, total - total // 2
        begin.append(small if auto_pad == "SAME_UPPER" else large)
        end.append(large if auto_pad == "SAME_UPPER" else small)
    return begin, end


def _block_diagonal(weight: np.ndarray, groups: int) -> np.ndarray:
    """A grouped conv weight [M, C/g, k...] as an ordinary one [M, C, k...] with zeros across groups."""
    if groups == 1:
        return weight
    out_channels, per_group = weight.shape[:2]
    full = np.zeros((out_channels, per_group * groups, *weight.shape[2:]))
    per_out = out_channels // groups
    for g in range(groups):
        rows = slice(g * per_out, (g + 1) * per_out)
        full[rows, g * per_group:(g + 1) * per_group] = weight[rows]
    return full


def _conv_taps(emitter: _Emitter, x: str, weight: np.ndarray, bias: str | None, strides, dilations,
               begin, end, output: str, sizes=None) -> None:
    """Y = conv(x, weight) as a sum over kernel taps of MatMul(strided slice of padded x, weight tap).
    With the spatial `sizes` of x known, one gathered Einsum instead (_conv_gathered)."""
    if sizes is not None and emitter.opset >= 12 and \
            _conv_gathered(emitter, x, weight, bias, strides, dilations, begin, end, output, sizes):
        return
    kernel = weight.shape[2:]
    spatial = len(kernel)
    rank = spatial + 2
    x = emitter.pad(x, rank, begin, end)
    channels_last = emitter.op("Transpose", [x], "nhwc", perm=[0, *range(2, rank), 1])
    axes = list(range(1, spatial + 1))
    terms = []
    for tap in itertools.product(*(range(k) for k in kernel)):
        starts = [t * d for t, d in zip(tap, dilations)]
        ends = [-((k - 1 - t) * d) or INT64_MAX for t, k, d in zip(tap, kernel, dilations)]
        if any(starts) or any(e != INT64_MAX for e in ends) or any(s != 1 for s in strides):
            window = emitter.slice(channels_last, starts, ends, axes, list(strides))
        else:
            window = channels_last
        matrix = emitter.const(weight[(slice(None), slice(None), *tap)].T.copy(), "tap")
        terms.append(emitter.op("MatMul", [window, matrix], "term"))
    total = terms[0] if len(terms) == 1 else emitter.op("Sum", terms, "sum")
    if bias:
        total = emitter.op("Add", [total, bias], "biased")
    emitter.op("Transpose", [total], "nchw", output, perm=[0, rank - 1, *range(1, rank - 1)])


MAX_GATHERED_ELEMENTS = 1 << 24  # window values per batch item (128 MiB as double) above which taps are used


def _conv_gathered(emitter: _Emitter, x: str, weight: np.ndarray, bias: str | None, strides, dilations,
                   begin, end, output: str, sizes) -> bool:
    """Y = conv(x, weight) in at most five nodes: every window is gathered from the flattened padded input with one
    index table (im2col), then one Einsum with the weight. Few nodes and initializers keep the float64
    copy's onnxruntime session cheap (the taps form needs ~25 nodes per 3x3 Conv). False when the output
    would be empty or the windows too large; the caller then uses the taps form."""
    kernel = weight.shape[2:]
    spatial = len(kernel)
    padded = [n + b + e for n, b, e in zip(sizes, begin, end)]
    outs = [(p - (k - 1) * d - 1) // s + 1 for p, k, d, s in zip(padded, kernel, dilations, strides)]
    taps = int(np.prod(kernel))
    positions = int(np.prod(outs)) if all(o > 0 for o in outs) else 0
    if positions == 0 or any(p <= 0 for p in padded) or weight.shape[1] * positions * taps > MAX_GATHERED_ELEMENTS:
        return False
    geometry = ("windows", tuple(padded), tuple(kernel), tuple(strides), tuple(dilations))
    index = emitter.names.shared.get(geometry)
    if index is None:  # one table per geometry, however many Convs share it
        starts = np.meshgrid(*[np.arange(o) * s for o, s in zip(outs, strides)], indexing="ij")
        offsets = np.meshgrid(*[np.arange(k) * d for k, d in zip(kernel, dilations)], indexing="ij")
        coordinates = [start.reshape(-1, 1) + offset.reshape(1, -1) for start, offset in zip(starts, offsets)]
        table = np.ravel_multi_index(coordinates, padded).astype(np.int64).reshape(*outs, taps)  # [out..., taps]
        index = emitter.names.shared[geometry] = emitter.const(table, "windows")
    x = emitter.pad(x, spatial + 2, begin, end)
    flat = emitter.op("Reshape", [x, emitter.const(np.asarray([0, 0, -1], np.int64), "shape")], "flat")
    windows = emitter.op("Gather", [flat, index], "windows", axis=2)  # [N, C, out..., K]
    matrix = emitter.const(weight.reshape(weight.shape[0], weight.shape[1], taps), "weight")  # [M, C, K]
    axes = "defghij"[:spatial]  # the output grid comes out of the Einsum as it is: no Reshape node
    equation = f"nc{axes}k,mck->nm{axes}"
    if not bias:
        emitter.op("Einsum", [windows, matrix], "conv", output, equation=equation)
        return True
    grid = emitter.op("Einsum", [windows, matrix], "conv", equation=equation)
    constant = emitter.constants.get(bias)
    if constant is not None:
        values = numpy_helper.to_array(constant).astype(np.float64)
        column = emitter.const(values.reshape(-1, *[1] * spatial), "bias")
    else:
        column = emitter.unsqueeze(bias, list(range(1, spatial + 1)))
    emitter.op("Add", [grid, column], "biased", output)
    return True


def _lower_conv(emitter: _Emitter, node, constants, shapes) -> None:
    weight = _weight(node, constants)
    spatial = weight.ndim - 2
    strides = list(_attr(node, "strides", [1] * spatial))
    dilations = list(_attr(node, "dilations", [1] * spatial))
    pads = list(_attr(node, "pads", [0] * 2 * spatial))
    auto_pad = _attr(node, "auto_pad", "NOTSET")
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        sizes = _spatial_shape(node.input[0], shapes, spatial)
        if sizes is None:
            raise _CannotLower("SAME padding needs a static input shape")
        begin, end = _same_pads(auto_pad, sizes, weight.shape[2:], strides, dilations)
    elif auto_pad == "VALID":
        begin, end = [0] * spatial, [0] * spatial
    else:
        begin, end = pads[:spatial], pads[spatial:]
    weight = _block_diagonal(weight, int(_attr(node, "group", 1)))
    bias = node.input[2] if len(node.input) > 2 and node.input[2] else None
    _conv_taps(emitter, node.input[0], weight, bias, strides, dilations, begin, end, node.output[0],
               _spatial_shape(node.input[0], shapes, spatial))


def _lower_conv_transpose(emitter: _Emitter, node, constants, shapes) -> None:
    weight = _weight(node, constants)  # [C, M/g, k...]
    spatial = weight.ndim - 2
    kernel = weight.shape[2:]
    groups = int(_attr(node, "group", 1))
    strides = list(_attr(node, "strides", [1] * spatial))
    dilations = list(_attr(node, "dilations", [1] * spatial))
    output_padding = list(_attr(node, "output_padding", [0] * spatial))
    pads = list(_attr(node, "pads", [0] * 2 * spatial))
    auto_pad = _attr(node, "auto_pad", "NOTSET")
    output_shape = _attr(node, "output_shape", None)
    targets = None
    if output_shape is not None or auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        # padding = max(0, natural - target), the odd element at the tail except for SAME_LOWER (as the
        # ONNX spec and onnxruntime do); the output is then exactly `target` long.
        sizes = _spatial_shape(node.input[0], shapes, spatial)
        if sizes is None:
            raise _CannotLower("output_shape / SAME padding needs a static input shape")
        targets = list(output_shape)[-spatial:] if output_shape is not None else [n * s for n, s in zip(sizes, strides)]
        head, tail = [], []
        for n, s, op, k, d, target in zip(sizes, strides, output_padding, kernel, dilations, targets):
            total = max(0, s * (n - 1) + op + (k - 1) * d + 1 - target)
            head.append(total - total // 2 if auto_pad == "SAME_LOWER" else total // 2)
            tail.append(total // 2 if auto_pad == "SAME_LOWER" else total - total // 2)
        pads = head + tail
    elif auto_pad == "VALID":
        pads = [0] * 2 * spatial
    in_channels, per_group = weight.shape[:2]
    per_in = in_channels // groups
    # Equivalent convolution weight [M, C, k...]: transposed per group, kernel flipped.
    flipped = weight[(slice(None), slice(None), *[slice(None, None, -1)] * spatial)]
    conv_weight = np.zeros((per_group * groups, in_channels, *kernel))
    for g in range(groups):
        block = flipped[g * per_in:(g + 1) * per_in]  # [C/g, M/g, k...]
        rows, columns = slice(g * per_group, (g + 1) * per_group), slice(g * per_in, (g + 1) * per_in)
        conv_weight[rows, columns] = block.transpose(1, 0, *range(2, weight.ndim))
    x = node.input[0]
    if any(s > 1 for s in strides):
        x = _insert_zeros(emitter, x, strides, spatial)
    begin = [(k - 1) * d - p for k, d, p in zip(kernel, dilations, pads[:spatial])]
    end = [(k - 1) * d - p + op for k, d, p, op in zip(kernel, dilations, pads[spatial:], output_padding)]
    if targets is not None:  # pad or crop the tail so the output is exactly the target size
        sizes = _spatial_shape(node.input[0], shapes, spatial)
        end = [target - ((n - 1) * s + 1) - b + (k - 1) * d
               for target, n, s, b, k, d in zip(targets, sizes, strides, begin, kernel, dilations)]
    bias = node.input[2] if len(node.input) > 2 and node.input[2] else None
    sizes = _spatial_shape(node.input[0], shapes, spatial)
    if sizes is not None:  # the size of x once zeros are inserted
        sizes = [(n - 1) * s + 1 for n, s in zip(sizes, strides)]
    _conv_taps(emitter, x, conv_weight, bias, [1] * spatial, dilations, begin, end, node.output[0], sizes)


def _insert_zeros(emitter: _Emitter, x: str, strides, spatial: int) -> str:
    """x with (stride - 1) zeros between neighbours along each spatial axis (shape-independent)."""
    rank = spatial + 2
    shape = emitter.op("Shape", [x], "shape")
    grown = emitter.op("Mul", [shape, emitter.const(np.asarray([1, 1, *strides], np.int64), "strides")], "grown")
    unsqueezed = emitter.unsqueeze(x, [3 + 2 * i for i in range(spatial)])
    pads = [0] * (2 * rank + 2 * spatial)
    wide_rank = rank + spatial
    for i, s in enumerate(strides):
        pads[wide_rank + 3 + 2 * i] = s - 1
    if emitter.opset >= 11:
        spread = emitter.op("Pad", [unsqueezed, emitter.const(np.asarray(pads, np.int64), "pads")], "spread")
    else:
        spread = emitter.op("Pad", [unsqueezed], "spread", pads=pads)
    flat = emitter.op("Reshape", [spread, grown], "upsampled")
    axes = [2 + i for i, s in enumerate(strides) if s > 1]
    ends = [-(s - 1) for s in strides if s > 1]
    return emitter.slice(flat, [0] * len(axes), ends, axes, [1] * len(axes))


def _lower_global_pool(emitter: _Emitter, node, shapes) -> None:
    shape = shapes.get(node.input[0], (None, None))[1]
    if shape is None:
        raise _CannotLower("rank unknown")
    op_type = "ReduceMean" if node.op_type == "GlobalAveragePool" else "ReduceMax"
    emitter.reduce(op_type, node.input[0], list(range(2, len(shape))), node.output[0])


# -- splitting a deep copy -------------------------------------------------------------------------
SEGMENT_NODES = 2000  # session setup grows faster than linearly with nodes: 140k nodes ~70 s, in pieces ~8 s


def segments(model: onnx.ModelProto, max_nodes: int | None = None) -> list[onnx.ModelProto] | None:
    """The float64 copy cut into consecutive pieces of at most `max_nodes` nodes, each a model whose
    inputs are the values it reads from earlier pieces (or the graph's inputs) and whose outputs are the
    values later pieces or the graph's outputs read; running them in order computes exactly what the
    whole copy computes (same kernels, the values in between handed over as they are). None when the copy
    is small enough, has subgraphs, or a value crossing a cut has no known type or rank."""
    graph = model.graph
    max_nodes = max_nodes or SEGMENT_NODES
    if len(graph.node) <= max_nodes or any(_has_subgraph(node) for node in graph.node):
        return None
    produced = {name for node in graph.node for name in node.output if name}
    if any(output.name not in produced for output in graph.output):
        return None
    initializers = {tensor.name: tensor for tensor in graph.initializer}
    pieces = _pieces(graph.node, max_nodes)
    read_later: list[set[str]] = [set() for _ in pieces]  # names read by pieces after k
    seen: set[str] = {output.name for output in graph.output}
    for k in range(len(pieces) - 1, -1, -1):
        read_later[k] = set(seen)
        seen |= {name for node in pieces[k] for name in node.input if name}
    cuts = []  # per piece: its nodes, the names it reads, its inputs and its outputs
    for k, nodes in enumerate(pieces):
        made = {name for node in nodes for name in node.output if name}
        reads = [name for node in nodes for name in node.input if name and name not in made]
        inputs = list(dict.fromkeys(name for name in reads if name not in initializers))
        outputs = [name for name in dict.fromkeys(o for node in nodes for o in node.output if o)
                   if name in read_later[k]]
        cuts.append((nodes, reads, inputs, outputs))
    # Types of the values crossing a cut only: reading all of a deep copy's inferred values costs as much
    # as the inference itself. float64_copy kept them in value_info; inferred again for other models.
    crossing = {name for _, _, inputs, outputs in cuts for name in inputs + outputs}
    types = _typed(_inferred_shapes(model, crossing, inferred=model))
    if not all(name in types and types[name][1] is not None for name in crossing):
        types = _typed(_inferred_shapes(model, crossing))
    built = []
    for k, (nodes, reads, inputs, outputs) in enumerate(cuts):
        if any(name not in types or types[name][1] is None for name in inputs + outputs):
            return None  # onnxruntime sets up a piece whose inputs have no rank ~40x slower than the whole
        piece = helper.make_graph(
            list(nodes), f"{graph.name}_{k}",
            [helper.make_tensor_value_info(name, *types[name]) for name in inputs],
            [helper.make_tensor_value_info(name, *types[name]) for name in outputs],
            [initializers[name] for name in dict.fromkeys(reads) if name in initializers])
        built.append(helper.make_model(piece, ir_version=model.ir_version, opset_imports=list(model.opset_import)))
    return built


def _typed(found: dict) -> dict:
    return {name: info for name, info in found.items() if info[0]}


def _pieces(nodes, max_nodes: int) -> list:
    """Consecutive runs of about `max_nodes` nodes, cut only after a node none of whose outputs the lowering
    added: the values crossing a cut are then the original model's, whose types the copy keeps."""
    starts, cut = [0], max_nodes
    while cut < len(nodes):
        while cut < len(nodes) and any(name.startswith(ADDED) for name in nodes[cut - 1].output):
            cut += 1
        if cut < len(nodes):
            starts.append(cut)
        cut += max_nodes
    return [nodes[start:end] for start, end in zip(starts, [*starts[1:], len(nodes)])]


def _has_subgraph(node: onnx.NodeProto) -> bool:
    return any(attribute.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
               for attribute in node.attribute)
