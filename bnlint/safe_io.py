"""Write a model so that a crash, a full disk or a failed check never leaves a partial or wrong file.

The model goes to a temporary file in the target folder, is fsynced, re-loaded and checked, and only then
renamed over the target (os.replace is atomic within a folder). External data goes to a new file next to
the target whose name no existing file has: onnx.save appends to an existing data file of the same name,
so reusing one would corrupt it, and the input's own data file must never be touched. External tensors
are copied block by block from their source, so a multi-GB model is never held in memory twice.
"""

from __future__ import annotations

import errno
import os
import signal
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from bnlint import isolation
from bnlint.errors import BnlintError, LoadError
from bnlint.graph import _attribute_graphs
from bnlint.inline_writer import detached_data, plan_inline, write_plan
from bnlint.onnx_loader import PROTOBUF_LIMIT, iter_all_tensors, load_onnx
from bnlint.tensors import check_external_reference, external_info, is_external, open_external, tensor_nbytes

EXTERNAL_THRESHOLD = 1024  # bytes: smaller tensors stay inline, as onnx.save does
_ALIGN_SMALL, _ALIGN_LARGE, _LARGE = 64, 4096, 1 << 20
_COPY_BLOCK = 16 << 20
_MARGIN = 64 << 20  # leave room below protobuf's 2 GiB for everything that is not tensor data


class WriteError(BnlintError):
    """The output could not be written; nothing was left behind."""


@dataclass
class PendingSave:
    """A fully written and checked model under a temporary name, waiting to be renamed into place.

    While one exists, SIGTERM (what CI runners send on cancel) raises SystemExit instead of killing the
    process outright, so the callers' cleanup removes the temporary files as it does on Ctrl-C."""

    out_path: Path
    temp_path: Path
    data_path: Path | None

    def __post_init__(self) -> None:
        _TerminationGuard.enter()
        self._open = True

    def commit(self) -> Path:
        try:
            os.replace(self.temp_path, self.out_path)
        except OSError as exc:
            self.discard()
            raise WriteError(f"{self.out_path}: cannot replace the file: {exc.strerror or exc}") from None
        self._close()
        _fsync_folder(self.out_path.parent)
        return self.out_path

    def discard(self) -> None:
        for path in (self.temp_path, self.data_path):
            if path is not None:
                try:
                    path.unlink()
                except FileNotFoundError:
                    pass
        self._close()

    def _close(self) -> None:
        if self._open:
            self._open = False
            _TerminationGuard.leave()


class _TerminationGuard:
    """Turns SIGTERM into SystemExit(143) while temporary files exist (main thread only)."""

    depth = 0
    previous = None

    @classmethod
    def enter(cls) -> None:
        cls.depth += 1
        if cls.depth == 1 and threading.current_thread() is threading.main_thread():
            try:
                cls.previous = signal.signal(signal.SIGTERM, cls._terminate)
            except (ValueError, OSError):  # pragma: no cover - no signals here (embedded interpreter)
                cls.previous = None

    @classmethod
    def leave(cls) -> None:
        cls.depth = max(0, cls.depth - 1)
        if cls.depth == 0 and cls.previous is not None:
            signal.signal(signal.SIGTERM, cls.previous)
            cls.previous = None

    @staticmethod
    def _terminate(signum, _frame):
        raise SystemExit(128 + signum)


def check_output_path(out_path: str | os.PathLike) -> Path:
    """The target path, refusing symlinks, folders and missing parent folders."""
    out = Path(out_path)
    if out.is_symlink():
        raise WriteError(f"{out}: refusing to write through a symlink")
    if out.is_dir():
        raise WriteError(f"{out}: is a directory")
    if not out.parent.is_dir():
        raise WriteError(f"{out}: folder {str(out.parent)!r} does not exist")
    return out


def uses_external_data(model: onnx.ModelProto) -> bool:
    """True when any initializer or Constant tensor, in any graph, stores its data externally."""
    external = onnx.TensorProto.EXTERNAL
    graphs = [model.graph]
    while graphs:
        graph = graphs.pop()
        if any(tensor.data_location == external for tensor in graph.initializer):
            return True
        for node in graph.node:
            if node.op_type == "Constant":
                if any(a.HasField("t") and a.t.data_location == external for a in node.attribute):
                    return True
            elif node.op_type in ("If", "Loop", "Scan", "SequenceMap") or node.domain not in ("", "ai.onnx"):
                graphs.extend(sub for attribute in node.attribute for sub in _attribute_graphs(attribute))
    return False


def too_large(model: onnx.ModelProto, extra_bytes: int = 0) -> bool:
    """True when the model (plus `extra_bytes` of detached tensor data) would not fit in one protobuf
    message."""
    try:
        return model.ByteSize() + extra_bytes > PROTOBUF_LIMIT - _MARGIN
    except (ValueError, OverflowError):  # pragma: no cover - protobuf refuses to size >2 GiB messages
        return True


# A rewrite adds new tensor data (counted by the fixer) plus names and small fields for the nodes it edits,
# each derived from names the file already holds (a folded weight is named after its layer) and written a
# few times: well under this many times the file's size. Below the bound, measuring the rewritten model
# (ByteSize, a pass as long as serializing it) cannot change the answer.
REWRITE_GROWTH_BOUND = 64


def fits_unmeasured(source_bytes: int, added_bytes: int) -> bool:
    """True when the rewrite of a `source_bytes` file that added `added_bytes` of tensor data (detached
    arrays included) surely fits in one protobuf message, without measuring it."""
    return REWRITE_GROWTH_BOUND * source_bytes + added_bytes < PROTOBUF_LIMIT - _MARGIN


def needs_external_data(model: onnx.ModelProto) -> bool:
    """True when the model already uses external data or would not fit in one protobuf message."""
    return too_large(model) or uses_external_data(model)


def prepare_save(model: onnx.ModelProto, out_path: str | os.PathLike, *, source_path: str | os.PathLike,
                 external: bool | None = None, arrays: dict[str, np.ndarray] | None = None,
                 checker: isolation.Awaiting | None = None) -> PendingSave:
    """Write `model` next to `out_path` under a temporary name and check it; the caller commits or
    discards. `source_path` is the model file that external tensors are read from. `arrays` holds the
    values of main-graph initializers whose TensorProto has no data (bnlint.fix's detached weights).
    `checker`: a child from start_checker(), used when the model is written inline (else the caller
    cancels it).
    The in-memory model is consumed by saving: external tensors are repointed at the new data file, and
    large inline tensors lose their data once it is written."""
    out = check_output_path(out_path)
    source = Path(source_path)
    arrays = arrays or {}
    if external is None:
        external = needs_external_data(model) or too_large(model, sum(a.nbytes for a in arrays.values()))
    data_path = temp_path = None
    _TerminationGuard.enter()
    try:
        data_path = _unique_data_path(out) if external else None
        if data_path is not None and not _write_external(model, str(source), source.parent, data_path, arrays):
            data_path.unlink()
            data_path = None
        fd, name = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp")
        temp_path = Path(name)
        with os.fdopen(fd, "w+b") as handle:
            if hasattr(os, "fchmod"):
                os.fchmod(handle.fileno(), _file_mode(out))
            if data_path is not None:
                handle.write(model.SerializeToString())
                handle.flush()
                os.fsync(handle.fileno())
            else:
                _write_checked(plan_inline(model, arrays), handle, temp_path, checker)
        if data_path is not None:
            _check_written(temp_path, model)
        return PendingSave(out, temp_path, data_path)
    except BaseException as exc:
        for path in (temp_path, data_path):
            if path is not None:
                path.unlink(missing_ok=True)
        if isinstance(exc, (OSError, LoadError, WriteError, ValueError, onnx.checker.ValidationError,
                            isolation.IsolationError)):
            detail = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            raise WriteError(f"{out}: cannot write the model: {detail}") from None
        raise
    finally:
        _TerminationGuard.leave()


def save_model_atomic(model: onnx.ModelProto, out_path: str | os.PathLike, *, source_path: str | os.PathLike,
                      external: bool | None = None, before_commit=None) -> Path:
    """Save `model` atomically; `before_commit(temp_path)` may inspect the written file and return False
    (or raise) to abandon the save, in which case nothing is left behind and None is returned."""
    pending = prepare_save(model, out_path, source_path=source_path, external=external)
    try:
        if before_commit is not None and before_commit(pending.temp_path) is False:
            pending.discard()
            return None
        return pending.commit()
    except BaseException:
        pending.discard()
        raise


def _file_mode(out: Path) -> int:
    """The replaced file's permissions, or what a new file gets under the current umask."""
    try:
        return out.stat().st_mode & 0o777
    except FileNotFoundError:
        umask = os.umask(0)
        os.umask(umask)
        return 0o666 & ~umask


def _unique_data_path(out: Path) -> Path:
    """`OUT.data`, or `OUT.1.data`, `OUT.2.data`, ... : the first name no file has; created empty to
    reserve it."""
    k = 0
    while True:
        candidate = out.with_name(f"{out.name}.data" if k == 0 else f"{out.name}.{k}.data")
        try:
            fd = os.open(candidate, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
        except FileExistsError:
            k += 1
            continue
        os.close(fd)
        return candidate


def _write_external(model: onnx.ModelProto, source_path: str, source_dir: Path, data_path: Path,
                    arrays: dict[str, np.ndarray]) -> int:
    """Copy every external tensor and move every large inline initializer (detached ones from `arrays`)
    into `data_path`; returns how many tensors went there."""
    sizes: dict[str, int] = {}
    written = 0
    with open(data_path, "r+b") as sink:
        for tensor in model.graph.initializer:  # detached weights first, found by name in the main graph
            view = detached_data(tensor, arrays)
            if view is not None:
                offset = _pad_to(sink, _alignment(len(view)))
                sink.write(view)
                _point_at(tensor, data_path.name, offset, len(view))
                written += 1
        for tensor, kind in iter_all_tensors(model):
            if kind == "sparse":
                continue
            if is_external(tensor) and external_info(tensor).get("location") == data_path.name:
                continue  # written above (no input tensor points at the new, unique data file)
            if is_external(tensor):
                check_external_reference(source_path, source_dir, tensor, sizes)
                offset = _pad_to(sink, _alignment(tensor_nbytes(tensor) or 0))
                length = _copy_external(source_path, source_dir, tensor, sink)
            elif kind == "initializer" and (tensor_nbytes(tensor) or 0) >= EXTERNAL_THRESHOLD:
                raw = tensor.raw_data if tensor.HasField("raw_data") else numpy_helper.to_array(tensor).tobytes()
                offset = _pad_to(sink, _alignment(len(raw)))
                sink.write(raw)
                length = len(raw)
                _clear_inline_data(tensor)
            else:
                continue
            _point_at(tensor, data_path.name, offset, length)
            written += 1
        sink.flush()
        os.fsync(sink.fileno())
    return written


def _alignment(size: int) -> int:
    return _ALIGN_LARGE if size >= _LARGE else _ALIGN_SMALL


def _pad_to(sink, alignment: int) -> int:
    position = sink.seek(0, os.SEEK_END)
    padding = (-position) % alignment
    if padding:
        sink.write(b"\0" * padding)
    return position + padding


def _copy_external(source_path: str, source_dir: Path, tensor: onnx.TensorProto, sink) -> int:
    """Append an unchanged external tensor's bytes to `sink`: in the kernel where it can (copy_file_range:
    no trip through Python's buffers; a reflink on XFS and Btrfs), else read and written in blocks."""
    info = external_info(tensor)
    offset = int(info.get("offset") or 0)
    length = int(info["length"]) if info.get("length") else tensor_nbytes(tensor)
    fd = open_external(source_path, source_dir, info["location"])
    try:
        position, remaining = offset, length
        if remaining and _KERNEL_COPY.works:
            copied = _kernel_copy(source_path, info["location"], fd, position, remaining, sink)
            position, remaining = position + copied, remaining - copied
        while remaining:
            block = os.pread(fd, min(remaining, _COPY_BLOCK), position)
            if not block:
                raise LoadError(source_path, f"external data {info['location']!r} shrank while being copied")
            sink.write(block)
            position += len(block)
            remaining -= len(block)
    finally:
        os.close(fd)
    return length


class _KERNEL_COPY:  # noqa: N801 - a process-wide switch
    works = hasattr(os, "copy_file_range")  # cleared once the kernel or file system refuses it


def _kernel_copy(source_path: str, location: str, fd: int, position: int, remaining: int, sink) -> int:
    """Copy up to `remaining` bytes from `fd` at `position` to the end of `sink` with copy_file_range; returns
    how many bytes it copied (fewer, down to 0, when the kernel refuses: the caller copies the rest itself)."""
    sink.flush()
    target = sink.seek(0, os.SEEK_END)
    copied = 0
    try:
        while copied < remaining:
            got = os.copy_file_range(fd, sink.fileno(), min(remaining - copied, 1 << 30), position + copied,
                                     target + copied)
            if not got:
                raise LoadError(source_path, f"external data {location!r} shrank while being copied")
            copied += got
    except OSError as exc:
        if exc.errno not in _NO_KERNEL_COPY:
            raise
        _KERNEL_COPY.works = False
    sink.seek(0, os.SEEK_END)
    return copied


_NO_KERNEL_COPY = {errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EPERM}


def _clear_inline_data(tensor: onnx.TensorProto) -> None:
    for field in ("raw_data", "float_data", "int32_data", "int64_data", "double_data", "uint64_data",
                  "string_data"):
        tensor.ClearField(field)


def _point_at(tensor: onnx.TensorProto, location: str, offset: int, length: int) -> None:
    del tensor.external_data[:]
    for key, value in (("location", location), ("offset", str(offset)), ("length", str(length))):
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value
    tensor.data_location = onnx.TensorProto.EXTERNAL


def start_checker() -> isolation.Awaiting:
    """The ONNX checker's child, started before the model to check exists: its first check in a process
    builds onnx's operator-schema registry (~10 ms, as long as the whole check of a 750-node model), which
    then overlaps the rewrite. For small models only: the model's bytes go to it through a pipe (~3 ms per
    MB), where a child forked after the rewrite shares them for free."""
    return isolation.start_awaiting(_check_skeleton_task, prepare=_build_schema_registry, timeout=300,
                                    label="the ONNX checker", die_with_parent=True)


def _build_schema_registry() -> None:
    onnx.defs.get_schema("Conv", 1)


def _write_checked(plan, handle, temp_path: Path, early: isolation.Awaiting | None = None) -> None:
    """Write the plan while the ONNX checker looks at the model in a child process (the C++ checker has
    crashed on crafted models, and a crash must not kill bnlint while temporary files exist); both must
    succeed, else the caller removes the file. The child gets the model without its large tensors' bytes
    (bnlint.inline_writer checks those sizes itself), so checking a multi-GB model costs what checking its
    graph costs, and it runs beside the write instead of before it."""
    if early is not None:
        checker = early.feed(plan.plain, sorted(plan.large), str(temp_path))
    else:
        checker = isolation.start_isolated(_check_skeleton_task, plan.plain, sorted(plan.large), str(temp_path),
                                           timeout=300, label="the ONNX checker")
    try:
        write_plan(plan, handle)
    except BaseException:
        checker.cancel()
        raise
    try:
        checker.result()
    except LoadError as exc:
        raise WriteError(exc.problem) from None


def _check_skeleton_task(plain: bytes, large: list[int], path: str) -> None:
    model: bytes | onnx.ModelProto = plain  # the checker parses bytes itself: no copy made in Python
    if large:
        model = onnx.ModelProto()
        model.ParseFromString(plain)
        initializers = model.graph.initializer
        for index in large:  # no data: declare zero elements, which the checker accepts without a value field
            initializers[index].dims[0] = 0
    try:
        onnx.checker.check_model(model, full_check=False)
    except (onnx.checker.ValidationError, ValueError) as exc:
        raise LoadError(path, f"the ONNX checker rejects the model: {isolation._first_line(exc)}") from None


def _check_written(temp_path: Path, model: onnx.ModelProto) -> None:
    """Re-load what was written (external references validated) and run the ONNX checker on it, in a
    child process: the C++ checker has crashed on crafted models, and a crash must not kill bnlint
    between writing the temporary files and removing them."""
    reloaded = load_onnx(temp_path, max_size=max(PROTOBUF_LIMIT, temp_path.stat().st_size))
    if len(reloaded.graph.node) != len(model.graph.node) or \
            [o.name for o in reloaded.graph.output] != [o.name for o in model.graph.output]:
        raise WriteError("the written model differs from the one in memory")
    try:
        isolation.check_model(temp_path, label="the ONNX checker")
    except LoadError as exc:
        raise WriteError(exc.problem) from None


def _fsync_folder(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # pragma: no cover - e.g. Windows cannot open folders
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def file_digest(path: str | os.PathLike) -> str:
    """SHA-256 of a file (tests use it to prove inputs are never modified)."""
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


