"""Snapshots of `bnlint check --format F` (exit code, stdout, stderr) for every format on one fixture.

A snapshot makes any change of wording or layout visible in review. After an intended change, regenerate:

    BNLINT_UPDATE_SNAPSHOTS=1 pytest tests/test_formats_snapshots.py

and commit the files under tests/snapshots/formats/. Temporary paths and the version are normalised.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

from bnlint import __version__
from bnlint.cli import OUTPUT_FORMATS
from bnlint.report import FORMATS

SNAPSHOTS = Path(__file__).parent / "snapshots" / "formats"
UPDATE = os.environ.get("BNLINT_UPDATE_SNAPSHOTS") == "1"

# One model that fires rules at every severity: BN003 + BN004 (conv1 -> bn1), BN005 + BN002 (drop1 -> bn2),
# BN001 (relu1 -> drop1 -> bn2), BN006 + BN008 (bn3 in training mode right after bn2).
SNAPSHOT_MODEL = """
<ir_version: 8, opset_import: ["" : 15]>
snapshot (float[1, 2, 8, 8] x) => (float[1, 2, 8, 8] y)
<float[2, 2, 1, 1] w = {1.0, 0.5, -0.5, 1.0}, float[2] cb = {0.1, 0.2}, float[2] s = {1.0, 1.0},
 float[2] b = {0.0, 0.0}, float[2] m = {0.0, 0.0}, float[2] v = {1.0, 1.0}>
{
  [conv1] c1 = Conv (x, w, cb)
  [bn1] b1 = BatchNormalization (c1, s, b, m, v)
  [relu1] r1 = Relu (b1)
  [drop1] d1 = Dropout (r1)
  [bn2] b2 = BatchNormalization (d1, s, b, m, v)
  [bn3] y, rm, rv = BatchNormalization <training_mode = 1> (b2, s, b, m, v)
}
"""


@pytest.fixture(autouse=True)
def isolated_cwd(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for name in ("NO_COLOR", "BNLINT_OUTPUT_FORMAT", "GITHUB_ACTIONS"):
        monkeypatch.delenv(name, raising=False)


def normalise(text: str, tmp_path: Path) -> str:
    for form in {str(tmp_path.resolve()), str(tmp_path)}:
        text = text.replace(Path(form).as_uri(), "file://<TMP>").replace(form, "<TMP>")
    return text.replace(f'"{__version__}"', '"<VERSION>"')


def compare(name: str, actual: str) -> None:
    path = SNAPSHOTS / f"{name}.snap"
    if UPDATE:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(actual, encoding="utf-8")
        return
    assert path.exists(), f"no snapshot {path.name}; create it with BNLINT_UPDATE_SNAPSHOTS=1"
    expected = path.read_text(encoding="utf-8")
    assert actual == expected, f"{path.name} differs; if intended, regenerate with BNLINT_UPDATE_SNAPSHOTS=1"


def test_cli_and_report_agree_on_formats():
    assert OUTPUT_FORMATS == FORMATS


def without_rule_texts(sarif: str) -> str:
    """SARIF with only the rules the results use, their descriptions and help dropped, and rule indices
    checked then masked: the rule texts (all rules) are checked against bnlint.ruledocs in
    test_formats_sarif.py, and this snapshot should not churn on every rule added or documented."""
    document = json.loads(sarif)
    for run in document["runs"]:
        rules = run["tool"]["driver"]["rules"]
        for result in run["results"]:
            assert rules[result["ruleIndex"]]["id"] == result["ruleId"]
            result["ruleIndex"] = "<index>"
        used = {result["ruleId"] for result in run["results"]}
        run["tool"]["driver"]["rules"] = [rule for rule in rules if rule["id"] in used]
        for rule in run["tool"]["driver"]["rules"]:
            for key in ("shortDescription", "fullDescription", "help"):
                rule[key] = "<from rules/%s.toml>" % rule["id"]
    return json.dumps(document, indent=2, ensure_ascii=False) + "\n"


@pytest.mark.parametrize("fmt", FORMATS)
def test_format_snapshot(fmt, run_cli, save_text, tmp_path):
    save_text(SNAPSHOT_MODEL, "model.onnx")
    result = run_cli("check", "model.onnx", "--format", fmt, "--color", "never")
    assert result.exit_code == 1  # BN006 is an error: the fixture must keep failing
    stdout = without_rule_texts(result.stdout) if fmt == "sarif" else result.stdout
    snapshot = (f"exit_code: {result.exit_code}\n----- stdout -----\n{stdout}"
                f"----- stderr -----\n{result.stderr}")
    compare(fmt, normalise(snapshot, tmp_path))


def test_snapshot_folder_has_no_orphans():
    """A snapshot whose format was renamed or removed would silently rot."""
    orphans = sorted(p.stem for p in SNAPSHOTS.glob("*.snap") if p.stem not in FORMATS)
    assert not orphans


def test_environment_variable_sets_the_default_format(run_cli, save_text):
    save_text(SNAPSHOT_MODEL, "model.onnx")
    from_env = run_cli("check", "model.onnx", env={"BNLINT_OUTPUT_FORMAT": "json-lines"})
    assert from_env.stdout.startswith('{"code":')
    assert len(from_env.stdout.splitlines()) == 7
    explicit = run_cli("check", "model.onnx", "--format", "concise", env={"BNLINT_OUTPUT_FORMAT": "sarif"})
    assert explicit.stdout.startswith("model.onnx:main/")


def test_config_output_format_is_the_fallback(run_cli, save_text, tmp_path):
    save_text(SNAPSHOT_MODEL, "model.onnx")
    (tmp_path / "bnlint.toml").write_text('output-format = "github"\n')
    assert run_cli("check", "model.onnx").stdout.startswith("::")
    assert run_cli("check", "model.onnx", env={"BNLINT_OUTPUT_FORMAT": "concise"}).stdout.startswith("model.onnx:")


def test_bad_format_values_are_one_line_errors(run_cli, save_text, tmp_path):
    save_text(SNAPSHOT_MODEL, "model.onnx")
    bad_env = run_cli("check", "model.onnx", env={"BNLINT_OUTPUT_FORMAT": "xml"})
    assert bad_env.exit_code == 2 and "'xml' is not one of" in bad_env.stderr
    (tmp_path / "bnlint.toml").write_text('output-format = "xml"\n')
    bad_config = run_cli("check", "model.onnx")
    assert bad_config.exit_code == 2
    assert re.fullmatch(r"bnlint: error: .*bnlint\.toml: output-format 'xml' is not one of .*\n", bad_config.stderr)
    assert bad_config.stdout == ""
