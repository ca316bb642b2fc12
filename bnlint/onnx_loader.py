"""Read an ONNX file into a ModelProto without reading its external weights.

The file is parsed as binary protobuf whatever its extension (onnx.load switches to text parsers for some
extensions), and common mistakes get a message that says what the file really is.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import onnx
from google.protobuf.message import DecodeError

from bnlint.errors import LoadError
from bnlint.tensors import check_external_reference, is_external

_SIGNATURES = (
    (b"version https://git-lfs", "this is a Git LFS pointer, not the model; run `git lfs pull`"),
    (b"PK\x03\x04", "this is a zip archive (a PyTorch checkpoint or .pt2?), not an ONNX model"),
    (b"\x80\x02", "this is a Python pickle, not an ONNX model; bnlint never unpickles files"),
    (b"\x80\x03", "this is a Python pickle, not an ONNX model; bnlint never unpickles files"),
    (b"\x80\x04", "this is a Python pickle, not an ONNX model; bnlint never unpickles files"),
    (b"\x80\x05", "this is a Python pickle, not an ONNX model; bnlint never unpickles files"),
    (b"\x89HDF", "this is an HDF5 file (Keras?), not an ONNX model"),
    (b"ir_version", "this looks like ONNX text format; bnlint reads binary .onnx files"),
)


def read_model_bytes(path: str) -> bytes:
    """The file's bytes, after checking it is a non-empty regular file."""
    try:
        info = os.stat(path)
    except FileNotFoundError:
        raise LoadError(path, "no such file") from None
    except OSError as exc:
        raise LoadError(path, f"cannot read: {exc.strerror}") from None
    if stat.S_ISDIR(info.st_mode):
        raise LoadError(path, "is a directory, not an ONNX file")
    if not stat.S_ISREG(info.st_mode):
        raise LoadError(path, "is not a regular file")
    if info.st_size == 0:
        raise LoadError(path, "the file is empty")
    try:
        with open(path, "rb") as handle:
            return handle.read()
    except OSError as exc:
        raise LoadError(path, f"cannot read: {exc.strerror}") from None


def parse_model(path: str, data: bytes) -> onnx.ModelProto:
    """Parse protobuf bytes into a ModelProto, naming what the bytes are when they are not ONNX."""
    for signature, problem in _SIGNATURES:
        if data.startswith(signature):
            raise LoadError(path, problem)
    model = onnx.ModelProto()
    try:
        model.ParseFromString(data)
    except (DecodeError, RuntimeError, ValueError) as exc:
        detail = str(exc).strip() or type(exc).__name__
        raise LoadError(path, f"not a valid ONNX model (protobuf decode failed: {detail})") from None
    if model.ir_version <= 0 or not model.HasField("graph"):
        raise LoadError(path, "not a valid ONNX model (no IR version or no graph; truncated or not ONNX)")
    if not model.opset_import and model.ir_version >= 3:
        raise LoadError(path, "not a valid ONNX model (no opset_import)")
    return model


def iter_all_tensors(graph: onnx.GraphProto):
    """Initializers and Constant tensors of a graph and all its subgraphs."""
    yield from graph.initializer
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.TENSOR:
                yield attr.t
            elif attr.type == onnx.AttributeProto.GRAPH:
                yield from iter_all_tensors(attr.g)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for sub in attr.graphs:
                    yield from iter_all_tensors(sub)


def load_onnx(path: str | os.PathLike) -> onnx.ModelProto:
    """Load a model's graph; external tensors are validated (location, bounds) but not read."""
    path = str(path)
    model = parse_model(path, read_model_bytes(path))
    base_dir = Path(path).parent
    for tensor in iter_all_tensors(model.graph):
        if is_external(tensor):
            check_external_reference(path, base_dir, tensor)
    return model
