"""The progress bar shows file names from the disk: untrusted text that must not drive the terminal."""

import io

from bnlint.lint import TargetResult
from bnlint.progress import ProgressBar, wants_progress


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_bar_escapes_control_characters_and_ignores_markup_in_file_names():
    stream = FakeTerminal()
    bar = ProgressBar(stream)
    bar.started(2)
    bar.finished(TargetResult("evil", "models/\x1b[2Jx[bold red]y[/].onnx"))
    shown = bar._progress.tasks[0].fields["current"]
    assert shown == "models/\\x1b[2Jx[bold red]y[/].onnx"
    assert "\x1b[2J" not in stream.getvalue()
    assert "[bold red]y[/].onnx" in stream.getvalue()  # printed literally, not as markup
    bar.close()


def test_no_bar_for_pipes_or_quiet():
    assert not wants_progress(io.StringIO(), quiet=False)
    assert not wants_progress(FakeTerminal(), quiet=True)
