"""Turn command-line targets into models: ONNX files, folders of them, and (via front ends) PyTorch."""

from __future__ import annotations

import os
import re
from pathlib import Path

from bnlint.errors import LoadError
from bnlint.graph import Model, build_model
from bnlint.onnx_loader import load_onnx

TORCH_ARCHIVE_SUFFIXES = (".pt", ".pth", ".pt2", ".ptl", ".jit", ".torchscript")
_FACTORY = re.compile(r"^(?P<module>.+\.py|[A-Za-z_][\w.]*):(?P<attr>[A-Za-z_][\w.]*)$")


def is_torch_factory(target: str) -> bool:
    """`file.py:build` or `package.module:build` (a PyTorch module factory, not a file path)."""
    return bool(_FACTORY.match(target)) and not os.path.exists(target)


def expand_targets(targets: list[str]) -> list[str]:
    """Files as given; folders searched recursively for `*.onnx` (sorted, hidden folders skipped)."""
    expanded: list[str] = []
    for target in targets:
        if os.path.isdir(target):
            found = []
            for folder, subfolders, files in os.walk(target):
                subfolders[:] = sorted(d for d in subfolders if not d.startswith("."))
                found.extend(os.path.join(folder, f) for f in files if f.endswith(".onnx"))
            expanded.extend(sorted(found))
        else:
            expanded.append(target)
    return expanded


def load_target(target: str) -> Model:
    """Load one target into the common graph; raises LoadError with a one-line reason."""
    if is_torch_factory(target) or target.lower().endswith(TORCH_ARCHIVE_SUFFIXES):
        return _load_torch(target)
    return build_model(load_onnx(target), target)


def _load_torch(target: str) -> Model:
    try:
        from bnlint.torch_frontend import load_torch_target
    except ImportError as exc:
        raise LoadError(target, f"PyTorch inputs need the `torch` extra (pip install 'bnlint[torch]'): {exc}") from None
    return load_torch_target(target)


def display_path(path: str) -> str:
    """Paths relative to the current directory when inside it, for short, stable output."""
    try:
        return Path(path).resolve().relative_to(Path.cwd().resolve()).as_posix()
    except (ValueError, OSError):
        return path
