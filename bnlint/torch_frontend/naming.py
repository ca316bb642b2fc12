"""Name the nodes of a graph built from PyTorch after the modules that produced them.

Findings quote node names ("BatchNormalization 'b1.bn' normalizes the output of Relu 'b1.act'"), and the
exporter's names (`node__native_batch_norm_legit_no_training__0`) mean nothing to the engineer. Each call of
a module becomes a group of ONNX nodes; its last substantive node (the one producing the call's result)
takes the module path (`layer2.0.bn1`; a second call of a shared module `layer2.0.bn1@2`), a functional op
in a user module takes `<module>/<op>` (`layer2.0/relu_1`), and helper nodes are named after that.
Only graphs bnlint builds from PyTorch are renamed; an ONNX file's own names are never changed.
"""

from __future__ import annotations

import onnx

from bnlint.torch_frontend.exporter_metadata import node_origin

# Nodes that only prepare operands; they never carry the name of the call they belong to.
_HELPER_OPS = frozenset({"Constant", "CastLike", "Cast", "Shape", "Expand", "Reshape", "Identity", "Transpose",
                         "Unsqueeze", "Squeeze", "Concat", "Gather", "Slice", "ConstantOfShape", "Range"})


def is_library_class(qualified: str | None) -> bool:
    return bool(qualified) and qualified.split(".", 1)[0] in ("torch", "torchvision", "torchaudio")


def rename_nodes(proto: onnx.ModelProto) -> dict[str, str]:
    """Rename main-graph nodes in place; returns old name -> new name. Value names are untouched."""
    groups: dict[tuple[str, str], list[onnx.NodeProto]] = {}
    origins = {}
    for node in proto.graph.node:
        origin = node_origin(node)
        if origin is None or origin.fx_node is None:
            continue
        origins[id(node)] = origin
        groups.setdefault((origin.module or "", origin.fx_node), []).append(node)

    taken: set[str] = set()
    calls_per_module: dict[str, int] = {}
    wanted: dict[int, str] = {}
    for (module, fx_name), nodes in groups.items():
        origin = origins[id(nodes[0])]
        if module and is_library_class(origin.module_class):
            calls = calls_per_module[module] = calls_per_module.get(module, 0) + 1
            base = module if calls == 1 else f"{module}@{calls}"
        else:
            base = f"{module}/{fx_name}" if module else fx_name
        main = next((n for n in reversed(nodes) if n.op_type not in _HELPER_OPS), nodes[-1])
        for node in nodes:
            wanted[id(node)] = base if node is main else f"{base}/{node.op_type}"

    taken.update(node.name for node in proto.graph.node if id(node) not in wanted)
    renamed = {}
    for node in proto.graph.node:
        name = wanted.get(id(node))
        if name is None:
            continue
        unique, k = name, 1
        while unique in taken:
            k += 1
            unique = f"{name}#{k}"
        taken.add(unique)
        if unique != node.name:
            renamed[node.name] = unique
            node.name = unique
    return renamed
