"""Read what torch's ONNX exporters record about each node: module path, module class, stack trace, rewrites.

torch 2.13's exporter (`torch.onnx.export(..., dynamo=True)`, the default) writes per-node metadata_props:

- `pkg.torch.onnx.name_scopes`: `['', 'layer2', 'layer2.0', 'layer2.0.bn1', '<fx node>']`, the module
  path at each nesting level, then the torch.export node name;
- `pkg.torch.onnx.class_hierarchy`: the matching classes (`torch.nn.modules.batchnorm.BatchNorm2d`, ...);
- `pkg.torch.onnx.stack_trace`: the Python frames of the forward call, outermost first;
- `pkg.onnxscript.rewriter.rule_name`: set on nodes its optimizer rewrote. `FuseBatchNormIntoConv` marks
  a Conv that absorbed a BatchNormalization; that Conv carries the *BN's* scopes, class and stack trace.

The legacy TorchScript exporter (`dynamo=False`) writes no metadata but names nodes after their scope
(`/layer2/layer2.0/bn1/BatchNormalization`, scripted modules `/layer2/0/bn1/...`).

Torch-free: plain ONNX linting imports this module only for files whose producer is `pytorch`.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass

import onnx

from bnlint.graph import Provenance
from bnlint.torch_frontend.sourcemap import display_source, innermost_user_frame, parse_stack_trace

NAME_SCOPES = "pkg.torch.onnx.name_scopes"
CLASS_HIERARCHY = "pkg.torch.onnx.class_hierarchy"
STACK_TRACE = "pkg.torch.onnx.stack_trace"
REWRITE_RULE = "pkg.onnxscript.rewriter.rule_name"


@dataclass(frozen=True)
class NodeOrigin:
    """A node's place in the PyTorch program: innermost module (path '' is the root), its class, the
    torch.export node it was translated from, and the forward call's frames (outermost first)."""

    module: str | None
    module_class: str | None
    fx_node: str | None
    frames: tuple[tuple[str, int], ...] = ()


def is_torch_export(proto: onnx.ModelProto) -> bool:
    return proto.producer_name == "pytorch"


def literal_list(text: str | None) -> list[str]:
    if not text:
        return []
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        return []
    return [str(v) for v in value] if isinstance(value, (list, tuple)) else []


def short_class(qualified: str | None) -> str | None:
    """`torch.nn.modules.batchnorm.BatchNorm2d` -> `BatchNorm2d`."""
    return qualified.rsplit(".", 1)[-1] if qualified else None


def node_origin(node: onnx.NodeProto) -> NodeOrigin | None:
    """What the exporter recorded for a node, or what its legacy scope name says; None when nothing."""
    meta = {entry.key: entry.value for entry in node.metadata_props} if len(node.metadata_props) else {}
    scopes = literal_list(meta.get(NAME_SCOPES))
    if scopes:
        classes = literal_list(meta.get(CLASS_HIERARCHY))
        module_scopes = scopes[:-1]
        module = module_scopes[-1] if module_scopes else ""
        module_class = classes[len(module_scopes) - 1] if 0 < len(module_scopes) <= len(classes) else None
        return NodeOrigin(module, module_class, scopes[-1], tuple(parse_stack_trace(meta.get(STACK_TRACE, ""))))
    if node.name.startswith("/"):
        return NodeOrigin(legacy_module_path(node.name), None, None)
    return None


def legacy_module_path(name: str) -> str:
    """Module path from a legacy exporter node name. Each scope is either the full path (`/1/1.0/...`,
    Sequential children) or a name relative to its parent (`/1/1.0/conv1/Conv`, scripted `/layer/0/bn/..`)."""
    path = ""
    for scope in (s for s in name.split("/")[1:-1] if s):
        path = scope if not path or scope.startswith(path + ".") else f"{path}.{scope}"
    return path


def origin_provenance(origin: NodeOrigin, root: str) -> Provenance:
    """Provenance from the exporter's record: the innermost user frame of the forward call."""
    frame = innermost_user_frame(list(origin.frames))
    return Provenance(
        module=origin.module or None,
        module_class=short_class(origin.module_class),
        source_file=display_source(frame[0], root) if frame else None,
        source_line=frame[1] if frame else None,
    )


def graph_nodes(proto: onnx.ModelProto):
    """Nodes of the main graph and of model-local functions (the exporter annotates both)."""
    yield from proto.graph.node
    for function in proto.functions:
        yield from function.node


def exporter_provenance(proto: onnx.ModelProto, root: str) -> dict[str, Provenance]:
    """Provenance by node name for an ONNX model exported by torch; empty for other producers."""
    if not is_torch_export(proto):
        return {}
    provenance = {}
    for node in graph_nodes(proto):
        if not node.name:
            continue
        origin = node_origin(node)
        if origin is not None:
            provenance[node.name] = origin_provenance(origin, root)
    return provenance


def exporter_folded(proto: onnx.ModelProto) -> dict[str, str]:
    """Nodes the exporter's optimizer fused a BatchNormalization into: node name -> what was folded."""
    if not is_torch_export(proto):
        return {}
    folded = {}
    for node in graph_nodes(proto):
        if not node.name or not len(node.metadata_props):
            continue
        meta = {entry.key: entry.value for entry in node.metadata_props}
        rules = [r.strip() for r in meta.get(REWRITE_RULE, "").split(",")]
        fusions = [r for r in rules if "batchnorm" in r.lower()]
        if not fusions:
            continue
        origin = node_origin(node)
        what = "a BatchNormalization"
        if origin is not None and "norm" in (origin.module_class or "").lower():  # the last BN's own record
            what = f"{short_class(origin.module_class)} '{origin.module}'" if origin.module else short_class(
                origin.module_class)
        if len(fusions) > 1:
            what = f"{len(fusions)} BatchNormalizations (the last {what})"
        folded[node.name] = f"{what} (exporter rewrite {fusions[-1]})"
    return folded
