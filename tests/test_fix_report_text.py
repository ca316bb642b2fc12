"""The text report of `bnlint fix` stays readable on deep models: each list (a rule's changes, the BNs left)
shows its first entries and counts the rest; --show-changes lists everything; JSON always has every one."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import onnx
import pytest

from bnlint.fix.report import SHOWN_PER_LIST

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_fix_batched import Chain  # noqa: E402

BLOCKS = SHOWN_PER_LIST + 3


def chain_file(tmp_path: Path, *, training: bool = False) -> Path:
    chain = Chain(channels=3)
    for _ in range(BLOCKS):
        chain.conv(3, 1, with_bias=True)
        chain.bn(training=training)
        chain.relu()
    model = chain.model()
    model.graph.output[0].CopyFrom(model.graph.input[0])  # 1x1 Conv, BN, Relu keep the input's shape
    model.graph.output[0].name = chain.cur
    path = tmp_path / "chain.onnx"
    onnx.save(model, path)
    return path


def lines_with(text: str, needle: str) -> list[str]:
    return [line for line in text.splitlines() if needle in line]


def test_each_rule_lists_its_first_changes_then_counts_the_rest(tmp_path, run_cli):
    path = chain_file(tmp_path)
    result = run_cli("fix", path, "-o", tmp_path / "out.onnx", "--no-verify")
    assert result.exit_code == 0, result.stderr
    assert f"BN004 fold BN into the preceding layer: {BLOCKS} change(s)" in result.stderr
    assert len(lines_with(result.stderr, "folded BatchNormalization")) == SHOWN_PER_LIST
    assert len(lines_with(result.stderr, "removed bias")) == SHOWN_PER_LIST
    more = lines_with(result.stderr, "... and 3 more (--show-changes lists them all")
    assert len(more) == 2  # one under BN003, one under BN004
    assert f"BN folded {BLOCKS} of {BLOCKS}" in result.stderr


@pytest.mark.parametrize("args", [("--show-changes",), ("--show-changes", "--format", "json")])
def test_show_changes_and_json_have_every_change(tmp_path, run_cli, args):
    path = chain_file(tmp_path)
    result = run_cli("fix", path, "-o", tmp_path / "out.onnx", "--no-verify", *args)
    assert result.exit_code == 0, result.stderr
    assert "more (--show-changes" not in result.stderr + result.stdout
    if "json" in args:
        report = json.loads(result.stdout)
        fold = next(p for p in report["passes"] if p["code"] == "BN004" and p["changes"])
        assert len(fold["changes"]) == BLOCKS
    else:
        assert len(lines_with(result.stderr, "folded BatchNormalization")) == BLOCKS


def test_bns_left_are_listed_up_to_the_cap_too(tmp_path, run_cli):
    path = chain_file(tmp_path, training=True)
    result = run_cli("fix", path, "-o", tmp_path / "out.onnx", "--no-verify")
    assert result.exit_code == 0, result.stderr
    assert f"kept {BLOCKS}:" in result.stderr
    kept = [line for line in result.stderr.splitlines() if line.startswith("  BatchNormalization")]
    assert len(kept) == SHOWN_PER_LIST
    assert "  ... and 3 more (--show-changes lists them all" in result.stderr
    every = run_cli("fix", path, "-o", tmp_path / "out.onnx", "--no-verify", "--show-changes")
    assert len([line for line in every.stderr.splitlines() if line.startswith("  BatchNormalization")]) == BLOCKS
