"""Run crash-prone native work in a child process, so a crash becomes a one-line error, not a dead bnlint.

onnx's C++ checker and shape inference have segfaulted on crafted models, and an onnxruntime session on a
memory bomb can take the machine down. `run_isolated(fn, *args, ...)` runs `fn` in a child process with
an address-space cap (RLIMIT_AS), no core dumps and a wall-clock timeout, and returns its result. A signal,
a timeout, the memory cap or an exception in the child raises IsolationError (a BnlintError: exit code 2,
one line naming `label`); a BnlintError raised by `fn` comes back with its class and message (a
BnlintError that reports a failed allocation while a cap is set counts as hitting the cap).

The child is forked when that is safe: on Linux, with no other Python thread running and neither torch nor
onnxruntime (whose native thread pools may hold locks) imported. A fork costs about 10 ms and `fn` may be
any callable. Otherwise the child comes from a fork server that has already imported bnlint, numpy and
onnx (the first task pays about 0.4 s to start it, later ones about 20 ms); "spawn" is used off Linux.
There `fn`, its arguments and its result must be picklable (module-level functions, protos, arrays,
dataclasses).

    from bnlint.isolation import run_isolated, check_model
    check_model("model.onnx")                                  # onnx.checker, isolated
    result = run_isolated(compare_models, a, b, options, label=f"verifying {b}", timeout=600)
    helper = start_isolated(fn, *args, ...); ...; helper.result()   # started now, collected later

An isolated task may start a helper of its own (verification computes its float64 reference beside the
two sessions): die_with_parent=True makes the kernel kill the helper with the task, and
share_memory_cap() splits the task's remaining memory budget between the two.

bnlint fix/verify use it through bnlint.verify.start_verification / compare_isolated (the whole comparison
in one child, started before the rewrite) and bnlint.safe_io (the checker on the written file). A task that
allocates gigabytes can ask for huge_pages=True: a fresh interpreter whose malloc uses transparent huge pages.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import sys
import threading
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
                 memory_bytes: int | None = DEFAULT_MEMORY_BYTES, label: str | None = None,
                 timeout_hint: str | None = None, memory_hint: str | None = None, **kwargs) -> Any:
    """`fn(*args, **kwargs)` in a child process; see the module docstring for what can go wrong.

    `memory_bytes` caps the address space the task may add to what the child has at start (None: no
    new cap; a cap this process has applies to the child too); `timeout` is wall-clock seconds (None: none); `label` names the work in errors (include the
    model's file name); the hints say how to raise each limit ("raise it with --verify-timeout")."""
    return start_isolated(fn, *args, timeout=timeout, memory_bytes=memory_bytes, label=label,
                          timeout_hint=timeout_hint, memory_hint=memory_hint, **kwargs).result()


def start_isolated(fn: Callable[..., Any], *args, timeout: float | None = DEFAULT_TIMEOUT,
                   memory_bytes: int | None = DEFAULT_MEMORY_BYTES, label: str | None = None,
                   timeout_hint: str | None = None, memory_hint: str | None = None, die_with_parent: bool = False,
                   huge_pages: bool = False, **kwargs) -> Isolated:
    """run_isolated's child, started now; the caller does other work, then calls result() (or cancel()).
    The timeout counts from result(). `die_with_parent` (Linux): the kernel kills the child when this
    process dies, so work started from inside an isolated task cannot outlive it (a timeout kills that
    task with SIGKILL, which runs no cleanup). `huge_pages`: the task allocates gigabytes; see
    huge_pages_available()."""
    fresh = huge_pages and huge_pages_available()
    context = multiprocessing.get_context("spawn") if fresh else _context()
    receiver, sender = context.Pipe(duplex=False)
    child = context.Process(target=_child_main, args=(sender, fn, args, kwargs, memory_bytes, die_with_parent),
                            daemon=True)
    if fresh:
        with _huge_page_malloc():
            child.start()
    else:
        child.start()
    sender.close()
    return Isolated(child, receiver, label or getattr(fn, "__qualname__", "isolated task"), timeout, memory_bytes,
                    timeout_hint, memory_hint)


def start_awaiting(fn: Callable[..., Any], prepare: Callable[[], Any] | None = None, **options) -> Awaiting:
    """A child for `fn` started before its arguments exist: it runs `prepare()` (work that needs no
    arguments, such as building a native library's lookup tables), then waits; `feed(*args)` hands them
    over and returns the running Isolated. `options`: as for start_isolated."""
    receiver, sender = _context().Pipe(duplex=False)
    try:
        task = start_isolated(_await_arguments, receiver, fn, prepare, **options)
    finally:
        receiver.close()
    return Awaiting(task, sender)


class Awaiting:
    """A started child waiting for its arguments (start_awaiting); feed() them or cancel() it."""

    def __init__(self, task: Isolated, sender):
        self.task, self.sender = task, sender

    def feed(self, *args, **kwargs) -> Isolated:
        try:
            self.sender.send((args, kwargs))
        except OSError:  # the child died early: result() reports how
            pass
        finally:
            self.sender.close()
        return self.task

    def cancel(self) -> None:
        self.sender.close()
        self.task.cancel()


def _await_arguments(receiver, fn, prepare):
    if prepare is not None:
        prepare()
    try:
        args, kwargs = receiver.recv()
    except EOFError:  # cancelled before any arguments came
        os._exit(0)
    return fn(*args, **kwargs)


class Isolated:
    """A task running in a child process (start_isolated)."""

    def __init__(self, child, receiver, label: str, timeout, memory_bytes, timeout_hint, memory_hint):
        self.child, self.receiver, self.label, self.timeout = child, receiver, label, timeout
        self.memory_bytes, self.timeout_hint, self.memory_hint = memory_bytes, timeout_hint, memory_hint

    def cancel(self) -> None:
        """Stop the child (if it still runs) and release it; its result is dropped."""
        self.receiver.close()
        if self.child.is_alive():
            self.child.kill()
        self.child.join()

    def result(self, spent: float = 0.0) -> Any:
        """The task's return value, or IsolationError / the task's BnlintError (see run_isolated).
        `spent`: seconds of the timeout the caller already waited for the task (another way)."""
        wait = None if self.timeout is None else max(self.timeout - spent, 0.0)
        try:
            message = _receive(self.receiver, self.child, wait)
        finally:
            self.cancel()
        label, memory_bytes = self.label, self.memory_bytes
        extra = f"; {self.memory_hint}" if self.memory_hint else ""
        if message is None:
            raise _death(label, self.child.exitcode, f"probably the memory cap{extra}" if memory_bytes is not None
                         else "out of memory?")
        kind, payload = message
        if kind == "ok":
            return payload
        if kind == "timeout":
            later = f"; {self.timeout_hint}" if self.timeout_hint else ""
            raise IsolationError(f"{label}: timed out after {self.timeout:g} s (stopped{later})", "timeout")
        if kind == "memory":
            cap = _human(memory_bytes) if memory_bytes is not None else "that of the process that started it"
            raise IsolationError(f"{label}: ran out of memory (cap {cap}{extra}): {payload}", "memory")
        if kind == "bnlint":
            raise _rebuilt(*payload)
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


def _death(label: str, exitcode: int | None, memory_note: str) -> IsolationError:
    if exitcode is not None and exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = f"signal {-exitcode}"
        # a C++ allocation failure aborts; the kernel's OOM killer sends SIGKILL
        hint = f" ({memory_note})" if -exitcode in (signal.SIGABRT, signal.SIGKILL) else ""
        return IsolationError(f"{label}: crashed with {name}{hint} in an isolated process", "crash")
    return IsolationError(f"{label}: the worker process exited with code {exitcode} without a result", "crash")


def _rebuilt(module: str, name: str, path, problem, text: str) -> BnlintError:
    """The child's BnlintError as its own class when bnlint defines it (callers catch VerifyError, ...)."""
    cls = BnlintError
    if module.startswith("bnlint.") and "." not in name:
        found = getattr(sys.modules.get(module), name, None)
        if isinstance(found, type) and issubclass(found, BnlintError):
            cls = found
    if issubclass(cls, LoadError):
        return cls(path, problem) if path is not None and problem is not None else BnlintError(text)
    try:
        return cls(text)
    except TypeError:  # a subclass with another constructor
        return BnlintError(text)


def _human(size: int | None) -> str:
    if size is None:
        return "none"
    return f"{size / (1 << 30):.3g} GiB" if size >= 1 << 30 else f"{size >> 20} MiB"


# -- the child ---------------------------------------------------------------------------------------------
def _child_main(sender, fn, args, kwargs, memory_bytes, die_with_parent=False) -> None:
    import faulthandler

    faulthandler.disable()  # a crash is reported by the parent in one line, not as a stack dump here
    if die_with_parent:
        _die_with_parent()
    # A daemonic process may not start children; this one's are cancelled by the task or die with it.
    multiprocessing.current_process().daemon = False
    _limit_resources(memory_bytes)
    try:
        message = ("ok", fn(*args, **kwargs))
    except MemoryError as exc:
        message = ("memory", str(exc) or "MemoryError")
    except BnlintError as exc:
        text = str(exc)
        if memory_bytes is not None and _mentions_memory(text):  # e.g. onnxruntime's failed allocation
            message = ("memory", text)
        else:
            message = ("bnlint", (type(exc).__module__, type(exc).__qualname__, getattr(exc, "path", None),
                                  getattr(exc, "problem", None), text))
    except BaseException as exc:  # the parent reports it; nothing may escape as a traceback here
        text = _first_line(exc)
        message = ("memory" if _mentions_memory(text) else "error", text)
    try:
        sender.send(message)
    except Exception as exc:  # an unpicklable result
        sender.send(("error", f"the result could not be sent back ({_first_line(exc)})"))
    finally:
        sender.close()


def _mentions_memory(text: str) -> bool:
    return any(word in text.lower() for word in _MEMORY_WORDS)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().replace("[ONNXRuntimeError] : ", "")
    line = text.splitlines()[0] if text else ""
    return f"{type(exc).__name__}: {line}" if line else type(exc).__name__


def _die_with_parent() -> None:
    """Ask Linux to SIGKILL this process when its parent dies (prctl PR_SET_PDEATHSIG); elsewhere a no-op."""
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # 1: PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # pragma: no cover - no libc prctl
        return
    if os.getppid() == 1:  # the parent died before the request: nobody waits for this task
        os._exit(1)


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


def share_memory_cap() -> int | None:
    """Halve what this process may still add to its address space under its cap (RLIMIT_AS) and return
    the other half, the memory_bytes of a helper it starts next: together they stay within the cap it
    was given. None when it has no cap (nor the helper then)."""
    try:
        import resource
    except ImportError:  # pragma: no cover
        return None
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    used = _address_space()
    if soft == resource.RLIM_INFINITY or not used:
        return None
    share = max(soft - used, 0) // 2
    try:
        resource.setrlimit(resource.RLIMIT_AS, (used + share, hard))
    except (ValueError, OSError):  # pragma: no cover
        return None
    return share


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


# Imported by the fork server before it forks children, so each child starts with them loaded. numpy's
# OpenBLAS threads are fork-safe (it stops its pool around fork); onnxruntime and torch are not preloaded.
FORKSERVER_PRELOAD = ("__main__", "bnlint.isolation", "bnlint.onnx_loader", "bnlint.verify")
_preload_set = False


def fork_is_safe() -> bool:
    """Forking copies only the calling thread: safe unless another thread may hold a lock. Python threads
    and the native pools of torch and onnxruntime can; numpy's OpenBLAS pool handles fork itself."""
    return (sys.platform.startswith("linux") and threading.active_count() == 1
            and "torch" not in sys.modules and "onnxruntime" not in sys.modules)


def fresh_context():
    """A start method that does not copy this process's threads: the fork server on Linux (preloaded
    with bnlint's heavy imports), spawn elsewhere."""
    global _preload_set
    if not sys.platform.startswith("linux"):
        return multiprocessing.get_context("spawn")
    context = multiprocessing.get_context("forkserver")
    if not _preload_set:
        _preload_set = True
        context.set_forkserver_preload(list(FORKSERVER_PRELOAD))  # no effect once the server runs
    return context


def _context():
    """fork when safe, else a fresh interpreter."""
    return multiprocessing.get_context("fork") if fork_is_safe() else fresh_context()


def forks(huge_pages: bool = False) -> bool:
    """Whether start_isolated(..., huge_pages=huge_pages) would fork this process now: the child then
    shares this process's memory, so a large argument (a loaded model) costs nothing to hand over, where a
    fresh interpreter copies it."""
    if huge_pages and huge_pages_available():
        return False
    return _context().get_start_method() == "fork"


# glibc (2.35+) then advises transparent huge pages for the memory malloc maps; older ones ignore it.
HUGE_PAGE_TUNABLE = "glibc.malloc.hugetlb=1"
_THP_SETTING = "/sys/kernel/mm/transparent_hugepage/enabled"


def huge_pages_available() -> bool:
    """Whether a task that allocates gigabytes should run in a fresh interpreter whose malloc uses
    transparent huge pages (Linux with THP not "never"). onnxruntime copies every initializer of a model
    into fresh memory; with 4 KiB pages a 1.5 GB model costs ~400k page faults, 2 s of a 2.5 s session,
    and 2 MiB pages cut that to ~0.5 s, far more than the ~0.3 s a fresh interpreter takes to start."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        with open(_THP_SETTING, encoding="ascii") as handle:
            return "[never]" not in handle.read()
    except OSError:
        return False


class _huge_page_malloc:
    """GLIBC_TUNABLES with HUGE_PAGE_TUNABLE while a fresh interpreter starts (it reads them at start)."""

    def __enter__(self):
        self.before = os.environ.get("GLIBC_TUNABLES")
        os.environ["GLIBC_TUNABLES"] = f"{self.before}:{HUGE_PAGE_TUNABLE}" if self.before else HUGE_PAGE_TUNABLE

    def __exit__(self, *exc_info):
        if self.before is None:
            os.environ.pop("GLIBC_TUNABLES", None)
        else:
            os.environ["GLIBC_TUNABLES"] = self.before


# -- ready-made isolated tasks -----------------------------------------------------------------------------
def _check_model_task(path: str, full_check: bool) -> None:
    import onnx

    try:
        onnx.checker.check_model(path, full_check=full_check)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError, ValueError) as exc:
        raise LoadError(path, f"the ONNX checker rejects the model: {_first_line(exc)}") from None


def check_model(path: str | os.PathLike, *, full_check: bool = False, timeout: float | None = 300,
                memory_bytes: int | None = DEFAULT_MEMORY_BYTES, label: str | None = None) -> None:
    """onnx.checker.check_model on a file (external data included), isolated; LoadError when it rejects
    the model, IsolationError when it crashes or runs away (`label` names it; default: the path)."""
    run_isolated(_check_model_task, str(path), full_check, timeout=timeout, memory_bytes=memory_bytes,
                 label=label or f"{path}: onnx checker")


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
