"""Child process of the bench: prepare one step, run it up to N times, stream one JSON line per run.

One child per measurement, so its peak RSS (read by the parent with wait4) belongs to that step alone. The
protocol goes to a private copy of stdout; the tools' own prints (and C-level writes to fd 1) go to
/dev/null. Usage (from bench/run.py): worker.py STEP MODEL OUT_DIR --runs N --cap SECONDS [--external]
[--keep-output] [--rewritten PATH] [--paired FLOOR_STEP]; or worker.py --evaluate ORIGINAL OUTPUT REFERENCE_NPY
[--bn-only]. With --paired, the floor step runs alternately with STEP in this child and each run event also
carries the floor's time of that round (its RSS is then not the step's alone).
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import resource
import sys
import time
import traceback
from pathlib import Path


def _protocol_stream():
    stream = os.fdopen(os.dup(1), "w", buffering=1)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.close(devnull)
    sys.stdout = open(os.devnull, "w")
    return stream


def read_chars() -> int:
    """Bytes this process got from read()-like calls so far (/proc/self/io rchar; 0 where unsupported)."""
    try:
        with open("/proc/self/io") as handle:
            for line in handle:
                if line.startswith("rchar:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def rss_mb() -> float:
    """Peak RSS of this worker or any child it has reaped (bnlint's verification child, the lint pool), in
    MB: the same quantity wait4 reports for the worker, so the first run's peak and the all-runs peak compare."""
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return max(own, children) / 1024


def clear(folder: Path) -> None:
    from models import remove_output

    remove_output(folder / "out.onnx")


def run_step(args, emit) -> None:
    from tools import STEPS, StepFailed

    started = time.perf_counter()
    given = {"rewritten": Path(args.rewritten) if args.rewritten else None, "model": Path(args.model)}

    def prepared(name: str):
        factory = STEPS[name]
        wanted = inspect.signature(factory).parameters  # a step that prepares per model names it
        return factory(**{key: value for key, value in given.items() if key in wanted and value is not None})

    try:
        step = prepared(args.step)
        floor = prepared(args.paired) if args.paired else None
    except StepFailed as exc:
        emit(event="error", message=str(exc))
        return
    except ImportError as exc:
        emit(event="error", message=f"not available: {exc.name or exc} is not installed "
                                    "(pip install -e '.[bench]')")
        return
    emit(event="ready", import_seconds=time.perf_counter() - started, rss_mb=rss_mb())
    model, out_dir = Path(args.model), Path(args.out_dir)
    out = out_dir / "out.onnx"
    spent = 0.0
    for index in range(args.runs):
        clear(out_dir)
        # Each run starts with no dirty pages of earlier runs or cells: the 1.5-2.4 GB outputs of the tools that
        # do not fsync would otherwise be written back during the next tool's clock (one peer's fix of the
        # 2.4 GB model measured 1.2 s in one run and 6 s in another). Costs nothing when nothing is dirty.
        os.sync()
        paired = {}
        if floor is not None and index % 2 == 0:  # the floor first in even rounds, second in odd ones
            paired["paired_seconds"] = _timed(floor, model, out, args.external)
        before = read_chars()
        t0 = time.perf_counter()
        try:
            step(model, out, args.external)
        except StepFailed as exc:
            emit(event="error", message=str(exc))
            return
        seconds = time.perf_counter() - t0
        read, rss = read_chars() - before, rss_mb()
        if floor is not None and index % 2 == 1:
            paired["paired_seconds"] = _timed(floor, model, out, args.external)
        emit(event="run", seconds=seconds, read_bytes=read, rss_mb=rss, **paired)
        spent += seconds
        if index + 1 < args.runs and spent + seconds > args.cap:
            emit(event="capped", runs=index + 1)
            break
    if not args.keep_output:
        clear(out_dir)
    emit(event="done")


def _timed(step, model: Path, out: Path, external: bool) -> float:
    """One run of a paired floor step, in seconds (after os.sync, as every timed run)."""
    os.sync()
    t0 = time.perf_counter()
    step(model, out, external)
    return time.perf_counter() - t0


def evaluate(original: Path, output: Path, reference: Path, emit, bn_only: bool = False) -> None:
    """BN nodes left in `output`, and its max abs difference from `original` on one seeded random input."""
    import numpy as np
    import onnx

    from tools import ort_session, random_feed

    graph = onnx.load(output, load_external_data=False).graph
    bn_left = sum(node.op_type == "BatchNormalization" for node in graph.node)
    emit(event="bn_left", count=bn_left, nodes_left=len(graph.node))
    if bn_only:
        emit(event="done")
        return
    make = ort_session(threads=0)
    if reference.exists():
        expected = np.load(reference)
    else:
        session = make(original)
        expected = session.run(None, random_feed(session))[0]
        np.save(reference, expected)
    session = make(output)
    got = session.run(None, random_feed(session))[0]
    if got.shape != expected.shape:
        emit(event="error", message=f"output shape {got.shape} != {expected.shape}")
        return
    emit(event="error_value", max_abs_error=float(np.max(np.abs(got.astype(np.float64) - expected))),
         max_abs_output=float(np.max(np.abs(expected))))
    emit(event="done")


def main() -> None:
    stream = _protocol_stream()

    def emit(**fields):
        stream.write(json.dumps(fields) + "\n")

    parser = argparse.ArgumentParser()
    parser.add_argument("step", nargs="?")
    parser.add_argument("model", nargs="?")
    parser.add_argument("out_dir", nargs="?")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--cap", type=float, default=60.0)
    parser.add_argument("--external", action="store_true")
    parser.add_argument("--keep-output", action="store_true")
    parser.add_argument("--rewritten")
    parser.add_argument("--paired", help="a floor step run alternately with STEP in this process, each round "
                                         "timed (its times come as paired_seconds in the run events)")
    parser.add_argument("--evaluate", nargs=3, metavar=("ORIGINAL", "OUTPUT", "REFERENCE"))
    parser.add_argument("--bn-only", action="store_true", help="with --evaluate: count BN, skip onnxruntime")
    args = parser.parse_args()
    if args.model:
        os.chdir(Path(args.model).parent)  # no bnlint config is discovered above the model's cache folder
    try:
        if args.evaluate:
            evaluate(*(Path(p).resolve() for p in args.evaluate), emit, bn_only=args.bn_only)
        else:
            run_step(args, emit)
    except Exception as exc:  # a crashing tool is a result ("failed: ..."), not a bench crash
        traceback.print_exc()
        emit(event="error", message=f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"[:300])


if __name__ == "__main__":
    main()
