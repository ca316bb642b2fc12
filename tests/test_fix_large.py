"""A model over 2 GB (external data) fixes into its own external data file and verifies.

Slow (about a minute, ~10 GB of RAM at peak and 5 GB of disk): marked `slow`, run in CI."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import helper

from bnlint.safe_io import file_digest

LAYERS = ((12288, 16384), (16384, 12288), (12288, 16384))  # 805 MB of float32 weights each, 2.4 GB in all


def build_large_model(folder) -> tuple:
    """MatMul -> BN three times, weights written straight to one external data file (never all in memory)."""
    data_name = "large.onnx.data"
    rng = np.random.default_rng(0)
    initializers, nodes, offset = [], [], 0
    current = "x"
    with open(folder / data_name, "wb") as sink:
        for k, (rows, columns) in enumerate(LAYERS):
            weight = rng.standard_normal((rows, columns), dtype=np.float32)
            weight *= 1.0 / np.sqrt(rows)
            raw = weight.tobytes()
            del weight
            sink.write(raw)
            tensor = onnx.TensorProto(name=f"w{k}", data_type=onnx.TensorProto.FLOAT, dims=[rows, columns])
            tensor.data_location = onnx.TensorProto.EXTERNAL
            for key, value in (("location", data_name), ("offset", str(offset)), ("length", str(len(raw)))):
                entry = tensor.external_data.add()
                entry.key, entry.value = key, value
            offset += len(raw)
            del raw
            initializers.append(tensor)
            for name, values in (("s", rng.uniform(0.5, 2, columns)), ("b", rng.standard_normal(columns)),
                                 ("m", rng.standard_normal(columns)), ("v", rng.uniform(0.5, 2, columns))):
                initializers.append(onnx.numpy_helper.from_array(values.astype(np.float32), f"{name}{k}"))
            nodes.append(helper.make_node("MatMul", [current, f"w{k}"], [f"mm{k}"], name=f"matmul{k}"))
            nodes.append(helper.make_node("BatchNormalization", [f"mm{k}", f"s{k}", f"b{k}", f"m{k}", f"v{k}"],
                                          [f"bn{k}"], name=f"bn{k}"))
            current = f"bn{k}"
    graph = helper.make_graph(nodes, "large", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT,
                                                                             [2, LAYERS[0][0]])],
                              [helper.make_tensor_value_info(current, onnx.TensorProto.FLOAT, [2, LAYERS[-1][1]])],
                              initializers)
    model = helper.make_model(graph, ir_version=8, opset_imports=[helper.make_opsetid("", 17)])
    path = folder / "large.onnx"
    path.write_bytes(model.SerializeToString())
    return path, folder / data_name


@pytest.mark.slow
def test_model_over_2gb_fixes_with_external_data_and_verifies(tmp_path, run_cli):
    path, data = build_large_model(tmp_path)
    assert data.stat().st_size > 2 << 30
    digests = (file_digest(path), file_digest(data))
    result = run_cli("fix", path, "--format", "json")
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["written"] and report["verified"] is True
    assert report["bn"]["folded"] == 3
    assert report["verification"]["mode"].startswith("fixed tolerance (no float64 reference)")
    assert any("too large for a float64 copy" in note for note in report["verification"]["notes"])
    out = tmp_path / "large.fixed.onnx"
    new_data = tmp_path / "large.fixed.onnx.data"
    assert report["data_file"] == str(new_data)
    assert new_data.stat().st_size > 2 << 30
    assert out.stat().st_size < 1 << 20
    assert (file_digest(path), file_digest(data)) == digests
    fixed = onnx.load(out, load_external_data=False)
    assert [n.op_type for n in fixed.graph.node] == ["Gemm", "Gemm", "Gemm"]
    onnx.checker.check_model(str(out))
    print(f"\nfix of a {data.stat().st_size / 2**30:.2f} GiB model took {report['seconds']:.1f}s")
