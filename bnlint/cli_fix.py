"""`bnlint fix` and `bnlint verify`: rewrite a model for inference, and prove two models equivalent.

Imported only when one of the two commands runs (onnxruntime loads only then). Exit codes: 0 ok,
1 verification failed (nothing written), 2 usage, load or write error, or a model onnxruntime cannot run.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import click

from bnlint.cli import fail, selection_options, torch_input_options
from bnlint.errors import EXIT_CLEAN, EXIT_FINDINGS, BnlintError

NO_VERIFY_WARNING = ("bnlint: warning: --no-verify: the rewritten model was NOT run against the original; "
                     "nothing proves it computes the same outputs")


def verification_options(function):
    for decorator in reversed([
        click.option("--dim", "dims", multiple=True, metavar="NAME=VALUE",
                     help="Size of a dynamic input dimension (repeatable) [default: 2 for the first axis, else 32]."),
        click.option("--inputs", "inputs_npz", type=click.Path(dir_okay=False), default=None,
                     help="Also compare on the arrays of this .npz file (one per model input)."),
        click.option("--rtol", type=float, default=None, help="Fixed relative tolerance instead of the default rule."),
        click.option("--atol", type=float, default=None, help="Fixed absolute tolerance instead of the default rule."),
        click.option("--seed", type=int, default=0, show_default=True, help="Seed of the random input sets."),
    ]):
        function = decorator(function)
    return function


def _verify_options(dims, inputs_npz, rtol, atol, seed):
    from bnlint.verify import VerifyOptions, parse_dims

    return VerifyOptions(dims=parse_dims(dims), inputs=inputs_npz, rtol=rtol, atol=atol, seed=seed)


def default_output(model: str) -> Path:
    """NAME.fixed.onnx beside the input."""
    path = Path(model)
    stem = path.name[:-5] if path.name.lower().endswith(".onnx") else path.name
    return path.with_name(f"{stem}.fixed.onnx")


def _fix_codes(model: str, config_path, select, extend_select, ignore) -> tuple[str, ...]:
    from bnlint.config import load_config
    from bnlint.fix import FIX_CODES
    from bnlint.registry import all_checks
    from bnlint.selection import Selection, expand, split_codes

    config = load_config(config_path)
    chosen_select = split_codes(select) or config.select
    known = all_checks().keys()
    selection = Selection(tuple(chosen_select), config.extend_select + split_codes(extend_select),
                          config.ignore + split_codes(ignore))
    codes = selection.codes(known) - expand(config.ignored_for(model), known)
    return tuple(code for code in FIX_CODES if code in codes)


@click.command()
@click.argument("model")
@click.option("-o", "--output", default=None, metavar="OUT",
              help="Where to write the fixed model [default: NAME.fixed.onnx beside MODEL].")
@click.option("--in-place", is_flag=True, help="Replace MODEL itself (atomically, only after verification passed).")
@selection_options
@click.option("--unsafe-fixes", is_flag=True,
              help="Also apply fixes whose result is not numerically equivalent (bnlint has none today).")
@click.option("--diff", "show_diff", is_flag=True, help="Show what would change and write nothing.")
@click.option("--no-verify", is_flag=True, help="Skip the onnxruntime comparison (prints a warning).")
@verification_options
@click.option("--format", "output_format", type=click.Choice(["text", "json"]), default="text", show_default=True,
              help="text: report on stderr; json: report on stdout.")
@click.option("-q", "--quiet", is_flag=True, help="No report on success (errors and failures are still shown).")
@torch_input_options
def fix(model, output, in_place, select, extend_select, ignore, config_path, unsafe_fixes, show_diff, no_verify,
        dims, inputs_npz, rtol, atol, seed, output_format, quiet, input_shapes, input_dtypes, source_root, trust):
    """Rewrite MODEL for inference: fold BN, remove no-op Dropout, merge BNs, drop cancelled biases, and
    move ReLU/BN after MaxPool; verify with onnxruntime before writing anything."""
    started = time.perf_counter()
    if in_place and output:
        fail("give either -o/--output or --in-place, not both")
    from bnlint.sources import TORCH_ARCHIVE_SUFFIXES, is_torch_factory

    if (is_torch_factory(model) or model.lower().endswith(TORCH_ARCHIVE_SUFFIXES)) and not output:
        fail(f"{model}: give -o OUT.onnx; the fixed model of a PyTorch target is an ONNX file")
    out = Path(model) if in_place else Path(output) if output else default_output(model)
    try:
        if not in_place and out.exists() and out.resolve() == Path(model).resolve():
            fail(f"{out}: this is the input model; use --in-place to replace it")
        codes = _fix_codes(model, config_path, select, extend_select, ignore)
        if not codes:
            fail("no fixable rule is selected (fixable: BN003, BN004, BN005, BN008, BN009)")
        verify_options = None if no_verify else _verify_options(dims, inputs_npz, rtol, atol, seed)
        from bnlint.torch_frontend import TorchOptions, fix_source

        torch_options = TorchOptions.from_cli(input_shapes=input_shapes, input_dtypes=input_dtypes, trust=trust,
                                              source_root=source_root)
        with fix_source(model, torch_options) as (source, exported):
            run = _run_fix(source, out, codes, show_diff, verify_options, in_place, started, exported, model)
    except BnlintError as exc:
        fail(str(exc))
    _report(run, output_format, quiet and run.exit_code == 0)
    if no_verify and run.written:
        click.echo(NO_VERIFY_WARNING, err=True)
    sys.exit(run.exit_code)


def _run_fix(model: str, out: Path, codes, show_diff: bool, verify_options, in_place: bool, started: float,
             exported=None, shown: str | None = None):
    """`exported` (bnlint.torch_frontend.fixing.TorchExport): `model` is the export of the PyTorch target
    `shown`, and the result is also compared with torch eager outputs."""
    from bnlint.fix import fix_model
    from bnlint.fix.report import FixRun, render_diff
    from bnlint.onnx_loader import load_onnx
    from bnlint.safe_io import check_output_path, prepare_save, too_large, uses_external_data

    proto = load_onnx(model)
    input_external = uses_external_data(proto)
    outcome = fix_model(proto, model, codes)
    run = FixRun(model=shown or model, outcome=outcome, output=str(out))
    if show_diff:
        click.echo(render_diff(run), nl=False)
        run.output = None
        run.seconds = time.perf_counter() - started
        return run
    if in_place and not outcome.changed:
        run.message = "nothing to fix; the model is unchanged"
        run.seconds = time.perf_counter() - started
        return run
    check_output_path(out)
    # A model that came with external data keeps that layout; one too large for protobuf gets it.
    pending = prepare_save(proto, out, source_path=model, external=input_external or too_large(proto))
    try:
        if verify_options is not None and outcome.changed:
            run.verification = _verify(model, str(pending.temp_path), verify_options, outcome)
            run.verified = run.verification.ok
            if not run.verification.ok:
                pending.discard()
                run.exit_code = EXIT_FINDINGS
                run.message = "verification FAILED: nothing was written"
                run.seconds = time.perf_counter() - started
                return run
        if verify_options is not None and exported is not None:
            from bnlint.torch_frontend.fixing import eager_verdict

            passed, line = eager_verdict(str(pending.temp_path), exported, verify_options)
            outcome.notes.append(line)
            if not passed:
                pending.discard()
                run.exit_code = EXIT_FINDINGS
                run.seconds = time.perf_counter() - started
                return run
        pending.commit()
    except BaseException:
        pending.discard()
        raise
    run.written = True
    run.data_file = str(pending.data_path) if pending.data_path else None
    if in_place and input_external:
        run.message = "the input's previous external data file is no longer referenced and may be deleted"
    run.seconds = time.perf_counter() - started
    return run


def _verify(model: str, candidate: str, options, outcome):
    from bnlint.verify import Checkpoint, VerifyError, compare_models

    grouped: dict[tuple[str, str], list[str]] = {}
    for change in outcome.changes:
        if change.graph == "main" and change.checkpoint is not None:
            key = (change.checkpoint.original, change.checkpoint.rewritten)
            grouped.setdefault(key, []).append(f"{change.code} {change.message}")
    checkpoints = [Checkpoint(" + ".join(labels), first, second) for (first, second), labels in grouped.items()]
    try:
        return compare_models(model, candidate, options, checkpoints)
    except VerifyError as exc:
        raise VerifyError(f"{exc}; nothing was written (the rewrite cannot be verified here: --no-verify writes "
                          "it unverified)") from None


def _report(run, output_format: str, quiet: bool) -> None:
    from bnlint.fix.report import render_json, render_text

    if output_format == "json":
        click.echo(render_json(run), nl=False)
    elif not quiet:
        click.echo(render_text(run), nl=False, err=True)


@click.command()
@click.argument("first")
@click.argument("second")
@verification_options
@click.option("--format", "output_format", type=click.Choice(["text", "json"]), default="text", show_default=True)
def verify(first, second, dims, inputs_npz, rtol, atol, seed, output_format):
    """Check that SECOND computes the same outputs as FIRST (e.g. another tool's rewrite of it).

    Exit 0 equivalent, 1 different, 2 cannot run."""
    import json

    from bnlint.verify import compare_models, describe

    try:
        options = _verify_options(dims, inputs_npz, rtol, atol, seed)
        result = compare_models(first, second, options)
    except BnlintError as exc:
        fail(str(exc))
    if output_format == "json":
        click.echo(json.dumps({"first": first, "second": second, **result.to_dict()}, indent=2))
    else:
        click.echo(describe(result))
    sys.exit(EXIT_CLEAN if result.ok else EXIT_FINDINGS)
