"""start_isolated: a child started now and collected later (or cancelled); a helper that dies with the
isolated task that started it; a memory cap shared by a task and its helper."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from bnlint.isolation import IsolationError, run_isolated, share_memory_cap, start_awaiting, start_isolated


def add(a, b):
    return a + b


def sleep_forever():
    while True:
        time.sleep(1)


def test_started_task_gives_its_result_later():
    task = start_isolated(add, 2, 3, label="sum")
    assert task.result() == 5


def test_cancel_stops_a_running_task():
    task = start_isolated(sleep_forever, label="sleeper")
    assert task.child.is_alive()
    task.cancel()
    assert not task.child.is_alive()


def _start_helper_then_die(pid_file: str) -> None:
    helper = start_isolated(sleep_forever, timeout=None, memory_bytes=None, die_with_parent=True)
    Path(pid_file).write_text(str(helper.child.pid))
    os.kill(os.getpid(), signal.SIGKILL)  # as a timeout kills the task: no cleanup runs here


def _gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return True
    return "\nState:\tZ" in state or "\nState:\tX" in state


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="Linux only (PR_SET_PDEATHSIG)")
def test_a_helper_dies_with_the_task_that_started_it(tmp_path):
    pid_file = tmp_path / "helper.pid"
    with pytest.raises(IsolationError, match="crashed with SIGKILL"):
        run_isolated(_start_helper_then_die, str(pid_file), label="task")
    helper = int(pid_file.read_text())
    deadline = time.monotonic() + 10
    while not _gone(helper) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _gone(helper)


def _share_under_cap():
    import resource

    from bnlint.isolation import _address_space

    before = resource.getrlimit(resource.RLIMIT_AS)[0]
    used = _address_space()
    share = share_memory_cap()
    after = resource.getrlimit(resource.RLIMIT_AS)[0]
    return before, used, share, after


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="Linux only (RLIMIT_AS, /proc)")
def test_a_capped_task_keeps_half_of_its_remaining_budget_and_gives_the_other_half():
    before, used, share, after = run_isolated(_share_under_cap, memory_bytes=1 << 30)
    remaining = before - used
    assert remaining > 0
    assert abs(share - remaining // 2) < 16 << 20  # the address space moves a little while measured
    assert after <= before and abs(after - (before - share)) < 16 << 20


def test_no_cap_no_share():
    import resource

    if resource.getrlimit(resource.RLIMIT_AS)[0] != resource.RLIM_INFINITY:
        pytest.skip("this process runs under an address-space cap")
    assert run_isolated(share_memory_cap, memory_bytes=None) is None


def _write_marker(path: str) -> None:
    Path(path).write_text("prepared")


def _read_marker_then_add(path: str, a, b):
    return Path(path).read_text(), a + b


def test_an_awaiting_child_prepares_before_its_arguments_exist(tmp_path):
    """start_awaiting: the child runs its preparation at once, then waits for feed()."""
    from functools import partial

    marker = tmp_path / "marker"
    waiting = start_awaiting(_read_marker_then_add, prepare=partial(_write_marker, str(marker)), label="adder")
    deadline = time.monotonic() + 10
    while not marker.exists() and time.monotonic() < deadline:  # prepared without any argument
        time.sleep(0.01)
    assert marker.read_text() == "prepared" and waiting.task.child.is_alive()
    assert waiting.feed(str(marker), 2, 3).result() == ("prepared", 5)


def test_an_awaiting_child_reports_its_task_error_and_can_be_cancelled_unfed(tmp_path):
    failing = start_awaiting(_read_marker_then_add, label="reader")
    with pytest.raises(IsolationError, match="reader: failed: FileNotFoundError"):
        failing.feed(str(tmp_path / "missing"), 1, 2).result()
    unfed = start_awaiting(_read_marker_then_add, label="never fed")
    unfed.cancel()
    assert not unfed.task.child.is_alive()


def _planted_rejection(plain, large, path):
    from bnlint.errors import LoadError

    raise LoadError(path, "the ONNX checker rejects the model: planted")


def test_fix_checks_its_output_in_a_checker_started_before_the_rewrite(tmp_path, monkeypatch):
    """A small model's ONNX checker child starts before the rewrite and checks the written model."""
    import onnx
    from click.testing import CliRunner

    from bnlint import safe_io
    from bnlint.cli import cli
    from conftest import FIXTURES

    fed = []
    real = safe_io.start_checker

    def watched():
        waiting = real()
        feed = waiting.feed
        waiting.feed = lambda *args: fed.append(args[2]) or feed(*args)
        return waiting

    monkeypatch.setattr(safe_io, "start_checker", watched)
    model = tmp_path / "m.onnx"
    onnx.save(onnx.load(FIXTURES / "rules" / "BN004.fires.onnx"), model)
    result = CliRunner().invoke(cli, ["fix", str(model), "-o", str(tmp_path / "out.onnx"), "--no-verify"])
    assert result.exit_code == 0, result.output
    assert len(fed) == 1 and fed[0].endswith(".tmp")  # it checked the temporary file's model
    assert (tmp_path / "out.onnx").exists()

    from bnlint import cli_fix

    monkeypatch.setattr(cli_fix, "EARLY_CHECKER_MAX_BYTES", 0)  # larger models: a checker forked after the rewrite
    result = CliRunner().invoke(cli, ["fix", str(model), "-o", str(tmp_path / "late.onnx"), "--no-verify"])
    assert result.exit_code == 0 and len(fed) == 1 and (tmp_path / "late.onnx").exists()
    monkeypatch.setattr(cli_fix, "EARLY_CHECKER_MAX_BYTES", 2 << 20)

    monkeypatch.setattr(safe_io, "_check_skeleton_task", _planted_rejection)
    result = CliRunner().invoke(cli, ["fix", str(model), "-o", str(tmp_path / "rejected.onnx"), "--no-verify"])
    assert result.exit_code == 2 and "planted" in result.output
    assert not (tmp_path / "rejected.onnx").exists() and not list(tmp_path.glob(".rejected*"))
