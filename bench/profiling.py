"""Where the time goes: cProfile `bnlint check` and `bnlint fix --no-verify` on one bench model.

`python bench/run.py --profile [--profile-blocks N]` runs each step once under cProfile in a child process
(imports excluded, as in the in-process cells), saves the raw stats as `profile-<step>.prof` (open them with
snakeviz or `python -m pstats`) and prints the top functions by own time and by cumulative time.
(Not named profile.py: that would shadow the standard library module cProfile imports.)
"""

from __future__ import annotations

import io
import pstats
import subprocess
import sys
from pathlib import Path

STEPS = {"check": "bnlint check", "fix": "bnlint fix --no-verify"}
TOP = 25


def profile_model(spec, cache: Path, out: Path) -> int:
    from models import ensure_model

    path = ensure_model(spec, cache)
    print(f"profiling on {spec.name} ({spec.nodes:,} nodes): {path}", file=sys.stderr)
    texts = []
    for short, step in STEPS.items():
        stats_path = out / f"profile-{short}.prof"
        work = path.parent / f"profile-out-{short}"
        done = subprocess.run([sys.executable, __file__, step, str(path), str(work), str(stats_path)],
                              cwd=Path(__file__).parent)
        if done.returncode != 0:
            texts.append(f"== {step}: failed (exit {done.returncode})")
            continue
        texts.append(summarize(step, stats_path))
    text = "\n\n".join(texts) + "\n"
    (out / "profile.txt").write_text(text)
    print(text, end="")
    print(f"wrote {out / 'profile.txt'} and {out}/profile-*.prof")
    return 0


def summarize(step: str, stats_path: Path) -> str:
    parts = []
    for order, title in (("tottime", "own time"), ("cumulative", "cumulative time")):
        buffer = io.StringIO()
        stats = pstats.Stats(str(stats_path), stream=buffer)
        stats.strip_dirs().sort_stats(order).print_stats(TOP)
        body = buffer.getvalue()
        body = body[body.find("   ncalls"):] if "   ncalls" in body else body
        total = stats.total_tt
        parts.append(f"== {step}: top {TOP} by {title} (total {total:.2f} s)\n{body.rstrip()}")
    parts.append(f"== {step}: own time by file\n" + by_file(stats_path))
    return "\n\n".join(parts)


def by_file(stats_path: Path, top: int = 15) -> str:
    """Own time summed per source file (built-ins such as str.split counted in the file that called them):
    which component (parsing, rules, reporting, protobuf) costs what."""
    stats = pstats.Stats(str(stats_path))
    totals: dict[str, float] = {}
    for (filename, _line, function), (_cc, _nc, own, _cum, callers) in stats.stats.items():
        if filename == "~" and callers:  # a built-in: charge each caller's file with the time spent for it
            for (caller_file, _l, _f), caller_stats in callers.items():
                name = Path(caller_file).name if caller_file != "~" else "built-ins"
                totals[name] = totals.get(name, 0.0) + caller_stats[2]
        else:
            name = Path(filename).name if filename != "~" else "built-ins"
            totals[name] = totals.get(name, 0.0) + own
    total = sum(totals.values()) or 1.0
    rows = sorted(totals.items(), key=lambda item: -item[1])[:top]
    return "\n".join(f"{own:8.3f} s {100 * own / total:5.1f}%  {name}" for name, own in rows)


def _child(step: str, model: str, work: str, stats_path: str) -> None:
    """Run one step once under cProfile (the step's imports happen before profiling starts)."""
    import cProfile
    import shutil

    from tools import STEPS as TOOL_STEPS

    prepared = TOOL_STEPS[step]()
    out_dir = Path(work)
    shutil.rmtree(out_dir, ignore_errors=True)
    out_dir.mkdir(parents=True)
    profiler = cProfile.Profile()
    profiler.enable()
    prepared(Path(model), out_dir / "out.onnx", False)
    profiler.disable()
    profiler.dump_stats(stats_path)
    shutil.rmtree(out_dir, ignore_errors=True)


if __name__ == "__main__":
    _child(*sys.argv[1:5])
