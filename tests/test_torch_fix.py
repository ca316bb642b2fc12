"""`bnlint fix` from PyTorch: export in eval mode, fold with the ONNX pipeline, verify against torch eager."""

from __future__ import annotations

import importlib.util

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from conftest import FIXTURES
from onnx import numpy_helper

from bnlint.torch_frontend import TorchOptions
from bnlint.torch_frontend.fixing import check_against_eager, eager_verdict, export_for_fix
from bnlint.verify import VerifyOptions

ACCEPTANCE = FIXTURES / "torch" / "acceptance.py"
pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")  # torch.export.save in torch 2.13


def fixture_module():
    spec = importlib.util.spec_from_file_location("acceptance_for_fix", ACCEPTANCE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_onnx(path, *arrays):
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    return session.run(None, {name: array for name, array in zip(names, arrays)})


@pytest.mark.parametrize("factory", ["nested", "linear_bn1d", "conv_transpose2d"])
def test_fix_factory_matches_torch_eager(run_cli, tmp_path, factory):
    out = tmp_path / "fixed.onnx"
    result = run_cli("fix", f"{ACCEPTANCE}:{factory}", "-o", out)
    assert result.exit_code == 0, result.stderr
    assert "matches torch eager on the example inputs" in result.stderr
    model = onnx.load(out)
    assert not any(n.op_type == "BatchNormalization" for n in model.graph.node)
    module, example = getattr(fixture_module(), factory)()
    module.eval()
    with torch.no_grad():
        expected = module(example).numpy()
    (actual,) = run_onnx(out, example.numpy())
    np.testing.assert_allclose(actual, expected, rtol=1e-4, atol=1e-5)


def test_fix_keeps_batch_statistics_bn_and_says_why(run_cli, tmp_path):
    out = tmp_path / "fixed.onnx"
    result = run_cli("fix", f"{ACCEPTANCE}:no_running_stats", "-o", out)
    assert result.exit_code == 0, result.stderr
    assert "kept 1" in result.stderr
    assert sum(n.op_type == "BatchNormalization" for n in onnx.load(out).graph.node) == 1


def test_fix_pt2_archive_needs_trust(run_cli, tmp_path):
    module, example = fixture_module().nested()
    path = tmp_path / "nested.pt2"
    torch.export.save(torch.export.export(module.eval(), (example,)), path)
    out = tmp_path / "fixed.onnx"
    refused = run_cli("fix", path, "-o", out)
    assert refused.exit_code == 2 and "is executable" in refused.stderr and not out.exists()
    trusted = run_cli("fix", path, "-o", out, "--trust")
    assert trusted.exit_code == 0, trusted.stderr
    with torch.no_grad():
        expected = module(example).numpy()
    np.testing.assert_allclose(run_onnx(out, example.numpy())[0], expected, rtol=1e-4, atol=1e-5)


def test_torch_target_needs_an_output(run_cli):
    result = run_cli("fix", f"{ACCEPTANCE}:nested")
    assert result.exit_code == 2 and "give -o OUT.onnx" in result.stderr


def test_eager_check_catches_a_wrong_model(tmp_path):
    exported = export_for_fix(f"{ACCEPTANCE}:conv2d", TorchOptions(), str(tmp_path))
    good, line = eager_verdict(exported.path, exported, VerifyOptions())
    assert good and "float64 torch reference" in line
    model = onnx.load(exported.path)
    weight = next(t for t in model.graph.initializer if t.name == "0.weight")
    values = numpy_helper.to_array(weight).copy()
    values.reshape(-1)[0] += 1.0
    weight.CopyFrom(numpy_helper.from_array(values, weight.name))
    broken = tmp_path / "broken.onnx"
    onnx.save(model, broken)
    checks = check_against_eager(str(broken), exported, VerifyOptions())
    assert not checks[0].ok and "exceeds" in checks[0].problem
    ok, line = eager_verdict(str(broken), exported, VerifyOptions())
    assert not ok and line.startswith("verification against torch eager FAILED")
