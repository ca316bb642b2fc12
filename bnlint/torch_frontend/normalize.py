"""Make torch's unoptimized ONNX translation say what the traced program did, in the shapes rules expect.

Without its optimizer the exporter writes some things in a form that would mislead the rules:

- **BN mode.** A batch-statistics BN (`track_running_stats=False`, `F.batch_norm(training=True)`) becomes an
  "inference" BatchNormalization over a mean and variance computed at run time. The traced operator says
  which statistics it used (`_native_batch_norm_legit_no_training` = running, `..._legit.no_stats` =
  batch, ...): such nodes get `training_mode=1` over placeholder statistics, so BN006 sees them and BN003
  sees `Conv -> BN` without the statistics subgraph reading the Conv output.
- **BN without affine parameters** gets its ones/zeros computed at run time: they become constants.
- **Conv without bias** gets a bias of zeros built at run time, which BN003 would report as a bias:
  the input is removed when the traced call had no bias.
- **Linear without bias** becomes `MatMul(x, Transpose(W))`: the transposed weight becomes a constant, so
  BN004 can tell the layer's weight is constant.
- **In-place ops** (`nn.Dropout(inplace=True)`) leave a `CastLike` to the same type between layers; it is
  bypassed so the walks of BN001/BN003 see through it.

Each fix reads the torch.export node the ONNX node came from (its name is the last name scope).
"""

from __future__ import annotations

import numpy as np
import torch

from bnlint.torch_frontend.exporter_metadata import NAME_SCOPES, literal_list

ONNX_DOMAINS = ("", "ai.onnx")

_RUNNING_STATS = {"_native_batch_norm_legit_no_training.default", "_batch_norm_no_update.default"}
_BATCH_STATS = {"_native_batch_norm_legit.no_stats", "_batch_norm_with_update.default",
                "_batch_norm_with_update_functional.default"}
_TRAINING_ARG = {"_native_batch_norm_legit.default": 5, "_native_batch_norm_legit_functional.default": 5,
                 "native_batch_norm.default": 5, "batch_norm.default": 5, "_batch_norm_impl_index.default": 5}
_CONV_TARGETS = {"conv1d", "conv2d", "conv3d", "convolution", "conv_transpose1d", "conv_transpose2d",
                 "conv_transpose3d", "_convolution"}


def normalize(ir_model, program, *, batch_norm_modes: bool = True) -> dict[str, int]:
    """Apply every fix to the onnx-ir model in place; returns how many nodes each fix changed.

    `batch_norm_modes=False` keeps only the numerically exact fixes (for `bnlint fix`): BN nodes keep the
    statistics the exporter computes for them."""
    fx_nodes = {node.name: node for node in program.graph.nodes}
    graph = ir_model.graph
    counts = {"batchnorm": 0, "bias": 0, "transpose": 0, "castlike": 0}
    for node in list(graph):
        if node.domain not in ONNX_DOMAINS:
            continue
        if node.op_type == "Transpose":
            counts["transpose"] += materialize_transposed_weight(graph, node)
            continue
        if node.op_type == "CastLike":
            counts["castlike"] += bypass_noop_castlike(graph, node)
            continue
        if node.op_type not in ("BatchNormalization", "Conv", "ConvTranspose"):
            continue
        scopes = literal_list(node.metadata_props.get(NAME_SCOPES))
        fx_node = fx_nodes.get(scopes[-1]) if scopes else None
        if fx_node is None:
            continue
        if node.op_type == "BatchNormalization":
            counts["batchnorm"] += normalize_batchnorm(graph, node, fx_node, modes=batch_norm_modes)
        else:
            counts["bias"] += drop_absent_bias(node, fx_node)
    return counts


def _target(fx_node) -> str:
    return str(fx_node.target).removeprefix("aten.")


def uses_batch_statistics(fx_node) -> bool | None:
    """Whether a traced batch-norm op normalizes with the batch's statistics; None if not a known BN op."""
    target = _target(fx_node)
    if target in _RUNNING_STATS:
        return False
    if target in _BATCH_STATS:
        return True
    position = _TRAINING_ARG.get(target)
    if position is not None and len(fx_node.args) > position:
        return bool(fx_node.args[position])
    return None


def _channels_and_dtype(fx_node) -> tuple[int | None, np.dtype]:
    value = fx_node.args[0].meta.get("val") if fx_node.args and hasattr(fx_node.args[0], "meta") else None
    if value is None or value.dim() < 2:
        return None, np.dtype(np.float32)
    dtype = {torch.float16: np.float16, torch.float64: np.float64}.get(value.dtype, np.float32)
    channels = value.shape[1]
    return (int(channels) if isinstance(channels, int) else None), np.dtype(dtype)


def _constant_value(graph, name: str, array: np.ndarray):
    import onnx_ir as ir

    tensor = ir.tensor(array, name=name)
    value = ir.Value(name=name, shape=ir.Shape(array.shape), type=ir.TensorType(tensor.dtype), const_value=tensor)
    graph.register_initializer(value)
    return value


def normalize_batchnorm(graph, node, fx_node, *, modes: bool = True) -> int:
    """Constant parameters and (with `modes`) training_mode as the traced op used them; 1 when changed."""
    import onnx_ir as ir

    batch_stats = uses_batch_statistics(fx_node)
    if batch_stats is None:
        return 0
    channels, dtype = _channels_and_dtype(fx_node)
    before = (tuple(node.inputs), node.attributes.get("training_mode"))

    def make_constant(index: int, fill: float, what: str) -> None:
        value = node.inputs[index] if index < len(node.inputs) else None
        if channels is None or (value is not None and value.const_value is not None):
            return
        node.replace_input_with(index, _constant_value(graph, f"{node.name}.{what}",
                                                       np.full((channels,), fill, dtype=dtype)))

    args = tuple(fx_node.args) + (None,) * 3
    if args[1] is None:  # affine=False
        make_constant(1, 1.0, "scale")
    if args[2] is None:
        make_constant(2, 0.0, "bias")
    if modes and batch_stats:
        make_constant(3, 0.0, "batch_mean_placeholder")
        make_constant(4, 1.0, "batch_var_placeholder")
        node.attributes["training_mode"] = ir.AttrInt64("training_mode", 1)
    elif modes and "training_mode" in node.attributes:
        node.attributes["training_mode"] = ir.AttrInt64("training_mode", 0)
    return int(before != (tuple(node.inputs), node.attributes.get("training_mode")))


def drop_absent_bias(node, fx_node) -> int:
    """Remove the zeros bias the exporter adds to a Conv whose traced call had none; 1 when removed."""
    if _target(fx_node).split(".")[0] not in _CONV_TARGETS or len(node.inputs) < 3 or node.inputs[2] is None:
        return 0
    if len(fx_node.args) > 2 and fx_node.args[2] is not None:
        return 0
    node.replace_input_with(2, None)
    node.resize_inputs(2)
    return 1


def materialize_transposed_weight(graph, node) -> int:
    """`Transpose(W)` of a constant 2-D weight feeding MatMul becomes a constant; 1 when replaced."""
    source = node.inputs[0] if node.inputs else None
    output = node.outputs[0]
    if source is None or source.const_value is None or len(source.shape or ()) != 2:
        return 0
    if not output.uses() or any(user.op_type != "MatMul" for user, _ in output.uses()):
        return 0
    perm = node.attributes.get("perm")
    if perm is not None and list(perm.as_ints()) != [1, 0]:
        return 0
    array = np.ascontiguousarray(source.const_value.numpy().T)
    replacement = _constant_value(graph, f"{source.name}.T", array)
    for user, index in list(output.uses()):
        user.replace_input_with(index, replacement)
    return 1


def bypass_noop_castlike(graph, node) -> int:
    """Readers of a `CastLike` to its input's own type read the input instead; 1 when bypassed."""
    source, like = (list(node.inputs) + [None, None])[:2]
    output = node.outputs[0]
    if source is None or like is None or source.dtype is None or source.dtype != like.dtype:
        return 0
    if output in graph.outputs:
        return 0
    output.replace_all_uses_with(source)
    return 1
