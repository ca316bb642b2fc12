"""bnlint's benchmark suite: `python bench/run.py` (full, < 15 min on 2 cores) or `--quick` (< 2 min).

Builds its models (no downloads), then measures side by side, in child processes so peak RSS is per step:
`bnlint check` against `onnx.load` (in-process and whole process), `bnlint fix --no-verify` against
load+save and the peers, verification against two onnxruntime sessions, the scaling curve across depth, and
folder mode with --jobs 1 and 2. Prints tables with ratios to the floor and writes JSON + PNG to --out.
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

import machine  # noqa: E402
import report  # noqa: E402
from measure import Cell, run_in_process, run_whole_process, warm_page_cache  # noqa: E402
from models import ModelSpec, ensure_folder, ensure_model, model_bytes  # noqa: E402

PEERS = ("onnxruntime basic", "onnxoptimizer", "onnxsim", "onnxslim", "onnxscript")
NEEDS_ORT = ("onnxruntime basic",)


@dataclass
class Plan:
    """What to build and how hard to measure it."""

    depths: list[int]
    wide: ModelSpec | None
    external: ModelSpec | None  # >2 GB with external data: check, fix, verify
    external_big: ModelSpec | None  # 4 GB with external data: check only (the "reads no weight bytes" target)
    folder_models: int
    runs: int
    folder_blocks: tuple[int, ...] = (8, 58)  # tiny (24 nodes) and ResNet-50-sized (174 nodes) models
    channels: int = 4
    scaling_reference_blocks: int = 2000
    peer_limit: float = 60.0  # a peer run slower than this is killed: "skipped: too slow (>60 s)"
    own_limit: float = 120.0  # the same for bnlint's own steps and the floors (a bigger gap is a finding)
    cell_cap: float = 60.0  # a cell repeats while its runs stay within this (always at least one run)
    budget: float = 14 * 60.0  # the whole bench, builds included; later cells are skipped past it
    extra_models: list[ModelSpec] = field(default_factory=list)


FULL = Plan(
    depths=[250, 2000, 20000, 100000],
    wide=ModelSpec("wide-1.5GB", blocks=10, channels=2048, kind="wide"),
    external=ModelSpec("external-2.4GB", blocks=16, channels=2048, external=True, kind="external"),
    external_big=ModelSpec("external-4GB", blocks=27, channels=2048, external=True, kind="external"),
    folder_models=1000,
    runs=5,
)

QUICK = Plan(
    depths=[30, 120],
    wide=None,
    external=ModelSpec("external-small", blocks=6, channels=128, external=True, kind="external"),
    external_big=None,
    folder_models=24,
    runs=3,
    scaling_reference_blocks=30,
    folder_blocks=(8,),
    peer_limit=20.0,
    cell_cap=10.0,
    budget=110.0,
)


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def two_halves_at_once(bnlint: list[str], folder: Path) -> list[str]:
    """A shell command running two `bnlint check --jobs 1` at once, each on half of the folder's groups: what
    --jobs 2 could reach on this machine with no pool overhead at all (both import, lint and exit in parallel;
    two processes on two cores also share caches and memory bandwidth)."""
    groups = sorted(str(p) for p in folder.iterdir() if p.is_dir())
    if len(groups) < 2:  # the quick bench's single group: its files, half each
        groups = sorted(str(p) for p in folder.rglob("*.onnx"))
    half = len(groups) // 2
    command = " ".join(shlex.quote(part) for part in bnlint)

    def check(part):
        return f"{command} check {' '.join(shlex.quote(g) for g in part)} --jobs 1 >/dev/null"
    # exit 1 (findings) from both is the expected outcome; anything else is reported as the command's failure
    return ["sh", "-c", f"{check(groups[:half])} & {check(groups[half:])}; a=$?; wait $!; b=$?; "
                        "[ $a -le 1 ] && [ $b -le 1 ] && exit 1; exit 2"]


def bnlint_command() -> list[str]:
    """What a user runs: the `bnlint` console script installed beside this Python, else `python -m bnlint`
    (which costs ~13 ms more here: runpy, and a different allocation pattern during the imports)."""
    script = Path(sys.executable).parent / "bnlint"
    return [str(script)] if script.is_file() else [sys.executable, "-m", "bnlint"]


class Bench:
    def __init__(self, plan: Plan, cache: Path, work: Path, only: set[str] | None = None):
        self.plan = plan
        self.only = only  # measure only these models (names as in the tables, "folder" for folder mode)
        self.cache = cache
        self.work = work
        self.started = time.monotonic()
        self.results: dict = {"models": {}, "notes": []}
        # Depth series: cell key -> (nodes, median seconds or None when too slow), to skip hopeless cells early.
        self.history: dict[str, tuple[int, float | None]] = {}
        self.series: ModelSpec | None = None  # the depth-series model being measured, if any

    # -- limits -----------------------------------------------------------------------------------------------
    def remaining(self) -> float:
        return self.plan.budget - (time.monotonic() - self.started)

    def over_budget(self) -> Cell | None:
        if self.remaining() <= 0:
            return Cell("skipped", f"bench time budget ({self.plan.budget / 60:.0f} min) used up")
        return None

    def limit(self, own: bool) -> float:
        base = self.plan.own_limit if own else self.plan.peer_limit
        return max(5.0, min(base, self.remaining() + 30))

    def budget_cut(self, cell: Cell, own: bool) -> Cell:
        """A run killed early because the budget ran out is not "too slow": say what happened."""
        base = self.plan.own_limit if own else self.plan.peer_limit
        if cell.status == "skipped" and cell.reason.startswith("too slow") and self.limit(own) < base:
            cell.reason = f"bench time budget ({self.plan.budget / 60:.0f} min) ran out during this cell"
        return cell

    def hopeless(self, key: str, own: bool) -> str | None:
        """Why a cell of the depth series need not run: it was too slow on a shallower model, or would be
        (its time there times the node ratio; a lower bound, since nothing here is faster than linear)."""
        if self.series is None or key not in self.history:
            return None
        limit = self.plan.own_limit if own else self.plan.peer_limit
        nodes, seconds = self.history[key]
        if seconds is None:
            return f"too slow (>{limit:.0f} s on the {nodes:,}-node model)"
        estimate = seconds * self.series.nodes / nodes
        if estimate > limit:
            return f"too slow (>{limit:.0f} s: ~{estimate:.0f} s expected from the {nodes:,}-node model)"
        return None

    def remember(self, key: str, cell: Cell) -> None:
        if self.series is not None:
            too_slow = cell.status == "skipped" and cell.reason.startswith("too slow")
            if cell.ok or too_slow:
                self.history[key] = (self.series.nodes, cell.median if cell.ok else None)

    # -- cells ------------------------------------------------------------------------------------------------
    def step(self, name: str, model: Path, *, own: bool, external: bool = False, keep: Path | None = None,
             rewritten: Path | None = None, paired: str | None = None) -> Cell:
        """One in-process cell; with `keep`, the last run's output is moved there for later evaluation; with
        `paired`, that floor step runs alternately with this one in the same child (extra["paired_s"])."""
        label = f"{name} | {paired}" if paired else name
        skipped = self.over_budget()
        hopeless = self.hopeless(label, own)
        if skipped or hopeless:
            cell = skipped or Cell("skipped", hopeless, runs_wanted=self.plan.runs)
            log(f"  {label:<26} {cell.describe()}")
            return cell
        out_dir = self.work / "out"
        shutil.rmtree(out_dir, ignore_errors=True)
        cell = self.budget_cut(run_in_process(name, model, out_dir, runs=self.plan.runs, kill_after=self.limit(own),
                                              cap=self.plan.cell_cap, external=external,
                                              keep_output=keep is not None, rewritten=rewritten, paired=paired),
                               own)
        if keep is not None:
            shutil.rmtree(keep, ignore_errors=True)
            if cell.ok and (out_dir / "out.onnx").exists():
                out_dir.rename(keep)
        shutil.rmtree(out_dir, ignore_errors=True)
        log(f"  {label:<26} {cell.describe()}" + (f"  peak RSS {cell.peak_rss_mb:,.0f} MB" if cell.ok else ""))
        self.remember(label, cell)
        if not paired:  # a paired cell's peak includes its floor's
            self.note_retention(name, model, cell)
        return cell

    def note_retention(self, name: str, model: Path, cell: Cell) -> None:
        """Repeated in-process calls that keep growing the peak RSS hold memory from one call to the next."""
        all_runs = cell.extra.get("peak_rss_all_runs_mb")
        if cell.ok and all_runs and len(cell.times_s) > 1 and all_runs > 1.3 * cell.peak_rss_mb + 100:
            self.results["notes"].append(
                f"{name} on {model.stem}: peak RSS {cell.peak_rss_mb:,.0f} MB after one call, {all_runs:,.0f} MB "
                f"after {len(cell.times_s)} calls in the same process (memory kept between calls)")

    def whole(self, label: str, argv: list[str], cwd: Path, *, own: bool = True) -> Cell:
        skipped = self.over_budget()
        hopeless = self.hopeless(label, own)
        if skipped or hopeless:
            cell = skipped or Cell("skipped", hopeless, runs_wanted=self.plan.runs)
            log(f"  {label:<26} {cell.describe()}")
            return cell
        cell = self.budget_cut(run_whole_process(argv, runs=self.plan.runs, kill_after=self.limit(own),
                                                 cap=self.plan.cell_cap, cwd=cwd), own)
        log(f"  {label:<26} {cell.describe()}" + (f"  peak RSS {cell.peak_rss_mb:,.0f} MB" if cell.ok else ""))
        self.remember(label, cell)
        return cell

    def evaluate(self, original: Path, kept: Path, reference: Path, ort_ok: bool) -> dict:
        """BN left and max abs error of a kept output (error only when onnxruntime loads the model in time)."""
        output = kept / "out.onnx"
        if not output.exists():
            return {}
        if self.over_budget():
            return {"error_note": "not measured (time budget)"}
        args = ("--bn-only",) if not ort_ok else ()
        cell = run_in_process("", original, kept / "eval", runs=1, kill_after=self.limit(own=False), cap=0,
                              evaluate=(original, output, reference), extra_args=args,
                              start_timeout=self.limit(own=False))
        extra = dict(cell.extra)
        if not ort_ok:
            extra["error_note"] = "not measured (onnxruntime too slow on this model)"
        elif cell.status != "ok":
            extra["error_note"] = f"{cell.status}: {cell.reason}"
        return extra

    # -- per model --------------------------------------------------------------------------------------------
    def model(self, spec: ModelSpec, *, fix: bool = True) -> None:
        if self.only is not None and spec.name not in self.only:
            return
        if self.over_budget():
            log(f"{spec.name}: skipped (time budget used up)")
            self.results["notes"].append(f"{spec.name}: not measured, the bench's time budget was used up")
            return
        t0 = time.monotonic()
        path = ensure_model(spec, self.cache)
        built = time.monotonic() - t0
        size = model_bytes(path)
        log(f"{spec.name}: {spec.nodes:,} nodes, {size / 1e6:,.0f} MB{' (external data)' if spec.external else ''}"
            f" [model ready in {built:.1f} s]")
        warm_page_cache([path, path.with_name(path.name + ".data")])
        entry = {"kind": spec.kind, "blocks": spec.blocks, "channels": spec.channels, "nodes": spec.nodes,
                 "bytes": size, "external": spec.external, "build_or_cache_s": round(built, 2)}
        self.results["models"][spec.name] = entry
        self.series = spec if spec.kind == "depth" else None
        entry["check"] = self.check(spec, path)
        if fix:
            entry["fix"], entry["verify"] = self.fix(spec, path)
        self.series = None

    def check(self, spec: ModelSpec, path: Path) -> dict:
        inproc = {"onnx.load": self.step("onnx.load", path, own=True)}
        if spec.external:
            inproc["onnx.load(graph only)"] = self.step("onnx.load(graph only)", path, own=True)
        inproc["bnlint check"] = self.step("bnlint check", path, own=True)
        inproc["check floor: tables + output"] = self.step("check floor: tables + output", path, own=True)
        if not spec.external:  # the same ratio from alternating runs in one process: both see the same noise
            inproc["bnlint check | onnx.load"] = self.step("bnlint check", path, own=True, paired="onnx.load")
        python = sys.executable
        whole = {"onnx.load": self.whole("python -c onnx.load", [
            python, "-c", "import sys, onnx; onnx.load(sys.argv[1])", str(path)], path.parent)}
        if spec.external:
            whole["onnx.load(graph only)"] = self.whole("python -c onnx.load(graph)", [
                python, "-c", "import sys, onnx; onnx.load(sys.argv[1], load_external_data=False)", str(path)],
                path.parent)
        whole["bnlint check"] = self.whole("bnlint check", [*bnlint_command(), "check", str(path)], path.parent)
        result = {"in_process": inproc, "whole_process": whole}
        if spec.blocks == self.plan.scaling_reference_blocks and spec.kind == "depth":
            result["formats"] = self.formats(path)
        return result

    def formats(self, path: Path) -> dict:
        """`check --format F` for every other output format, in-process: a renderer that scales badly with the
        number of findings (this model has two per block) shows up as a ratio far above the default's."""
        from tools import CHECK_FORMATS

        return {name: self.step(f"bnlint check --format {name}", path, own=True) for name in CHECK_FORMATS}

    def fix(self, spec: ModelSpec, path: Path) -> tuple[dict, dict]:
        work = self.work / spec.name
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        reference = work / "reference.npy"
        ext = spec.external
        fix = {"onnx load+save": self.step("onnx load+save", path, own=True, external=ext)}
        own_out = work / "bnlint"
        fix["bnlint fix --no-verify"] = self.step("bnlint fix --no-verify", path, own=True, external=ext, keep=own_out)
        rewritten = own_out / "out.onnx" if (own_out / "out.onnx").exists() else None

        verify = {"2 onnxruntime sessions": self.step("2 onnxruntime sessions", path, own=False, rewritten=rewritten)}
        ort_ok = verify["2 onnxruntime sessions"].ok  # onnxruntime loads this model in time
        if ort_ok and not rewritten:
            verify["2 onnxruntime sessions"].extra["note"] = "original model twice (no bnlint fix output)"
        if fix["bnlint fix --no-verify"].status == "not available":
            verify["bnlint fix (verify)"] = Cell("not available", fix["bnlint fix --no-verify"].reason)
        elif ort_ok:
            verify["bnlint fix (verify)"] = self.step("bnlint fix (verify)", path, own=True, external=ext)
        else:
            verify["bnlint fix (verify)"] = Cell("skipped", "onnxruntime is too slow on this model (see the sessions)")
            log(f"  {'bnlint fix (verify)':<26} skipped: onnxruntime is too slow on this model")

        if fix["bnlint fix --no-verify"].ok:
            fix["bnlint fix --no-verify"].extra.update(self.evaluate(path, own_out, reference, ort_ok))
        shutil.rmtree(own_out, ignore_errors=True)
        for tool in PEERS:
            if tool in NEEDS_ORT and not ort_ok:
                fix[tool] = Cell("skipped", f"too slow (>{self.plan.peer_limit:.0f} s: onnxruntime sessions on this "
                                            "model already were)", runs_wanted=self.plan.runs)
                log(f"  {tool:<26} {fix[tool].describe()}")
                continue
            kept = work / tool.replace(" ", "_")
            cell = self.step(tool, path, own=False, external=ext, keep=kept)
            if cell.ok:
                cell.extra.update(self.evaluate(path, kept, reference, ort_ok))
            shutil.rmtree(kept, ignore_errors=True)
            fix[tool] = cell
        shutil.rmtree(work, ignore_errors=True)
        return fix, verify

    # -- folder mode ------------------------------------------------------------------------------------------
    def folder(self) -> None:
        """--jobs 1 vs 2 over folders of small models: tiny ones, where process start and imports weigh most,
        and ResNet-50-sized ones (174 nodes, as the issue's ResNet-50 with every BN kept)."""
        if self.only is not None and "folder" not in self.only:
            return
        self.results["folders"] = []
        for blocks in self.plan.folder_blocks:
            if self.over_budget():
                self.results["notes"].append(f"folder mode ({3 * blocks} nodes each): not measured, the bench's "
                                             "time budget was used up")
                continue
            self.results["folders"].append(self.folder_of(blocks))

    def folder_of(self, blocks: int) -> dict:
        folder = ensure_folder(self.cache, self.plan.folder_models, blocks=blocks, channels=self.plan.channels)
        log(f"folder: {self.plan.folder_models:,} models of {3 * blocks} nodes")
        python = sys.executable
        bnlint = bnlint_command()
        has_jobs = "--jobs" in subprocess.run([*bnlint, "check", "--help"], capture_output=True, text=True,
                                              cwd=folder).stdout
        result = {"models": self.plan.folder_models, "nodes_each": 3 * blocks}
        result["onnx.load every file"] = self.whole("python: onnx.load each", [
            python, "-c", "import sys, pathlib, onnx\nfor p in sorted(pathlib.Path(sys.argv[1]).rglob('*.onnx')): "
            "onnx.load(p)", str(folder)], folder)
        if has_jobs:
            for jobs in (1, 2):
                result[f"bnlint check --jobs {jobs}"] = self.whole(
                    f"bnlint check --jobs {jobs}", [*bnlint, "check", str(folder), "--jobs", str(jobs)], folder)
            result[report.TWO_HALVES] = self.whole("2 x --jobs 1, half each", two_halves_at_once(bnlint, folder), folder)
        else:
            result["note"] = "this bnlint has no --jobs option: measured the default only (as --jobs 1)"
            result["bnlint check --jobs 1"] = self.whole("bnlint check", [*bnlint, "check", str(folder)], folder)
            result["bnlint check --jobs 2"] = Cell("not available", "bnlint check has no --jobs option")
        return result

    # -- everything -------------------------------------------------------------------------------------------
    def run(self) -> dict:
        """Cheap and decisive first, so a slow build still measures most things within the time budget: the
        two shallow depths, folder mode, the big external-data models, the wide model, then the deep models."""
        plan = self.plan
        depth = [ModelSpec(f"depth-{b}", blocks=b, channels=plan.channels, kind="depth") for b in plan.depths]
        for spec in depth[:2]:
            self.model(spec)
        self.folder()
        if plan.external_big:
            self.big_external(plan.external_big)
        for spec in (plan.external, plan.wide, *depth[2:]):
            if spec:
                self.model(spec)
        return self.results

    def big_external(self, spec: ModelSpec) -> None:
        """The 4 GB external-data model, check only, when the disk has room for it."""
        needed = spec.weight_bytes * 1.1
        free = shutil.disk_usage(self.cache).free
        if spec.folder(self.cache).exists() or free > needed + 8e9:
            self.model(spec, fix=False)
        else:
            self.results["notes"].append(f"{spec.name}: skipped, {free / 1e9:.0f} GB free on {self.cache} "
                                         f"(needs {needed / 1e9:.0f} GB + 8 GB margin)")


def to_json(value):
    if isinstance(value, Cell):
        return value.to_json()
    if isinstance(value, dict):
        return {k: to_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [to_json(v) for v in value]
    return value


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python bench/run.py", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small models, 3 runs, under 2 minutes (for tests)")
    parser.add_argument("--out", type=Path, default=BENCH / "results",
                        help="folder for the results JSON, text and PNG [default: bench/results]")
    parser.add_argument("--cache", type=Path, default=None,
                        help="folder for the generated models [default: $TMPDIR/bnlint-bench-cache]")
    parser.add_argument("--runs", type=int, default=None, help="runs per cell (at least 5 for the full bench)")
    parser.add_argument("--budget-minutes", type=float, default=None, help="stop measuring new cells after this")
    parser.add_argument("--models", default=None, metavar="NAMES",
                        help="comma-separated models to measure (e.g. depth-2000,depth-100000,folder) [default: all]")
    parser.add_argument("--profile", action="store_true",
                        help="instead of the bench: cProfile `bnlint check` and `bnlint fix --no-verify` on one model")
    parser.add_argument("--profile-blocks", type=int, default=20000, help="depth of the profiled model")
    return parser.parse_args(argv)


def byte_compile_bnlint() -> None:
    """Whole-process cells race numpy and onnx, whose bytecode pip compiled when it installed them. An
    editable checkout (or PYTHONDONTWRITEBYTECODE=1, set on some machines) would make every `python -m bnlint`
    recompile bnlint's ~100 modules from source (~45 ms); compile them once, as a wheel install does."""
    import importlib.util

    spec = importlib.util.find_spec("bnlint")  # finds the package without importing it (or numpy)
    if spec is None or spec.origin is None:
        return
    folder = str(Path(spec.origin).parent)
    subprocess.run([sys.executable, "-m", "compileall", "-q", folder], check=False, stdout=subprocess.DEVNULL)
    log(f"byte-compiled {folder} (as a wheel install would)")


def main(argv=None) -> int:
    import tempfile

    args = parse_args(argv)
    plan = QUICK if args.quick else FULL
    if args.runs:
        plan.runs = args.runs
    if args.budget_minutes:
        plan.budget = args.budget_minutes * 60
    cache = args.cache or Path(tempfile.gettempdir()) / "bnlint-bench-cache"
    cache.mkdir(parents=True, exist_ok=True)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.profile:
        from profiling import profile_model

        return profile_model(ModelSpec(f"depth-{args.profile_blocks}", blocks=args.profile_blocks,
                                       channels=plan.channels, kind="depth"), cache, args.out)

    info = machine.describe()
    for line in machine.summary_lines(info):
        log(line)
    byte_compile_bnlint()
    work = Path(tempfile.mkdtemp(prefix="work-", dir=cache))
    started = time.monotonic()
    try:
        only = {name.strip() for name in args.models.split(",")} if args.models else None
        results = Bench(plan, cache, work, only).run()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    results = to_json(results)
    results["machine"] = info
    results["bnlint_command"] = " ".join(bnlint_command())
    import resource

    results["settings"] = {
        # Linux charges each child's peak RSS with at least this (the parent's peak when it forks): kept small.
        "bench_process_peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "quick": args.quick, "runs": plan.runs, "peer_limit_s": plan.peer_limit, "cell_cap_s": plan.cell_cap,
        "budget_s": plan.budget, "scaling_reference_blocks": plan.scaling_reference_blocks,
        "finished_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "wall_s": round(time.monotonic() - started, 1),
    }
    results["scaling"] = report.scaling_rows(results)
    results["targets"] = report.targets(results)
    text = report.render(results)
    stem = "quick" if args.quick else "latest" if not args.models else "partial"
    (args.out / f"{stem}.json").write_text(json.dumps(results, indent=1) + "\n")
    (args.out / f"{stem}.txt").write_text(text)
    plotted = report.plot_scaling(results, args.out / f"{stem}-scaling.png")
    print(text, end="")
    print(f"\nwrote {args.out / (stem + '.json')}, {stem}.txt"
          + (f", {stem}-scaling.png" if plotted else " (no plot: matplotlib missing)")
          + f" in {results['settings']['wall_s']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
