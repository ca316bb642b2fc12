"""start_isolated: a child started now and collected later (or cancelled); a helper that dies with the
isolated task that started it; a memory cap shared by a task and its helper."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from bnlint.isolation import IsolationError, run_isolated, share_memory_cap, start_isolated


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
