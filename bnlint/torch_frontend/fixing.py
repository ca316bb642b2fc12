"""`bnlint fix` for PyTorch targets: export for inference, let the ONNX pipeline fold, check against torch.

The export is the deployment graph, unlike the lint graph: eval mode and Dropout left as torch traces it
(the identity), translated without torch's optimizer so that bnlint's own passes fold each BN and report
why any is kept. Only numerically exact clean-ups are applied to it (no zero bias on bias-free Conv,
constant weights for bias-free Linear, constant ones/zeros for BN without affine parameters); BN modes are
left exactly as traced. Nodes are named after their modules.

Besides the usual comparison with the unfolded ONNX (onnxruntime, float64 reference), the rewritten model
is run on the factory's example inputs and compared with torch eager outputs, under the same rule: its
error against torch's own float64 run must stay within 4x torch's float32 error (+4 ulp). When the module
cannot run in float64, a fixed tolerance scaled per channel is used, as `bnlint verify` does.
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass, field

import numpy as np
import torch

from bnlint.errors import LoadError
from bnlint.torch_frontend.options import TorchOptions


@dataclass
class TorchExport:
    """The unfolded ONNX written for the fix pipeline, and what torch itself computes on the inputs."""

    path: str
    args: tuple
    kwargs: dict
    eager: list[np.ndarray]
    eager64: list[np.ndarray] | None
    notes: list[str] = field(default_factory=list)


def _flatten(value) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, dict):
        return [t for item in value.values() for t in _flatten(item)]
    if isinstance(value, (tuple, list)):
        return [t for item in value for t in _flatten(item)]
    return []


def _eager(module, args, kwargs) -> list[np.ndarray]:
    with torch.no_grad():
        return [t.detach().cpu().numpy() for t in _flatten(module(*args, **kwargs))]


def _eager64(module, args, kwargs) -> list[np.ndarray] | None:
    """Outputs of a float64 copy of the module, or None when it cannot run in float64."""
    def widen(value):
        return value.double() if isinstance(value, torch.Tensor) and value.is_floating_point() else value

    try:
        wide = copy.deepcopy(module).double()
        with torch.no_grad():
            outputs = wide(*[widen(a) for a in args], **{k: widen(v) for k, v in kwargs.items()})
    except Exception:  # a module with float32-only ops or that cannot be copied: fixed tolerance instead
        return None
    return [t.detach().cpu().numpy() for t in _flatten(outputs)]


def export_for_fix(target: str, options: TorchOptions, folder: str) -> TorchExport:
    """Write the target's inference ONNX (unfolded) into `folder`; raises LoadError."""
    from bnlint.torch_frontend import archives, require_torch
    from bnlint.torch_frontend.capture import ExportFailed, eval_mode, first_line, quiet_exporter, translate

    require_torch(target)
    if os.path.exists(target):
        kind = archives.archive_kind(target)
        archives.refuse_untrusted(target, kind, options.trust)
        if kind != archives.EXPORTED_PROGRAM:
            raise LoadError(target, "bnlint fix reads factories and .pt2 archives; for TorchScript, export the "
                                    "module with torch.export.save or lint it with `bnlint check --trust`")
        program = archives.load_exported_program(target)
        module = program.module()
        args, kwargs = program.example_inputs or ((), {})
        args, kwargs = tuple(args), dict(kwargs or {})
        return _finish(target, translate(program), module, args, kwargs, folder)
    from bnlint.torch_frontend.factory import load_factory, split_target, user_code_path

    with user_code_path(split_target(target)[0]):
        factory = load_factory(target, options)
        module, args, kwargs = factory.module, factory.args, factory.kwargs
        with eval_mode(module):
            with quiet_exporter():
                try:
                    program = torch.export.export(module, args, kwargs or None, strict=False)
                except Exception as exc:
                    raise LoadError(target, f"torch.export could not trace the model: {first_line(exc)}") from None
            try:
                onnx_program = translate(program)
            except ExportFailed as exc:
                raise LoadError(target, str(exc)) from None
            return _finish(target, onnx_program, module, args, kwargs, folder)


def _finish(target, onnx_program, module, args, kwargs, folder) -> TorchExport:
    import onnx

    from bnlint.torch_frontend.capture import cleanup
    from bnlint.torch_frontend.naming import rename_nodes
    from bnlint.torch_frontend.normalize import normalize

    normalize(onnx_program.model, onnx_program.exported_program, batch_norm_modes=False)
    proto = cleanup(onnx_program.model)
    rename_nodes(proto)
    path = os.path.join(folder, "exported.onnx")
    onnx.save_model(proto, path, save_as_external_data=proto.ByteSize() > 1_500_000_000,
                    location="exported.onnx.data")
    eager = _eager(module, args, kwargs)
    eager64 = _eager64(module, args, kwargs)
    notes = [] if eager64 is not None else ["the module cannot run in float64: torch eager outputs compared "
                                            "with a fixed per-channel tolerance"]
    return TorchExport(path, args, kwargs, eager, eager64, notes)


def check_against_eager(candidate: str, exported: TorchExport, verify_options) -> list:
    """OutputChecks of the rewritten model against torch eager outputs on the example inputs."""
    from bnlint.isolation import run_isolated
    from bnlint.onnx_loader import load_onnx
    from bnlint.verify import (LIMIT_HINTS, Comparator, VerifyError, feedable_inputs, memory_cap, model_footprint,
                               run_model)

    model = load_onnx(candidate)
    inputs = [value.name for value in feedable_inputs(model)]
    arrays = [t.detach().cpu().numpy() for t in _flatten(list(exported.args) + list(exported.kwargs.values()))]
    if len(arrays) != len(inputs):
        raise VerifyError(f"{candidate}: {len(inputs)} model input(s) but {len(arrays)} example tensor(s)")
    # onnxruntime runs in a child process (crash, hang and memory cap as for the ONNX comparison)
    values = run_isolated(run_model, candidate, dict(zip(inputs, arrays)), timeout=verify_options.timeout,
                          memory_bytes=memory_cap(verify_options, model_footprint(model)),
                          label="comparing the rewrite with torch eager", **LIMIT_HINTS)
    outputs = dict(zip((o.name for o in model.graph.output), values))
    names = [o.name for o in model.graph.output]
    if len(names) != len(exported.eager):
        raise VerifyError(f"{candidate}: {len(names)} output(s) but torch returned {len(exported.eager)}")
    comparator = Comparator(verify_options, use_reference=exported.eager64 is not None)
    checks = []
    for i, name in enumerate(names):
        refs = [exported.eager64[i]] if exported.eager64 is not None else None
        checks.append(comparator.check(f"{name} (vs torch eager)", [exported.eager[i]], [outputs[name]], refs))
    return checks


def eager_verdict(candidate: str, exported: TorchExport, verify_options) -> tuple[bool, str]:
    """(passed, one line for the fix report) for the comparison with torch eager outputs."""
    checks = check_against_eager(candidate, exported, verify_options)
    failed = [c for c in checks if not c.ok]
    if failed:
        return False, ("verification against torch eager FAILED: "
                       + "; ".join(f"{c.name}: {c.problem}" for c in failed) + "; nothing was written")
    worst = max((c.max_abs for c in checks), default=0.0)
    rule = "float64 torch reference" if exported.eager64 is not None else "fixed per-channel tolerance"
    return True, (f"matches torch eager on the example inputs: {len(checks)} output(s), max abs diff {worst:.3g} "
                  f"({rule})" + "".join(f"; {note}" for note in exported.notes))
