"""Baselines: write, only new findings fail, stale entries reported and pruned, fingerprints stable."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from bnlint.baseline import Baseline
from bnlint.findings import Finding, Location, Severity

HEADER = """<ir_version: 8, opset_import: ["" : 15]>
g (float[1, 2, 4, 4] x) => (float[1, 2, 4, 4] y{outs})
<float[2] s = {{1.0, 1.0}}, float[2] b = {{0.0, 0.0}}, float[2] m = {{0.0, 0.0}}, float[2] v = {{1.0, 1.0}}>
"""
# Exactly one finding each: BN008 (warning) on `second`, BN006 (error) on `train`; CLEAN has none.
TWO_BN = HEADER.format(outs="") + """{
  [first] t = BatchNormalization (x, s, b, m, v)
  [second] y = BatchNormalization (t, s, b, m, v)
}"""
TWO_BN_SHIFTED = HEADER.format(outs=", float[1, 2, 4, 4] z") + """{
  [side] z = Neg (x)
  [other] w = Abs (x)
  [first] t = BatchNormalization (x, s, b, m, v)
  [second] y = BatchNormalization (t, s, b, m, v)
}"""
TRAINING = HEADER.format(outs="") + """{
  [train] y, rm, rv = BatchNormalization <training_mode = 1> (x, s, b, m, v)
}"""
CLEAN = HEADER.format(outs="") + """{
  [neg] y = Neg (x)
}"""


@pytest.fixture
def repo(tmp_path, monkeypatch, save_text):
    """A project folder (with .git, so it is the root) holding models/a.onnx and models/b.onnx."""
    (tmp_path / ".git").mkdir()
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("BNLINT_OUTPUT_FORMAT", raising=False)
    save_text(TWO_BN, "models/a.onnx")
    save_text(TWO_BN, "models/b.onnx")
    return tmp_path


def entries(path: Path) -> list[dict]:
    return json.loads(path.read_text())["findings"]


def test_round_trip_new_fault_fails_fixed_fault_is_stale_and_pruned(repo, run_cli, save_text):
    written = run_cli("check", "models", "--write-baseline", "baseline.json")
    assert written.exit_code == 0 and written.stdout == ""
    assert "Wrote 2 finding(s) from 2 model(s) to baseline.json" in written.stderr
    assert [(e["file"], e["code"], e["node"], e["count"]) for e in entries(repo / "baseline.json")] == [
        ("models/a.onnx", "BN008", "node:main/second", 1), ("models/b.onnx", "BN008", "node:main/second", 1)]

    accepted = run_cli("check", "models", "--baseline", "baseline.json")
    assert accepted.exit_code == 0 and accepted.stdout == ""
    assert "2 suppressed by baseline, 0 stale." in accepted.stderr

    save_text(TRAINING, "models/c.onnx")  # one new fault
    new = run_cli("check", "models", "--baseline", "baseline.json", "--format", "concise")
    assert new.exit_code == 1
    assert new.stdout.splitlines() == [line for line in new.stdout.splitlines() if "models/c.onnx" in line]
    assert len(new.stdout.splitlines()) == 1 and "BN006" in new.stdout
    assert "2 suppressed by baseline, 0 stale." in new.stderr

    save_text(CLEAN, "models/b.onnx")  # one old fault fixed
    stale = run_cli("check", "models", "--baseline", "baseline.json", "--format", "concise")
    assert stale.exit_code == 1
    assert "1 suppressed by baseline, 1 stale. Remove them with --prune-baseline." in stale.stderr
    assert len(entries(repo / "baseline.json")) == 2  # reporting never rewrites the file

    pruned = run_cli("check", "models", "--baseline", "baseline.json", "--prune-baseline")
    assert "Pruned 1 stale entry from baseline.json." in pruned.stderr
    assert [e["file"] for e in entries(repo / "baseline.json")] == ["models/a.onnx"]
    again = run_cli("check", "models", "--baseline", "baseline.json")
    assert "1 suppressed by baseline, 0 stale." in again.stderr
    assert again.exit_code == 1  # c.onnx is still new
    assert not [p for p in repo.iterdir() if p.name.endswith(".tmp")]


def test_inserting_nodes_does_not_break_the_match(repo, run_cli, save_text):
    run_cli("check", "models", "--write-baseline", "baseline.json")
    save_text(TWO_BN_SHIFTED, "models/a.onnx")  # the BN008 node moves from index 1 to 3
    result = run_cli("check", "models", "--baseline", "baseline.json")
    assert result.exit_code == 0
    assert "2 suppressed by baseline, 0 stale." in result.stderr


def test_paths_are_relative_to_the_project_root_not_the_cwd(repo, run_cli, monkeypatch):
    run_cli("check", "models", "--write-baseline", "baseline.json")
    monkeypatch.chdir(repo / "models")
    result = run_cli("check", ".", "--baseline", "../baseline.json")
    assert result.exit_code == 0
    assert "2 suppressed by baseline, 0 stale." in result.stderr


def test_partial_run_leaves_other_entries_alone(repo, run_cli):
    run_cli("check", "models", "--write-baseline", "baseline.json")
    result = run_cli("check", "models/a.onnx", "--baseline", "baseline.json", "--prune-baseline")
    assert "1 suppressed by baseline, 0 stale." in result.stderr
    assert len(entries(repo / "baseline.json")) == 2
    narrowed = run_cli("check", "models", "--select", "BN006", "--baseline", "baseline.json", "--prune-baseline")
    assert "0 suppressed by baseline, 0 stale." in narrowed.stderr  # BN008 did not run: not stale
    assert len(entries(repo / "baseline.json")) == 2


def test_bad_baseline_usage_is_one_line_and_exit_2(repo, run_cli):
    missing = run_cli("check", "models", "--baseline", "nope.json")
    assert missing.exit_code == 2
    assert missing.stderr == "bnlint: error: nope.json: baseline file not found (create it with --write-baseline)\n"
    (repo / "bad.json").write_text("{not json")
    assert run_cli("check", "models", "--baseline", "bad.json").stderr.startswith("bnlint: error: bad.json: not a ")
    (repo / "other.json").write_text('{"findings": []}')
    assert "not a bnlint baseline" in run_cli("check", "models", "--baseline", "other.json").stderr
    both = run_cli("check", "models", "--baseline", "bad.json", "--write-baseline", "x.json")
    assert both.exit_code == 2 and not (repo / "x.json").exists()
    assert run_cli("check", "models", "--prune-baseline").exit_code == 2


def test_no_baseline_is_written_when_a_model_cannot_be_read(repo, run_cli):
    (repo / "models" / "broken.onnx").write_bytes(b"garbage")
    result = run_cli("check", "models", "--write-baseline", "baseline.json")
    assert result.exit_code == 2
    assert "baseline not written: 1 file(s) could not be read" in result.stderr
    assert not (repo / "baseline.json").exists()


def test_counts_match_findings_that_share_a_fingerprint(tmp_path):
    def on_module(node: str) -> Finding:
        return Finding("BN001", "bn-after-activation", Severity.WARNING, "m",
                       Location(str(tmp_path / "m.onnx"), "main", node, "BatchNormalization", 0, module="block.bn"))

    baseline = Baseline.from_findings([on_module("a"), on_module("b")], tmp_path)
    assert [e.count for e in baseline.entries] == [2]
    kw = dict(checked_files=[str(tmp_path / "m.onnx")], active_codes={"BN001"})
    three = baseline.match([on_module("a"), on_module("b"), on_module("c")], tmp_path, **kw)
    assert (len(three.new), three.suppressed, three.stale) == (1, 2, [])
    one = baseline.match([on_module("a")], tmp_path, **kw)
    assert (one.suppressed, [e.count for e in one.stale]) == (1, [1])
    assert [e.count for e in baseline.without(one.stale).entries] == [1]


def test_baseline_file_is_stable_and_readable(repo, run_cli):
    run_cli("check", "models", "--write-baseline", "baseline.json")
    first = (repo / "baseline.json").read_text()
    run_cli("check", "models", "--write-baseline", "baseline.json", "--jobs", "1")
    assert (repo / "baseline.json").read_text() == first
    document = json.loads(first)
    assert document["bnlint-baseline"] == 1
    assert "directly follows" in document["findings"][0]["message"]
    assert oct(os.stat(repo / "baseline.json").st_mode & 0o777) != oct(0o600)
