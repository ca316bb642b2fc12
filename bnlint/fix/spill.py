"""Keep large rewritten weights on disk when the model would not fit in memory.

`bnlint fix` holds every weight it rewrites until the output is written: a model whose Conv weights all fold
needs their size in memory again. When the weights a fix could rewrite (the model's file and data files) are
more than half the memory this process can use (MemAvailable, or its cgroup's room when that is tighter),
each new weight of SPILL_BYTES or more is made in a shared mapping of an unlinked file in the output's folder:
under pressure the kernel writes its pages there and drops them, where anonymous memory would have brought
the OOM killer. The file's blocks are reserved first, so a full disk is a clean error and never a crash on a
page that cannot be written, and the file disappears with its last mapping.
"""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

SPILL_BYTES = 64 << 20


class _Spill:  # the folder new large arrays go to while a fix runs (None: memory)
    folder: Path | None = None


@contextmanager
def spilling(folder: Path | None) -> Iterator[None]:
    """Within this block, new_array puts large arrays in files in `folder` (None: in memory)."""
    previous, _Spill.folder = _Spill.folder, folder
    try:
        yield
    finally:
        _Spill.folder = previous


def new_array(shape: tuple[int, ...], dtype) -> np.ndarray:
    """An uninitialized array: in memory, or file-backed in the spill folder when large."""
    dtype = np.dtype(dtype)
    nbytes = math.prod(shape) * dtype.itemsize
    folder = _Spill.folder
    if folder is None or nbytes < SPILL_BYTES:
        return np.empty(shape, dtype)
    from bnlint.safe_io import WriteError

    try:
        with tempfile.TemporaryFile(dir=folder, prefix=".bnlint-spill-") as handle:  # unlinked at once
            if hasattr(os, "posix_fallocate"):
                os.posix_fallocate(handle.fileno(), 0, nbytes)
            else:  # pragma: no cover - macOS and Windows: sparse, as their own tools do
                handle.truncate(nbytes)
            return np.memmap(handle, dtype=dtype, mode="r+", shape=tuple(shape))  # the mapping keeps the file
    except OSError as exc:
        raise WriteError(f"{folder}: cannot keep {nbytes} bytes of rewritten weights on disk while the model "
                         f"does not fit in memory: {exc.strerror or exc}") from None


def spill_folder(out: Path, model_bytes: int) -> Path | None:
    """The output's folder when `model_bytes` of weights could not be held twice in memory, else None."""
    room = available_memory()
    if room is None or 2 * model_bytes <= room or not out.parent.is_dir():
        return None
    return out.parent


def available_memory() -> int | None:
    """Bytes this process can still take: the smaller of MemAvailable and its cgroup's room (v2 or v1);
    None where neither can be read (not Linux)."""
    known = [room for room in (_mem_available(), _cgroup_room()) if room is not None]
    return min(known) if known else None


def _mem_available() -> int | None:
    try:
        with open("/proc/meminfo", "rb") as handle:
            for line in handle:
                if line.startswith(b"MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


_UNLIMITED = 1 << 60  # cgroup v1 writes "no limit" as a huge page-rounded number


def _cgroup_room(membership: str = "/proc/self/cgroup", mounts: str = "/sys/fs/cgroup") -> int | None:
    """limit - usage of the memory cgroup this process is in, or None when unlimited or unreadable."""
    try:
        with open(membership) as handle:
            lines = handle.read().splitlines()
    except OSError:
        return None
    for line in lines:
        hierarchy, _, rest = line.partition(":")
        controllers, _, relative = rest.partition(":")
        if hierarchy == "0" and controllers == "":  # v2
            files = (mounts, "memory.max", "memory.current")
        elif "memory" in controllers.split(","):  # v1
            files = (f"{mounts}/memory", "memory.limit_in_bytes", "memory.usage_in_bytes")
        else:
            continue
        root, limit_name, usage_name = files
        for folder in (Path(root + relative), Path(root)):  # a container sees its own cgroup at the root
            room = _room(folder / limit_name, folder / usage_name)
            if room is not None:
                return room
    return None


def _room(limit_file: Path, usage_file: Path) -> int | None:
    try:
        limit_text = limit_file.read_text().strip()
        if limit_text == "max" or int(limit_text) >= _UNLIMITED:
            return None
        return max(0, int(limit_text) - int(usage_file.read_text().strip()))
    except (OSError, ValueError):
        return None
