"""PyTorch factories: the acceptance models of fixtures/torch/acceptance.py, with exact locations."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from conftest import FIXTURES, REPO

from bnlint.engine import lint_model
from bnlint.errors import LoadError
from bnlint.sources import load_target
from bnlint.torch_frontend import TorchOptions
from bnlint.torch_frontend.capture import capture_for_lint

ACCEPTANCE = FIXTURES / "torch" / "acceptance.py"
SHOWN = "fixtures/torch/acceptance.py"
PLACEMENT = {"BN001", "BN002", "BN003", "BN004", "BN006", "BN008"}


def line_of(text: str) -> int:
    """The 1-based line of the fixture that contains `text` (which must occur exactly once)."""
    hits = [i for i, line in enumerate(ACCEPTANCE.read_text().splitlines(), 1) if text in line]
    assert len(hits) == 1, f"{text!r} found on lines {hits}"
    return hits[0]


def at(text: str) -> str:
    return f"{SHOWN}:{line_of(text)}"


@pytest.fixture(scope="module")
def lint():
    """Load and lint each acceptance factory once per test module."""
    cache = {}

    def run(factory: str, **options):
        key = (factory, tuple(sorted(options.items())))
        if key not in cache:
            model = load_target(f"{ACCEPTANCE}:{factory}", TorchOptions(source_root=str(REPO), **options))
            cache[key] = model, lint_model(model, display_path=f"{SHOWN}:{factory}")
        return cache[key]

    return run


def summary(findings, codes=PLACEMENT):
    """(code, node, module, module class, source) of each finding, for exact comparison."""
    return sorted((f.code, f.location.node, f.location.module, f.location.module_class, f.location.source)
                  for f in findings if f.code in codes)


def test_sequential(lint):
    _, findings = lint("sequential")
    assert summary(findings) == sorted([
        ("BN001", "2", "2", "BatchNorm2d", at("# seq-bn")),
        ("BN003", "4", "4", "BatchNorm2d", at("# seq-second-bn")),
        ("BN004", "4", "4", "BatchNorm2d", at("# seq-second-bn")),
    ])
    bn001 = next(f for f in findings if f.code == "BN001")
    assert "Relu '1'" in bn001.message


def test_custom_forward(lint):
    model, findings = lint("custom_forward")
    assert summary(findings) == sorted([
        ("BN001", "bn", "bn", "BatchNorm2d", at("# custom-bn")),
        ("BN002", "drop", "drop", "Dropout", at("self.drop = nn.Dropout(0.3)")),
    ])
    relu = model.info.provenance["relu"]  # torch.relu in forward: the forward line, the root's class
    assert (relu.module, relu.module_class, f"{relu.source_file}:{relu.source_line}") == (
        None, "CustomForward", at("# custom-relu"))


def test_functional_calls(lint):
    model, findings = lint("functional")
    placement = summary(findings)
    assert [(code, module, cls, source) for code, _, module, cls, source in placement] == sorted([
        ("BN001", None, "Functional", at("# functional-bn")),
        ("BN002", None, "Functional", at("# functional-dropout")),
    ])
    bn001 = next(f for f in findings if f.code == "BN001")
    assert "GELU" in bn001.message and "Dropout" in bn001.message
    ops = {n.op_type for n in model.main.nodes}
    assert {"Conv", "Dropout", "BatchNormalization"} <= ops


def test_nested_submodules(lint):
    _, findings = lint("nested")
    bn003 = [row for row in summary(findings, {"BN003"})]
    assert bn003 == [("BN003", f"{block}.bn1", f"{block}.bn1", "BatchNorm2d", at("# nested-bn1"))
                     for block in ("layer1.0", "layer2.0", "layer2.1")]
    # conv2 has bias=False: the exporter's zero bias must not read as a bias BN cancels
    assert not any(f.code == "BN003" and "bn2" in f.location.node for f in findings)
    assert {f.location.node for f in findings if f.code == "BN004"} == {
        f"{block}.bn{i}" for block in ("layer1.0", "layer2.0", "layer2.1") for i in (1, 2)}


def test_shared_submodule_called_twice(lint):
    model, findings = lint("shared")
    assert summary(findings) == sorted([
        ("BN001", "norm@2", "norm", "BatchNorm2d", at("# shared-norm")),
        ("BN004", "norm", "norm", "BatchNorm2d", at("# shared-norm")),
    ])
    bns = [n for n in model.main.nodes if n.op_type == "BatchNormalization"]
    assert [n.name for n in bns] == ["norm", "norm@2"]


@pytest.mark.parametrize("factory, layer_op, marker", [
    ("conv1d", "Conv", "# conv1d-pair"),
    ("conv2d", "Conv", "# conv2d-pair"),
    ("conv3d", "Conv", "# conv3d-pair"),
    ("linear_bn1d", "Gemm", "# linear-pair"),
    ("conv_transpose2d", "ConvTranspose", "# convt-pair"),
])
def test_layer_then_batchnorm(lint, factory, layer_op, marker):
    model, findings = lint(factory)
    classes = {"conv1d": "BatchNorm1d", "conv3d": "BatchNorm3d", "linear_bn1d": "BatchNorm1d"}
    bn_class = classes.get(factory, "BatchNorm2d")
    assert summary(findings) == [("BN003", "1", "1", bn_class, at(marker)), ("BN004", "1", "1", bn_class, at(marker))]
    layer = next(n for n in model.main.nodes if n.name == "0")
    assert layer.op_type == layer_op
    assert next(f for f in findings if f.code == "BN003").related == ("0",)
    if factory.startswith("conv") and layer_op == "Conv":
        assert len(layer.attr("kernel_shape")) == int(factory[4])


def test_batchnorm_without_running_stats_is_training_mode(lint):
    model, findings = lint("no_running_stats")
    assert summary(findings) == [("BN006", "1", "1", "BatchNorm2d", at("# no-stats-bn"))]
    assert next(f for f in findings if f.code == "BN006").severity.value == "error"
    bn = next(n for n in model.main.nodes if n.op_type == "BatchNormalization")
    conv = model.main.producer(bn.input(0))
    assert conv.op_type == "Conv" and model.main.consumers(conv.output(0)) == [bn]  # no statistics subgraph


def test_dropout_before_batchnorm_in_residual_branch(lint):
    _, findings = lint("residual_dropout")
    assert summary(findings) == [("BN002", "drop", "drop", "Dropout", at("# residual-drop"))]
    assert next(f for f in findings if f.code == "BN002").related[0] == "bn"


def test_inplace_dropout_is_seen(lint):
    _, findings = lint("inplace_dropout")
    assert summary(findings) == sorted([
        ("BN001", "bn", "bn", "BatchNorm2d", at("# inplace-bn")),
        ("BN002", "drop", "drop", "Dropout", at("# inplace-drop")),
    ])


def test_factory_in_training_mode_lints_like_eval_mode(lint):
    _, eval_findings = lint("sequential")
    _, train_findings = lint("sequential_in_training_mode")
    assert summary(train_findings) == summary(eval_findings)


def test_capture_restores_every_training_flag():
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Dropout(0.1))
    model.train()
    model[1].eval()
    flags = [m.training for m in model.modules()]
    proto = capture_for_lint(model, (torch.randn(1, 3, 6, 6),))
    assert [m.training for m in model.modules()] == flags
    dropout = next(n for n in proto.graph.node if n.op_type == "Dropout")
    assert dropout.input[2]  # training_mode input present: the Dropout is kept in the lint graph


def test_module_instance_with_input_shape(lint):
    _, findings = lint("MODEL_INSTANCE", input_shapes=((1, 3, 6, 6),))
    assert summary(findings, {"BN001"}) == [("BN001", "2", "2", "BatchNorm2d", at("# instance-bn"))]


def test_example_inputs_attribute(lint):
    _, findings = lint("with_example_attribute")
    assert {f.code for f in findings} >= {"BN003", "BN004"}


@pytest.mark.parametrize("factory, options, message", [
    ("without_inputs", {}, "no example inputs: pass --input-shape"),
    ("raises", {}, f"calling raises() raised ValueError: no weights for this variant ({SHOWN}:"),
    ("not_a_module", {}, "not_a_module() returned int; expected an nn.Module"),
    ("missing", {}, "has no attribute 'missing'"),
    ("sequential", {"input_shapes": ((1, 5, 8, 8),)}, "torch.export could not trace the model"),
])
def test_factory_problems_are_one_line_errors(factory, options, message):
    with pytest.raises(LoadError) as info:
        load_target(f"{ACCEPTANCE}:{factory}", TorchOptions(source_root=str(REPO), **options))
    assert message in info.value.problem
    assert "\n" not in info.value.problem


def test_dotted_module_target(tmp_path, monkeypatch):
    package = tmp_path / "zoo"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "nets.py").write_text(
        "import torch\nfrom torch import nn\n\n\ndef build():\n"
        "    return nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3)), torch.randn(2, 4)\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delitem(sys.modules, "zoo", raising=False)
    monkeypatch.delitem(sys.modules, "zoo.nets", raising=False)
    findings = lint_model(load_target("zoo.nets:build", TorchOptions()))
    assert [(f.code, f.location.source) for f in findings if f.code == "BN003"] == [("BN003", "zoo/nets.py:6")]
    assert str(tmp_path) not in sys.path  # the import path is restored


def test_cli_json_and_snippet(run_cli, monkeypatch):
    monkeypatch.chdir(REPO)
    result = run_cli("check", f"{SHOWN}:sequential", "--format", "json", "--select", "BN001")
    assert result.exit_code == 1, result.stderr
    finding = json.loads(result.stdout)["findings"][0]
    assert finding["location"]["module"] == "2"
    assert finding["location"]["module_class"] == "BatchNorm2d"
    assert (finding["location"]["source_file"], finding["location"]["source_line"]) == (SHOWN, line_of("# seq-bn"))
    full = run_cli("check", f"{SHOWN}:sequential", "--select", "BN001", "--color", "never",
                   "--source-root", "fixtures/torch")
    assert full.stdout.startswith(f"acceptance.py:{line_of('# seq-bn')}: BN001")
    assert f"{line_of('# seq-bn')} |         nn.BatchNorm2d(8),  # seq-bn" in full.stdout


def test_cli_usage_errors(run_cli):
    bad_shape = run_cli("check", f"{ACCEPTANCE}:without_inputs", "--input-shape", "1,three")
    assert bad_shape.exit_code == 2 and "--input-shape '1,three'" in bad_shape.stderr
    no_inputs = run_cli("check", f"{ACCEPTANCE}:without_inputs")
    assert no_inputs.exit_code == 2
    assert "no example inputs" in no_inputs.stderr and "Traceback" not in no_inputs.stderr
    bare_file = run_cli("check", str(ACCEPTANCE))
    assert bare_file.exit_code == 2 and f"e.g. `{ACCEPTANCE}:build`" in bare_file.stderr


def test_onnx_linting_never_imports_torch(tmp_path):
    script = (
        "import sys\n"
        "from onnx import TensorProto, helper\n"
        "import onnx\n"
        "node = helper.make_node('Relu', ['x'], ['y'], name='r')\n"
        "graph = helper.make_graph([node], 'g', [helper.make_tensor_value_info('x', TensorProto.FLOAT, [1])],\n"
        "                          [helper.make_tensor_value_info('y', TensorProto.FLOAT, [1])])\n"
        "model = helper.make_model(graph, producer_name='pytorch')\n"
        f"onnx.save(model, {str(tmp_path / 'm.onnx')!r})\n"
        "from bnlint.lint import LintOptions, lint_target\n"
        f"outcome = lint_target({str(tmp_path / 'm.onnx')!r}, LintOptions.from_cli())\n"
        "assert outcome.error is None, outcome.error\n"
        "print('torch' in sys.modules)\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"
