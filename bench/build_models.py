"""Generate the bench models (run as a child of the bench: `build_models.py model SPEC_JSON PATH` or
`build_models.py folder DIR COUNT BLOCKS CHANNELS`).

The weights are chosen so that outputs stay O(1) through 100,000 blocks (near-identity Conv kernels,
near-identity BN), which keeps "max abs error" of a rewritten model meaningful; the time taken by every tool
does not depend on the values. Models with external data are written block by block, so even the 4 GB model
never exists as one protobuf in memory.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

from models import ModelSpec

OPSET = 17


def _near_identity_kernel(channels: int, rng: np.random.Generator, noise: float) -> np.ndarray:
    kernel = rng.normal(0.0, noise, size=(channels, channels, 3, 3)).astype(np.float32)
    kernel[np.arange(channels), np.arange(channels), 1, 1] += 1.0
    return kernel


def _bn_params(channels: int, rng: np.random.Generator) -> list[np.ndarray]:
    scale = 1.0 + rng.normal(0, 0.01, channels)
    bias = rng.normal(0, 0.01, channels)
    mean = rng.normal(0, 0.01, channels)
    var = 1.0 + rng.uniform(0, 0.02, channels)
    return [a.astype(np.float32) for a in (scale, bias, mean, var)]


def _tensor(name: str, array: np.ndarray) -> TensorProto:
    return helper.make_tensor(name, TensorProto.FLOAT, array.shape, array.tobytes(), raw=True)


def _blocks(spec: ModelSpec, seed: int):
    """Yield (nodes, [(name, array)]) for each Conv+BN+Relu block, chained from `input` to `output`."""
    rng = np.random.default_rng(seed)
    c = spec.channels
    # Wide kernels share one random noise pattern: generating GBs of random numbers would dominate the build.
    shared_noise = rng.normal(0.0, 0.01 / c, size=(c, c, 3, 3)).astype(np.float32) if c > 64 else None
    x = "input"
    for i in range(spec.blocks):
        if shared_noise is not None:
            kernel = shared_noise.copy()
            kernel[np.arange(c), np.arange(c), 1, 1] += 1.0
        else:
            kernel = _near_identity_kernel(c, rng, 0.01 / c)
        conv_bias = rng.normal(0, 0.01, c).astype(np.float32)
        names = [f"conv{i}.w", f"conv{i}.b", f"bn{i}.scale", f"bn{i}.bias", f"bn{i}.mean", f"bn{i}.var"]
        y = "output" if i == spec.blocks - 1 else f"r{i}"
        nodes = [
            helper.make_node("Conv", [x, names[0], names[1]], [f"c{i}"], name=f"conv{i}",
                             kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
            helper.make_node("BatchNormalization", [f"c{i}", *names[2:]], [f"b{i}"], name=f"bn{i}", epsilon=1e-5),
            helper.make_node("Relu", [f"b{i}"], [y], name=f"relu{i}"),
        ]
        yield nodes, list(zip(names, [kernel, conv_bias, *_bn_params(c, rng)]))
        x = y


def _assemble(spec: ModelSpec, nodes, inits) -> onnx.ModelProto:
    shape = [1, spec.channels, spec.size, spec.size]
    graph = helper.make_graph(
        nodes, spec.name,
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, shape)],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="bnlint-bench")
    model.ir_version = 8
    return model


def build_proto(spec: ModelSpec, seed: int = 0) -> onnx.ModelProto:
    """The model as one ModelProto with all weights inline."""
    nodes, inits = [], []
    for block_nodes, arrays in _blocks(spec, seed):
        nodes.extend(block_nodes)
        inits.extend(_tensor(name, array) for name, array in arrays)
    return _assemble(spec, nodes, inits)


def _build_external(spec: ModelSpec, path: Path, seed: int) -> None:
    """Write weights to `<file>.data` block by block as they are made: never one >2 GB protobuf in memory."""
    data_name = path.name + ".data"
    offset = 0
    nodes, inits = [], []
    with open(path.parent / data_name, "wb") as data:
        for block_nodes, arrays in _blocks(spec, seed):
            nodes.extend(block_nodes)
            for name, array in arrays:
                raw = array.tobytes()
                pad = (-offset) % 4096 if len(raw) >= 4096 else 0  # page-aligned big tensors, as onnx.save does
                data.write(b"\0" * pad)
                offset += pad
                data.write(raw)
                tensor = TensorProto(name=name, data_type=TensorProto.FLOAT, dims=array.shape,
                                     data_location=TensorProto.EXTERNAL)
                for key, value in (("location", data_name), ("offset", str(offset)), ("length", str(len(raw)))):
                    entry = tensor.external_data.add()
                    entry.key, entry.value = key, value
                inits.append(tensor)
                offset += len(raw)
    path.write_bytes(_assemble(spec, nodes, inits).SerializeToString())


def build_folder(folder: Path, count: int, blocks: int, channels: int) -> None:
    variants = [build_proto(ModelSpec(f"small{s}", blocks, channels), seed=s).SerializeToString() for s in range(8)]
    for i in range(count):
        sub = folder / f"group{i // 100:02d}"
        sub.mkdir(exist_ok=True)
        (sub / f"model{i:04d}.onnx").write_bytes(variants[i % len(variants)])


def build_model(spec: ModelSpec, path: Path) -> None:
    if spec.external:
        _build_external(spec, path, seed=0)
    else:
        onnx.save(build_proto(spec), path)


if __name__ == "__main__":
    if sys.argv[1] == "model":
        fields = json.loads(sys.argv[2])
        fields.pop("version")
        build_model(ModelSpec(**fields), Path(sys.argv[3]))
    else:
        build_folder(Path(sys.argv[2]), *map(int, sys.argv[3:6]))
