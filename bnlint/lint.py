"""The lint pipeline behind `bnlint check`: targets -> models -> findings, errors kept per file."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from typing import NamedTuple, Protocol

from bnlint.config import Config, load_config
from bnlint.engine import lint_model
from bnlint.errors import BnlintError, LoadError
from bnlint.findings import Finding, Location, Severity, sort_findings
from bnlint.gcpause import cyclic_gc_paused
from bnlint.ignores import ConfigIgnores, IgnoreEntry
from bnlint.onnx_loader import model_size_limit
from bnlint.registry import known_codes
from bnlint.report.safe_text import printable
from bnlint.selection import Selection, expand
from bnlint.parallel import default_jobs, ordered_map
from bnlint.sources import display_path, expand_targets, load_target
from bnlint.torch_frontend.options import TorchOptions


@dataclass(frozen=True)
class LintOptions:
    config: Config
    pictures: bool = False  # cut a Mermaid picture of each finding's subgraph (Markdown output)
    torch: TorchOptions = field(default_factory=TorchOptions)  # inputs, --trust, --source-root
    max_model_size: int | None = None  # bytes; None: the loader's default. Travels to worker processes.

    @classmethod
    def from_cli(cls, *, config_path=None, select=None, extend_select=(), ignore=(), fail_on: Severity | None = None,
                 torch_options: TorchOptions | None = None):
        config = load_config(config_path)
        config = config.override(
            select=tuple(select) if select else None,
            extend_select=config.extend_select + tuple(extend_select),
            ignore=config.ignore + tuple(ignore),
            fail_on=fail_on,
        )
        options = cls(config, torch=torch_options or TorchOptions())
        options.codes_for("")  # validate selectors early: a typo is a usage error, not a silent no-op
        return options

    def codes_for(self, path: str) -> set[str]:
        known = known_codes()
        chosen = Selection(self.config.select, self.config.extend_select, self.config.ignore).codes(known)
        return chosen - expand(self.config.ignored_for(path), known) if path else chosen

    def rule_codes(self) -> set[str]:
        """The rules that run on every model (per-file/per-node ignores filter findings afterwards)."""
        return self.codes_for("")

    @cached_property
    def ignores(self) -> ConfigIgnores:
        return ConfigIgnores(self.config, known_codes())


class LintResult:
    """What run_lint found, filled in as the targets finish."""

    def __init__(self):
        self.findings: list[Finding] = []
        self.errors: list[tuple[str, str]] = []
        self.models = 0
        self.checked: list[str] = []  # display paths of the models read, in order
        self.pictures: dict = {}  # picture_key(finding) -> Picture, with LintOptions.pictures
        self.unused_ignores: list[IgnoreEntry] = []


class LintObserver(Protocol):
    """Told how many targets there are and when each is done (progress bars)."""

    def started(self, total: int) -> None: ...

    def finished(self, outcome: TargetResult) -> None: ...


class ObserverGroup:
    """Several LintObservers as one (a progress bar and a report rendered as results arrive)."""

    def __init__(self, *observers: LintObserver | None):
        self.observers = [observer for observer in observers if observer is not None]

    def started(self, total: int) -> None:
        for observer in self.observers:
            observer.started(total)

    def finished(self, outcome: TargetResult) -> None:
        for observer in self.observers:
            observer.finished(outcome)


class TargetResult(NamedTuple):
    """The outcome for one target: its findings, or the reason it could not be read."""

    target: str
    shown: str
    findings: tuple[Finding, ...] = ()
    error: str | None = None
    pictures: tuple = ()
    ignores_used: frozenset[IgnoreEntry] = frozenset()
    ignores_applied: frozenset[IgnoreEntry] = frozenset()

    def __reduce__(self):
        """Pickled (worker -> parent) with each finding and its location as plain tuples, which pickle
        writes and reads without a Python call per object: 1.0 + 0.9 us per finding instead of 2.8 + 1.1
        (1,000 ResNet-sized models give 116,000 findings). Rebuilt by _target_result_from_rows."""
        rows = [(f[0], f[1], f[2], f[3], tuple(f[4]), f[5], f[6], f[7], f[8]) for f in self.findings]
        return _target_result_from_rows, (tuple(self[:2]), rows, tuple(self[3:]))


def _target_result_from_rows(head: tuple, rows: list, tail: tuple) -> TargetResult:
    new = tuple.__new__  # the named tuples' own __new__ is a Python function
    findings = tuple([new(Finding, (r[0], r[1], r[2], r[3], new(Location, r[4]), r[5], r[6], r[7], r[8]))
                      for r in rows])
    return new(TargetResult, (*head, findings, *tail))


def lint_target(target: str, options: LintOptions) -> TargetResult:
    """Load and lint one target; a load error is returned, not raised, so other files still run."""
    shown = display_path(target)
    try:
        with model_size_limit(options.max_model_size):  # applied here: a fresh worker inherits no state
            model = load_target(target, options.torch)
    except LoadError as exc:
        return TargetResult(target, shown, error=exc.problem)
    with cyclic_gc_paused():
        findings = lint_model(model, codes=options.rule_codes(),
                              severity_overrides=options.config.severity_overrides(), display_path=shown)
        if model.info.exporter_folded or model.info.provenance:  # facts only PyTorch front ends record
            findings = _with_source_facts(model, findings, options, shown)
        ignored = options.ignores.apply(findings, target, model)
        findings = ignored.kept
        pictures = ()
        if options.pictures:
            from bnlint.pictures import pictures_for
            from bnlint.report.markdown import MAX_DETAILED

            # The report details its first MAX_DETAILED findings, which are among the first MAX_DETAILED of
            # their file (each file's findings come in report order): only those get a picture.
            pictures = pictures_for(model, findings[:MAX_DETAILED])
        model.release()
    return TargetResult(target, shown, findings=tuple(findings), pictures=pictures,
                        ignores_used=ignored.used, ignores_applied=ignored.applied)


def _with_source_facts(model, findings: list[Finding], options: LintOptions, shown: str) -> list[Finding]:
    """BN010 for layers torch's exporter folded a BN into, then `# bnlint: ignore[...]` comments applied
    (imported here: plain ONNX models never need them)."""
    from bnlint.suppression import apply_source_suppressions
    from bnlint.torch_frontend.folded import exporter_folded_findings

    overrides = options.config.severity_overrides()
    findings = findings + exporter_folded_findings(model, codes=options.rule_codes(), display_path=shown,
                                                   severity_overrides=overrides)
    return apply_source_suppressions(model, findings, codes=options.rule_codes(), display_path=shown,
                                     severity_overrides=overrides, source_root=options.torch.root)


def _in_report_order(per_file: list[tuple[str, tuple[Finding, ...]]]) -> list[Finding]:
    """All findings sorted as sort_findings would: each file's are sorted already and every finding of a
    file carries its shown path first in the sort key, so ordering the files is enough (16,000 findings of
    1,000 models are not re-keyed one by one). Two targets shown under one path get the full sort."""
    paths = [path for path, _ in per_file]
    if len(set(paths)) != len(paths):
        return sort_findings(finding for _, findings in per_file for finding in findings)
    per_file = sorted(per_file, key=lambda entry: entry[0])
    return [finding for _, findings in per_file for finding in findings]


def failed_target(target: str, exc: BaseException) -> TargetResult:
    """A target whose linting raised: reported as that file's error so the other files still run."""
    if isinstance(exc, LoadError):
        message = exc.problem if exc.path == target else str(exc)
    elif isinstance(exc, BnlintError):
        message = str(exc)
    else:
        message = f"internal error ({type(exc).__name__}: {exc}); please report this as a bnlint bug"
    return TargetResult(target, display_path(target), error=message)


# Starting worker processes costs ~70 ms; below this much work one process finishes first.
POOL_MIN_FILES = 8
POOL_MIN_BYTES = 2 * 2**20


def auto_jobs(files: list[str]) -> int:
    """Workers for `--jobs` left to bnlint: one per CPU, except for a few small ONNX files (the pre-commit
    case), where the pool would cost more than it saves. Other targets (PyTorch factories and archives)
    are slow to load, so they always get the pool."""
    cpus = default_jobs()
    if cpus == 1 or len(files) < 2:
        return 1
    if len(files) >= POOL_MIN_FILES or not all(name.endswith(".onnx") for name in files):
        return cpus
    total = 0
    for name in files:
        try:
            total += os.path.getsize(name)
        except OSError:
            pass  # reported by the loader
    return cpus if total >= POOL_MIN_BYTES else 1


def run_lint(targets: list[str], options: LintOptions, progress: Callable[[str], None] | None = None, *,
             jobs: int | None = 1, observer: LintObserver | None = None) -> LintResult:
    """Lint every target (`jobs` processes in parallel, None: auto_jobs); results in target order whatever
    `jobs` is."""
    config = options.config
    files = expand_targets(targets, exclude=config.exclude, root=config.root, force_exclude=config.force_exclude)
    if jobs is None:
        jobs = auto_jobs(files)
    if observer:
        observer.started(len(files))

    def done(outcome: TargetResult) -> None:
        if progress and outcome.error is None:
            progress(printable(f"{outcome.shown}: {len(outcome.findings)} finding(s)"))
        if observer:
            observer.finished(outcome)

    result = LintResult()
    used: set[IgnoreEntry] = set()
    applied: set[IgnoreEntry] = set()
    per_file: list[tuple[str, tuple[Finding, ...]]] = []
    for outcome in ordered_map(lint_target, files, (options,), jobs=jobs, on_done=done, on_error=failed_target):
        if outcome.error is not None:
            result.errors.append((outcome.shown, outcome.error))
            continue
        result.models += 1
        result.checked.append(outcome.shown)
        per_file.append((outcome.shown, outcome.findings))
        result.pictures.update(outcome.pictures)
        used |= outcome.ignores_used
        applied |= outcome.ignores_applied
    result.findings = _in_report_order(per_file)
    result.unused_ignores = options.ignores.unused(used, applied, options.rule_codes())
    return result

