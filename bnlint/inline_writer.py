"""Write a model as one protobuf file without ever holding its serialized bytes in memory.

`model.SerializeToString()` of a 1.5 GB model makes a 1.5 GB copy of every weight, and the folded weights
would first have to be copied into the protobuf (whose arena never gives memory back). Instead the large
main-graph initializers are written straight from their buffers: the model is serialized without their
data (`plain`, small), and their `raw_data` fields are spliced in at the wire level, where only two kinds
of length prefix change (the graph's and each large initializer's). Field order inside a message does not
matter to protobuf parsers, so appending `raw_data` after a tensor's other fields gives a valid message.
After writing, the file's size and every byte that is not tensor data are read back and compared.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np
import onnx

from bnlint.tensors import tensor_nbytes

LARGE_BYTES = 1 << 20  # inline initializers at least this large are written from their own buffers
_GRAPH_KEY = bytes([7 << 3 | 2])  # ModelProto.graph, length-delimited
_INITIALIZER_KEY = bytes([5 << 3 | 2])  # GraphProto.initializer
_RAW_DATA_KEY = bytes([9 << 3 | 2])  # TensorProto.raw_data
_COMPARE_BLOCK = 64 << 20


@dataclass
class InlinePlan:
    """The file to write, as pieces: (bytes-like, is_tensor_data)."""

    plain: bytes
    large: dict[int, memoryview]  # main-graph initializer index -> its data
    pieces: list = field(default_factory=list)

    @property
    def size(self) -> int:
        return sum(len(piece) for piece, _ in self.pieces)


def detached_data(tensor: onnx.TensorProto, arrays: dict[str, np.ndarray]) -> memoryview | None:
    """The bytes of a detached initializer (a TensorProto without data whose values are in `arrays`)."""
    array = arrays.get(tensor.name)
    if array is None or tensor.HasField("raw_data") or tensor.data_location == onnx.TensorProto.EXTERNAL:
        return None
    expected = tensor_nbytes(tensor)
    if array.nbytes != expected:
        raise ValueError(f"tensor {tensor.name!r} has {array.nbytes} bytes of data for {expected}")
    return memoryview(np.ascontiguousarray(array).reshape(-1).view(np.uint8))


def plan_inline(model: onnx.ModelProto, arrays: dict[str, np.ndarray]) -> InlinePlan:
    """Take the data of the large main-graph initializers out of `model` (consuming it) and plan the file."""
    large: dict[int, memoryview] = {}
    initializers = model.graph.initializer
    for index, tensor in enumerate(initializers):
        view = detached_data(tensor, arrays)
        if view is None and tensor.HasField("raw_data") and tensor.data_location != onnx.TensorProto.EXTERNAL \
                and (tensor_nbytes(tensor) or 0) >= LARGE_BYTES:
            raw = tensor.raw_data
            if len(raw) != tensor_nbytes(tensor):
                raise ValueError(f"tensor {tensor.name!r} has {len(raw)} bytes of data but its shape and type "
                                 f"need {tensor_nbytes(tensor)}")
            tensor.ClearField("raw_data")
            view = memoryview(raw)
        if view is not None:
            large[index] = view
    plan = InlinePlan(model.SerializeToString(), large)
    plan.pieces = _splice(plan.plain, large, len(initializers))
    return plan


def write_plan(plan: InlinePlan, handle) -> None:
    """Write, fsync, then read back the size and every piece that is not tensor data (the framing)."""
    for piece, _ in plan.pieces:
        handle.write(piece)
    handle.flush()
    os.fsync(handle.fileno())
    fd = handle.fileno()
    if os.fstat(fd).st_size != plan.size:
        raise ValueError("the written file does not have the expected size")
    position = 0
    for piece, is_data in plan.pieces:
        if not is_data:
            view = memoryview(piece)
            for start in range(0, len(view), _COMPARE_BLOCK):
                part = view[start:start + _COMPARE_BLOCK]
                if os.pread(fd, len(part), position + start) != part:
                    raise ValueError("the written file differs from the model in memory")
        position += len(piece)


def _splice(plain: bytes, large: dict[int, memoryview], count: int) -> list:
    if not large:
        return [(plain, False)]
    view = memoryview(plain)
    graphs = [entry for entry in _fields(plain, 0, len(plain)) if entry[0] == 7]
    if len(graphs) != 1 or graphs[0][1] != 2:
        raise ValueError("cannot locate the graph in the serialized model")
    _, _, graph_tag, graph_start, graph_end = graphs[0]
    inner, cursor, index = [], graph_start, 0
    for number, wire, tag, start, end in _fields(plain, graph_start, graph_end):
        if number != 5 or wire != 2:
            continue
        data = large.get(index)
        index += 1
        if data is None:
            continue
        raw_key = _RAW_DATA_KEY + varint(len(data))
        inner += [(view[cursor:tag], False), (_INITIALIZER_KEY + varint(end - start + len(raw_key) + len(data)), False),
                  (view[start:end], False), (raw_key, False), (data, True)]
        cursor = end
    if index != count:
        raise ValueError("the serialized graph does not list every initializer")
    inner.append((view[cursor:graph_end], False))
    length = sum(len(piece) for piece, _ in inner)
    return [(view[:graph_tag], False), (_GRAPH_KEY + varint(length), False), *inner, (view[graph_end:], False)]


def varint(value: int) -> bytes:
    out = bytearray()
    while True:
        low = value & 0x7F
        value >>= 7
        if not value:
            out.append(low)
            return bytes(out)
        out.append(low | 0x80)


def _read_varint(buffer: bytes, position: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        byte = buffer[position]
        position += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, position
        shift += 7
        if shift > 63:
            raise ValueError("malformed varint in the serialized model")


def _fields(buffer: bytes, start: int, end: int):
    """(number, wire type, tag offset, value offset, end offset) of each field of one message."""
    position = start
    while position < end:
        tag = position
        key, position = _read_varint(buffer, position)
        number, wire = key >> 3, key & 7
        value = position
        if wire == 0:
            _, position = _read_varint(buffer, position)
        elif wire == 1:
            position += 8
        elif wire == 2:
            length, value = _read_varint(buffer, position)
            position = value + length
        elif wire == 5:
            position += 4
        else:
            raise ValueError(f"unexpected wire type {wire} in the serialized model")
        yield number, wire, tag, value, position
    if position != end:
        raise ValueError("malformed serialized model")
