"""PyTorch front ends: model factories, TorchScript and torch.export archives -> the common graph.

Every PyTorch input ends in the same `bnlint.graph.Model` as an ONNX file (rules never know the source),
with Provenance per node: module path, module class, and the user's `file:line`.

- `model.py:build` / `package.module:build`: imported and called (this runs the user's code), then
  traced by bnlint.torch_frontend.capture: torch.export + torch's ONNX translation without its
  optimizer, eval-mode semantics with Dropout kept. See that module for why and for measured costs.
- TorchScript and `.pt2` archives are executable content: refused unless `--trust` (archives.py).
- `.pt`/`.pth` checkpoints from `torch.save` are always refused: weights without a graph.
- `bnlint fix` on a PyTorch target: fix_source() below and fixing.py (export for inference, torch eager check).

This package's `__init__` and the torch-free modules (options, sourcemap, exporter_metadata, folded) never
import torch, so plain ONNX linting stays fast; torch is imported only when a PyTorch target is loaded.
"""

from __future__ import annotations

import contextlib
import os
import tempfile

from bnlint.graph import Model
from bnlint.torch_frontend.options import TorchOptions

__all__ = ["TorchOptions", "fix_source", "load_torch_target"]


def load_torch_target(target: str, options: TorchOptions | None = None) -> Model:
    """Load a factory target or a PyTorch file; raises LoadError with a one-line reason."""
    options = options or TorchOptions()
    if os.path.exists(target):
        return _load_archive(target, options)
    return _load_factory(target, options)


def require_torch(target: str) -> None:
    """LoadError naming the missing extra when torch or its ONNX exporter is not installed."""
    from bnlint.errors import LoadError

    try:
        import torch  # noqa: F401
        import onnxscript  # noqa: F401  (torch's ONNX exporter)
    except ImportError as exc:
        raise LoadError(target, "PyTorch inputs need torch and onnxscript "
                                f"(pip install 'bnlint[torch]'): {exc}") from None


def _load_factory(target: str, options: TorchOptions) -> Model:
    from bnlint.errors import LoadError

    require_torch(target)
    from bnlint.torch_frontend.capture import ExportFailed, capture_for_lint
    from bnlint.torch_frontend.factory import load_factory, split_target, user_code_path

    with user_code_path(split_target(target)[0]):
        factory = load_factory(target, options)
        try:
            proto = capture_for_lint(factory.module, factory.args, factory.kwargs)
        except ExportFailed as exc:
            raise LoadError(target, str(exc)) from None
    return _model(proto, target, options, factory.module, factory.sites)


def _load_archive(path: str, options: TorchOptions) -> Model:
    from bnlint.errors import LoadError
    from bnlint.torch_frontend import archives

    kind = archives.archive_kind(path)
    archives.refuse_untrusted(path, kind, options.trust)
    require_torch(path)
    if kind == archives.TORCHSCRIPT:
        if not options.input_shapes:
            raise LoadError(path, "a TorchScript archive records no example inputs: pass --input-shape "
                                  "(e.g. --input-shape 1,3,224,224)")
        from bnlint.graph import build_model
        from bnlint.torch_frontend.factory import inputs_from_shapes
        from bnlint.torch_frontend.provenance import legacy_provenance

        proto, module = archives.load_torchscript(path, inputs_from_shapes(options))
        return build_model(proto, path, provenance=legacy_provenance(proto, module))
    from bnlint.torch_frontend.capture import ExportFailed, cleanup, translate
    from bnlint.torch_frontend.normalize import normalize

    program = archives.load_exported_program(path)
    try:
        onnx_program = translate(program)
    except ExportFailed as exc:
        raise LoadError(path, str(exc)) from None
    normalize(onnx_program.model, onnx_program.exported_program)
    return _model(cleanup(onnx_program.model), path, options)


def _model(proto, path: str, options: TorchOptions, module=None, sites=None) -> Model:
    from bnlint.graph import build_model
    from bnlint.torch_frontend.naming import rename_nodes
    from bnlint.torch_frontend.provenance import torch_provenance

    rename_nodes(proto)
    provenance = torch_provenance(proto, options.root, module, sites)
    return build_model(proto, path, provenance=provenance)


@contextlib.contextmanager
def fix_source(target: str, options: TorchOptions | None = None):
    """For `bnlint fix`: yields (ONNX path to rewrite, TorchExport or None). An ONNX file is used as is; a
    PyTorch target is exported for inference into a temporary folder that lives for the block."""
    from bnlint.sources import TORCH_ARCHIVE_SUFFIXES, is_torch_factory

    if not (is_torch_factory(target) or target.lower().endswith(TORCH_ARCHIVE_SUFFIXES)):
        yield target, None
        return
    from bnlint.torch_frontend.fixing import export_for_fix

    with tempfile.TemporaryDirectory(prefix="bnlint-torch-") as folder:
        exported = export_for_fix(target, options or TorchOptions(), folder)
        yield exported.path, exported
