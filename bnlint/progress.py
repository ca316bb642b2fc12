"""A progress bar on stderr for folder scans, shown only when stderr is a terminal.

It never touches stdout, so machine-readable output stays clean; it is transient (erased when done) and
skipped for a single model. rich is imported only when a bar is actually drawn.
"""

from __future__ import annotations

import os

from bnlint.report.safe_text import printable


def wants_progress(stream, *, quiet: bool) -> bool:
    """A bar only for an interactive stderr: not in CI logs, pre-commit, pipes or with --quiet."""
    if quiet or os.environ.get("TERM") == "dumb":
        return False
    return bool(getattr(stream, "isatty", lambda: False)())


class ProgressBar:
    """A LintObserver drawing `checking models ━━━━━ 12/200 0:00:03` on `stream`."""

    def __init__(self, stream, *, minimum: int = 2):
        self.stream = stream
        self.minimum = minimum
        self._progress = None
        self._task = None

    def started(self, total: int) -> None:
        if total < self.minimum:
            return
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        console = Console(file=self.stream, stderr=True)
        self._progress = Progress(TextColumn("checking models"), BarColumn(), MofNCompleteColumn(),
                                  TimeElapsedColumn(), TextColumn("{task.fields[current]}", markup=False),
                                  console=console, transient=True, redirect_stdout=False, redirect_stderr=False,
                                  auto_refresh=False)  # no refresh thread: worker processes can still fork
        self._task = self._progress.add_task("lint", total=total, current="")
        self._progress.start()
        self._progress.refresh()

    def finished(self, outcome) -> None:
        if self._progress is not None:
            # a file name is untrusted text: no rich markup, control characters escaped
            self._progress.update(self._task, advance=1, current=printable(outcome.shown), refresh=True)

    def log(self, message: str) -> None:
        """Print a line above the bar (verbose logs), or plainly when no bar is shown."""
        if self._progress is not None:
            self._progress.console.print(message, markup=False, highlight=False)
        else:
            print(message, file=self.stream)

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None

    def __enter__(self) -> ProgressBar:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
