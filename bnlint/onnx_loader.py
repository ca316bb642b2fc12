"""Read an ONNX file into a ModelProto safely, without reading its external weights.

Model files come from contributors' commits, so nothing here trusts them: the path must be a regular file
(a symlink only when it points inside the working tree; never a FIFO, device or folder) under a size cap;
the bytes are parsed as binary protobuf whatever the extension (onnx.load switches to text parsers for some
extensions) after a sniff that names what the file really is (Git LFS pointer, zip, pickle, ...); the IR
and opset versions must be ones the installed onnx knows; and every external data reference is validated
(see bnlint.tensors) without reading a weight byte.

Checks over every node (cycles, duplicate outputs, attribute types, subgraph depth) happen where bnlint's
graph view already touches those nodes (bnlint.graph calls `check_acyclic`, `checked_attribute_value`
and `check_subgraph_depth`), so loading stays within a small factor of protobuf parsing itself.
"""

from __future__ import annotations

import contextlib
import os
import stat
from collections import deque
from functools import lru_cache
from pathlib import Path
from typing import NamedTuple

import onnx
import onnx.defs
from google.protobuf.message import DecodeError

from bnlint.errors import LoadError
from bnlint.tensors import LFS_MAGIC, LFS_MESSAGE, check_external_reference

GiB = 1 << 30
DEFAULT_MAX_MODEL_SIZE = 16 * GiB
PROTOBUF_LIMIT = 2 * GiB  # protobuf cannot hold a larger message; bigger weights must be external data
MAX_SUBGRAPH_DEPTH = 16  # If/Loop/Scan nesting; real models stay below 5, protobuf itself stops near 31
ONNX_DOMAINS = ("", "ai.onnx")

_max_model_size = DEFAULT_MAX_MODEL_SIZE

_PICKLE = "this is a Python pickle (a PyTorch checkpoint?), not an ONNX model; bnlint never unpickles files"
_SIGNATURES = (
    (LFS_MAGIC, LFS_MESSAGE),
    (b"PK\x03\x04", "this is a zip archive (a PyTorch checkpoint, TorchScript or .pt2?), not an ONNX model"),
    (b"PK\x05\x06", "this is an empty zip archive, not an ONNX model"),
    (b"\x80\x02", _PICKLE), (b"\x80\x03", _PICKLE), (b"\x80\x04", _PICKLE), (b"\x80\x05", _PICKLE),
    (b"\x1f\x8b", "this is gzip-compressed; decompress it first"),
    (b"\x89HDF", "this is an HDF5 file (Keras?), not an ONNX model"),
    (b"\x93NUMPY", "this is a NumPy .npy array, not an ONNX model"),
    (b"ir_version", "this looks like ONNX text format; bnlint reads binary .onnx files"),
    (b"<", "this looks like ONNX text syntax; bnlint reads binary .onnx files"),
)
_KINDS = (
    (stat.S_ISDIR, "is a directory, not an ONNX file"),
    (stat.S_ISFIFO, "is a named pipe (FIFO), not a regular file"),
    (stat.S_ISCHR, "is a character device, not a regular file"),
    (stat.S_ISBLK, "is a block device, not a regular file"),
    (stat.S_ISSOCK, "is a socket, not a regular file"),
)
_READ_FLAGS = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0) \
    | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)


# -- limits --------------------------------------------------------------------------------------------
def max_model_size() -> int:
    return _max_model_size


@contextlib.contextmanager
def model_size_limit(size: int | None):
    """Apply a model-file size cap (bytes) for the duration of a block; None keeps the current one.

    A process-wide setting rather than a parameter threaded through every front end. Worker processes
    started fresh (forkserver, spawn) do not inherit it, so the cap travels in the options of the work
    (LintOptions.max_model_size, VerifyOptions.max_model_size) and is applied where the loading happens."""
    global _max_model_size
    previous = _max_model_size
    if size is not None:
        _max_model_size = size
    try:
        yield
    finally:
        _max_model_size = previous


def _human(size: int) -> str:
    for unit, factor in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if size >= factor:
            return f"{size / factor:.3g} {unit}"
    return f"{size} bytes"


# -- the file ------------------------------------------------------------------------------------------
@lru_cache(maxsize=8)
def _working_tree(cwd: str) -> str:
    """The enclosing Git working tree of `cwd` (the folder holding `.git`), else `cwd` itself."""
    folder = Path(cwd)
    for candidate in (folder, *folder.parents):
        if (candidate / ".git").exists():
            return str(candidate)
    return str(folder)


def _symlink_target(path: str) -> str:
    """Where a symlinked model points, refusing targets outside the working tree."""
    target = os.path.realpath(path)
    tree = _working_tree(os.path.realpath(os.getcwd()))
    try:
        inside = os.path.commonpath([tree, target]) == tree
    except ValueError:  # different drives
        inside = False
    if not inside:
        raise LoadError(path, f"is a symlink to {target}, outside the working tree {tree}; "
                              "bnlint follows symlinks only within it (pass the target's path instead)")
    return target


def read_model_bytes(path: str, max_size: int | None = None) -> bytes:
    """The file's bytes, after checking it is a non-empty regular file under the size cap.

    The file is opened without following symlinks or blocking (a FIFO swapped in after the check is
    caught by fstat), so what is checked is what is read."""
    limit = max_model_size() if max_size is None else max_size
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        raise LoadError(path, "no such file") from None
    except OSError as exc:
        raise LoadError(path, f"cannot read: {exc.strerror}") from None
    target = path
    if stat.S_ISLNK(info.st_mode):
        target = _symlink_target(path)
        try:
            info = os.lstat(target)
        except OSError:
            raise LoadError(path, "is a broken symlink") from None
    _check_kind(path, info)
    try:
        fd = os.open(target, _READ_FLAGS)
    except OSError as exc:
        raise LoadError(path, f"cannot read: {exc.strerror}") from None
    with open(fd, "rb", closefd=True) as handle:
        info = os.fstat(handle.fileno())
        _check_kind(path, info)
        if info.st_size == 0:
            raise LoadError(path, "the file is empty")
        if info.st_size > limit:
            raise LoadError(path, f"the file is {_human(info.st_size)}, over the {_human(limit)} limit "
                                  "(raise it with --max-model-size or `max-model-size` in the config)")
        if info.st_size > PROTOBUF_LIMIT:
            raise LoadError(path, f"the file is {_human(info.st_size)}; an ONNX protobuf cannot exceed 2 GiB "
                                  "(store weights as external data)")
        data = handle.read(info.st_size + 1)
    if len(data) != info.st_size:
        raise LoadError(path, "the file changed size while being read")
    return data


def _check_kind(path: str, info: os.stat_result) -> None:
    for test, problem in _KINDS:
        if test(info.st_mode):
            raise LoadError(path, problem)
    if not stat.S_ISREG(info.st_mode):
        raise LoadError(path, "is not a regular file")


# -- the protobuf --------------------------------------------------------------------------------------
def parse_model(path: str, data: bytes) -> onnx.ModelProto:
    """Parse protobuf bytes into a ModelProto, naming what the bytes are when they are not ONNX."""
    for signature, problem in _SIGNATURES:
        if data.startswith(signature):
            if signature == b"<" and b"ir_version" not in data[:4096] and b"opset_import" not in data[:4096]:
                continue
            raise LoadError(path, problem)
    model = onnx.ModelProto()
    try:
        model.ParseFromString(data)
    except (DecodeError, RuntimeError, ValueError, TypeError) as exc:
        detail = shown(str(exc).strip() or type(exc).__name__, 200)
        if "MaxDepth" in detail or "recursion" in detail.lower():
            raise LoadError(path, "not a valid ONNX model (messages nested too deeply: subgraphs inside "
                                  f"subgraphs beyond protobuf's depth limit; bnlint accepts {MAX_SUBGRAPH_DEPTH} "
                                  "levels)") from None
        raise LoadError(path, f"not a valid ONNX model (protobuf decode failed: {detail})") from None
    if model.ir_version <= 0 or not model.HasField("graph"):
        raise LoadError(path, "not a valid ONNX model (no IR version or no graph; truncated or not ONNX)")
    if not model.opset_import and model.ir_version >= 3:
        raise LoadError(path, "not a valid ONNX model (no opset_import)")
    return model


def check_versions(path: str, model: onnx.ModelProto) -> None:
    """IR and opset versions bnlint can interpret; custom domains are opaque to lint and always accepted.

    An `ai.onnx` opset newer than the installed onnx knows is an error: BatchNormalization and Dropout
    changed meaning across opsets before, and guessing would make findings and rewrites wrong."""
    if model.ir_version > onnx.IR_VERSION:
        raise LoadError(path, f"IR version {model.ir_version} is newer than the installed onnx {onnx.__version__} "
                              f"knows (up to {onnx.IR_VERSION}); upgrade onnx")
    _check_opset_imports(path, model.opset_import, "the model")
    for function in model.functions:
        where = f"function {function.domain + '.' if function.domain else ''}{function.name}"
        _check_opset_imports(path, function.opset_import, where)


def _check_opset_imports(path: str, imports, where: str) -> None:
    newest = onnx.defs.onnx_opset_version()
    seen: dict[str, int] = {}
    for entry in imports:
        domain = "" if entry.domain == "ai.onnx" else entry.domain
        shown = entry.domain or "ai.onnx"
        if domain in seen and seen[domain] != entry.version:
            raise LoadError(path, f"{where} imports opset {shown} twice ({seen[domain]} and {entry.version})")
        seen[domain] = entry.version
        if domain == "" and entry.version < 1:
            raise LoadError(path, f"{where} imports opset {shown} version {entry.version}, which does not exist")
        if domain == "" and entry.version > newest:
            raise LoadError(path, f"{where} imports opset {shown} {entry.version}, newer than the installed onnx "
                                  f"{onnx.__version__} knows (up to {newest}); upgrade onnx")


def check_default_domain_imported(path: str, model: onnx.ModelProto) -> None:
    """Standard ops need an `ai.onnx` opset to have a meaning; checked only when none is imported."""
    if any(entry.domain in ONNX_DOMAINS for entry in model.opset_import) or model.ir_version < 3:
        return
    for graph, _depth in _iter_graphs(model):
        for node in graph.node:
            if node.domain in ONNX_DOMAINS:
                raise LoadError(path, f"node {node.name or node.op_type!r} uses standard op {node.op_type!r} but "
                                      "the model imports no ai.onnx opset")


# -- external data -------------------------------------------------------------------------------------
def _iter_graphs(model: onnx.ModelProto):
    """(graph, depth) for the main graph, its subgraphs at any depth, and training-info graphs; function
    bodies are yielded as (function, 0). Iterative, so a deep model cannot exhaust Python's stack."""
    queue = deque([(model.graph, 0)])
    queue.extend((function, 0) for function in model.functions)
    for info in model.training_info:
        queue.extend(((info.initialization, 0), (info.algorithm, 0)))
    while queue:
        graph, depth = queue.popleft()
        yield graph, depth
        for node in graph.node:
            for attribute in node.attribute:
                if attribute.HasField("g"):
                    queue.append((attribute.g, depth + 1))
                queue.extend((sub, depth + 1) for sub in attribute.graphs)


def iter_all_tensors(model: onnx.ModelProto):
    """(tensor, kind) for every TensorProto a loader could read: initializers, sparse tensors' values and
    indices, and tensor attributes of every node in every graph and function (whatever the attribute's
    declared type: onnx's external-data loader does not look at it either)."""
    for graph, _depth in _iter_graphs(model):
        for tensor in getattr(graph, "initializer", ()):
            yield tensor, "initializer"
        for sparse in getattr(graph, "sparse_initializer", ()):
            yield sparse.values, "sparse"
            yield sparse.indices, "sparse"
        for node in graph.node:
            for attribute in node.attribute:
                if attribute.HasField("t"):
                    yield attribute.t, "attribute"
                for tensor in attribute.tensors:
                    yield tensor, "attribute"
                sparse_tensors = list(attribute.sparse_tensors)
                if attribute.HasField("sparse_tensor"):
                    sparse_tensors.append(attribute.sparse_tensor)
                for sparse in sparse_tensors:
                    yield sparse.values, "sparse"
                    yield sparse.indices, "sparse"


def check_external_tensors(path: str, model: onnx.ModelProto, location_keys: int | None = None,
                           sizes: dict[str, int] | None = None) -> int:
    """Validate every external data reference (stat only, no weight byte read); returns how many.

    `location_keys` is how many times the bytes `location` occur in the file: every external_data key
    spelled `location` is such an occurrence, so once that many keys have been seen (usually after the
    initializers) the rest of the model holds none and the walk stops early. `sizes` receives each data
    file's size by location."""
    base_dir = Path(path).parent
    sizes = {} if sizes is None else sizes
    remaining = location_keys
    found = 0
    external = onnx.TensorProto.EXTERNAL
    for tensor, kind in iter_all_tensors(model):
        if remaining is not None and remaining <= 0:
            break
        if tensor.data_location != external:
            if remaining is not None and tensor.external_data:  # unused entries still hold the bytes
                remaining -= sum(1 for entry in tensor.external_data if entry.key == "location")
            continue
        if kind == "sparse":
            raise LoadError(path, f"sparse tensor {tensor.name!r} stores its data externally; bnlint refuses "
                                  "external data in sparse tensors")
        check_external_reference(path, base_dir, tensor, sizes)  # refuses a missing or repeated location
        found += 1
        if remaining is not None:
            remaining -= 1
    return found


# -- the whole load ------------------------------------------------------------------------------------
def load_onnx(path: str | os.PathLike, *, max_size: int | None = None) -> onnx.ModelProto:
    """Load a model's graph; external tensors are validated (location, file, bounds) but not read."""
    return load_onnx_counted(path, max_size=max_size).model


class LoadedOnnx(NamedTuple):
    model: onnx.ModelProto
    external_tensors: int  # how many tensors (any graph or function) keep their data in external files
    external_bytes: int = 0  # the size of the data files they are in


def load_onnx_counted(path: str | os.PathLike, *, max_size: int | None = None) -> LoadedOnnx:
    """load_onnx, also telling how many tensors are external: the fixer keeps that layout and need not walk
    the model again to find out."""
    path = str(path)
    data = read_model_bytes(path, max_size)
    model = parse_model(path, data)
    check_versions(path, model)
    check_default_domain_imported(path, model)
    nodes = len(model.graph.node) + sum(len(function.node) for function in model.functions)
    sizes: dict[str, int] = {}
    if len(data) > _BYTES_PER_NODE * max(nodes, 1):
        # weight-heavy: walking every tensor beats scanning the bytes
        count = check_external_tensors(path, model, sizes=sizes)
    else:
        keys = data.count(b"location")  # every external tensor names its file under this key
        count = check_external_tensors(path, model, keys, sizes) if keys else 0
    return LoadedOnnx(model, count, sum(sizes.values()))


# Scanning the file for `location` costs ~0.3 ns a byte, walking the model's tensors ~1 us a node: past this
# many bytes per node the walk is cheaper (a 1.5 GB file of 30 nodes: 0.5 s of scanning vs microseconds).
_BYTES_PER_NODE = 4096


# -- structure checks, called by bnlint.graph where it already walks the nodes ----------------------------
def shown(where: str, limit: int = 120) -> str:
    """A graph path or name for a one-line message: control characters escaped, long paths cut."""
    text = where.encode("unicode_escape").decode("ascii") if not where.isprintable() else where
    return text if len(text) <= limit else "..." + text[-(limit - 3):]


def check_subgraph_depth(path: str, depth: int, where: str) -> None:
    if depth > MAX_SUBGRAPH_DEPTH:
        raise LoadError(path, f"subgraphs are nested {depth} deep (at {shown(where)}); bnlint accepts at most "
                              f"{MAX_SUBGRAPH_DEPTH} levels")


def check_acyclic(path: str, where: str, producers: dict[str, int], inputs: list[tuple[str, ...]],
                  outputs: list[tuple[str, ...]], implicit: dict[int, set[str]] | None = None) -> None:
    """Refuse a graph whose data flow has a cycle.

    `producers` maps a value to its node's index, `inputs[i]` / `outputs[i]` are node i's value names and
    `implicit[i]` the outer names its subgraphs read. When nodes are in topological order no node reads a
    value that is not produced yet: two set operations per node. Only an out-of-order graph (legal for
    onnxruntime, which sorts) pays for Kahn's algorithm to tell unsorted from cyclic."""
    implicit = implicit or {}
    if _in_order(producers, inputs, outputs, implicit):
        return
    get = producers.get
    count = len(inputs)
    waiting = [0] * count
    readers: list[list[int]] = [[] for _ in range(count)]
    for index in range(count):
        for name in (*inputs[index], *implicit.get(index, ())):
            source = get(name)
            if source is not None:
                readers[source].append(index)
                waiting[index] += 1
    ready = [i for i in range(count) if waiting[i] == 0]
    while ready:
        for reader in readers[ready.pop()]:
            waiting[reader] -= 1
            if waiting[reader] == 0:
                ready.append(reader)
    stuck = [i for i in range(count) if waiting[i]]
    if stuck:
        raise LoadError(path, f"the graph {shown(where)} has a cycle ({len(stuck)} node(s) depend on their own "
                              f"output, the first is node #{stuck[0]})")


def _in_order(producers: dict[str, int], inputs, outputs, implicit: dict[int, set[str]]) -> bool:
    """True when no node reads a value produced by itself or a later node. `pending` holds the values
    not produced yet; the set operations run in C, which is what makes this cheap on huge graphs."""
    pending = set(producers)
    not_pending, produced = pending.isdisjoint, pending.difference_update
    if not implicit:
        for names, made in zip(inputs, outputs):
            if not not_pending(names):
                return False
            produced(made)
        return True
    for index, (names, made) in enumerate(zip(inputs, outputs)):
        extra = implicit.get(index)
        if not not_pending(names) or (extra and not not_pending(extra)):
            return False
        produced(made)
    return True


def check_duplicate_outputs(path: str, where: str, outputs: list[tuple[str, ...]], producers: dict[str, int]) -> None:
    """Refuse a value produced twice (the producer lookup would silently pick one). Free when `producers`
    (name -> node index) holds one entry per output; the scan runs only when counts differ."""
    if len(producers) == sum(map(len, outputs)):
        return
    seen: set[str] = set()
    for index, names in enumerate(outputs):
        for name in names:
            if name and name in seen:
                raise LoadError(path, f"the graph {shown(where)} produces value {name!r} twice (again by node #{index})")
            seen.add(name)


@lru_cache(maxsize=4096)
def _attribute_types(op_type: str, domain: str, opset: int) -> dict[str, int] | None:
    """Attribute name -> AttributeProto type for a standard op at an opset, None when onnx has no schema."""
    try:
        schema = onnx.defs.get_schema(op_type, opset, domain)
    except Exception:  # onnx raises SchemaError (not exported on every version) for unknown ops
        return None
    return {name: int(attribute.type) for name, attribute in schema.attributes.items()}


_A = onnx.AttributeProto
# The standard attributes bnlint reads on every model, with the model opsets (first, last) whose schema has
# them and their type there. Read from this table, a plain lint never asks onnx.defs, whose first lookup
# costs ~10 ms per process; tests compare the table with onnx.defs at every opset it covers.
KNOWN_ATTRIBUTES: dict[tuple[str, str], tuple[int, int, int]] = {
    ("BatchNormalization", "epsilon"): (1, 10_000, _A.FLOAT),
    ("BatchNormalization", "training_mode"): (14, 10_000, _A.INT),
    ("BatchNormalization", "spatial"): (1, 8, _A.INT),
    ("BatchNormalization", "is_test"): (1, 6, _A.INT),
    ("Conv", "group"): (1, 10_000, _A.INT),
    ("ConvTranspose", "group"): (1, 10_000, _A.INT),
    ("Gemm", "transA"): (1, 10_000, _A.INT),
    ("Gemm", "transB"): (1, 10_000, _A.INT),
    ("Gemm", "alpha"): (1, 10_000, _A.FLOAT),
    ("Gemm", "beta"): (1, 10_000, _A.FLOAT),
    ("Dropout", "ratio"): (1, 11, _A.FLOAT),
    ("Dropout", "is_test"): (1, 6, _A.INT),
    ("Constant", "value"): (1, 10_000, _A.TENSOR),
}


def _expected_type(op_type: str, domain: str, opset: int, name: str) -> int | None:
    if domain not in ONNX_DOMAINS:
        return None
    known = KNOWN_ATTRIBUTES.get((op_type, name))
    if known is not None and known[0] <= opset <= known[1]:
        return known[2]
    types = _attribute_types(op_type, "", opset)
    return types.get(name) if types else None


def checked_attribute_value(path: str, node, attribute: onnx.AttributeProto):
    """An attribute's Python value, after checking its type against the op's schema; LoadError when the
    model declares the wrong type (a string epsilon, an untyped attribute) instead of a crash later.
    `node` is a bnlint.graph.Node (op_type, domain, opset, and label for the message)."""
    op_type = node.op_type
    expected = _expected_type(op_type, node.domain, node.opset, attribute.name)
    if expected is not None and attribute.type != expected:
        raise LoadError(path, f"node {node.label!r} ({op_type}) has attribute {attribute.name!r} of type "
                              f"{_attr_type_name(attribute.type)}, but {op_type} needs {_attr_type_name(expected)}")
    kind = attribute.type
    if kind == _FLOAT:  # the common scalars, read directly (get_attribute_value's dispatch costs ~1 us)
        return attribute.f
    if kind == _INT:
        return attribute.i
    try:
        return onnx.helper.get_attribute_value(attribute)
    except Exception:  # an UNDEFINED or unknown attribute type
        raise LoadError(path, f"node {node.label!r} ({op_type}) has attribute {attribute.name!r} with no valid "
                              "type") from None


_FLOAT = onnx.AttributeProto.FLOAT
_INT = onnx.AttributeProto.INT


def _attr_type_name(value: int) -> str:
    try:
        return onnx.AttributeProto.AttributeType.Name(value)
    except ValueError:
        return str(value)
