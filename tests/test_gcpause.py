"""The collector pauses: while one model is processed, and while a command imports its modules."""

import gc
import subprocess
import sys

from conftest import FIXTURES

from bnlint.gcpause import imports_uncollected


def test_imports_run_uncollected_and_what_they_made_is_frozen():
    assert gc.isenabled()
    frozen_before = gc.get_freeze_count()
    try:
        with imports_uncollected():
            assert not gc.isenabled()
            made = [[k] for k in range(1000)]  # tracked containers, as a module's import creates
        assert gc.isenabled()
        assert gc.get_freeze_count() >= frozen_before + len(made)
    finally:
        gc.unfreeze()


def test_a_paused_collector_stays_paused():
    gc.disable()
    try:
        with imports_uncollected():
            pass
        assert not gc.isenabled()
    finally:
        gc.unfreeze()
        gc.enable()


def test_check_leaves_the_collector_running_with_its_imports_frozen():
    code = ("import atexit, gc, sys\n"
            "atexit.register(lambda: print('collector', gc.isenabled(), gc.get_freeze_count(), flush=True))\n"
            "from bnlint.cli import main\n"
            f"sys.argv = ['bnlint', 'check', {str(FIXTURES / 'example' / 'small_cnn.onnx')!r}, '-q']\n"
            "main()\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 1, result.stderr  # the example has findings
    enabled, frozen = result.stdout.split("collector ")[1].split()
    assert enabled == "True" and int(frozen) > 50_000  # onnx and numpy alone make far more
