"""The wheel ships the rule files, and an installed wheel finds them."""

import subprocess
import sys
import zipfile

from conftest import REPO


def test_wheel_contains_rule_files(tmp_path):
    subprocess.run([sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(tmp_path), str(REPO)],
                   check=True, capture_output=True)
    wheel = next(tmp_path.glob("bnlint-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    rule_files = sorted(p.name for p in (REPO / "rules").glob("BN*.toml"))
    assert rule_files and sorted(n.split("/")[-1] for n in names if n.startswith("bnlint/_rules/BN")) == rule_files
    assert "bnlint/cli.py" in names and any(n.endswith("entry_points.txt") for n in names)
    entry_points = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
    assert "bnlint = bnlint.cli:main" in entry_points

    # Unpacked on its own (no repository beside it), the package reads its rules from bnlint/_rules.
    target = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(target)
    code = ("from bnlint.ruledocs import all_rule_docs, rules_dir; "
            "assert rules_dir().name == '_rules', rules_dir(); print(len(all_rule_docs()))")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env={"PYTHONPATH": str(target)},
                         capture_output=True, text=True, check=True)
    assert int(out.stdout) == len(rule_files)
