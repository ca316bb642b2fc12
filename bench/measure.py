"""Run measurements in child processes: timings, peak RSS (wait4's ru_maxrss of that one child), limits.

A cell is one step on one model. In-process cells run in one child (imports first, then up to N timed
runs; the cell's peak RSS is the child's peak after its first run, i.e. one call); whole-process cells start a fresh child per run and time it from outside. A run slower than
`kill_after` is killed and the cell reads "skipped: too slow"; a cell stops repeating once the next run
would take it past `cap` seconds (always at least one run), and says how many runs it got.
"""

from __future__ import annotations

import json
import os
import selectors
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from report import timing

BENCH = Path(__file__).resolve().parent
WORKER = BENCH / "worker.py"


@dataclass
class Cell:
    """One measurement: status "ok", "skipped", "failed" or "not available", and its numbers when ok."""

    status: str = "ok"
    reason: str = ""
    times_s: list[float] = field(default_factory=list)
    peak_rss_mb: float | None = None
    import_rss_mb: float | None = None
    read_mb: float | None = None
    runs_wanted: int = 0
    extra: dict = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.status == "ok" and bool(self.times_s)

    @property
    def median(self) -> float | None:
        return statistics.median(self.times_s) if self.ok else None

    def to_json(self) -> dict:
        data = asdict(self)
        if self.ok:
            data.update(runs=len(self.times_s), median_s=self.median, min_s=min(self.times_s), max_s=max(self.times_s))
        return data

    def describe(self) -> str:
        """`0.123 s (0.120-0.130)` or the status line (the same text as the tables)."""
        return timing(self.to_json())


def _kill(process: subprocess.Popen) -> None:
    """End the child we started and everything it started (its own process group)."""
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _reap(process: subprocess.Popen) -> float:
    """Wait for our child and return its peak RSS in MB (Linux reports ru_maxrss in KiB)."""
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    return usage.ru_maxrss / 1024


def _last_line(path: str) -> str:
    try:
        lines = [line.strip() for line in Path(path).read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return ""
    return lines[-1][:300] if lines else ""


def run_in_process(step: str, model: Path, out_dir: Path, *, runs: int, kill_after: float, cap: float,
                   external: bool = False, keep_output: bool = False, rewritten: Path | None = None,
                   evaluate: tuple[Path, Path, Path] | None = None, extra_args: tuple[str, ...] = (),
                   start_timeout: float = 180.0, paired: str | None = None) -> Cell:
    """Run a step up to `runs` times in one child (tools.STEPS), or one evaluation (worker.evaluate).
    `paired`: a floor step the child runs alternately with it; its times land in extra["paired_s"]."""
    out_dir.mkdir(parents=True, exist_ok=True)
    if evaluate:
        argv = [sys.executable, str(WORKER), "--evaluate", *map(str, evaluate), *extra_args]
    else:
        argv = [sys.executable, str(WORKER), step, str(model), str(out_dir), "--runs", str(runs), "--cap", str(cap)]
        argv += ["--external"] * external + ["--keep-output"] * keep_output
        if rewritten:
            argv += ["--rewritten", str(rewritten)]
        if paired:
            argv += ["--paired", paired]
    cell = Cell(runs_wanted=runs)
    with tempfile.NamedTemporaryFile("w+", suffix=".stderr", delete=False) as err:
        err_path = err.name
    try:
        with open(err_path, "w") as err:
            process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=err, stdin=subprocess.DEVNULL,
                                       cwd=BENCH, start_new_session=True, text=True, bufsize=1)
        killed = _stream(process, cell, kill_after, start_timeout)
        cell.peak_rss_mb = _reap(process)
        if killed:
            cell.status, cell.reason = "skipped", f"too slow (>{kill_after:.0f} s)"
            cell.times_s = []
        elif cell.status == "ok" and not cell.times_s and not evaluate:
            cell.status, cell.reason = "failed", _last_line(err_path) or f"exit code {process.returncode}"
        elif evaluate and cell.status == "ok" and process.returncode != 0:
            cell.status, cell.reason = "failed", _last_line(err_path) or f"exit code {process.returncode}"
    finally:
        os.unlink(err_path)
    if cell.times_s and cell.extra.get("read_bytes") is not None:
        cell.read_mb = min(cell.extra.pop("read_bytes")) / 1e6
    if cell.times_s and cell.extra.get("rss_after_run_mb"):
        # Peak RSS of one invocation: the child's peak after its first run (imports + one run). The child's
        # peak over all runs is kept too: when it is much higher, the step retains memory between calls.
        cell.extra["peak_rss_all_runs_mb"] = cell.peak_rss_mb
        cell.peak_rss_mb = cell.extra["rss_after_run_mb"][0]
    return cell


def _stream(process: subprocess.Popen, cell: Cell, kill_after: float, start_timeout: float) -> bool:
    """Read the child's JSON lines into `cell`; kill it when one run exceeds `kill_after`. True if killed."""
    selector = selectors.DefaultSelector()
    selector.register(process.stdout, selectors.EVENT_READ)
    deadline = time.monotonic() + start_timeout
    try:
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                _kill(process)
                return True
            if not selector.select(timeout=remaining):
                continue
            line = process.stdout.readline()
            if not line:
                return False
            event = json.loads(line)
            kind = event.pop("event")
            if kind == "ready":
                cell.import_rss_mb = event["rss_mb"]
                cell.extra["import_s"] = event["import_seconds"]
                deadline = time.monotonic() + kill_after
            elif kind == "run":
                cell.times_s.append(event["seconds"])
                cell.extra.setdefault("read_bytes", []).append(event["read_bytes"])
                cell.extra.setdefault("rss_after_run_mb", []).append(event["rss_mb"])
                if "paired_seconds" in event:
                    cell.extra.setdefault("paired_s", []).append(event["paired_seconds"])
                deadline = time.monotonic() + kill_after
            elif kind == "error":
                cell.status, cell.reason = _classify(event["message"])
                cell.times_s = []
            elif kind in ("bn_left", "error_value"):
                cell.extra.update(event)
            elif kind == "done":
                deadline = time.monotonic() + 60
    finally:
        selector.close()
        process.stdout.close()


def _classify(message: str) -> tuple[str, str]:
    if message.startswith("not available"):
        return "not available", message.removeprefix("not available:").strip()
    return "failed", message


def run_whole_process(argv: list[str], *, runs: int, kill_after: float, cap: float, cwd: Path,
                      ok_codes=(0, 1)) -> Cell:
    """Time `argv` as a fresh process `runs` times (stdout to /dev/null); peak RSS is the largest child's."""
    cell = Cell(runs_wanted=runs)
    peak = 0.0
    spent = 0.0
    for index in range(runs):
        with tempfile.TemporaryFile("w+") as err:
            t0 = time.perf_counter()
            process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=err, stdin=subprocess.DEVNULL,
                                       cwd=cwd, start_new_session=True)
            finished = _wait_exit(process, kill_after)
            seconds = time.perf_counter() - t0
            if not finished:
                _kill(process)
            peak = max(peak, _reap(process))
            if not finished:
                return Cell("skipped", f"too slow (>{kill_after:.0f} s)", runs_wanted=runs)
            if process.returncode not in ok_codes:
                err.seek(0)
                lines = [line.strip() for line in err.read().splitlines() if line.strip()]
                return Cell("failed", (lines[-1] if lines else f"exit code {process.returncode}")[:300],
                            runs_wanted=runs)
        cell.times_s.append(seconds)
        spent += seconds
        if index + 1 < runs and spent + seconds > cap:
            break
    cell.peak_rss_mb = peak
    return cell


def _wait_exit(process: subprocess.Popen, timeout: float) -> bool:
    """Wait until the child exits without reaping it (wait4 must collect its rusage); False on timeout."""
    if hasattr(os, "pidfd_open"):
        fd = os.pidfd_open(process.pid)
        try:
            with selectors.DefaultSelector() as selector:
                selector.register(fd, selectors.EVENT_READ)
                return bool(selector.select(timeout=timeout))
        finally:
            os.close(fd)
    deadline = time.monotonic() + timeout  # pragma: no cover - platforms without pidfd
    while time.monotonic() < deadline:
        if os.waitid(os.P_PID, process.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None:
            return True
        time.sleep(0.002)
    return False


def warm_page_cache(paths: list[Path]) -> None:
    """Read files once so the first timed run does not pay for the disk (every tool gets a warm cache)."""
    for path in paths:
        if path.is_file():
            with open(path, "rb") as handle:
                while handle.read(1 << 24):
                    pass
