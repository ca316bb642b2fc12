"""The ten orderings give the same BN001-BN003 codes for the first block whatever the front end:
an `nn.Sequential`, a custom `forward` with `F.relu`/`F.dropout`, and their ONNX export."""

from __future__ import annotations

import contextlib
import importlib.util
import io
import warnings

import pytest
import torch
from conftest import FIXTURES, REPO
from orderings import ORDERINGS, PLACEMENT_CODES

from bnlint.engine import lint_model
from bnlint.sources import load_target
from bnlint.torch_frontend import TorchOptions

MODELS = FIXTURES / "torch" / "ordering_models.py"
OPTIONS = TorchOptions(source_root=str(REPO))


def _fixture_module():
    spec = importlib.util.spec_from_file_location("ordering_models_for_parity", MODELS)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def first_block_codes(findings) -> set[str]:
    """Placement codes of findings whose PyTorch module is block 1 (`b1` or below)."""
    return {f.code for f in findings if f.code in PLACEMENT_CODES and (f.location.module or "").split(".")[0] == "b1"}


def test_fixture_covers_the_ten_orderings():
    assert set(_fixture_module().ORDERINGS) == set(ORDERINGS)


@pytest.fixture(scope="module")
def exported_onnx(tmp_path_factory):
    """Each ordering's Sequential exported by torch.onnx.export (training mode keeps Dropout, no optimizer)."""
    models = _fixture_module()
    folder = tmp_path_factory.mktemp("exports")
    paths = {}
    for ordering in ORDERINGS:
        path = folder / f"{ordering}.onnx"
        module = models.sequential(ordering).train()
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            torch.onnx.export(module, models.EXAMPLE, str(path), dynamo=True, optimize=False)
        paths[ordering] = path
    return paths


@pytest.mark.parametrize("ordering", list(ORDERINGS))
def test_parity(ordering, exported_onnx):
    key = ordering.replace("-", "_")
    sequential = lint_model(load_target(f"{MODELS}:sequential__{key}", OPTIONS))
    functional = lint_model(load_target(f"{MODELS}:functional__{key}", OPTIONS))
    onnx_export = lint_model(load_target(str(exported_onnx[ordering]), OPTIONS))
    expected = ORDERINGS[ordering]
    assert first_block_codes(sequential) == expected
    assert first_block_codes(functional) == expected
    assert first_block_codes(onnx_export) == expected
