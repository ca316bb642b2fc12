"""ONNX files exported by torch: BN the exporter folded (BN010, never BN003), locations from its metadata."""

from __future__ import annotations

import contextlib
import inspect
import io
import warnings

import onnx
import pytest
import torch
from onnx import helper
from torch import nn

from bnlint.engine import lint_model
from bnlint.lint import LintOptions, lint_target
from bnlint.sources import load_target
from bnlint.torch_frontend import TorchOptions
from bnlint.torch_frontend.exporter_metadata import (
    exporter_folded,
    legacy_module_path,
    node_origin,
)
from bnlint.torch_frontend.sourcemap import display_source, innermost_user_frame, parse_stack_trace


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.bn = nn.BatchNorm2d(4)
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(4 * 6 * 6, 5), nn.BatchNorm1d(5))

    def forward(self, x):
        x = torch.relu(self.bn(self.conv(x)))
        return self.head(x)


FORWARD_LINE = inspect.getsourcelines(Net.forward)[1] + 1
EXAMPLE = (torch.randn(2, 3, 8, 8),)


def export(path, module, **kwargs):
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        torch.onnx.export(module, EXAMPLE, str(path), **kwargs)
    return path


@pytest.fixture(scope="module")
def optimized(tmp_path_factory):
    """torch.onnx.export's default: the optimizer folds both BNs."""
    return export(tmp_path_factory.mktemp("opt") / "net.onnx", Net().eval(), dynamo=True)


def test_exporter_folded_bn_is_information_not_bn003(optimized):
    options = LintOptions.from_cli(torch_options=TorchOptions(source_root=str(optimized.parent)))
    findings = lint_target(str(optimized), options).findings
    assert not any(f.code in ("BN003", "BN004") for f in findings)
    folded = sorted((f.location.op_type, f.location.module, f.message) for f in findings if f.code == "BN010")
    assert [(op, module) for op, module, _ in folded] == [("Conv", "bn"), ("Gemm", "head.2")]
    assert "BN already folded by the exporter" in folded[0][2]
    assert "BatchNorm2d 'bn'" in folded[0][2] and "FuseBatchNormIntoConv" in folded[0][2]
    assert all(f.severity.value == "info" for f in findings if f.code == "BN010")


def test_stack_trace_gives_the_forward_line(optimized):
    model = load_target(str(optimized), TorchOptions(source_root=str(optimized.parent)))
    conv = next(n for n in model.main.nodes if n.op_type == "Conv")
    assert conv.provenance.module == "bn" and conv.provenance.module_class == "BatchNorm2d"
    assert conv.provenance.source_file.endswith("test_torch_exporter_metadata.py")
    assert conv.provenance.source_line == FORWARD_LINE
    gemm = next(n for n in model.main.nodes if n.op_type == "Gemm")
    assert gemm.provenance.source_line == FORWARD_LINE + 1  # the line that called the nn.Sequential


def test_unoptimized_export_keeps_bn_and_names_modules(tmp_path):
    path = export(tmp_path / "raw.onnx", Net().eval(), dynamo=True, optimize=False)
    findings = lint_model(load_target(str(path), TorchOptions(source_root=str(tmp_path))))
    rows = {(f.code, f.location.module, f.location.module_class) for f in findings}
    assert {("BN003", "bn", "BatchNorm2d"), ("BN003", "head.2", "BatchNorm1d")} <= rows
    assert not any(f.code == "BN010" for f in findings)


def test_bn010_can_be_deselected(optimized):
    options = LintOptions.from_cli(ignore=("BN010",))
    assert not any(f.code == "BN010" for f in lint_target(str(optimized), options).findings)


def test_legacy_exporter_scope_names(tmp_path):
    path = export(tmp_path / "legacy.onnx", Net().eval(), dynamo=False, do_constant_folding=False,
                  training=torch.onnx.TrainingMode.PRESERVE)
    findings = lint_model(load_target(str(path)))
    assert {(f.code, f.location.module) for f in findings if f.code == "BN003"} == {("BN003", "bn"),
                                                                                     ("BN003", "head.2")}


def test_metadata_parsing_without_torch_exports():
    node = helper.make_node("Relu", ["x"], ["y"], name="node_relu")
    for key, value in (("pkg.torch.onnx.name_scopes", "['', 'layer2', 'layer2.0', 'relu_1']"),
                       ("pkg.torch.onnx.class_hierarchy", "['m.Net', 'torch.nn.modules.container.Sequential', "
                                                          "'m.Block', 'aten.relu.default']"),
                       ("pkg.torch.onnx.stack_trace", 'File "/src/net.py", line 12, in forward\n    x = relu(x)\n'
                                                      '  File "/venv/lib/python3.11/site-packages/torch/nn/'
                                                      'functional.py", line 1, in relu')):
        entry = node.metadata_props.add()
        entry.key, entry.value = key, value
    origin = node_origin(node)
    assert (origin.module, origin.module_class, origin.fx_node) == ("layer2.0", "m.Block", "relu_1")
    assert innermost_user_frame(list(origin.frames)) == ("/src/net.py", 12)
    assert node_origin(helper.make_node("Relu", ["x"], ["y"], name="plain")) is None


def test_legacy_names_and_paths():
    assert legacy_module_path("/layer2/layer2.0/bn1/BatchNormalization") == "layer2.0.bn1"
    assert legacy_module_path("/layer2/0/bn1/BatchNormalization") == "layer2.0.bn1"  # scripted modules
    assert legacy_module_path("/1/1.0/conv1/Conv") == "1.0.conv1"
    assert legacy_module_path("/Relu") == ""
    frames = parse_stack_trace('File "/a/torch/nn/modules/conv.py", line 3, in f\n  File "/w/m.py", line 9, in g')
    assert innermost_user_frame(frames) == ("/w/m.py", 9)
    assert innermost_user_frame(frames[:1]) is None
    assert display_source("/w/pkg/m.py", "/w") == "pkg/m.py"
    assert display_source("/elsewhere/m.py", "/w") == "/elsewhere/m.py"


def test_folded_rule_list_counts_batchnorms():
    model = helper.make_model(helper.make_graph([helper.make_node("Conv", ["x", "w"], ["y"], name="c")], "g", [], []),
                              producer_name="pytorch")
    conv = model.graph.node[0]
    for key, value in (("pkg.onnxscript.rewriter.rule_name",
                        "RemoveOptionalBiasFromConv, FuseBatchNormIntoConv, FuseBatchNormIntoConv"),
                       ("pkg.torch.onnx.name_scopes", "['', 'bn2', 'x']"),
                       ("pkg.torch.onnx.class_hierarchy", "['m.Net', 'torch.nn.modules.batchnorm.BatchNorm2d', 'a']")):
        entry = conv.metadata_props.add()
        entry.key, entry.value = key, value
    assert exporter_folded(model) == {
        "c": "2 BatchNormalizations (the last BatchNorm2d 'bn2') (exporter rewrite FuseBatchNormIntoConv)"}
    model.producer_name = "other"
    assert exporter_folded(model) == {}
    assert isinstance(model, onnx.ModelProto)
