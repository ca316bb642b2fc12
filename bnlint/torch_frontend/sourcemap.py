"""Find the user's line in a Python stack: the innermost frame that is not PyTorch (or bnlint) itself.

Torch-free, so ONNX files exported by torch get locations from their stack-trace metadata without importing
torch. Frames are recognised as PyTorch's by the installed torch folder when torch is loaded, else by the
usual install layouts (`site-packages/torch/...`), which also covers traces recorded on another machine.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

_FRAME = re.compile(r'File "(?P<file>[^"]+)", line (?P<line>\d+)')
_TORCH_PATH = re.compile(
    r"[/\\](?:site|dist)-packages[/\\](?:torch|torchvision|torchaudio|onnxscript|onnx_ir)[/\\]"
    r"|[/\\]torch[/\\](?:nn|fx|_dynamo|_export|export|onnx|autograd|jit|utils|_functorch|_higher_order_ops|ao|"
    r"_prims|_refs|_decomp|_subclasses)[/\\]"
    r"|[/\\]torch[/\\](?:_ops|_tensor|functional|overrides|_jit_internal|_compile)\.py$"
)
_OWN_ROOT = str(Path(__file__).resolve().parent.parent) + os.sep


def library_roots() -> tuple[str, ...]:
    """Install folders of torch and its exporter, when they are already imported (never imports them)."""
    roots = []
    for name in ("torch", "onnxscript", "onnx_ir"):
        module = sys.modules.get(name)
        location = getattr(module, "__file__", None) if module is not None else None
        if location:
            roots.append(str(Path(location).resolve().parent) + os.sep)
    return tuple(roots)


def is_library_file(path: str, roots: tuple[str, ...] | None = None) -> bool:
    """True for frames of PyTorch, its exporter, bnlint itself, and synthetic `<...>` code."""
    if not path or path.startswith("<"):
        return True
    if _TORCH_PATH.search(path):
        return True
    absolute = os.path.abspath(path)
    if absolute.startswith(_OWN_ROOT):
        return True
    return any(absolute.startswith(root) for root in (roots if roots is not None else library_roots()))


def parse_stack_trace(text: str) -> list[tuple[str, int]]:
    """(file, line) of each frame of a formatted stack trace, outermost first."""
    return [(m.group("file"), int(m.group("line"))) for m in _FRAME.finditer(text or "")]


def innermost_user_frame(frames: list[tuple[str, int]]) -> tuple[str, int] | None:
    """The last frame (innermost call) that is not library code, or None when all of them are."""
    roots = library_roots()
    for path, line in reversed(frames):
        if not is_library_file(path, roots):
            return path, line
    return None


def display_source(path: str, root: str) -> str:
    """`path` relative to `root` (POSIX separators) when inside it, else unchanged."""
    try:
        return Path(os.path.abspath(path)).relative_to(Path(root).resolve()).as_posix()
    except ValueError:
        pass
    try:
        return Path(path).resolve().relative_to(Path(root).resolve()).as_posix()
    except (ValueError, OSError):
        return path


def resolve_source(path: str, root: str | None = None) -> Path:
    """Where to read a shown source path: absolute as is, relative under `root` (default: cwd)."""
    candidate = Path(path)
    if candidate.is_absolute():
        return candidate
    return Path(root or os.getcwd()) / candidate
