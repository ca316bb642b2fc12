"""PyTorch files: pickles are never loaded, TorchScript and .pt2 archives only with --trust.

Each hostile payload would create a marker file when unpickled; the tests first prove the payload is live
(a plain unpickler, or torch's own loader in a subprocess, creates the marker), then that bnlint refuses
the file with exit 2 and one line, and the marker does not exist.
"""

from __future__ import annotations

import inspect
import pickle
import subprocess
import sys
import warnings
import zipfile

import pytest
import torch
from torch import nn

from bnlint.engine import lint_model
from bnlint.errors import LoadError
from bnlint.sources import load_target
from bnlint.torch_frontend import TorchOptions


class Payload:
    """Unpickling this runs code that creates `marker`."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return exec, (f"open({self.marker!r}, 'w').close()",)


def evil_pickle(marker) -> bytes:
    return pickle.dumps(Payload(marker), protocol=2)


class ReluThenBN(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, bias=False)
        self.bn = nn.BatchNorm2d(4)
        self.drop = nn.Dropout(0.2)
        self.bn2 = nn.BatchNorm2d(4)

    def forward(self, x):
        x = self.bn(torch.relu(self.conv(x)))
        return self.bn2(self.drop(x))


FORWARD_LINE = inspect.getsourcelines(ReluThenBN.forward)[1] + 1  # `x = self.bn(torch.relu(...))`
EXAMPLE = (torch.randn(1, 3, 8, 8),)
pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")  # torch.export.save in torch 2.13


def assert_refused(run_cli, path, marker, needle, *extra):
    result = run_cli("check", str(path), *extra)
    assert result.exit_code == 2
    lines = [line for line in result.stderr.splitlines() if line.startswith("bnlint: error:")]
    assert len(lines) == 1 and needle in lines[0], result.stderr
    assert "Traceback" not in result.stderr
    assert not marker.exists()


@pytest.mark.parametrize("name", ["weights.pt", "weights.pth", "model.ptl"])
def test_pickled_checkpoint_is_never_unpickled(tmp_path, run_cli, name):
    marker = tmp_path / "pwned"
    path = tmp_path / name
    path.write_bytes(evil_pickle(marker))
    pickle.loads(path.read_bytes())  # the payload is live...
    assert marker.exists()
    marker.unlink()
    for extra in ((), ("--trust",)):  # ...and refused even with --trust: weights carry no graph
        assert_refused(run_cli, path, marker, "bnlint does not unpickle it", *extra)


def test_torch_save_zip_checkpoint_is_refused(tmp_path, run_cli):
    path = tmp_path / "state.pt"
    torch.save(nn.Linear(2, 2).state_dict(), path)
    assert_refused(run_cli, path, tmp_path / "none", "holds weights but no graph", "--trust")


def test_crafted_torchscript_archive_needs_trust(tmp_path, run_cli):
    marker = tmp_path / "pwned"
    path = tmp_path / "model.pt"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("model/version", "10\n")
        archive.writestr("model/code/__torch__.py", "class Model(Module):\n  pass\n")
        archive.writestr("model/constants.pkl", evil_pickle(marker))
        archive.writestr("model/data.pkl", evil_pickle(marker))
    with zipfile.ZipFile(path) as archive:
        pickle.loads(archive.read("model/data.pkl"))
    assert marker.exists()
    marker.unlink()
    assert_refused(run_cli, path, marker, "a TorchScript archive is executable")


def test_crafted_pt2_archive_needs_trust(tmp_path, run_cli):
    """torch 2.13's torch.export.load falls back to weights_only=False for sample inputs: a live payload."""
    genuine = tmp_path / "genuine.pt2"
    torch.export.save(torch.export.export(ReluThenBN().eval(), EXAMPLE), genuine)
    marker = tmp_path / "pwned"
    path = tmp_path / "model.pt2"
    with zipfile.ZipFile(genuine) as source, zipfile.ZipFile(path, "w") as target:
        for item in source.infolist():
            data = source.read(item)
            if "/data/sample_inputs/" in item.filename:
                data = evil_pickle(marker)
            target.writestr(item, data)
    subprocess.run([sys.executable, "-c", f"import torch; torch.export.load({str(path)!r})"],
                   capture_output=True, timeout=300)
    assert marker.exists(), "the crafted .pt2 should run its payload in torch.export.load"
    marker.unlink()
    assert_refused(run_cli, path, marker, "a torch.export archive (.pt2) is executable")


def test_not_an_archive(tmp_path, run_cli):
    path = tmp_path / "model.pt2"
    path.write_bytes(b"hello, not a model")
    assert_refused(run_cli, path, tmp_path / "none", "not a PyTorch archive")
    lfs = tmp_path / "model.pt"
    lfs.write_text("version https://git-lfs.github.com/spec/v1\noid sha256:abc\nsize 12\n")
    assert_refused(run_cli, lfs, tmp_path / "none", "Git LFS pointer")


@pytest.fixture(scope="module")
def scripted(tmp_path_factory):
    path = tmp_path_factory.mktemp("ts") / "scripted.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit.script is deprecated in 2.13
        torch.jit.script(ReluThenBN().eval()).save(str(path))
    return path


def test_trusted_torchscript(scripted):
    with pytest.raises(LoadError, match="records no example inputs"):
        load_target(str(scripted), TorchOptions(trust=True))
    model = load_target(str(scripted), TorchOptions(trust=True, input_shapes=((1, 3, 8, 8),)))
    findings = {(f.code, f.location.module, f.location.module_class) for f in lint_model(model)}
    assert ("BN001", "bn", "BatchNorm2d") in findings
    assert ("BN002", "drop", "Dropout") in findings  # scripted Dropout kept in training mode


def test_trusted_exported_program(tmp_path):
    path = tmp_path / "net.pt2"
    torch.export.save(torch.export.export(ReluThenBN().eval(), EXAMPLE), path)
    model = load_target(str(path), TorchOptions(trust=True, source_root=str(tmp_path)))
    bn001 = [f for f in lint_model(model) if f.code == "BN001"]
    assert [(f.location.node, f.location.module, f.location.module_class) for f in bn001] == [
        ("bn", "bn", "BatchNorm2d")]
    assert bn001[0].location.source_file.endswith("test_torch_archives.py")
    assert bn001[0].location.source_line == FORWARD_LINE
