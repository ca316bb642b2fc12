"""Run crash-prone native work in a child process, so a crash becomes a one-line error, not a dead bnlint.

onnx's C++ checker and shape inference have segfaulted on crafted models, and an onnxruntime session on a
memory bomb can take the machine down. `run_isolated(fn, *args, ...)` runs `fn` in a child process with
an address-space cap (RLIMIT_AS), no core dumps and a wall-clock timeout, and returns its result. A signal,
a timeout, the memory cap or an exception in the child raises IsolationError (a BnlintError: exit code 2,
one line naming `label`); a BnlintError raised by `fn` comes back with its message unchanged.

The child is forked when this process has a single native thread (fast, and `fn` may be any callable);
otherwise it starts from a fresh interpreter ("forkserver" on Linux, "spawn" elsewhere), where `fn`, its
arguments and its result must be picklable (module-level functions, protos, arrays, dataclasses).

    from bnlint.isolation import run_isolated, check_model
    check_model("model.onnx")                                  # onnx.checker, isolated
    result = run_isolated(compare_models, a, b, options, label=f"verifying {b}", timeout=600)
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import sys
from collections.abc import Callable
from typing import Any

from bnlint.errors import BnlintError, LoadError

DEFAULT_TIMEOUT = 600.0  # seconds
DEFAULT_MEMORY_BYTES = 8 << 30  # address space the task may add to what the child starts with
_MEMORY_WORDS = ("bad_alloc", "failed to allocate", "out of memory", "cannot allocate memory")


class IsolationError(BnlintError):
    """Isolated work crashed, timed out, hit its memory cap or raised; `reason` says which."""

    def __init__(self, message: str, reason: str):
        super().__init__(message)
        self.reason = reason


def run_isolated(fn: Callable[..., Any], *args, timeout: float | None = DEFAULT_TIMEOUT,
                 memory_bytes: int | None = DEFAULT_MEMORY_BYTES, label: str | None = None, **kwargs) -> Any:
    """`fn(*args, **kwargs)` in a child process; see the module docstring for what can go wrong.

    `memory_bytes` caps the address space the task may add to what the child has at start (None: no
    cap); `timeout` is wall-clock seconds (None: none); `label` names the work in errors (include the
    model's file name)."""
    label = label or getattr(fn, "__qualname__", "isolated task")
    context = _context()
    receiver, sender = context.Pipe(duplex=False)
    child = context.Process(target=_child_main, args=(sender, fn, args, kwargs, memory_bytes), daemon=True)
    child.start()
    sender.close()
    try:
        message = _receive(receiver, child, timeout)
    finally:
        receiver.close()
        if child.is_alive():
            child.kill()
        child.join()
    if message is None:
        raise _death(label, child.exitcode)
    kind, payload = message
    if kind == "ok":
        return payload
    if kind == "timeout":
        raise IsolationError(f"{label}: timed out after {timeout:g} s (stopped)", "timeout")
    if kind == "memory":
        raise IsolationError(f"{label}: ran out of memory (cap {_human(memory_bytes)}; stopped): {payload}",
                             "memory")
    if kind == "bnlint":
        path, problem, text = payload
        raise LoadError(path, problem) if path is not None and problem is not None else BnlintError(text)
    raise IsolationError(f"{label}: failed: {payload}", "error")


def _receive(receiver, child, timeout: float | None):
    """The child's message, ("timeout", None) when it ran too long, or None when it died silently."""
    try:
        if not receiver.poll(timeout):
            child.kill()
            return "timeout", None
        return receiver.recv()
    except (EOFError, OSError):
        return None


def _death(label: str, exitcode: int | None) -> IsolationError:
    if exitcode is not None and exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = f"signal {-exitcode}"
        hint = " (probably the memory cap)" if -exitcode in (signal.SIGABRT, signal.SIGKILL) else ""
        return IsolationError(f"{label}: crashed with {name}{hint}; bnlint stopped it and carried on", "crash")
    return IsolationError(f"{label}: the worker process exited with code {exitcode} without a result", "crash")


def _human(size: int | None) -> str:
    if size is None:
        return "none"
    return f"{size / (1 << 30):.3g} GiB" if size >= 1 << 30 else f"{size >> 20} MiB"


# -- the child ---------------------------------------------------------------------------------------------
def _child_main(sender, fn, args, kwargs, memory_bytes) -> None:
    _limit_resources(memory_bytes)
    try:
        message = ("ok", fn(*args, **kwargs))
    except MemoryError as exc:
        message = ("memory", str(exc) or "MemoryError")
    except BnlintError as exc:
        message = ("bnlint", (getattr(exc, "path", None), getattr(exc, "problem", None), str(exc)))
    except BaseException as exc:  # the parent reports it; nothing may escape as a traceback here
        text = _first_line(exc)
        kind = "memory" if any(word in text.lower() for word in _MEMORY_WORDS) else "error"
        message = (kind, text)
    try:
        sender.send(message)
    except Exception as exc:  # an unpicklable result
        sender.send(("error", f"the result could not be sent back ({_first_line(exc)})"))
    finally:
        sender.close()


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().replace("[ONNXRuntimeError] : ", "")
    line = text.splitlines()[0] if text else ""
    return f"{type(exc).__name__}: {line}" if line else type(exc).__name__


def _limit_resources(memory_bytes: int | None) -> None:
    try:
        import resource
    except ImportError:  # pragma: no cover - Windows has no rlimits; the timeout still applies
        return
    try:
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    except (ValueError, OSError):  # pragma: no cover
        pass
    if memory_bytes is None:
        return
    limit = _address_space() + memory_bytes
    _soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    try:
        resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
    except (ValueError, OSError):  # pragma: no cover - e.g. macOS refuses RLIMIT_AS
        pass


def _address_space() -> int:
    """This process's virtual size in bytes (0 when unknown)."""
    try:
        with open("/proc/self/status", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("VmSize:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


def _native_threads() -> int:
    try:
        with open("/proc/self/status", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("Threads:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return 0


def _context():
    """fork when safe (Linux, one native thread), else a fresh interpreter."""
    if sys.platform.startswith("linux"):
        if _native_threads() == 1:
            return multiprocessing.get_context("fork")
        return multiprocessing.get_context("forkserver")
    return multiprocessing.get_context("spawn")


# -- ready-made isolated tasks -----------------------------------------------------------------------------
def _check_model_task(path: str, full_check: bool) -> None:
    import onnx

    try:
        onnx.checker.check_model(path, full_check=full_check)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError, ValueError) as exc:
        raise LoadError(path, f"the ONNX checker rejects the model: {_first_line(exc)}") from None


def check_model(path: str | os.PathLike, *, full_check: bool = False, timeout: float | None = 300,
                memory_bytes: int | None = DEFAULT_MEMORY_BYTES) -> None:
    """onnx.checker.check_model on a file (external data included), isolated; LoadError when it rejects
    the model, IsolationError when it crashes or runs away."""
    run_isolated(_check_model_task, str(path), full_check, timeout=timeout, memory_bytes=memory_bytes,
                 label=f"{path}: onnx checker")


def _infer_shapes_task(model_bytes: bytes, path: str) -> bytes:
    import onnx

    model = onnx.ModelProto()
    model.ParseFromString(model_bytes)
    try:
        return onnx.shape_inference.infer_shapes(model, strict_mode=False).SerializeToString()
    except (onnx.shape_inference.InferenceError, ValueError, RuntimeError) as exc:
        raise LoadError(path, f"shape inference failed: {_first_line(exc)}") from None


def infer_shapes(model, path: str = "model", *, timeout: float | None = 300,
                 memory_bytes: int | None = DEFAULT_MEMORY_BYTES):
    """onnx.shape_inference.infer_shapes on a ModelProto (< 2 GiB), isolated; returns the inferred proto."""
    import onnx

    inferred = run_isolated(_infer_shapes_task, model.SerializeToString(), str(path), timeout=timeout,
                            memory_bytes=memory_bytes, label=f"{path}: onnx shape inference")
    result = onnx.ModelProto()
    result.ParseFromString(inferred)
    return result
