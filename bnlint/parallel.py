"""Run one function over many items in worker processes, results in item order.

Linting is CPU-bound Python (protobuf parsing, graph walks), so threads would not help; each worker process
loads and lints one model at a time and sends back plain data. With one job (or one item) everything runs
in this process, without the start-up cost of a pool.
"""

from __future__ import annotations

import gc
import os
import sys
from collections.abc import Callable, Sequence

from bnlint.errors import BnlintError
from bnlint.gcpause import cyclic_gc_paused


def default_jobs() -> int:
    """The CPUs this process may use (affinity and cgroup-aware where Python supports it)."""
    if hasattr(os, "process_cpu_count"):
        return os.process_cpu_count() or 1
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0)) or 1
    return os.cpu_count() or 1


def _guarded(function, on_error, item, args):
    try:
        return function(item, *args)
    except Exception as exc:  # one bad item must not stop the others
        return on_error(item, exc)


def _guarded_batch(function, on_error, batch, args):
    return [_guarded(function, on_error, item, args) for item in batch]


def batch_size(items: int, workers: int) -> int:
    """Items per task: small models lint in about a millisecond, less than one round trip to a worker,
    so tasks carry several; about eight tasks per worker keep the load balanced. Capped so a batch of
    big models does not hold back the progress bar for long."""
    return max(1, min(16, items // (workers * 8)))


def _context():
    """fork is the cheapest start on Linux, but not safe once the parent runs threads (torch's and
    onnxruntime's thread pools, e.g. when bnlint is used as a library): then the fork server shared with
    bnlint.isolation is used. Other platforms keep their safe default (spawn on macOS and Windows).
    Workers started fresh inherit no process state: whatever they need travels in their arguments."""
    if not sys.platform.startswith("linux"):
        return None
    import multiprocessing

    from bnlint.isolation import fork_is_safe, fresh_context

    return multiprocessing.get_context("fork") if fork_is_safe() else fresh_context()


def ordered_map(
    function: Callable,
    items: Sequence,
    args: tuple = (),
    *,
    jobs: int = 1,
    on_done: Callable | None = None,
    on_error: Callable,
) -> list:
    """`[function(item, *args) for item in items]` over up to `jobs` processes.

    An exception in `function` becomes `on_error(item, exc)` (both must be picklable, top-level
    functions). `on_done(result)` is called in this process as each result arrives (completion order);
    the returned list is in item order.
    """
    workers = max(1, min(jobs, len(items)))
    if workers == 1:
        results = []
        for item in items:
            result = _guarded(function, on_error, item, args)
            if on_done:
                on_done(result)
            results.append(result)
        return results
    return _pooled(function, items, args, workers, on_done, on_error)


def _pooled(function, items, args, workers: int, on_done, on_error) -> list:
    """The process-pool half of ordered_map (concurrent.futures is imported only when a pool is used)."""
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
    from concurrent.futures.process import BrokenProcessPool

    results: list = [None] * len(items)
    size = batch_size(len(items), workers)
    starts = range(0, len(items), size)
    gc.freeze()  # forked workers then share this process's objects: their collector does not write to them
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=_context())
    try:
        pending = {pool.submit(_guarded_batch, function, on_error, items[start:start + size], args): start
                   for start in starts}  # starts the workers, with the collector on
        # Meanwhile this process only unpickles results: all stay alive and none forms a cycle, so automatic
        # collections would only rescan them (3x the unpickling time on 1,000 models), taking CPU from the
        # workers.
        with cyclic_gc_paused():
            while pending:
                finished, _ = wait(pending, return_when=FIRST_COMPLETED)
                for future in finished:
                    start = pending.pop(future)
                    batch = items[start:start + size]
                    try:
                        batch_results = future.result()
                    except BrokenProcessPool as exc:
                        batch_results = [on_error(item, BnlintError(
                            f"not checked: a worker process died while this file was queued or running "
                            f"(out of memory? try --jobs 1): {exc}")) for item in batch]
                    for offset, result in enumerate(batch_results):
                        results[start + offset] = result
                        if on_done:
                            on_done(result)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        gc.unfreeze()
    return results
