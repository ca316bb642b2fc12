"""Turn an nn.Module into the ONNX graph bnlint lints: what the engineer wrote, in inference semantics.

How (and why this way):

- **torch.export, then torch's own ONNX translation, without its optimizer.** The optimizer folds BN into
  Conv and drops no-op Dropout, erasing exactly what the placement rules must see; translation alone
  keeps every BatchNormalization and Dropout. Building ONNX from the FX graph ourselves would be faster
  but would mean maintaining a second exporter. Measured (CPU time, torch 2.13, median of 5, 5- and
  22-node models): torch.export 0.03-0.07 s; the whole capture 0.29-0.37 s with the op registry built once
  per process (1.4 s) and reused, against 0.64-0.70 s through the public `torch.onnx.export`, which
  rebuilds the registry on every call (the public API is still the fallback if the private one moves).
- **Eval mode, Dropout forced on.** The module is traced in `eval()` so BN and every `if self.training`
  branch behave as deployed: an `nn.BatchNorm*` uses its running statistics, one built with
  `track_running_stats=False` still normalizes with batch statistics (a real BN006), and a factory that
  returns a module in training mode is linted exactly like one in eval mode. Dropout, which eval mode
  would erase, is kept: a TorchFunctionMode turns every dropout call (`nn.Dropout*`, `nn.AlphaDropout`,
  `F.dropout*`, also when imported under another name) into a training-mode `F.dropout`, which exports as
  one ONNX `Dropout` (training_mode=true), so BN002 sees it and BN005 stays quiet.
- **The traced program decides what the graph says** (bnlint.torch_frontend.normalize): which statistics
  each BN used, constant parameters for BN without affine weights, no zero bias on a bias-free Conv.
- **Clean-up passes** from onnx-ir: inline the exporter's helper functions (so `ReLU6` is a `Clip`), drop
  unused nodes and functions, give every node a unique name (provenance is keyed by node name).

The exporter's per-node metadata (module path, class, stack trace) is kept for provenance.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import logging
import re
import sys
import warnings

import onnx
import torch
from torch.overrides import TorchFunctionMode

from bnlint.torch_frontend.normalize import normalize

F = torch.nn.functional
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_QUIET_LOGGERS = ("torch.onnx", "torch.export", "torch._export", "torch._dynamo", "torch.fx", "onnxscript")


class ExportFailed(Exception):
    """torch.export or the ONNX translation failed; the message is one line for the user."""


def first_line(exc: BaseException) -> str:
    text = _ANSI.sub("", str(exc)).strip()
    line = next((part.strip() for part in text.splitlines() if part.strip()), type(exc).__name__)
    return line if len(line) <= 300 else line[:297] + "..."


@contextlib.contextmanager
def quiet_exporter():
    """Silence the exporter's warnings, logs and progress prints (user `print`s go to stderr)."""
    saved = {name: logging.getLogger(name).level for name in _QUIET_LOGGERS}
    for name in _QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(sys.stderr):
            warnings.simplefilter("ignore")
            yield
    finally:
        for name, level in saved.items():
            logging.getLogger(name).setLevel(level)


# -- tracing ---------------------------------------------------------------------------------------------
_DROPOUT_FUNCTIONS = frozenset({
    F.dropout, F.dropout1d, F.dropout2d, F.dropout3d, F.alpha_dropout, F.feature_alpha_dropout,
    torch.dropout, torch.feature_dropout, torch.alpha_dropout, torch.feature_alpha_dropout,
})


class ForceDropout(TorchFunctionMode):
    """Every dropout variant runs as a training-mode `F.dropout` with the same probability."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in _DROPOUT_FUNCTIONS and args:
            p = args[1] if len(args) > 1 else kwargs.get("p", 0.5)
            inplace = args[3] if len(args) > 3 else kwargs.get("inplace", False)
            result = F.dropout(args[0], float(p), True, False)  # in-place dropout would not export as Dropout
            return args[0].copy_(result) if inplace else result
        return func(*args, **kwargs)


@contextlib.contextmanager
def eval_mode(module: torch.nn.Module):
    """The module in eval mode within the block; every submodule's own flag restored afterwards."""
    saved = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        yield
    finally:
        for m, training in saved:
            m.training = training


def trace_for_lint(module: torch.nn.Module, args: tuple, kwargs: dict) -> torch.export.ExportedProgram:
    with eval_mode(module), ForceDropout(), quiet_exporter():
        try:
            return torch.export.export(module, args, kwargs or None, strict=False)
        except Exception as exc:  # torch.export raises many types; all mean "could not trace"
            raise ExportFailed(f"torch.export could not trace the model: {first_line(exc)}") from exc


# -- translation -----------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=1)
def _private_exporter():
    """torch's exporter entry point with a reusable op registry, or None when this torch differs."""
    try:
        from torch.onnx._internal.exporter import _core, _registration

        if "registry" not in inspect.signature(_core.export).parameters:
            return None
        with quiet_exporter():
            registry = _registration.ONNXRegistry.from_torchlib()
    except Exception:  # private API moved: use the public one
        return None
    return functools.partial(_core.export, registry=registry)


def translate(program: torch.export.ExportedProgram, *, optimize: bool = False):
    """The ONNXProgram for an ExportedProgram (torch's translation; its optimizer only when asked)."""
    exporter = _private_exporter()
    with quiet_exporter():
        try:
            if exporter is not None:
                return exporter(program, optimize=optimize, verbose=False)
            return torch.onnx.export(program, dynamo=True, optimize=optimize, verbose=False)
        except Exception as exc:
            raise ExportFailed(f"the ONNX exporter could not translate the model: {first_line(exc)}") from exc


def cleanup(ir_model) -> onnx.ModelProto:
    """Inline helper functions, drop dead nodes, unique names; then the ModelProto."""
    import onnx_ir as ir
    from onnx_ir.passes import common

    for pass_ in (common.InlinePass(), common.RemoveUnusedNodesPass(), common.RemoveUnusedFunctionsPass(),
                  common.RemoveUnusedOpsetsPass(), common.NameFixPass()):
        ir_model = pass_(ir_model).model
    return ir.serde.serialize_model(ir_model)


def capture_for_lint(module: torch.nn.Module, args: tuple, kwargs: dict | None = None) -> onnx.ModelProto:
    """The lint graph of a module (see the module docstring); raises ExportFailed."""
    program = trace_for_lint(module, args, kwargs or {})
    onnx_program = translate(program)
    normalize(onnx_program.model, onnx_program.exported_program)
    return cleanup(onnx_program.model)
