"""pre-commit: the hook manifest validates, and `pre-commit try-repo` passes a clean model and fails a faulty one.

try-repo clones the repository at HEAD (plus changes to tracked files), so untracked work would be
missing; the test therefore copies the working tree (tracked and untracked, minus ignored files) into a
fresh git repository and commits it there. pre-commit then builds a virtualenv from that copy with pip:
that needs the package index, and takes 15-60 s, so the try-repo tests are marked slow.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib
from pathlib import Path

import onnx
import pytest
import yaml
from conftest import REPO, parse

MANIFEST = REPO / ".pre-commit-hooks.yaml"
GIT_ENV = {"GIT_AUTHOR_NAME": "bnlint tests", "GIT_AUTHOR_EMAIL": "tests@bnlint.invalid",
           "GIT_COMMITTER_NAME": "bnlint tests", "GIT_COMMITTER_EMAIL": "tests@bnlint.invalid",
           "GIT_CONFIG_GLOBAL": os.devnull, "GIT_CONFIG_NOSYSTEM": "1"}
CLEAN = """<ir_version: 8, opset_import: ["" : 15]>
g (float[1, 2, 4, 4] x) => (float[1, 2, 4, 4] y)
<float[2, 2, 1, 1] w = {1.0, 0.5, -0.5, 1.0}>
{ [conv] c = Conv (x, w)  [relu] y = Relu (c) }"""
FAULTY = """<ir_version: 8, opset_import: ["" : 15]>
g (float[1, 2, 4, 4] x) => (float[1, 2, 4, 4] y)
<float[2] s = {1.0, 1.0}, float[2] b = {0.0, 0.0}, float[2] m = {0.0, 0.0}, float[2] v = {1.0, 1.0}>
{ [relu] r = Relu (x)  [bn] y = BatchNormalization (r, s, b, m, v) }"""


def pre_commit(*args: str, cwd: Path, env: dict | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pre_commit", *args], cwd=cwd, capture_output=True, text=True,
                          env={**os.environ, **GIT_ENV, **(env or {})}, timeout=timeout)


def git(*args: str, cwd: Path) -> None:
    subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, env={**os.environ, **GIT_ENV})


def hooks() -> dict[str, dict]:
    return {hook["id"]: hook for hook in yaml.safe_load(MANIFEST.read_text(encoding="utf-8"))}


def test_manifest_validates():
    result = pre_commit("validate-manifest", str(MANIFEST), cwd=REPO)
    assert result.returncode == 0, result.stdout + result.stderr


def test_hooks_are_declared_as_intended():
    found = hooks()
    assert set(found) == {"bnlint", "bnlint-fix"}
    for hook in found.values():
        assert hook["files"] == r"\.onnx$"
        assert hook["types"] == ["file"]
        assert hook["require_serial"] is True
        assert hook["language"] == "python"
        assert not any("torch" in dep for dep in hook.get("additional_dependencies", []))
    assert found["bnlint"]["entry"] == "bnlint check"
    assert found["bnlint-fix"]["entry"].startswith("bnlint fix")
    assert found["bnlint-fix"]["stages"] == ["manual"]
    assert "stages" not in found["bnlint"]


def test_hook_environment_gets_no_torch():
    """pre-commit installs the package with its core dependencies only; torch must stay an extra."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    assert not [dep for dep in project["dependencies"] if dep.lower().startswith("torch")]
    assert any(dep.startswith("torch") for dep in project["optional-dependencies"]["torch"])


def working_tree_copy(destination: Path) -> Path:
    """The repository as it is on disk (tracked + untracked, not ignored), committed in a fresh repo."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                            check=True, capture_output=True).stdout.decode().split("\0")
    for name in filter(None, listed):
        source = REPO / name
        if source.is_file():
            target = destination / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
    git("init", "-q", cwd=destination)
    git("add", "-A", cwd=destination)
    git("commit", "-q", "-m", "bnlint working tree for pre-commit tests", cwd=destination)
    return destination


@pytest.fixture(scope="module")
def hook_repo(tmp_path_factory) -> Path:
    return working_tree_copy(tmp_path_factory.mktemp("bnlint-hook-repo"))


@pytest.fixture
def user_repo(tmp_path) -> Path:
    """A project using the hook: one clean and one faulty model, staged in git."""
    project = tmp_path / "project"
    project.mkdir()
    git("init", "-q", cwd=project)
    onnx.save(parse(CLEAN), project / "clean.onnx")
    onnx.save(parse(FAULTY), project / "faulty.onnx")
    (project / "notes.txt").write_text("not a model\n")
    git("add", "-A", cwd=project)
    return project


@pytest.mark.slow
def test_try_repo_passes_a_clean_model_and_fails_a_faulty_one(hook_repo, user_repo):
    clean = pre_commit("try-repo", str(hook_repo), "bnlint", "--files", "clean.onnx", "notes.txt", "--verbose",
                       cwd=user_repo)
    assert clean.returncode == 0, clean.stdout + clean.stderr
    assert "No findings in 1 model" in clean.stdout  # notes.txt was filtered out by `files`

    faulty = pre_commit("try-repo", str(hook_repo), "bnlint", "--files", "clean.onnx", "faulty.onnx",
                        cwd=user_repo)
    assert faulty.returncode == 1, faulty.stdout + faulty.stderr
    assert "faulty.onnx:main/bn: BN001" in faulty.stdout
    assert "Failed" in faulty.stdout


FOLDABLE = """<ir_version: 8, opset_import: ["" : 15]>
g (float[1, 2, 4, 4] x) => (float[1, 2, 4, 4] y)
<float[2, 2, 1, 1] w = {1.0, 0.5, -0.5, 1.0}, float[2] s = {1.0, 2.0}, float[2] b = {0.5, 0.0},
 float[2] m = {0.1, 0.0}, float[2] v = {1.0, 4.0}>
{ [conv] c = Conv (x, w)  [bn] y = BatchNormalization (c, s, b, m, v) }"""


@pytest.mark.slow
def test_fix_hook_runs_only_in_the_manual_stage_and_rewrites_the_model(hook_repo, user_repo):
    onnx.save(parse(FOLDABLE), user_repo / "foldable.onnx")
    git("add", "foldable.onnx", cwd=user_repo)
    skipped = pre_commit("try-repo", str(hook_repo), "bnlint-fix", "--files", "foldable.onnx", cwd=user_repo)
    assert "No hook with id `bnlint-fix` in stage `pre-commit`" in skipped.stdout  # a commit never runs it
    fixed = pre_commit("try-repo", str(hook_repo), "bnlint-fix", "--hook-stage", "manual", "--files",
                       "foldable.onnx", cwd=user_repo)
    assert fixed.returncode == 1, fixed.stdout + fixed.stderr  # pre-commit's way of saying "files changed"
    assert "files were modified by this hook" in fixed.stdout
    assert [node.op_type for node in onnx.load(user_repo / "foldable.onnx").graph.node] == ["Conv"]
