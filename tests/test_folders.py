"""Folders at scale: parallel lint in a stable order, exclude globs, per-file load errors, progress bar."""

from __future__ import annotations

import json
import os
import pty
import subprocess
import sys
import threading
import time
from pathlib import Path

import onnx
import pytest
from conftest import parse

from bnlint.errors import BnlintError
from bnlint.excludes import ExcludeMatcher
from bnlint.parallel import ordered_map
from bnlint.sources import expand_targets

HEADER = """<ir_version: 8, opset_import: ["" : 15]>
g (float[1, 2, 4, 4] x) => (float[1, 2, 4, 4] y)
<float[2, 2, 1, 1] w = {1.0, 0.5, -0.5, 1.0}, float[2] s = {1.0, 1.0}, float[2] b = {0.0, 0.0},
 float[2] m = {0.0, 0.0}, float[2] v = {1.0, 1.0}>
"""
VARIANTS = [  # small models with different findings, so order mistakes would show
    HEADER + "{ [conv] c = Conv (x, w)  [bn] y = BatchNormalization (c, s, b, m, v) }",
    HEADER + "{ [relu] r = Relu (x)  [bn] y = BatchNormalization (r, s, b, m, v) }",
    HEADER + "{ [drop] d = Dropout (x)  [bn] y = BatchNormalization (d, s, b, m, v) }",
    HEADER + "{ [neg] y = Neg (x) }",
    HEADER + "{ [bn] y, rm, rv = BatchNormalization <training_mode = 1> (x, s, b, m, v) }",
]


@pytest.fixture(autouse=True)
def isolated_cwd(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("BNLINT_OUTPUT_FORMAT", raising=False)


def write_models(folder: Path, count: int) -> None:
    protos = [parse(text).SerializeToString() for text in VARIANTS]
    for i in range(count):
        target = folder / f"group{i % 7}" / f"m{i:03d}.onnx"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(protos[i % len(protos)])


def test_two_hundred_models_same_findings_same_order_with_two_jobs(run_cli, tmp_path):
    write_models(tmp_path / "models", 200)
    serial = run_cli("check", "models", "--jobs", "1", "--format", "json-lines")
    parallel = run_cli("check", "models", "--jobs", "2", "--format", "json-lines")
    assert serial.exit_code == parallel.exit_code == 1
    assert parallel.stdout == serial.stdout
    records = [json.loads(line) for line in serial.stdout.splitlines()]
    assert len(records) == 200  # per 5 models: BN004, BN001, BN002 + BN005, nothing, BN006
    files = [r["location"]["file"] for r in records]
    assert files == sorted(files)
    assert "in 200 models" in parallel.stderr


def test_findings_of_many_files_come_in_sort_order_whatever_the_argument_order(tmp_path):
    """run_lint orders whole files instead of re-sorting every finding: the result must equal the full sort,
    for files named in any order, and for two names of one file (a symlink) too."""
    from bnlint.findings import sort_findings
    from bnlint.lint import LintOptions, run_lint

    write_models(tmp_path / "models", 14)
    names = sorted(str(p.relative_to(tmp_path)) for p in (tmp_path / "models").rglob("*.onnx"))
    (tmp_path / "alias.onnx").symlink_to(tmp_path / "models" / "group0" / "m000.onnx")
    options = LintOptions.from_cli()
    for targets in (names[::-1], names[1::2] + names[::2], ["alias.onnx", *names[:3]]):
        result = run_lint(targets, options)
        assert result.findings and result.findings == sort_findings(result.findings)


def test_parallel_output_is_identical_in_every_format(run_cli, tmp_path):
    write_models(tmp_path / "models", 12)
    for fmt in ("full", "sarif", "junit", "markdown"):
        one = run_cli("check", "models", "--jobs", "1", "--format", fmt)
        two = run_cli("check", "models", "--jobs", "2", "--format", fmt)
        assert (one.stdout, one.exit_code) == (two.stdout, two.exit_code), fmt


def test_a_broken_file_is_reported_and_the_others_still_run(run_cli, tmp_path):
    write_models(tmp_path / "models", 10)
    (tmp_path / "models" / "group0" / "broken.onnx").write_bytes(b"version https://git-lfs.github.com/spec/v1\n")
    (tmp_path / "models" / "group3" / "empty.onnx").write_bytes(b"")
    result = run_cli("check", "models", "--jobs", "2", "--format", "concise")
    assert result.exit_code == 2
    errors = [line for line in result.stderr.splitlines() if line.startswith("bnlint: error:")]
    assert [line.split(": ")[2] for line in errors] == ["models/group0/broken.onnx", "models/group3/empty.onnx"]
    assert "Git LFS pointer" in errors[0] and "empty" in errors[1]
    assert len(result.stdout.splitlines()) == 10  # the findings of the 10 readable models
    assert "in 10 models" in result.stderr and "2 files could not be read" in result.stderr


def _boom(item, factor):
    if item == 3:
        raise ValueError("three is bad")
    time.sleep(0.05 * (5 - item))  # later items finish first
    return item * factor


def _caught(item, exc):
    return f"error {item}: {exc}"


def test_ordered_map_keeps_item_order_and_isolates_failures():
    done = []
    results = ordered_map(_boom, [0, 1, 2, 3, 4], (10,), jobs=2, on_done=done.append, on_error=_caught)
    assert results == [0, 10, 20, "error 3: three is bad", 40]
    assert sorted(map(str, done)) == sorted(map(str, results))
    assert ordered_map(_boom, [1, 3], (2,), jobs=1, on_error=_caught) == [2, "error 3: three is bad"]


def test_a_target_result_survives_the_trip_from_a_worker_whole():
    """TargetResult pickles its findings as plain tuples (fast); every field of every record comes back,
    with its type (a field added to Finding or Location without updating the rows would be lost here)."""
    import pickle

    from bnlint.findings import CitationRef, Finding, Location, Severity
    from bnlint.lint import TargetResult

    location = Location("m.onnx", "main", "bn1", "BatchNormalization", 3, "net.bn1", "BatchNorm2d", "net.py", 12)
    citation = CitationRef("Ioffe & Szegedy 2015", "§3", "https://arxiv.org/abs/1502.03167", "for", "claim")
    finding = Finding("BN003", "bias-before-bn", Severity.WARNING, "message", location, ("conv1",), True,
                      ("redundancy",), (citation,))
    result = TargetResult("m.onnx", "m.onnx", findings=(finding, finding._replace(code="BN004")), error=None,
                          pictures=(("k", "picture"),))
    back = pickle.loads(pickle.dumps(result))
    assert back == result and len(Finding._fields) == 9 and len(Location._fields) == 9
    assert type(back) is TargetResult and type(back.findings[1]) is Finding
    assert type(back.findings[0].location) is Location and back.findings[0].severity is Severity.WARNING
    assert type(back.findings[0].citations[0]) is CitationRef


def _dies_on_three(item):
    if item == 3:
        os._exit(9)  # as the kernel's OOM killer would end it: no exception, no goodbye
    time.sleep(0.01)
    return item * 2


@pytest.mark.parametrize("threads", [False, True], ids=["fork", "forkserver"])
def test_a_worker_that_dies_fails_only_the_file_it_was_linting(threads):
    """The batch queued behind the dead worker's goes back to the queue and a new worker takes its place."""
    from bnlint.parallel import WORKER_DIED

    stop = threading.Event()
    helper = threading.Thread(target=stop.wait)
    if threads:  # a thread in this process: workers come from the fork server
        helper.start()
    try:
        results = ordered_map(_dies_on_three, list(range(12)), jobs=2, on_error=_caught)
    finally:
        stop.set()
        if threads:
            helper.join()
    assert results == [0, 2, 4, f"error 3: {WORKER_DIED}", *(i * 2 for i in range(4, 12))]


def _slow(item):
    time.sleep(0.2)
    return item


def test_an_interrupted_pool_leaves_no_worker_behind():
    """An exception in the collecting process (Ctrl-C arrives the same way) stops and reaps the workers."""
    import multiprocessing

    def interrupt(result):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        ordered_map(_slow, list(range(40)), jobs=2, on_done=interrupt, on_error=_caught)
    assert multiprocessing.active_children() == []


def _collector_on(item):
    import gc

    return gc.isenabled()


def test_ordered_map_pauses_the_collector_only_in_the_collecting_parent():
    """The parent unpickles results with the cyclic collector paused; workers run with it on, and it is
    on again afterwards."""
    import gc

    seen_in_parent = []
    results = ordered_map(_collector_on, list(range(6)), jobs=2,
                          on_done=lambda _: seen_in_parent.append(gc.isenabled()), on_error=_caught)
    assert results == [True] * 6
    assert seen_in_parent == [False] * 6
    assert gc.isenabled()


def test_ordered_map_avoids_fork_when_the_parent_runs_threads():
    from bnlint.parallel import _context

    stop = threading.Event()
    helper = threading.Thread(target=stop.wait)
    helper.start()
    try:
        assert _context().get_start_method() == "forkserver"
        assert ordered_map(_boom, [0, 1, 3], (3,), jobs=2, on_error=_caught) == [0, 3, "error 3: three is bad"]
    finally:
        stop.set()
        helper.join()


def test_internal_errors_become_that_files_error(monkeypatch, tmp_path):
    from bnlint import lint
    from bnlint.config import Config

    def explode(model, **kwargs):
        raise KeyError("surprise")

    onnx.save(parse(VARIANTS[0]), tmp_path / "a.onnx")
    monkeypatch.setattr(lint, "lint_model", explode)
    result = lint.run_lint([str(tmp_path / "a.onnx")], lint.LintOptions(Config(root=tmp_path)), jobs=1)
    [(path, message)] = result.errors
    assert path == "a.onnx" and message.startswith("internal error (KeyError: 'surprise')")
    outcome = lint.failed_target("x.onnx", BnlintError("x.onnx: broken"))
    assert outcome.error == "x.onnx: broken"


# -- exclude ----------------------------------------------------------------------------------------------

def touch(root: Path, *names: str) -> None:
    for name in names:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")


def test_exclude_patterns_follow_gitignore_rules(tmp_path):
    touch(tmp_path, "a.onnx", "legacy/b.onnx", "src/legacy/c.onnx", "src/keep/d.onnx", "src/keep/d_fp16.onnx",
          "deep/x/y/e.onnx", "only/f.onnx", "sub/only/g.onnx", "venv/lib/h.onnx", ".hidden/i.onnx",
          "build/j.onnx", "build/keep.onnx")
    found = expand_targets(["."], exclude=["legacy/", "*_fp16.onnx", "deep/**/e.onnx", "/only", "build/*",
                                           "!build/keep.onnx"], root=tmp_path)
    assert sorted(Path(p).as_posix().removeprefix("./") for p in found) == [
        "a.onnx", "build/keep.onnx", "src/keep/d.onnx", "sub/only/g.onnx"]


def test_explicit_files_are_excluded_only_with_force_exclude(tmp_path):
    touch(tmp_path, "legacy/b.onnx")
    assert expand_targets(["legacy/b.onnx"], exclude=["legacy/"], root=tmp_path) == ["legacy/b.onnx"]
    assert expand_targets(["legacy/b.onnx"], exclude=["legacy/"], root=tmp_path, force_exclude=True) == []
    assert expand_targets(["legacy"], exclude=["legacy/"], root=tmp_path) == [os.path.join("legacy", "b.onnx")]
    assert expand_targets(["legacy"], exclude=["legacy/"], root=tmp_path, force_exclude=True) == []


def test_exclude_matcher_details(tmp_path):
    matcher = ExcludeMatcher(["*.tmp.onnx", "a/**", "# comment", "", "[ab]?.onnx", "\\!x.onnx"], tmp_path)
    assert matcher.excludes(str(tmp_path / "q" / "m.tmp.onnx"), is_dir=False)
    assert matcher.excludes(str(tmp_path / "a" / "z.onnx"), is_dir=False)
    assert matcher.excludes(str(tmp_path / "b1.onnx"), is_dir=False)
    assert not matcher.excludes(str(tmp_path / "c1.onnx"), is_dir=False)
    assert matcher.excludes(str(tmp_path / "!x.onnx"), is_dir=False)
    assert matcher.excludes_with_parents(str(tmp_path / "a" / "deep" / "z.onnx"))
    outside = ExcludeMatcher(["/anchored.onnx", "loose.onnx"], tmp_path / "project")
    assert not outside.excludes(str(tmp_path / "anchored.onnx"), is_dir=False)
    assert outside.excludes(str(tmp_path / "loose.onnx"), is_dir=False)


def test_exclude_matcher_resolves_symlinked_folders_and_files(tmp_path):
    """Paths reached through a symlink are matched where they really are: a linked folder once for all
    its files, a linked file on its own."""
    project = tmp_path / "project"
    (project / "vendor").mkdir(parents=True)
    (tmp_path / "elsewhere").mkdir()
    (project / "vendor" / "m.onnx").write_bytes(b"")
    (tmp_path / "elsewhere" / "link").symlink_to(project / "vendor")
    (tmp_path / "elsewhere" / "file.onnx").symlink_to(project / "vendor" / "m.onnx")
    (tmp_path / "elsewhere" / "plain.onnx").write_bytes(b"")
    matcher = ExcludeMatcher(["/vendor/"], project)
    for _ in range(2):  # the second round answers from the folder cache
        assert matcher.excludes_with_parents(str(tmp_path / "elsewhere" / "link" / "m.onnx"))
        assert matcher.excludes_with_parents(str(tmp_path / "elsewhere" / "file.onnx"))
        assert not matcher.excludes_with_parents(str(tmp_path / "elsewhere" / "plain.onnx"))


def test_config_exclude_applies_to_folder_scans(run_cli, tmp_path):
    write_models(tmp_path / "models", 5)
    (tmp_path / "bnlint.toml").write_text('exclude = ["group1/", "m004.onnx"]\n')
    result = run_cli("check", "models", "--format", "json-lines")
    files = {json.loads(line)["location"]["file"] for line in result.stdout.splitlines()}
    assert files == {"models/group0/m000.onnx", "models/group2/m002.onnx"}  # m003 is clean
    assert "in 3 models" in result.stderr


# -- progress bar -----------------------------------------------------------------------------------------

def run_with_tty_stderr(args: list[str], cwd: Path) -> tuple[int, str, str]:
    """Run bnlint with stderr on a pseudo-terminal and stdout on a pipe."""
    controller, terminal = pty.openpty()
    env = {**os.environ, "TERM": "xterm", "COLUMNS": "120"}
    env.pop("NO_COLOR", None)
    process = subprocess.Popen([sys.executable, "-m", "bnlint", *args], cwd=cwd, stdout=subprocess.PIPE,
                               stderr=terminal, env=env)
    os.close(terminal)
    stdout_chunks: list[bytes] = []
    reader = threading.Thread(target=lambda: stdout_chunks.append(process.stdout.read()))
    reader.start()  # drain stdout meanwhile, or a large report would block the child on a full pipe
    chunks = []
    while True:
        try:
            data = os.read(controller, 65536)
        except OSError:  # EIO once the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    reader.join(timeout=60)
    stdout = b"".join(stdout_chunks).decode()
    process.wait(timeout=60)
    os.close(controller)
    return process.returncode, stdout, b"".join(chunks).decode(errors="replace")


def test_progress_bar_on_a_terminal_never_reaches_stdout(tmp_path):
    write_models(tmp_path / "models", 30)
    code, stdout, terminal = run_with_tty_stderr(["check", "models", "--format", "json"], tmp_path)
    assert code == 1
    assert json.loads(stdout)["summary"]["models"] == 30  # stdout is pure JSON
    assert "checking models" in terminal and "30/30" in terminal
    assert "checking models" not in stdout


def test_no_progress_bar_when_stderr_is_not_a_terminal_or_quiet(tmp_path, run_cli):
    write_models(tmp_path / "models", 6)
    piped = subprocess.run([sys.executable, "-m", "bnlint", "check", "models"], cwd=tmp_path, capture_output=True,
                           text=True, timeout=60)
    assert "checking models" not in piped.stderr and "\x1b[" not in piped.stderr
    code, _, terminal = run_with_tty_stderr(["check", "models", "--quiet"], tmp_path)
    assert code == 1 and "checking models" not in terminal


def test_display_path_resolves_folders_and_links(tmp_path, monkeypatch):
    from bnlint.sources import display_path

    (tmp_path / "work" / "models").mkdir(parents=True)
    (tmp_path / "other").mkdir()
    (tmp_path / "work" / "models" / "m.onnx").write_bytes(b"")
    (tmp_path / "work" / "via").symlink_to(tmp_path / "work" / "models")
    (tmp_path / "work" / "link.onnx").symlink_to(tmp_path / "work" / "models" / "m.onnx")
    (tmp_path / "other" / "o.onnx").write_bytes(b"")
    monkeypatch.chdir(tmp_path / "work")
    for _ in range(2):  # the second round answers from the folder cache
        assert display_path("m.onnx") == "m.onnx"
        assert display_path("models/m.onnx") == "models/m.onnx"
        assert display_path(str(tmp_path / "work" / "models" / "m.onnx")) == "models/m.onnx"
        assert display_path("via/m.onnx") == "models/m.onnx"
        assert display_path("link.onnx") == "models/m.onnx"
        assert display_path("../other/o.onnx") == "../other/o.onnx"
    monkeypatch.chdir(tmp_path / "work" / "models")  # the cache is per working directory
    assert display_path("m.onnx") == "m.onnx"
    assert display_path(str(tmp_path / "work" / "link.onnx")) == "m.onnx"


def test_auto_jobs_keeps_a_few_small_onnx_files_in_one_process(tmp_path, monkeypatch):
    from bnlint import lint

    monkeypatch.setattr(lint, "default_jobs", lambda: 4)
    small = []
    for i in range(3):
        path = tmp_path / f"m{i}.onnx"
        path.write_bytes(b"x" * 1000)
        small.append(str(path))
    assert lint.auto_jobs(small[:1]) == 1  # one model: never a pool
    assert lint.auto_jobs(small) == 1  # a few small files: the pool would cost more than it saves
    big = tmp_path / "big.onnx"
    big.write_bytes(b"x" * lint.POOL_MIN_BYTES)
    assert lint.auto_jobs([*small, str(big)]) == 4  # enough bytes to parse
    assert lint.auto_jobs([*small, "pkg.models:make_net"]) == 4  # PyTorch front ends are slow to load
    many = [str(tmp_path / f"n{i}.onnx") for i in range(lint.POOL_MIN_FILES)]
    assert lint.auto_jobs(many) == 4  # many files: the pool wins even when each is tiny
    monkeypatch.setattr(lint, "default_jobs", lambda: 1)
    assert lint.auto_jobs(many) == 1


def test_check_without_jobs_uses_auto_jobs(tmp_path, monkeypatch):
    from bnlint import lint

    seen = []
    real = lint.ordered_map
    monkeypatch.setattr(lint, "ordered_map", lambda *a, **k: seen.append(k["jobs"]) or real(*a, **k))
    monkeypatch.setattr(lint, "auto_jobs", lambda files: 1 if len(files) < 3 else 2)
    options = lint.LintOptions.from_cli()
    lint.run_lint([str(tmp_path)], options, jobs=None)
    lint.run_lint([str(tmp_path)], options, jobs=3)
    assert seen == [1, 3]


def test_the_report_rendered_as_results_arrive_equals_the_one_rendered_at_the_end(run_cli, tmp_path):
    """`check` renders each model's findings as its result comes back (in completion order with --jobs);
    the text must be render_full of all findings in report order, the rule evidence under the first finding
    of each code of the whole report."""
    from bnlint.lint import LintOptions, run_lint
    from bnlint.report.text import render_full

    write_models(tmp_path / "models", 14)
    names = sorted(str(p.relative_to(tmp_path)) for p in (tmp_path / "models").rglob("*.onnx"))
    for targets in (names[::-1], names[1::2] + names[::2]):
        expected = render_full(run_lint(targets, LintOptions.from_cli()).findings)
        for jobs in ("1", "2"):
            result = run_cli("check", *targets, "--jobs", jobs, "--color", "never")
            assert result.stdout == expected
    assert expected.count("   = why: ") == 5  # BN001, BN002, BN004, BN005, BN006 explained once each


def test_the_early_report_gives_way_when_two_results_share_a_path():
    """Two targets shown under one path interleave their findings in the report: FullReport cannot order
    them by path, says so (None), and the caller renders the sorted findings instead."""
    from bnlint.findings import Finding, Location, Severity
    from bnlint.report.text import FullReport, render_full

    def finding(code: str, node: str) -> Finding:
        return Finding(code, "slug", Severity.INFO, f"message about {node}", Location("m.onnx", "main", node, "Relu", 0),
                       (), False, (), ())

    first, second, third = finding("BN001", "a"), finding("BN005", "b"), finding("BN001", "c")
    report = FullReport()
    report.add("z.onnx", [third])
    report.add("m.onnx", [first, second])
    assert report.text() == render_full([first, second, third])
    report.add("m.onnx", [first])
    assert report.text() is None
