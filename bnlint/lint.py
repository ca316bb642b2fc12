"""The lint pipeline behind `bnlint check`: targets -> models -> findings, errors kept per file."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from bnlint.config import Config, load_config
from bnlint.engine import lint_model
from bnlint.errors import LoadError
from bnlint.findings import Finding, Severity, sort_findings
from bnlint.registry import all_checks
from bnlint.selection import Selection, expand
from bnlint.sources import display_path, expand_targets, load_target


@dataclass(frozen=True)
class LintOptions:
    config: Config

    @classmethod
    def from_cli(cls, *, config_path=None, select=None, extend_select=(), ignore=(), fail_on: Severity | None = None):
        config = load_config(config_path)
        config = config.override(
            select=tuple(select) if select else None,
            extend_select=config.extend_select + tuple(extend_select),
            ignore=config.ignore + tuple(ignore),
            fail_on=fail_on,
        )
        options = cls(config)
        options.codes_for("")  # validate selectors early: a typo is a usage error, not a silent no-op
        return options

    def codes_for(self, path: str) -> set[str]:
        known = all_checks().keys()
        chosen = Selection(self.config.select, self.config.extend_select, self.config.ignore).codes(known)
        return chosen - expand(self.config.ignored_for(path), known) if path else chosen


@dataclass
class LintResult:
    findings: list[Finding] = field(default_factory=list)
    errors: list[tuple[str, str]] = field(default_factory=list)
    models: int = 0


@dataclass(frozen=True)
class TargetResult:
    """The outcome for one target: its findings, or the reason it could not be read."""

    target: str
    shown: str
    findings: tuple[Finding, ...] = ()
    error: str | None = None


def lint_target(target: str, options: LintOptions) -> TargetResult:
    """Load and lint one target; a load error is returned, not raised, so other files still run."""
    shown = display_path(target)
    try:
        model = load_target(target)
    except LoadError as exc:
        return TargetResult(target, shown, error=exc.problem)
    findings = lint_model(model, codes=options.codes_for(target),
                          severity_overrides=options.config.severity_overrides(), display_path=shown)
    return TargetResult(target, shown, findings=tuple(findings))


def run_lint(targets: list[str], options: LintOptions, progress: Callable[[str], None] | None = None) -> LintResult:
    result = LintResult()
    for outcome in map(lambda t: lint_target(t, options), expand_targets(targets)):
        if outcome.error is not None:
            result.errors.append((outcome.shown, outcome.error))
            continue
        result.models += 1
        if progress:
            progress(f"{outcome.shown}: {len(outcome.findings)} finding(s)")
        result.findings.extend(outcome.findings)
    result.findings = sort_findings(result.findings)
    return result
