"""Acceptance: the ten orderings of one Conv block give exactly the expected BN001-BN003 codes."""

import onnx
import pytest
from orderings import ORDERINGS, first_block_codes, ordering_model

from bnlint.engine import lint_model
from bnlint.graph import build_model


@pytest.mark.parametrize("training", [False, True], ids=["inference", "training"])
@pytest.mark.parametrize("ordering", list(ORDERINGS))
def test_ordering_codes(ordering, training):
    proto = ordering_model(ordering, training=training)
    onnx.checker.check_model(proto, full_check=True)
    findings = lint_model(build_model(proto, f"{ordering}.onnx"))
    assert first_block_codes(findings) == ORDERINGS[ordering]


@pytest.mark.parametrize("ordering", list(ORDERINGS))
def test_training_graph_reports_bn006_only_in_training(ordering):
    inference = lint_model(build_model(ordering_model(ordering), "m.onnx"))
    training = lint_model(build_model(ordering_model(ordering, training=True), "m.onnx"))
    assert not any(f.code == "BN006" for f in inference)
    assert [f.location.node for f in training if f.code == "BN006"] == ["b1_bn"]
