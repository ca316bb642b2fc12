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
    """One line on stderr and exit 2: the contract for every usage, config and load error."""
    click.echo(f"bnlint: error: {message}", err=True)
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


@cli.command()
@click.argument("paths", nargs=-1, required=True)
@selection_options
@click.option("--fail-on", type=click.Choice(SEVERITIES), default=None,
              help="Lowest severity that makes the exit code 1 [default: warning].")
@click.option("--format", "output_format", type=click.Choice(["full", "concise", "json"]), default=None,
              envvar="BNLINT_OUTPUT_FORMAT", help="Output format [default: full].")
@click.option("-o", "--output-file", type=click.Path(dir_okay=False, writable=True), default=None,
              help="Write findings to this file instead of stdout.")
@click.option("--exit-zero", is_flag=True, help="Exit 0 even when findings are reported (errors still exit 2).")
@click.option("--statistics", is_flag=True, help="Show a count per rule instead of the findings.")
@click.option("-q", "--quiet", is_flag=True, help="Print findings only, no summary.")
@click.option("-v", "--verbose", is_flag=True, help="Log each model and its timing to stderr.")
@click.option("--color", type=click.Choice(["auto", "always", "never"]), default="auto", show_default=True,
              help="Colour the output (auto honours NO_COLOR and terminals).")
def check(paths, select, extend_select, ignore, config_path, fail_on, output_format, output_file, exit_zero,
          statistics, quiet, verbose, color):
    """Lint ONNX models (files or folders of *.onnx) and PyTorch models."""
    from bnlint.lint import LintOptions, run_lint
    from bnlint.report import render, render_statistics, summary_line
    from bnlint.selection import split_codes

    try:
        options = LintOptions.from_cli(
            config_path=config_path,
            select=split_codes(select) or None,
            extend_select=split_codes(extend_select),
            ignore=split_codes(ignore),
            fail_on=Severity(fail_on) if fail_on else None,
        )
        started = time.perf_counter()
        result = run_lint(list(paths), options, progress=(lambda m: log(m)) if verbose else None)
    except BnlintError as exc:
        fail(str(exc))
    for path, message in result.errors:
        click.echo(f"bnlint: error: {path}: {message}", err=True)
    fmt = output_format or "full"
    stream_is_file = output_file is not None
    colored = use_color(color, sys.stdout) and not stream_is_file and fmt != "json"
    if statistics and fmt != "json":
        text = render_statistics(result.findings)
    else:
        text = render(fmt, result.findings, result.errors, color=colored, files=result.models)
    if output_file:
        with open(output_file, "w", encoding="utf-8") as handle:
            handle.write(text)
    else:
        click.echo(text, nl=False, color=colored)
    if verbose:
        log(f"checked {result.models} model(s) in {time.perf_counter() - started:.3f}s")
    log(summary_line(result.findings, result.models, len(result.errors)), quiet=quiet)
    if result.errors:
        sys.exit(EXIT_ERROR)
    failing = [f for f in result.findings if f.severity.rank >= options.config.fail_on.rank]
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
    try:
        cli(prog_name="bnlint")
    except ConfigError as exc:  # pragma: no cover - raised before a command handles it
        fail(str(exc))


if __name__ == "__main__":
    main()
