"""Turn TensorProtos into numpy arrays, reading external data only when asked and only from safe places.

Lint reads the few BN parameters it inspects and nothing else, so a multi-GB model with external data
lints in about the time of its graph alone.

External data is where ONNX loaders have been attacked (path traversal, symlinks, hard links, reads past
the end of a file), so a reference is accepted only when: its location is relative, has no `..`, no NUL,
no drive or absolute prefix; every path component is opened without following symlinks, starting from the
model's folder (so the file really lives under it); the file is regular and has one link; and offset +
length lie inside it, with length equal to the tensor's byte size. Validation only stats files; the bytes
are read by `to_array` through the same checked file descriptor.
"""

from __future__ import annotations

import math
import mmap
import os
import re
import stat
from functools import lru_cache
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from bnlint.errors import LoadError

LFS_MAGIC = b"version https://git-lfs"
MAP_BYTES = 16 << 20  # external tensors from this size are memory-mapped, not read
LFS_MESSAGE = "this is a Git LFS pointer; run git lfs pull"


# Element types whose elements are packed below one byte (raw_data and external data hold the packed stream).
_SUB_BYTE_BITS = {
    getattr(onnx.TensorProto, name): bits
    for name, bits in (("INT4", 4), ("UINT4", 4), ("FLOAT4E2M1", 4), ("INT2", 2), ("UINT2", 2),
                       ("FLOAT6E2M3", 6), ("FLOAT6E3M2", 6))
    if hasattr(onnx.TensorProto, name)
}
_KNOWN_TYPES = frozenset(onnx.TensorProto.DataType.values()) - {onnx.TensorProto.UNDEFINED}

_OPEN_FLAGS = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0) \
    | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)
_DIR_FLAGS = _OPEN_FLAGS | getattr(os, "O_DIRECTORY", 0)
_CAN_WALK_BY_FD = os.open in os.supports_dir_fd and hasattr(os, "O_NOFOLLOW")


def external_info(tensor: onnx.TensorProto) -> dict[str, str]:
    """The key/value pairs of a tensor's external_data field."""
    return {entry.key: entry.value for entry in tensor.external_data}


def is_external(tensor: onnx.TensorProto) -> bool:
    return tensor.data_location == onnx.TensorProto.EXTERNAL


def element_count(tensor: onnx.TensorProto) -> int:
    return math.prod(tensor.dims)


def _element_bits(data_type: int) -> int | None:
    if data_type in _SUB_BYTE_BITS:
        return _SUB_BYTE_BITS[data_type]
    if data_type == onnx.TensorProto.STRING:
        return None
    try:
        return 8 * np.dtype(onnx.helper.tensor_dtype_to_np_dtype(data_type)).itemsize
    except (KeyError, ValueError, TypeError):
        return None


_ELEMENT_BITS = {data_type: _element_bits(data_type) for data_type in _KNOWN_TYPES}


def inline_float32_vector(tensor: onnx.TensorProto | None) -> bytes | None:
    """The raw bytes of an inline 1-D float32 tensor whose length matches its dims, else None. The BN
    parameter readers of lint (bnlint.bnstats) and of the bulk fold (bnlint.fix.bulk) use it per BN, so
    it reads each protobuf field once."""
    if tensor is None or tensor.data_type != _FLOAT32 or tensor.data_location == _EXTERNAL_LOCATION:
        return None
    raw = tensor.raw_data
    dims = tensor.dims
    return raw if raw and len(dims) == 1 and len(raw) == 4 * dims[0] else None


_FLOAT32, _EXTERNAL_LOCATION = onnx.TensorProto.FLOAT, onnx.TensorProto.EXTERNAL


def tensor_nbytes(tensor: onnx.TensorProto) -> int | None:
    """Byte size of a tensor's raw (little-endian, sub-byte types packed) data, or None for types without
    a fixed width (strings) or unknown types."""
    bits = _ELEMENT_BITS.get(tensor.data_type)
    if bits is None:
        return None
    return (math.prod(tensor.dims) * bits + 7) // 8


def _type_name(data_type: int) -> str:
    try:
        return onnx.TensorProto.DataType.Name(data_type)
    except ValueError:
        return str(data_type)


@lru_cache(maxsize=1024)
def _location_problem(location: str) -> str | None:
    """Why a location string can never be accepted, before touching the file system."""
    if not location:
        return "has no location"
    if "\x00" in location:
        return f"location {location!r} contains NUL"
    if location.startswith(("/", "\\")) or os.path.isabs(location) or re.match(r"^[A-Za-z]:", location):
        return f"location {location!r} is an absolute path"
    if ".." in re.split(r"[\\/]", location):
        return f"location {location!r} escapes the model's folder"
    return None


def _components(location: str) -> list[str]:
    return [part for part in re.split(r"[\\/]" if os.sep == "\\" else "/", location) if part not in ("", ".")]


def open_external(model_path: str, base_dir: Path, location: str) -> int:
    """A read-only file descriptor for an external data file, opened component by component from the
    model's folder without following any symlink; raises LoadError naming the problem."""
    problem = _location_problem(location)
    if problem:
        raise LoadError(model_path, f"external data {problem}")
    parts = _components(location)
    if not parts:
        raise LoadError(model_path, f"external data location {location!r} names the model's folder, not a file")
    if not _CAN_WALK_BY_FD:
        return _open_external_by_path(model_path, base_dir, location, parts)
    try:
        folder = os.open(str(base_dir) or ".", _DIR_FLAGS & ~os.O_NOFOLLOW)
    except OSError as exc:
        raise LoadError(model_path, f"cannot open the model's folder: {exc.strerror}") from None
    try:
        for k, part in enumerate(parts):
            last = k == len(parts) - 1
            try:
                info = os.stat(part, dir_fd=folder, follow_symlinks=False)
            except FileNotFoundError:
                raise LoadError(model_path, f"external data file {location!r} not found next to the model") from None
            except OSError as exc:
                raise LoadError(model_path, f"cannot open external data {location!r}: {exc.strerror}") from None
            if stat.S_ISLNK(info.st_mode):
                raise LoadError(model_path, f"external data {location!r} goes through a symlink ({part!r}); "
                                            "bnlint refuses symlinked data")
            if not (stat.S_ISREG(info.st_mode) if last else stat.S_ISDIR(info.st_mode)):
                raise LoadError(model_path, f"external data {location!r}: {part!r} is not a "
                                            f"{'regular file' if last else 'folder'}")
            try:
                fd = os.open(part, _OPEN_FLAGS if last else _DIR_FLAGS, dir_fd=folder)
            except OSError as exc:  # swapped for a symlink or removed since the stat: refuse
                raise LoadError(model_path, f"cannot open external data {location!r}: {exc.strerror}") from None
            os.close(folder)
            folder = fd
        fd, folder = folder, -1
        return fd
    finally:
        if folder >= 0:
            os.close(folder)


def _open_external_by_path(model_path: str, base_dir: Path, location: str, parts: list[str]) -> int:
    """The same checks where the platform cannot open relative to a folder descriptor (Windows)."""
    current = base_dir
    for part in parts:
        current = current / part
        try:
            info = os.lstat(current)
        except FileNotFoundError:
            raise LoadError(model_path, f"external data file {location!r} not found next to the model") from None
        except OSError as exc:
            raise LoadError(model_path, f"cannot open external data {location!r}: {exc.strerror}") from None
        if stat.S_ISLNK(info.st_mode) or getattr(info, "st_reparse_tag", 0):
            raise LoadError(model_path, f"external data {location!r} goes through a symlink ({part!r}); "
                                        "bnlint refuses symlinked data")
    real_base = os.path.realpath(base_dir)
    if os.path.commonpath([real_base, os.path.realpath(current)]) != real_base:
        raise LoadError(model_path, f"external data location {location!r} resolves outside the model's folder")
    try:
        return os.open(current, _OPEN_FLAGS)
    except OSError as exc:
        raise LoadError(model_path, f"cannot open external data {location!r}: {exc.strerror}") from None


def _checked_file_size(model_path: str, location: str, fd: int) -> int:
    """The data file's size after checking it is a regular file with one link and not a Git LFS pointer
    (a pointer is small enough that a model with small tensors would otherwise read it as weights)."""
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        raise LoadError(model_path, f"external data {location!r} is not a regular file")
    if info.st_nlink != 1:
        raise LoadError(model_path, f"external data {location!r} has {info.st_nlink} hard links; bnlint refuses "
                                    "hard-linked data (copy the file instead)")
    if info.st_size < 1024 and os.pread(fd, len(LFS_MAGIC), 0) == LFS_MAGIC:
        raise LoadError(model_path, f"external data {location!r}: {LFS_MESSAGE}")
    return info.st_size


def _span(model_path: str, tensor: onnx.TensorProto) -> tuple[str, int, int]:
    """(location, offset, length) of an external tensor, each field checked; length defaults to the
    tensor's byte size and must equal it. (Called once per external tensor: kept to plain loops.)"""
    fields = {"location": None, "offset": None, "length": None}
    for entry in tensor.external_data:
        key = entry.key
        if fields.get(key) is not None:
            raise LoadError(model_path, f"tensor {tensor.name!r} lists external data key {key!r} twice")
        if key in fields:
            fields[key] = entry.value
    location = fields["location"] or ""
    problem = _location_problem(location)
    if problem:
        raise LoadError(model_path, f"tensor {tensor.name!r}: external data {problem}")
    offset = _decimal(model_path, tensor, "offset", fields["offset"])
    length = _decimal(model_path, tensor, "length", fields["length"])
    dims = tensor.dims
    if dims and min(dims) < 0:
        raise LoadError(model_path, f"tensor {tensor.name!r} has a negative dimension {list(dims)}")
    expected = tensor_nbytes(tensor)
    if expected is None:
        raise LoadError(model_path, f"tensor {tensor.name!r} of type {_type_name(tensor.data_type)} cannot be "
                                    "stored as external data")
    if length is None:
        length = expected
    elif length != expected:
        raise LoadError(model_path, f"tensor {tensor.name!r} declares {length} bytes of external data but its "
                                    f"shape {list(dims)} and type {_type_name(tensor.data_type)} need {expected}")
    return location, offset or 0, length


def _decimal(model_path: str, tensor: onnx.TensorProto, key: str, text: str | None) -> int | None:
    """A plain non-negative decimal (no sign, spaces, underscores or hex, which Python's int() accepts
    and other readers may not), or None when absent."""
    if not text:
        return None
    if not (text.isascii() and text.isdigit() and len(text) <= 20):
        raise LoadError(model_path, f"tensor {tensor.name!r} has external data {key} {text!r}, "
                                    "not a non-negative decimal integer")
    return int(text)


def _check_bounds(model_path: str, tensor: onnx.TensorProto, location: str, offset: int, length: int,
                  size: int) -> None:
    if offset + length <= size:
        return
    raise LoadError(model_path, f"tensor {tensor.name!r} reads bytes {offset}..{offset + length} of "
                                f"{location!r}, which has only {size}")


def check_external_reference(model_path: str, base_dir: Path, tensor: onnx.TensorProto,
                             sizes: dict[str, int] | None = None) -> None:
    """Validate one external tensor's location, file, offset and length without reading its bytes.

    `sizes` caches each data file's checked size for one model, so thousands of tensors in one file cost
    one open."""
    location, offset, length = _span(model_path, tensor)
    size = sizes.get(location) if sizes is not None else None
    if size is not None and offset + length <= size:
        return
    fd = open_external(model_path, base_dir, location)
    try:
        size = _checked_file_size(model_path, location, fd)
        _check_bounds(model_path, tensor, location, offset, length, size)
    finally:
        os.close(fd)
    if sizes is not None:
        sizes[location] = size


def read_external_bytes(model_path: str, base_dir: Path, tensor: onnx.TensorProto) -> bytes:
    """An external tensor's bytes, checked and read through one descriptor (no check-then-open race)."""
    return bytes(read_external_into(model_path, base_dir, tensor))


def read_external_into(model_path: str, base_dir: Path, tensor: onnx.TensorProto) -> bytearray | memoryview:
    """An external tensor's bytes in a writable buffer of its own. A large tensor is mapped copy-on-write
    (pages come straight from the page cache and writes never reach the file: a multi-GB weight costs no
    copy and no anonymous memory until it is written); a small one is read into a new bytearray."""
    location, offset, length = _span(model_path, tensor)
    fd = open_external(model_path, base_dir, location)
    try:
        size = _checked_file_size(model_path, location, fd)
        _check_bounds(model_path, tensor, location, offset, length, size)
        if length >= MAP_BYTES:
            mapped = _map_copy_on_write(fd, offset, length)
            if mapped is not None:
                return mapped
        buffer = bytearray(length)
        view, done = memoryview(buffer), 0
        while done < length:
            part = view[done:done + (1 << 30)]
            if hasattr(os, "preadv"):
                got = os.preadv(fd, [part], offset + done)
            else:  # pragma: no cover - Windows
                chunk = os.pread(fd, len(part), offset + done)
                got = len(chunk)
                part[:got] = chunk
            if not got:
                raise LoadError(model_path, f"external data {location!r} shrank while being read")
            done += got
        return buffer
    finally:
        os.close(fd)


def _map_copy_on_write(fd: int, offset: int, length: int) -> memoryview | None:
    """`length` bytes at `offset` mapped privately, or None where the file system cannot map files (the
    caller reads them instead)."""
    start = offset - offset % mmap.ALLOCATIONGRANULARITY
    try:
        mapping = mmap.mmap(fd, offset + length - start, offset=start, access=mmap.ACCESS_COPY)
    except (OSError, ValueError):
        return None
    return memoryview(mapping)[offset - start:]


# Element types whose external bytes are little-endian fixed-width numbers numpy reads as they are.
_DIRECT_DTYPES = {
    onnx.TensorProto.FLOAT: "<f4", onnx.TensorProto.DOUBLE: "<f8", onnx.TensorProto.FLOAT16: "<f2",
    onnx.TensorProto.INT8: "i1", onnx.TensorProto.UINT8: "u1", onnx.TensorProto.INT16: "<i2",
    onnx.TensorProto.UINT16: "<u2", onnx.TensorProto.INT32: "<i4", onnx.TensorProto.UINT32: "<u4",
    onnx.TensorProto.INT64: "<i8", onnx.TensorProto.UINT64: "<u8", onnx.TensorProto.BOOL: "?",
}


def _check_inline(model_path: str, tensor: onnx.TensorProto) -> None:
    """Refuse inline tensors whose declared type or shape does not match their data."""
    if tensor.data_type not in _KNOWN_TYPES:
        raise LoadError(model_path, f"tensor {tensor.name!r} has unknown element type {tensor.data_type}")
    if any(d < 0 for d in tensor.dims):
        raise LoadError(model_path, f"tensor {tensor.name!r} has a negative dimension {list(tensor.dims)}")
    if tensor.HasField("raw_data"):
        expected = tensor_nbytes(tensor)
        actual = len(tensor.raw_data)
        if expected is not None and actual != expected:
            raise LoadError(model_path, f"tensor {tensor.name!r} has {actual} bytes of data but its shape "
                                        f"{list(tensor.dims)} and type {_type_name(tensor.data_type)} need {expected}")


def to_array(tensor: onnx.TensorProto, model_path: str, base_dir: Path) -> np.ndarray:
    """The tensor's values; external data is read from disk here and only here.

    A malformed tensor (unknown type, data that does not fit its shape, bad external reference) raises
    LoadError naming the file and the tensor, never a numpy or protobuf exception."""
    if tensor.HasField("segment"):
        raise LoadError(model_path, f"tensor {tensor.name!r} is a segment of a tensor, which ONNX does not support")
    if is_external(tensor):
        if tensor.data_type not in _KNOWN_TYPES:
            raise LoadError(model_path, f"tensor {tensor.name!r} has unknown element type {tensor.data_type}")
        direct = _DIRECT_DTYPES.get(tensor.data_type)
        if direct is not None:
            dims = tuple(tensor.dims)
            values = np.frombuffer(read_external_into(model_path, base_dir, tensor), dtype=direct)
            return values.reshape(dims).astype(values.dtype.newbyteorder("="), copy=False)
        raw = read_external_bytes(model_path, base_dir, tensor)
        inline = onnx.TensorProto()
        inline.CopyFrom(tensor)
        del inline.external_data[:]
        inline.data_location = onnx.TensorProto.DEFAULT
        inline.raw_data = raw
        tensor = inline
    else:
        _check_inline(model_path, tensor)
    try:
        return numpy_helper.to_array(tensor)
    except Exception as exc:  # numpy/onnx raise many types on malformed data; all mean the same here
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise LoadError(model_path, f"tensor {tensor.name!r} is malformed ({detail})") from None


MAX_MATERIALIZED_BYTES = 256 << 20  # a ConstantOfShape bnlint fills in itself; BN parameters are far smaller


def constant_of_shape(model_path: str, node_label: str, shape: np.ndarray, fill: np.ndarray | None) -> np.ndarray:
    """The value of a ConstantOfShape node, refusing shapes that are not non-negative integer vectors or
    that would allocate more than MAX_MATERIALIZED_BYTES (a memory bomb costs a few bytes of protobuf)."""
    if fill is None:
        fill = np.zeros(1, np.float32)
    where = f"ConstantOfShape {node_label!r}"
    if fill.size != 1:
        raise LoadError(model_path, f"{where} has a `value` with {fill.size} elements (needs exactly 1)")
    if shape.dtype.kind not in "iu" or shape.ndim > 1:
        raise LoadError(model_path, f"{where} has a shape input of type {shape.dtype} and rank {shape.ndim}, "
                                    "not a 1-D integer tensor")
    dims = tuple(int(d) for d in shape.reshape(-1))
    if any(d < 0 for d in dims):
        raise LoadError(model_path, f"{where} has a negative dimension in its shape {list(dims)}")
    count = 1
    for dim in dims:
        count *= dim
    if count * fill.dtype.itemsize > MAX_MATERIALIZED_BYTES:
        raise LoadError(model_path, f"{where} would allocate {count * fill.dtype.itemsize} bytes (shape "
                                    f"{list(dims)}), over bnlint's {MAX_MATERIALIZED_BYTES >> 20} MiB limit for "
                                    "constants it computes")
    return np.full(dims, fill.reshape(-1)[0], dtype=fill.dtype)
