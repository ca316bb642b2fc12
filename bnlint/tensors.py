"""Turn TensorProtos into numpy arrays, reading external data only when asked and only from safe places.

Lint reads the few BN parameters it inspects and nothing else, so a multi-GB model with external data
lints in about the time of its graph alone.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from bnlint.errors import LoadError


def external_info(tensor: onnx.TensorProto) -> dict[str, str]:
    """The key/value pairs of a tensor's external_data field."""
    return {entry.key: entry.value for entry in tensor.external_data}


def is_external(tensor: onnx.TensorProto) -> bool:
    return tensor.data_location == onnx.TensorProto.EXTERNAL


def resolve_external_path(model_path: str, base_dir: Path, location: str) -> Path:
    """Where an external data file lives, refusing anything that escapes the model's folder."""
    problem = None
    if not location or "\x00" in location:
        problem = f"external data location {location!r} is empty or contains NUL"
    elif os.path.isabs(location) or location.startswith(("/", "\\")) or (len(location) > 1 and location[1] == ":"):
        problem = f"external data location {location!r} is an absolute path"
    elif ".." in Path(location.replace("\\", "/")).parts:
        problem = f"external data location {location!r} escapes the model's folder"
    if problem:
        raise LoadError(model_path, problem)
    candidate = base_dir / location
    real_base = base_dir.resolve()
    try:
        real = candidate.resolve(strict=True)
    except (FileNotFoundError, OSError):
        raise LoadError(model_path, f"external data file {location!r} not found next to the model") from None
    if real_base not in real.parents:
        raise LoadError(model_path, f"external data location {location!r} resolves outside the model's folder")
    return candidate


def tensor_nbytes(tensor: onnx.TensorProto) -> int | None:
    """Byte size a tensor's data must have, or None for types without a fixed width."""
    try:
        dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type)
    except (KeyError, ValueError, TypeError):
        return None
    count = 1
    for dim in tensor.dims:
        count *= dim
    if tensor.data_type in (onnx.TensorProto.INT4, onnx.TensorProto.UINT4):
        return (count + 1) // 2
    return count * np.dtype(dtype).itemsize


def check_external_reference(model_path: str, base_dir: Path, tensor: onnx.TensorProto) -> None:
    """Validate one external tensor's location, offset and length without reading its bytes."""
    info = external_info(tensor)
    path = resolve_external_path(model_path, base_dir, info.get("location", ""))
    if not path.is_file():
        raise LoadError(model_path, f"external data {info.get('location')!r} is not a regular file")
    try:
        offset = int(info.get("offset", "0") or 0)
        length = int(info["length"]) if info.get("length") else None
    except ValueError:
        raise LoadError(model_path, f"tensor {tensor.name!r} has a non-integer external data offset or length") from None
    size = path.stat().st_size
    expected = tensor_nbytes(tensor)
    if length is None:
        length = expected if expected is not None else size - offset
    if offset < 0 or length < 0 or offset + length > size:
        raise LoadError(
            model_path,
            f"tensor {tensor.name!r} reads bytes {offset}..{offset + length} of {info.get('location')!r}, "
            f"which has only {size}",
        )
    if expected is not None and length != expected:
        raise LoadError(
            model_path, f"tensor {tensor.name!r} declares {length} bytes of external data but needs {expected}"
        )


def to_array(tensor: onnx.TensorProto, model_path: str, base_dir: Path) -> np.ndarray:
    """The tensor's values; external data is read from disk here and only here."""
    if not is_external(tensor):
        return numpy_helper.to_array(tensor)
    check_external_reference(model_path, base_dir, tensor)
    info = external_info(tensor)
    path = base_dir / info["location"]
    offset = int(info.get("offset", "0") or 0)
    length = int(info["length"]) if info.get("length") else tensor_nbytes(tensor)
    with open(path, "rb") as handle:
        handle.seek(offset)
        raw = handle.read(length)
    inline = onnx.TensorProto()
    inline.CopyFrom(tensor)
    del inline.external_data[:]
    inline.data_location = onnx.TensorProto.DEFAULT
    inline.raw_data = raw
    return numpy_helper.to_array(inline)
