"""`bnlint fix` and `bnlint verify`: rewrite models for inference, and prove two models equivalent.

Imported only when one of the two commands runs. Exit codes: 0 ok, 1 verification failed (nothing
written), 2 usage, load or write error, or a model onnxruntime cannot run (or that crashed it, hung past
--verify-timeout or passed --verify-memory). `fix` takes several models (a pre-commit hook passes every
staged file): each is fixed on its own, an error in one does not stop the others, and the exit code is
the worst of theirs.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import click

from bnlint.cli import fail, selection_options, torch_input_options
from bnlint.errors import EXIT_CLEAN, EXIT_ERROR, EXIT_FINDINGS, BnlintError, ConfigError

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
        click.option("--verify-timeout", type=click.FloatRange(min=0), default=None, metavar="SECONDS",
                     help="Stop a verification run after this many seconds (exit 2); 0: no limit [default: 600]."),
        click.option("--verify-memory", metavar="SIZE", default=None,
                     help="Memory cap of a verification run, e.g. 8GiB (exit 2 when passed); 0: none "
                          "[default: 4GiB + 16 x the tensor bytes of the models]."),
        click.option("--max-model-size", metavar="SIZE", default=None,
                     help="Refuse ONNX files larger than SIZE, e.g. 2GiB [default: max-model-size from config, "
                          "else 16GiB]."),
    ]):
        function = decorator(function)
    return function


def _size(value: str | None, option: str, *, zero_means_none: bool = False) -> int | None:
    from bnlint.config import parse_size

    if value is None:
        return None
    if zero_means_none and value.strip().lower() in ("0", "none"):
        return 0
    try:
        return parse_size(value)
    except ValueError as exc:
        raise ConfigError(f"{option}: {exc}") from None


def _verify_options(dims, inputs_npz, rtol, atol, seed, verify_timeout, verify_memory, max_size):
    from bnlint.verify import DEFAULT_TIMEOUT, VerifyOptions, parse_dims

    timeout = DEFAULT_TIMEOUT if verify_timeout is None else (verify_timeout or None)
    return VerifyOptions(dims=parse_dims(dims), inputs=inputs_npz, rtol=rtol, atol=atol, seed=seed, timeout=timeout,
                         memory=_size(verify_memory, "--verify-memory", zero_means_none=True),
                         max_model_size=max_size)


def default_output(model: str) -> Path:
    """NAME.fixed.onnx beside the input."""
    path = Path(model)
    stem = path.name[:-5] if path.name.lower().endswith(".onnx") else path.name
    return path.with_name(f"{stem}.fixed.onnx")


def _fix_codes(model: str, config, select, extend_select, ignore) -> tuple[str, ...]:
    from bnlint.fix import FIX_CODES
    from bnlint.registry import all_checks
    from bnlint.selection import Selection, expand, split_codes

    chosen_select = split_codes(select) or config.select
    known = all_checks().keys()
    selection = Selection(tuple(chosen_select), config.extend_select + split_codes(extend_select),
                          config.ignore + split_codes(ignore))
    codes = selection.codes(known) - expand(config.ignored_for(model), known)
    return tuple(code for code in FIX_CODES if code in codes)


@click.command()
@click.argument("models", nargs=-1, required=True, metavar="MODEL...")
@click.option("-o", "--output", default=None, metavar="OUT",
              help="Where to write the fixed model (one MODEL only) [default: NAME.fixed.onnx beside each MODEL].")
@click.option("--in-place", is_flag=True, help="Replace each MODEL itself (atomically, only after verification passed).")
@selection_options
@click.option("--unsafe-fixes", is_flag=True,
              help="Also apply fixes whose result is not numerically equivalent (bnlint has none today).")
@click.option("--diff", "show_diff", is_flag=True, help="Show what would change and write nothing.")
@click.option("--no-verify", is_flag=True, help="Skip the onnxruntime comparison (prints a warning).")
@verification_options
@click.option("--format", "output_format", type=click.Choice(["text", "json"]), default="text", show_default=True,
              help="text: report on stderr (a --diff on stdout); json: one JSON document on stdout (an array "
                   "for several models), with the diff inside for --diff.")
@click.option("-q", "--quiet", is_flag=True, help="No report on success (errors and failures are still shown).")
@click.option("--show-changes", is_flag=True,
              help="List every change and every BN left in the text report [default: the first 10 of each list, "
                   "then how many more].")
@torch_input_options
def fix(models, output, in_place, select, extend_select, ignore, config_path, unsafe_fixes, show_diff, no_verify,
        dims, inputs_npz, rtol, atol, seed, verify_timeout, verify_memory, max_model_size, output_format, quiet,
        show_changes, input_shapes, input_dtypes, source_root, trust):
    """Rewrite MODEL(s) for inference: fold BN, remove no-op Dropout, merge BNs, drop cancelled biases, and
    move ReLU/BN after MaxPool; verify with onnxruntime before writing anything."""
    models = list(dict.fromkeys(models))
    if in_place and output:
        fail("give either -o/--output or --in-place, not both")
    if output and len(models) > 1:
        fail(f"-o/--output takes one MODEL, {len(models)} were given; without it each is written to "
             "NAME.fixed.onnx beside it (or use --in-place)")
    from bnlint.config import load_config
    from bnlint.onnx_loader import model_size_limit
    from bnlint.torch_frontend import TorchOptions

    try:
        config = load_config(config_path)
        size_limit = _size(max_model_size, "--max-model-size") or config.max_model_size
        verify_options = None if no_verify else _verify_options(dims, inputs_npz, rtol, atol, seed, verify_timeout,
                                                                verify_memory, size_limit)
        torch_options = TorchOptions.from_cli(input_shapes=input_shapes, input_dtypes=input_dtypes, trust=trust,
                                              source_root=source_root)
    except BnlintError as exc:
        fail(str(exc))
    request = _Request(output, in_place, config, (select, extend_select, ignore), show_diff, verify_options,
                       torch_options, output_format)
    single = len(models) == 1
    reports, worst = [], EXIT_CLEAN
    with model_size_limit(size_limit):
        for model in models:
            try:
                run = _fix_one(model, request)
            except BnlintError as exc:
                if single:
                    fail(str(exc))
                _error_line(str(exc))
                reports.append({"model": model, "exit_code": EXIT_ERROR, "error": str(exc)})
                worst = max(worst, EXIT_ERROR)
                continue
            if output_format == "json":
                reports.append(run)
            else:
                _report_text(run, quiet and run.exit_code == 0, show_changes)
            if no_verify and run.written:
                click.echo(NO_VERIFY_WARNING, err=True)
            worst = max(worst, run.exit_code)
    if output_format == "json":
        _report_json(reports, single)
    sys.exit(worst)


@dataclass(frozen=True)
class _Request:
    """What every model of one `bnlint fix` command is fixed with."""

    output: str | None
    in_place: bool
    config: object  # bnlint.config.Config
    selection: tuple  # (select, extend_select, ignore) as given on the command line
    show_diff: bool
    verify_options: object  # bnlint.verify.VerifyOptions, None with --no-verify
    torch_options: object  # bnlint.torch_frontend.TorchOptions
    output_format: str


def _fix_one(model: str, request: _Request):
    """Fix one model; returns its FixRun, raises BnlintError for a usage, load or write error."""
    from bnlint.sources import TORCH_ARCHIVE_SUFFIXES, is_torch_factory
    from bnlint.torch_frontend import fix_source

    started = time.perf_counter()
    if (is_torch_factory(model) or model.lower().endswith(TORCH_ARCHIVE_SUFFIXES)) and not request.output:
        raise BnlintError(f"{model}: give -o OUT.onnx; the fixed model of a PyTorch target is an ONNX file")
    out = Path(model) if request.in_place else Path(request.output) if request.output else default_output(model)
    if not request.in_place and out.exists() and out.resolve() == Path(model).resolve():
        raise BnlintError(f"{out}: this is the input model; use --in-place to replace it")
    codes = _fix_codes(model, request.config, *request.selection)
    if not codes:
        raise BnlintError("no fixable rule is selected (fixable: BN003, BN004, BN005, BN008, BN009)")
    with fix_source(model, request.torch_options) as (source, exported):
        return _run_fix(source, out, codes, request.show_diff, request.verify_options, request.in_place, started,
                        exported, model, diff_to_stdout=request.output_format != "json")


def _run_fix(model: str, out: Path, codes, show_diff: bool, verify_options, in_place: bool, started: float,
             exported=None, shown: str | None = None, *, diff_to_stdout: bool = True):
    """`exported` (bnlint.torch_frontend.fixing.TorchExport): `model` is the export of the PyTorch target
    `shown`, and the result is also compared with torch eager outputs.

    The verification child starts as soon as the model is loaded, so onnxruntime's import, the original's
    session and the float64 reference overlap the rewrite; it is stopped when nothing needs verifying."""
    from bnlint.gcpause import cyclic_gc_paused
    from bnlint.onnx_loader import load_onnx_counted

    with cyclic_gc_paused():  # loading and saving allocate as much as the rewrite (~30% of it at depth 20000)
        proto, external_tensors, external_bytes = load_onnx_counted(model)
        early = None if verify_options is None or show_diff else \
            _start_verification(model, proto, verify_options, shown or model)
        checker = None if show_diff else _start_checker(model)
        try:
            return _fix_and_write(proto, model, out, codes, show_diff, verify_options, in_place, started, exported,
                                  shown, diff_to_stdout, early, checker, input_external=external_tensors > 0,
                                  external_bytes=external_bytes)
        finally:
            for child in (early, checker):
                if child is not None:
                    child.cancel()


# Models up to this size get the ONNX checker's child before the rewrite (bnlint.safe_io.start_checker). The
# model reaches it through a pipe at ~3 ms per MB, which outweighs the ~10 ms gained above ~3 MB (measured:
# 0.3 MB model 34 -> 22 ms, 2 MB model even).
EARLY_CHECKER_MAX_BYTES = 2 << 20


def _start_checker(model: str):
    """The checker for a small model, started now (else None: prepare_save starts its own). A model saved
    with external data is checked another way and cancels it unused (a fork, ~2 ms)."""
    from bnlint.safe_io import start_checker

    try:
        small = os.path.getsize(model) <= EARLY_CHECKER_MAX_BYTES
    except OSError:
        small = False
    return start_checker() if small else None


def _start_verification(model: str, proto, options, shown: str):
    """The isolated comparison of the original with the rewrite to come (bnlint.verify.start_verification)."""
    from bnlint.verify import ModelInterface, start_verification

    original = ModelInterface.of(proto)
    # the original and the rewrite (about the same size)
    return start_verification(model, options, original, model=proto, footprint=2 * original.tensor_bytes,
                              label=f"{shown}: verifying the rewrite", cli_hints=True)


def _fix_and_write(proto, model: str, out: Path, codes, show_diff: bool, verify_options, in_place: bool,
                   started: float, exported, shown: str | None, diff_to_stdout: bool, early, checker, *,
                   input_external: bool, external_bytes: int):
    from bnlint.fix import fix_model
    from bnlint.fix.report import FixRun, render_diff
    from bnlint.fix.spill import spill_folder, spilling
    from bnlint.safe_io import check_output_path, fits_unmeasured, prepare_save, too_large

    spill_to = None if show_diff else spill_folder(out, os.path.getsize(model) + external_bytes)
    with spilling(spill_to):
        outcome = fix_model(proto, model, codes, detach=not show_diff)
    run = FixRun(model=shown or model, outcome=outcome, output=str(out))
    if show_diff:
        run.diff = render_diff(run)
        if diff_to_stdout:
            click.echo(run.diff, nl=False)
        run.output = None
        run.seconds = time.perf_counter() - started
        return run
    if in_place and not outcome.changed:
        run.message = "nothing to fix; the model is unchanged"
        run.seconds = time.perf_counter() - started
        return run
    check_output_path(out)
    # A model that came with external data keeps that layout; one too large for protobuf gets it.
    detached_bytes = sum(array.nbytes for array in outcome.detached.values())
    fits = fits_unmeasured(os.path.getsize(model), outcome.bytes_added) or not too_large(proto, detached_bytes)
    pending = prepare_save(proto, out, source_path=model, arrays=outcome.detached,
                           external=input_external or not fits, checker=checker)
    try:
        if verify_options is not None and outcome.changed:
            run.verification = _verify(early, str(pending.temp_path), proto, outcome)
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


def _verify(early, candidate: str, rewritten, outcome):
    """Finish the isolated comparison started before the rewrite (a crash, hang or memory bomb is an
    error, exit 2). `rewritten`: the proto written to `candidate`, whose interface the child needs."""
    from bnlint.isolation import IsolationError
    from bnlint.verify import Checkpoint, ModelInterface, VerifyError

    grouped: dict[tuple[str, str], list[str]] = {}
    for change in outcome.changes:
        if change.graph == "main" and change.checkpoint is not None:
            key = (change.checkpoint.original, change.checkpoint.rewritten)
            grouped.setdefault(key, []).append(f"{change.code} {change.message}")
    checkpoints = [Checkpoint(" + ".join(labels), first, second) for (first, second), labels in grouped.items()]
    try:
        return early.finish(candidate, ModelInterface.of(rewritten, census=False), checkpoints)
    except IsolationError as exc:
        raise BnlintError(f"{exc}; nothing was written") from None
    except VerifyError as exc:
        raise VerifyError(f"{exc}; nothing was written (the rewrite cannot be verified here: --no-verify writes "
                          "it unverified)") from None


def _error_line(message: str) -> None:
    from bnlint.report.safe_text import printable

    click.echo(f"bnlint: error: {printable(message)}", err=True)


def _report_text(run, quiet: bool, show_all: bool) -> None:
    from bnlint.fix.report import SHOWN_PER_LIST, render_text

    if not quiet:
        click.echo(render_text(run, None if show_all else SHOWN_PER_LIST), nl=False, err=True)


def _report_json(reports: list, single: bool) -> None:
    """One JSON document: the report of the one model, or an array of every model's report."""
    from bnlint.fix.report import REPORT_ROWS, report_dict
    from bnlint.report.json_layout import dumps

    documents = [report if isinstance(report, dict) else report_dict(report) for report in reports]
    click.echo(dumps(documents[0] if single else documents, rows=REPORT_ROWS))


@click.command()
@click.argument("first")
@click.argument("second")
@verification_options
@click.option("--format", "output_format", type=click.Choice(["text", "json"]), default="text", show_default=True)
def verify(first, second, dims, inputs_npz, rtol, atol, seed, verify_timeout, verify_memory, max_model_size,
           output_format):
    """Check that SECOND computes the same outputs as FIRST (e.g. another tool's rewrite of it).

    Exit 0 equivalent, 1 different, 2 cannot run."""
    import json

    from bnlint.config import load_config
    from bnlint.onnx_loader import model_size_limit
    from bnlint.verify import compare_isolated, describe

    try:
        size_limit = _size(max_model_size, "--max-model-size") or load_config(None).max_model_size
        options = _verify_options(dims, inputs_npz, rtol, atol, seed, verify_timeout, verify_memory, size_limit)
        with model_size_limit(size_limit):
            result = compare_isolated(first, second, options, label=f"{second}: verification against {first}",
                                      cli_hints=True)
    except BnlintError as exc:
        fail(str(exc))
    if output_format == "json":
        click.echo(json.dumps({"first": first, "second": second, **result.to_dict()}, indent=2))
    else:
        click.echo(describe(result))
    sys.exit(EXIT_CLEAN if result.ok else EXIT_FINDINGS)
