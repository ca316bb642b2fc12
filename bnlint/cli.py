"""The `bnlint` command line: `check` (also the default command) and `rule`.

Findings go to stdout (or --output-file); logs, progress and the summary go to stderr. Exit codes as
ruff: 0 clean, 1 findings at or above --fail-on, 2 usage, configuration or load error.
"""

from __future__ import annotations

import os
import sys
import time

import click

from bnlint import __version__
from bnlint.errors import EXIT_CLEAN, EXIT_ERROR, EXIT_FINDINGS, BnlintError, ConfigError
from bnlint.findings import Severity

SEVERITIES = ("info", "warning", "error")
OUTPUT_FORMATS = ("full", "concise", "json", "json-lines", "sarif", "github", "gitlab", "junit", "markdown")


class DefaultCommandGroup(click.Group):
    """`bnlint model.onnx` means `bnlint check model.onnx`, as `ruff path` once meant `ruff check path`.

    Commands with heavy dependencies live in their own modules and are imported only when invoked, so
    `bnlint check` never imports onnxruntime or torch.
    """

    default_command = "check"
    lazy_commands = {
        "fix": "bnlint.cli_fix:fix",
        "verify": "bnlint.cli_fix:verify",
    }

    def list_commands(self, ctx):
        return sorted({*super().list_commands(ctx), *self.lazy_commands})

    def get_command(self, ctx, name):
        if name in self.lazy_commands and name not in self.commands:
            module_name, attr = self.lazy_commands[name].split(":")
            module = __import__(module_name, fromlist=[attr])
            self.add_command(getattr(module, attr), name)
        return super().get_command(ctx, name)

    def parse_args(self, ctx, args):
        if args and args[0] not in self.list_commands(ctx) and args[0] not in ("--help", "-h", "--version"):
            args = [self.default_command, *args]
        elif not args:
            args = ["--help"]
        return super().parse_args(ctx, args)


def use_color(choice: str, stream) -> bool:
    if choice == "always":
        return True
    if choice == "never" or os.environ.get("NO_COLOR"):
        return False
    return bool(getattr(stream, "isatty", lambda: False)())


def log(message: str, *, quiet: bool = False) -> None:
    if not quiet:
        click.echo(message, err=True)


def fail(message: str) -> None:
    """One line on stderr and exit 2: the contract for every usage, config and load error (control
    characters from file or node names escaped, so the line stays one line and cannot drive the terminal)."""
    from bnlint.report.safe_text import printable

    click.echo(f"bnlint: error: {printable(message)}", err=True)
    sys.exit(EXIT_ERROR)


@click.group(cls=DefaultCommandGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", prog_name="bnlint")
def cli():
    """Lint BatchNormalization and Dropout placement in model graphs, with citations.

    `bnlint PATH...` is short for `bnlint check PATH...`.
    """


def selection_options(function):
    for decorator in reversed([
        click.option("--select", multiple=True, metavar="CODES", help="Rules to enable (codes, prefixes or ALL)."),
        click.option("--extend-select", multiple=True, metavar="CODES", help="Rules to enable in addition."),
        click.option("--ignore", multiple=True, metavar="CODES", help="Rules to disable."),
        click.option("--config", "config_path", type=click.Path(dir_okay=False), default=None,
                     help="Use this config file instead of discovering one."),
    ]):
        function = decorator(function)
    return function


def torch_input_options(function):
    """Options of PyTorch targets (`model.py:build`, TorchScript, .pt2), shared by `check` and `fix`."""
    for decorator in reversed([
        click.option("--input-shape", "input_shapes", multiple=True, metavar="DIMS",
                     help="PyTorch targets: example input shape, e.g. 1,3,224,224 (repeat for several inputs)."),
        click.option("--input-dtype", "input_dtypes", multiple=True, metavar="DTYPE",
                     help="PyTorch targets: dtype of the --input-shape inputs (one for all, or one per input) "
                          "[default: float32]."),
        click.option("--source-root", type=click.Path(file_okay=False), default=None,
                     help="Show Python source paths relative to this folder [default: current directory]."),
        click.option("--trust", is_flag=True,
                     help="Load TorchScript and .pt2 archives, which run code from the file. Only for files you "
                          "trust."),
    ]):
        function = decorator(function)
    return function


@cli.command()
@click.argument("paths", nargs=-1, required=True)
@selection_options
@click.option("--fail-on", type=click.Choice(SEVERITIES), default=None,
              help="Lowest severity that makes the exit code 1 [default: warning].")
@click.option("--format", "output_format", type=click.Choice(OUTPUT_FORMATS), default=None,
              envvar="BNLINT_OUTPUT_FORMAT",
              help="Output format [default: $BNLINT_OUTPUT_FORMAT, else output-format from config, else full].")
@click.option("-o", "--output-file", type=click.Path(dir_okay=False, writable=True), default=None,
              help="Write findings to this file instead of stdout.")
@click.option("--exit-zero", is_flag=True, help="Exit 0 even when findings are reported (errors still exit 2).")
@click.option("--statistics", is_flag=True, help="Show a count per rule instead of the findings.")
@click.option("-q", "--quiet", is_flag=True, help="Print findings only, no summary.")
@click.option("-v", "--verbose", is_flag=True, help="Log each model and its timing to stderr.")
@click.option("--color", type=click.Choice(["auto", "always", "never"]), default="auto", show_default=True,
              help="Colour the output (auto honours NO_COLOR and terminals).")
@click.option("-j", "--jobs", type=click.IntRange(min=1), default=None, metavar="N",
              help="Lint this many models in parallel [default: number of CPUs; one for a few small files].")
@click.option("--baseline", "baseline_path", type=click.Path(dir_okay=False), default=None,
              help="Hide findings recorded in this baseline file; only new ones count toward the exit code.")
@click.option("--write-baseline", "write_baseline_path", type=click.Path(dir_okay=False), default=None,
              help="Record every current finding in this baseline file and exit 0.")
@click.option("--prune-baseline", is_flag=True, help="With --baseline: remove stale entries from the baseline file.")
@torch_input_options
@click.option("--max-model-size", metavar="SIZE", default=None,
              help="Refuse ONNX files larger than SIZE, e.g. 2GiB [default: max-model-size from config, else 16GiB].")
def check(paths, select, extend_select, ignore, config_path, fail_on, output_format, output_file, exit_zero,
          statistics, quiet, verbose, color, jobs, baseline_path, write_baseline_path, prune_baseline,
          input_shapes, input_dtypes, source_root, trust, max_model_size):
    """Lint ONNX models (files or folders of *.onnx) and PyTorch models."""
    from contextlib import nullcontext
    from dataclasses import replace

    from bnlint.gcpause import cyclic_gc_paused, imports_uncollected

    with imports_uncollected():  # onnx and numpy among them
        from bnlint.fingerprints import project_root
        from bnlint.config import parse_size
        from bnlint.lint import LintOptions, ObserverGroup, run_lint
        from bnlint.progress import ProgressBar, wants_progress
        from bnlint.report import render, render_statistics, summary_line
        from bnlint.report.text import FullReport, render_full
        from bnlint.selection import split_codes
        from bnlint.sources import display_path
        from bnlint.torch_frontend.options import TorchOptions

    if write_baseline_path and baseline_path:
        fail("--write-baseline replaces a baseline; do not combine it with --baseline")
    if prune_baseline and not baseline_path:
        fail("--prune-baseline needs --baseline FILE")
    try:
        options = LintOptions.from_cli(
            config_path=config_path,
            select=split_codes(select) or None,
            extend_select=split_codes(extend_select),
            ignore=split_codes(ignore),
            fail_on=Severity(fail_on) if fail_on else None,
            torch_options=TorchOptions.from_cli(input_shapes=input_shapes, input_dtypes=input_dtypes, trust=trust,
                                                source_root=source_root),
        )
        fmt = output_format or options.config.output_format or "full"
        if fmt not in OUTPUT_FORMATS:
            raise ConfigError(f"{options.config.source}: output-format {fmt!r} is not one of "
                              f"{', '.join(OUTPUT_FORMATS)}")
        if fmt == "markdown":
            options = replace(options, pictures=True)
        baseline = None
        if baseline_path:
            from bnlint.baseline import Baseline

            baseline = Baseline.load(baseline_path)
        root = project_root(options.config.source)
        started = time.perf_counter()
        bar = ProgressBar(sys.stderr) if wants_progress(sys.stderr, quiet=quiet) else None
        try:
            size_limit = parse_size(max_model_size) if max_model_size else options.config.max_model_size
        except ValueError as exc:
            raise ConfigError(f"--max-model-size: {exc}") from None
        options = replace(options, max_model_size=size_limit)
        colored = use_color(color, sys.stdout) and output_file is None and fmt in ("full", "concise")
        # The default report is rendered model by model as results arrive (with --jobs, while workers lint
        # the rest), unless the findings shown are not those linted (baseline) or not listed (statistics).
        early = None
        if fmt == "full" and not statistics and baseline is None and not write_baseline_path:
            early = FullReport(color=colored, source_root=options.torch.root)
        with bar or nullcontext():
            say = bar.log if bar else log
            result = run_lint(list(paths), options, progress=say if verbose else None,
                              jobs=jobs, observer=ObserverGroup(bar, early))
    except BnlintError as exc:
        fail(str(exc))
    from bnlint.report.safe_text import printable

    for path, message in result.errors:
        click.echo(f"bnlint: error: {printable(f'{path}: {message}')}", err=True)
    for entry in result.unused_ignores:
        log(f"bnlint: warning: unused {entry.describe()} in {display_path(str(options.config.source))}: "
            "it suppressed no finding", quiet=quiet)
    if write_baseline_path:
        if result.errors:
            fail(f"baseline not written: {len(result.errors)} file(s) could not be read")
        from bnlint.baseline import Baseline

        try:
            Baseline.from_findings(result.findings, root).write(write_baseline_path)
        except BnlintError as exc:
            fail(str(exc))
        log(f"Wrote {len(result.findings)} finding(s) from {result.models} model(s) to {write_baseline_path}.")
        sys.exit(EXIT_CLEAN)
    findings = result.findings
    if baseline is not None:
        match = baseline.match(findings, root, checked_files=result.checked, active_codes=options.rule_codes())
        findings = match.new
    with cyclic_gc_paused():  # reports build many small acyclic objects: collections would only rescan them
        if statistics and fmt in ("full", "concise"):
            text = render_statistics(findings)
        elif fmt == "full":
            text = early.text() if early is not None else None
            if text is None:
                text = render_full(findings, color=colored, source_root=options.torch.root)
        else:
            text = render(fmt, findings, result.errors, color=colored, files=result.models, root=root,
                          checked=result.checked, pictures=result.pictures, source_root=options.torch.root)
    if output_file:
        from bnlint.baseline import write_text_atomic

        try:
            write_text_atomic(output_file, text)
        except BnlintError as exc:
            fail(str(exc))
    else:
        # color=True: never strip. Uncoloured reports hold no escape sequences (names from the model are
        # escaped by `printable`), and click's strip_ansi regex took 14 ms per 100,000 findings.
        click.echo(text, nl=False, color=True)
    if verbose:
        log(f"checked {result.models} model(s) in {time.perf_counter() - started:.3f}s")
    log(summary_line(findings, result.models, len(result.errors)), quiet=quiet)
    if baseline is not None:
        stale = sum(entry.count for entry in match.stale)
        note = f"{match.suppressed} suppressed by baseline, {stale} stale."
        if prune_baseline and stale:
            try:
                baseline.without(match.stale).write(baseline_path)
            except BnlintError as exc:
                fail(str(exc))
            note += f" Pruned {stale} stale entr{'y' if stale == 1 else 'ies'} from {baseline_path}."
        elif stale:
            note += " Remove them with --prune-baseline."
        log(note, quiet=quiet)
        if verbose:
            for entry in match.stale:
                log(f"  stale: {entry.file} {entry.code} {entry.node} (x{entry.count})")
    if result.errors:
        sys.exit(EXIT_ERROR)
    threshold = options.config.fail_on.rank
    failing = any(f.severity.rank >= threshold for f in findings)
    sys.exit(EXIT_FINDINGS if failing and not exit_zero else EXIT_CLEAN)


@cli.command()
@click.argument("code", required=False)
@click.option("--all", "show_all", is_flag=True, help="Document every rule.")
@click.option("--format", "output_format", type=click.Choice(["text", "json"]), default="text", show_default=True)
def rule(code, show_all, output_format):
    """Explain a rule in full: rationale, evidence for and against, citations, fix safety."""
    from bnlint.report.ruledoc_text import render_rule_text, render_rules_json
    from bnlint.ruledocs import all_rule_docs

    docs = all_rule_docs()
    if show_all == bool(code):
        fail("give a rule code (e.g. `bnlint rule BN001`) or --all")
    if show_all:
        chosen = list(docs.values())
    else:
        wanted = code.strip()
        match = docs.get(wanted.upper()) or next((d for d in docs.values() if d.slug == wanted.lower()), None)
        if match is None:
            fail(f"unknown rule {code!r} (known: {', '.join(docs)})")
        chosen = [match]
    if output_format == "json":
        click.echo(render_rules_json(chosen), nl=False)
    else:
        click.echo("\n".join(render_rule_text(doc) for doc in chosen), nl=False)


def main() -> None:
    """The console script (`bnlint`, `python -m bnlint`)."""
    try:
        try:
            cli(prog_name="bnlint")
        except ConfigError as exc:  # pragma: no cover - raised before a command handles it
            fail(str(exc))
    except SystemExit as exc:  # click ends every run this way
        exit_without_teardown(exc.code)
    exit_without_teardown(0)


def exit_without_teardown(code) -> None:
    """Exit as SystemExit(code) would, minus the interpreter's teardown: exit handlers run and the output
    is flushed, then the process ends without freeing every object and module one by one. That teardown
    costs ~30 ms with onnx and numpy loaded (a sixth of checking a small model, the pre-commit case) and
    bnlint needs none of it: its files are closed and its child processes joined before a command
    returns. (mypy ends the same way.)"""
    import atexit

    if code is None:
        status = 0
    elif isinstance(code, int):
        status = code
    else:  # SystemExit("message"): printed, status 1
        print(code, file=sys.stderr)
        status = 1
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe (`bnlint ... | head`) or stream: nothing more to say
            pass
    os._exit(status)


if __name__ == "__main__":
    main()
