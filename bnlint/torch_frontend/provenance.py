"""Provenance for graphs built from PyTorch: module path, class, and the user's `file:line`.

Which line: a node produced inside a library layer (`nn.BatchNorm2d`, `nn.ReLU`, ...) points to the line
that constructed that layer (recorded by bnlint.torch_frontend.origins), where the engineer changes its
arguments or its place in an `nn.Sequential`; a deep-copied layer (no constructor call) points to its
nearest constructed ancestor. A node produced by the user's own `forward` (`F.relu(x)`, `x + y`) points to
that line of `forward`: the innermost frame of the recorded stack trace that is not torch. Without
construction records (TorchScript, `.pt2`), the stack trace is used for both.
"""

from __future__ import annotations

import onnx

from bnlint.graph import Provenance
from bnlint.torch_frontend.exporter_metadata import node_origin, origin_provenance
from bnlint.torch_frontend.naming import is_library_class
from bnlint.torch_frontend.sourcemap import display_source


def construction_site(root_module, sites, path: str) -> tuple[str, int] | None:
    """Where the module at `path` (or its nearest recorded ancestor) was constructed."""
    parts = path.split(".") if path else []
    while True:
        try:
            module = root_module.get_submodule(".".join(parts))
        except AttributeError:
            module = None
        site = sites.site_of(module) if module is not None else None
        if site is not None:
            return site
        if not parts:
            return None
        parts.pop()


def torch_provenance(proto: onnx.ModelProto, source_root: str, root_module=None, sites=None) -> dict[str, Provenance]:
    """Provenance by node name for a graph bnlint exported from PyTorch."""
    provenance = {}
    for node in proto.graph.node:
        origin = node_origin(node)
        if origin is None or not node.name:
            continue
        record = origin_provenance(origin, source_root)
        if sites is not None and root_module is not None and is_library_class(origin.module_class):
            site = construction_site(root_module, sites, origin.module or "")
            if site is not None:
                record = Provenance(record.module, record.module_class, display_source(site[0], source_root),
                                    site[1])
        provenance[node.name] = record
    return provenance


def legacy_provenance(proto: onnx.ModelProto, script_module) -> dict[str, Provenance]:
    """Module path and class for a TorchScript export (scope-named nodes; no stack traces recorded)."""
    modules = dict(script_module.named_modules())  # ScriptModules have no get_submodule
    provenance = {}
    for node in proto.graph.node:
        origin = node_origin(node)
        if origin is None or not node.name:
            continue
        module = modules.get(origin.module or "")
        provenance[node.name] = Provenance(origin.module or None, getattr(module, "original_name", None))
    return provenance
