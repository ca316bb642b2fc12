"""Turn command-line targets into models: ONNX files, folders of them, and (via front ends) PyTorch."""

from __future__ import annotations

import os
import re
from functools import lru_cache
from pathlib import Path

from bnlint.errors import LoadError
from bnlint.graph import Model, build_model
from bnlint.onnx_loader import load_onnx

TORCH_ARCHIVE_SUFFIXES = (".pt", ".pth", ".pt2", ".ptl", ".jit", ".torchscript")
_FACTORY = re.compile(r"^(?P<module>.+\.py|[A-Za-z_][\w.]*):(?P<attr>[A-Za-z_][\w.]*)$")


def is_torch_factory(target: str) -> bool:
    """`file.py:build` or `package.module:build` (a PyTorch module factory, not a file path)."""
    return bool(_FACTORY.match(target)) and not os.path.exists(target)


def expand_targets(targets: list[str], exclude=(), root: Path | None = None, force_exclude: bool = False) -> list[str]:
    """Files as given; folders searched recursively for `*.onnx` (sorted, hidden folders skipped).

    `exclude` holds .gitignore-style patterns relative to `root` (see bnlint.excludes); they prune the
    folder walk, and apply to paths named explicitly only with `force_exclude` (for pre-commit, which
    passes every changed file by name). A file reached twice is linted once.
    """
    from bnlint.excludes import DEFAULT_EXCLUDE, ExcludeMatcher

    matcher = ExcludeMatcher((*DEFAULT_EXCLUDE, *exclude), root or Path.cwd())
    expanded: list[str] = []
    for target in targets:
        if force_exclude and matcher.excludes_with_parents(target, is_dir=os.path.isdir(target)):
            continue
        if os.path.isdir(target):
            found = []
            for folder, subfolders, files in os.walk(target):
                subfolders[:] = sorted(d for d in subfolders if not d.startswith(".")
                                       and not matcher.excludes(os.path.join(folder, d), is_dir=True))
                found.extend(path for path in (os.path.join(folder, f) for f in files if f.endswith(".onnx"))
                             if not matcher.excludes(path, is_dir=False))
            expanded.extend(sorted(found))
        else:
            expanded.append(target)
    return list(dict.fromkeys(expanded))


def load_target(target: str, torch_options=None) -> Model:
    """Load one target into the common graph; raises LoadError with a one-line reason.

    `torch_options` (bnlint.torch_frontend.TorchOptions): example inputs, --trust and --source-root.
    """
    if is_torch_factory(target) or target.lower().endswith(TORCH_ARCHIVE_SUFFIXES):
        return _load_torch(target, torch_options)
    if target.endswith(".py") and os.path.isfile(target):
        raise LoadError(target, f"a Python file: name the factory that builds the model, e.g. `{target}:build`")
    proto = load_onnx(target)
    if proto.producer_name != "pytorch":
        return build_model(proto, target)
    from bnlint.torch_frontend.exporter_metadata import exporter_folded, exporter_provenance

    root = torch_options.root if torch_options is not None else os.getcwd()
    model = build_model(proto, target, provenance=exporter_provenance(proto, root))
    model.info.exporter_folded.update(exporter_folded(proto))
    return model


def _load_torch(target: str, torch_options=None) -> Model:
    from bnlint.torch_frontend import load_torch_target

    return load_torch_target(target, torch_options)


def display_path(path: str) -> str:
    """Paths relative to the current directory when inside it, for short, stable output."""
    cwd = os.getcwd()
    absolute = os.path.join(cwd, path)
    folder, name = os.path.split(absolute)
    if not name or os.path.islink(absolute):  # a link is shown where it points
        shown = _resolved_relative(absolute, cwd)
    else:  # each folder is resolved once, not once per file in it (folder mode shows thousands)
        shown = _resolved_relative(folder, cwd)
        if shown is not None:
            shown = name if shown == "." else f"{shown}/{name}"
    return path if shown is None else shown


@lru_cache(maxsize=4096)
def _resolved_relative(path: str, cwd: str) -> str | None:
    """`path` with symlinks resolved, relative to the resolved `cwd` (POSIX), or None when outside it."""
    try:
        return Path(path).resolve().relative_to(Path(cwd).resolve()).as_posix()
    except (ValueError, OSError):
        return None
