"""The bench runs end to end and writes complete, sane results. No timing thresholds: numbers live in bench/."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys

import pytest

from conftest import REPO

BENCH = REPO / "bench"
STATUSES = {"ok", "skipped", "failed", "not available"}
PEERS = ("onnxruntime basic", "onnxoptimizer", "onnxsim", "onnxslim", "onnxscript")


@pytest.fixture
def bench():
    """bench/measure.py and bench/report.py, imported from bench/ and forgotten afterwards (generic names)."""
    before = set(sys.modules)
    sys.path.insert(0, str(BENCH))
    try:
        yield type("Bench", (), {"measure": importlib.import_module("measure"),
                                 "report": importlib.import_module("report")})
    finally:
        sys.path.remove(str(BENCH))
        for name in set(sys.modules) - before:
            if getattr(sys.modules[name], "__file__", "") and str(BENCH) in sys.modules[name].__file__:
                del sys.modules[name]


def assert_timed(cell: dict, runs: int) -> None:
    """An ok cell has 1..runs positive times, a median between min and max, and a positive peak RSS."""
    assert cell["status"] == "ok", cell
    assert 1 <= cell["runs"] <= runs == cell["runs_wanted"]
    assert all(t > 0 for t in cell["times_s"])
    assert cell["min_s"] <= cell["median_s"] <= cell["max_s"]
    assert cell["peak_rss_mb"] > 10  # a Python process with onnx imported


@pytest.mark.slow
def test_quick_bench_writes_complete_results(tmp_path):
    out = tmp_path / "results"
    done = subprocess.run([sys.executable, str(BENCH / "run.py"), "--quick", "--out", str(out),
                           "--cache", str(tmp_path / "cache")], capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((out / "quick.json").read_text())
    assert {"machine", "settings", "models", "scaling", "targets", "folders", "notes"} <= results.keys()

    machine = results["machine"]
    assert machine["cores"] >= 1 and machine["cpu"] and machine["python"].startswith("3.")
    assert machine["packages"]["onnx"] and machine["packages"]["onnxruntime"]
    runs = results["settings"]["runs"]
    assert runs == 3 and results["settings"]["quick"] is True

    assert {"depth-30", "depth-120", "external-small"} <= results["models"].keys()
    for name, model in results["models"].items():
        assert model["nodes"] > 0 and model["bytes"] > 0, name
        inproc, whole = model["check"]["in_process"], model["check"]["whole_process"]
        for cell in (inproc["onnx.load"], inproc["bnlint check"], whole["onnx.load"], whole["bnlint check"]):
            assert_timed(cell, runs)
        assert inproc["bnlint check"]["read_mb"] >= 0
        assert_timed(inproc["check floor: tables + output"], runs)
        if not model["external"]:  # check and onnx.load alternately in one process: one floor time per round
            paired = inproc["bnlint check | onnx.load"]
            assert_timed(paired, runs)
            assert len(paired["extra"]["paired_s"]) == len(paired["times_s"]) and min(paired["extra"]["paired_s"]) > 0
        if model["external"]:
            assert_timed(inproc["onnx.load(graph only)"], runs)
            # lint reads the graph and the BN parameters, not the Conv weights
            assert inproc["bnlint check"]["read_mb"] * 1e6 < model["bytes"] / 2

        fix = model["fix"]
        assert_timed(fix["onnx load+save"], runs)
        assert_timed(fix["bnlint fix --no-verify"], runs)
        own = fix["bnlint fix --no-verify"]["extra"]
        assert own["count"] == 0  # every BN of the Conv+BN+Relu chain folds
        assert 0 <= own["max_abs_error"] < 1e-3 < own["max_abs_output"]
        for peer in PEERS:
            cell = fix[peer]
            assert cell["status"] in STATUSES, (name, peer, cell)
            if cell["status"] == "ok":
                assert_timed(cell, runs)
                assert cell["extra"]["count"] >= 0 and cell["extra"]["max_abs_error"] >= 0
            else:
                assert cell["reason"], (name, peer, cell)
        assert_timed(model["verify"]["2 onnxruntime sessions"], runs)
        assert_timed(model["verify"]["bnlint fix (verify)"], runs)

    formats = results["models"]["depth-30"]["check"]["formats"]  # every output format, on the reference depth
    assert set(formats) == {"concise", "json", "json-lines", "sarif", "github", "gitlab", "junit", "markdown"}
    for cell in formats.values():
        assert_timed(cell, runs)
    assert "formats" not in results["models"]["depth-120"]["check"]

    rows = results["scaling"]
    assert [r["blocks"] for r in rows] == [30, 120]
    for row in rows:
        for key in ("onnx.load", "bnlint check", "onnx load+save", "bnlint fix --no-verify"):
            assert row["ms_per_1k_nodes"][key] > 0

    [folder] = results["folders"]  # the quick plan measures one folder size
    assert folder["models"] == 24 and folder["nodes_each"] == 24
    assert_timed(folder["onnx.load every file"], runs)
    assert_timed(folder["bnlint check --jobs 1"], runs)
    assert_timed(folder["bnlint check --jobs 2"], runs)
    assert_timed(folder["two --jobs 1 processes at once"], runs)  # the machine's ceiling for --jobs 2

    assert len(results["targets"]) >= 9
    for target in results["targets"]:
        assert target.keys() == {"target", "value", "limit", "met"}
        assert target["met"] in (True, False, None)

    text = (out / "quick.txt").read_text()
    assert text in done.stdout
    assert "x load+save" in text and "targets (issue 6)" in text and "machine:" in text
    assert "bnlint check --format F on depth-30" in text
    if importlib.util.find_spec("matplotlib"):
        assert (out / "quick-scaling.png").read_bytes().startswith(b"\x89PNG")
    else:
        assert "no plot: matplotlib missing" in done.stdout


def test_whole_process_cell_reads_peak_rss_of_each_child(bench, tmp_path):
    measure = bench.measure
    allocate = [sys.executable, "-c", "b = bytearray(300 * 2**20); b[::4096] = b'x' * len(b[::4096])"]
    cell = measure.run_whole_process(allocate, runs=2, kill_after=60, cap=60, cwd=tmp_path)
    assert cell.ok and len(cell.times_s) == 2
    assert 300 <= cell.peak_rss_mb < 600


def test_slow_run_is_killed_and_reported_as_too_slow(bench, tmp_path):
    measure = bench.measure
    cell = measure.run_whole_process([sys.executable, "-c", "import time; time.sleep(60)"], runs=3, kill_after=1,
                                     cap=60, cwd=tmp_path)
    assert (cell.status, cell.reason) == ("skipped", "too slow (>1 s)")
    assert cell.describe() == "skipped: too slow (>1 s)"


def test_failing_command_is_a_failed_cell_with_its_last_error_line(bench, tmp_path):
    measure = bench.measure
    code = ("import sys; print('warming up', file=sys.stderr); print('bnlint: error: broken.onnx', file=sys.stderr); "
            "sys.exit(2)")  # exit 1 means findings, which is success for `bnlint check`
    cell = measure.run_whole_process([sys.executable, "-c", code], runs=3, kill_after=30, cap=60, cwd=tmp_path)
    assert (cell.status, cell.reason) == ("failed", "bnlint: error: broken.onnx")


def test_report_renders_ratios_against_the_floor(bench):
    report = bench.report
    cell = {"status": "ok", "reason": "", "times_s": [0.2, 0.3, 0.4], "runs": 3, "runs_wanted": 5,
            "median_s": 0.3, "min_s": 0.2, "max_s": 0.4, "peak_rss_mb": 200.0}
    floor = dict(cell, median_s=0.05, min_s=0.04, max_s=0.06, times_s=[0.05] * 5, runs=5, peak_rss_mb=100.0)
    assert report.timing(cell) == "0.300 s (0.200-0.400) n=3"
    assert report.timing(floor) == "50.0 ms (40.0-60.0)"
    assert report.times(report.ratio(cell, floor)) == "6.00x"
    assert report.ratio(cell, floor, "peak_rss_mb") == 2.0
    assert report.ratio({"status": "skipped", "reason": "too slow (>60 s)"}, floor) is None
    assert report.timing({"status": "skipped", "reason": "too slow (>60 s)"}) == "skipped: too slow (>60 s)"
    paired = dict(cell, extra={"paired_s": [0.1, 0.1, 0.05]})  # rounds: 2x, 3x, 8x
    assert report.paired_ratio(paired) == pytest.approx((3.0, 2.0, 8.0))
    assert report.paired_text(paired) == "3.00x (2.00-8.00)"
    assert report.paired_ratio(cell) is None and report.paired_text(floor) == "-"
