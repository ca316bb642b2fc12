"""`# bnlint: ignore[...]` comments on the Python line a finding points to, and BN100 for unused ones."""

from __future__ import annotations

import textwrap

import pytest

from bnlint.lint import LintOptions, lint_target
from bnlint.suppression import directives_in, parse_directive
from bnlint.torch_frontend import TorchOptions

MODEL = textwrap.dedent("""\
    import torch
    from torch import nn


    def build():
        return nn.Sequential(
            nn.Conv2d(3, 4, 3),
            nn.ReLU(),
            nn.BatchNorm2d(4),  # bnlint: ignore[BN001]
            nn.Conv2d(4, 4, 3),
            nn.BatchNorm2d(4),  # bnlint: ignore[BN001, BN003]
            nn.ReLU(),
            nn.BatchNorm2d(4, track_running_stats=False),  # bnlint: ignore
            nn.Dropout(0.1),  # bnlint: ignore[BN999]
            nn.BatchNorm2d(4),
        ), torch.randn(2, 3, 9, 9)
    """)


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    folder = tmp_path_factory.mktemp("suppress")
    path = folder / "net.py"
    path.write_text(MODEL)
    return path


def run(model_file, **selection):
    options = LintOptions.from_cli(torch_options=TorchOptions(source_root=str(model_file.parent)), **selection)
    outcome = lint_target(f"{model_file}:build", options)
    assert outcome.error is None, outcome.error
    return sorted((f.code, f.location.source_line, f.message) for f in outcome.findings)


def codes_by_line(findings):
    return sorted((code, line) for code, line, _ in findings)


def test_comments_suppress_and_unused_ones_are_reported(model_file):
    findings = run(model_file)
    assert codes_by_line(findings) == sorted([
        ("BN004", 11),  # not named on line 11: kept
        ("BN100", 11),  # BN001 does not fire on line 11
        ("BN002", 14),  # an unknown code suppresses nothing
        ("BN100", 14),  # BN999 is not a rule
    ])  # lines 9 (BN001), 11 (BN003) and 13 (BN001, BN006 under a bare ignore) are suppressed
    messages = {line: message for code, line, message in findings if code == "BN100"}
    assert messages[11] == ("unused suppression `# bnlint: ignore[BN001, BN003]`: "
                            "no BN001 finding on this line to suppress")
    assert messages[14] == "unused suppression `# bnlint: ignore[BN999]`: unknown rule code BN999"


def test_only_selected_codes_count_as_unused(model_file):
    findings = run(model_file, select=("BN003", "BN100"))
    # BN001 is not selected: line 11's BN001 and line 13's bare ignore cannot be judged; BN999 is never a rule
    assert codes_by_line(findings) == [("BN100", 14)]
    findings = run(model_file, select=("BN001", "BN100"))
    assert ("BN100", 11) in codes_by_line(findings)


def test_unused_suppression_can_be_ignored(model_file):
    assert not any(code == "BN100" for code, _, _ in run(model_file, ignore=("BN100",)))


def test_directive_parsing():
    assert parse_directive("# bnlint: ignore[bn001 , BN003]", 3).codes == {"BN001", "BN003"}
    assert parse_directive("#bnlint:ignore", 3).codes is None
    assert parse_directive("# noqa: E501", 3) is None
    source = 's = "# bnlint: ignore[BN001]"\nx = 1  # BNLINT: IGNORE[BN002]\n'
    assert {line: d.codes for line, d in directives_in(source).items()} == {2: {"BN002"}}
    broken = 'x = (\n  1,  # bnlint: ignore[BN003]\n'  # unterminated: falls back to a per-line scan
    assert directives_in(broken)[2].codes == {"BN003"}
