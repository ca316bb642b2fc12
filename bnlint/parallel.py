"""Run one function over many items in worker processes, results in item order.

Linting is CPU-bound Python (protobuf parsing, graph walks), so threads would not help; each worker process
loads and lints one model at a time and sends back plain data. With one job (or one item) everything runs
in this process, without the start-up cost of a pool.
"""

from __future__ import annotations

import gc
import os
import pickle
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


WORKER_DIED = "not checked: a worker process died while linting this file (out of memory? try --jobs 1)"


def _pooled(function, items, args, workers: int, on_done, on_error) -> list:
    """The process-pool half of ordered_map: `workers` processes, each fed batch offsets through its own
    pipe, two batches ahead so it never waits for this process. Lighter than concurrent.futures (no feeder
    and manager threads, no futures; items and arguments reach each worker once, at its start): on 1,000
    small models the collecting parent used 0.075 s of CPU with ProcessPoolExecutor, 0.045 s with this.
    A worker that dies (a crash, the kernel's OOM killer) fails only the batch it was running: the batch
    queued behind it goes back to the queue and a new worker takes its place while work remains."""
    import multiprocessing  # imported here: one process (pre-commit's few files) never needs it
    from multiprocessing.connection import wait as wait_for_any

    context = _context() or multiprocessing.get_context()
    results: list = [None] * len(items)
    size = batch_size(len(items), workers)
    waiting = list(range(0, len(items), size))[::-1]  # batch offsets, next one last
    job = (function, on_error, items, size, args)
    gc.freeze()  # forked workers then share this process's objects: their collector does not write to them
    processes, finished = [], False
    pool: dict = {}  # result connection -> (task connection, offsets sent and not yet returned, in order)

    def start_worker() -> None:
        process, tasks, connection = _start_worker(context, job, pool)
        processes.append(process)
        pool[connection] = (tasks, [])
        _send_next(tasks, pool[connection][1], waiting, ahead=2)

    try:
        for _ in range(workers):
            start_worker()
        # Meanwhile this process only unpickles results: all stay alive and none forms a cycle, so automatic
        # collections would only rescan them (3x the unpickling time on 1,000 models), taking CPU from the
        # workers.
        with cyclic_gc_paused():
            while pool:
                for connection in wait_for_any(list(pool)):
                    tasks, sent = pool[connection]
                    try:
                        start, batch_results = pickle.loads(connection.recv_bytes())
                    except (EOFError, OSError):  # the worker died while running sent[0]
                        _retire(pool, connection)
                        if sent:
                            _store(results, sent[0], [on_error(item, BnlintError(WORKER_DIED))
                                                      for item in items[sent[0]:sent[0] + size]], on_done)
                            waiting.extend(reversed(sent[1:]))  # not started: next in line
                        if waiting:
                            start_worker()
                        continue
                    sent.remove(start)
                    _store(results, start, batch_results, on_done)
                    _send_next(tasks, sent, waiting, ahead=1)
                    if not sent:  # nothing left for it: the closed task pipe tells it to exit
                        _retire(pool, connection)
            # Set the results aside before the collector resumes: its next young-generation pass would
            # otherwise scan every object unpickled meanwhile (234,000 for 1,000 models: ~50 ms). The
            # unfreeze below hands them to the oldest generation, which is collected rarely.
            gc.freeze()
        finished = True
    finally:
        for connection in list(pool):
            _retire(pool, connection)
        for process in processes:
            if not finished:  # interrupted (Ctrl-C, an error here): stop the workers at once
                process.kill()
            process.join()
        gc.unfreeze()
    return results


def _start_worker(context, job: tuple, pool: dict):
    """(process, its task connection, its result connection). Each pipe end is held by one process only
    (the child's closed here after the start; a forked child closes the ends of this process it inherited:
    its own pipes' and the earlier workers'), so a worker that exits or dies shows as end-of-file at once,
    and so does this process's end of its task pipe to the worker."""
    task_reader, task_writer = context.Pipe(duplex=False)
    result_reader, result_writer = context.Pipe(duplex=False)
    inherited = []
    if context.get_start_method() == "fork":  # a fresh interpreter receives only what it is given
        inherited = [task_writer, result_reader, *pool, *(tasks for tasks, _sent in pool.values())]
    process = context.Process(target=_work, args=(task_reader, result_writer, inherited, *job), name="bnlint-worker")
    process.start()
    task_reader.close()
    result_writer.close()
    return process, task_writer, result_reader


def _send_next(tasks, sent: list, waiting: list, *, ahead: int) -> None:
    """Hand the worker up to `ahead` more batch offsets (a worker that died meanwhile: they stay in `sent`,
    and go back to the queue once its result pipe ends)."""
    for _ in range(ahead):
        if waiting:
            sent.append(waiting.pop())
            try:
                tasks.send_bytes(b"%d" % sent[-1])
            except OSError:
                return


def _retire(pool: dict, connection) -> None:
    tasks, _sent = pool.pop(connection)
    tasks.close()
    connection.close()


def _store(results: list, start: int, batch_results: list, on_done) -> None:
    for offset, result in enumerate(batch_results):
        results[start + offset] = result
        if on_done:
            on_done(result)


def _work(tasks, results, inherited, function, on_error, items, size: int, args) -> None:
    """A worker: lint the batches whose offsets arrive until the task pipe closes; results pickled here
    (a result that cannot be pickled becomes each item's error instead of killing the worker)."""
    for end in inherited:
        end.close()
    try:
        while True:
            try:
                start = int(tasks.recv_bytes())
            except EOFError:
                return
            batch = items[start:start + size]
            outcome = _guarded_batch(function, on_error, batch, args)
            try:
                payload = pickle.dumps((start, outcome), protocol=pickle.HIGHEST_PROTOCOL)
            except Exception as exc:
                payload = pickle.dumps((start, [on_error(item, exc) for item in batch]),
                                       protocol=pickle.HIGHEST_PROTOCOL)
            results.send_bytes(payload)
    except (KeyboardInterrupt, BrokenPipeError):  # the parent is stopping: leave quietly
        return
