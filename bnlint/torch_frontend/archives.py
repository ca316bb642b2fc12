"""PyTorch files: TorchScript and torch.export archives (only with --trust), pickled checkpoints (never).

What each file is comes from its content (the zip's member names), not its extension. Loading either
archive format runs code from the file: `torch.jit.load` compiles and runs the archive's TorchScript, and
torch 2.13's `torch.export.load` unpickles sample inputs with `weights_only=False` when the safe load
fails and evaluates the shape expressions stored in the archive with sympy. So neither is opened unless
the user passes `--trust`; before that, bnlint reads nothing but the zip's list of member names.
A `torch.save` checkpoint holds weights and no graph, so it is refused even with --trust (bnlint never
calls `torch.load` without `weights_only=True`, and weights alone cannot be linted).
"""

from __future__ import annotations

import io
import os
import stat
import zipfile

from bnlint.errors import LoadError

TORCHSCRIPT = "TorchScript archive"
EXPORTED_PROGRAM = "torch.export archive"
CHECKPOINT = "checkpoint"
PICKLE = "pickle"

FACTORY_HINT = "or lint the model's factory instead (`bnlint check model.py:build`)"


def _member_kind(names: list[str]) -> str | None:
    tails = {name.split("/", 1)[-1] for name in names}
    if "archive_format" in tails or any(t.startswith("models/") and t.endswith(".json") for t in tails):
        return EXPORTED_PROGRAM
    if any(t.startswith("code/") for t in tails) or "bytecode.pkl" in tails or "constants.pkl" in tails:
        return TORCHSCRIPT
    if "data.pkl" in tails:
        return CHECKPOINT
    return None


def archive_kind(path: str) -> str:
    """What a PyTorch file is, from its bytes; LoadError when it is none of the known kinds."""
    try:
        info = os.stat(path)
    except FileNotFoundError:
        raise LoadError(path, "no such file") from None
    except OSError as exc:
        raise LoadError(path, f"cannot read: {exc.strerror}") from None
    if not stat.S_ISREG(info.st_mode):
        raise LoadError(path, "is not a regular file")
    if info.st_size == 0:
        raise LoadError(path, "the file is empty")
    with open(path, "rb") as handle:
        head = handle.read(64)
    if head.startswith(b"\x80"):
        return PICKLE
    if head.startswith(b"version https://git-lfs"):
        raise LoadError(path, "this is a Git LFS pointer, not the model; run `git lfs pull`")
    if not head.startswith(b"PK"):
        raise LoadError(path, "not a PyTorch archive (TorchScript and .pt2 files are zip archives)")
    try:
        with zipfile.ZipFile(path) as archive:
            kind = _member_kind(archive.namelist())
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise LoadError(path, f"not a readable zip archive ({exc})") from None
    if kind is None:
        raise LoadError(path, "a zip archive that is neither TorchScript, torch.export (.pt2) nor a torch.save "
                              "checkpoint")
    return kind


def refuse_untrusted(path: str, kind: str, trust: bool) -> None:
    """Raise the refusal for `kind` unless it may be opened (archives with --trust)."""
    if kind in (CHECKPOINT, PICKLE):
        raise LoadError(path, "a pickled PyTorch checkpoint (torch.save) holds weights but no graph, and loading "
                              "it could run arbitrary code; bnlint does not unpickle it. Export the model "
                              "(torch.export.save or torch.onnx.export) " + FACTORY_HINT)
    if trust:
        return
    if kind == TORCHSCRIPT:
        raise LoadError(path, "a TorchScript archive is executable: torch.jit.load runs the code inside it. "
                              "Pass --trust if you trust this file, " + FACTORY_HINT)
    raise LoadError(path, "a torch.export archive (.pt2) is executable: torch.export.load unpickles parts of "
                          "it and evaluates expressions stored in it. Pass --trust if you trust this file, "
                          + FACTORY_HINT)


def load_torchscript(path: str, example_args: tuple):
    """(ONNX proto, loaded module) for a trusted TorchScript archive, Dropout modules kept (training)."""
    import onnx
    import torch

    from bnlint.torch_frontend.capture import first_line, quiet_exporter

    with quiet_exporter():
        try:
            module = torch.jit.load(path, map_location="cpu")
        except Exception as exc:
            raise LoadError(path, f"torch.jit.load failed: {first_line(exc)}") from None
    module.eval()
    for _, sub in module.named_modules():
        if "Dropout" in getattr(sub, "original_name", ""):
            sub.train()  # a scripted Dropout then exports as ONNX Dropout; traced archives are fixed graphs
    buffer = io.BytesIO()
    with quiet_exporter():
        try:
            torch.onnx.export(module, example_args, buffer, dynamo=False, do_constant_folding=False,
                              training=torch.onnx.TrainingMode.PRESERVE)
        except Exception as exc:
            raise LoadError(path, f"the ONNX exporter could not translate the TorchScript module: "
                                  f"{first_line(exc)}") from None
    return onnx.load_from_string(buffer.getvalue()), module


def load_exported_program(path: str):
    """A trusted `.pt2` archive's ExportedProgram."""
    import torch

    from bnlint.torch_frontend.capture import first_line, quiet_exporter

    with quiet_exporter():
        try:
            return torch.export.load(path)
        except Exception as exc:
            raise LoadError(path, f"torch.export.load failed: {first_line(exc)}") from None
