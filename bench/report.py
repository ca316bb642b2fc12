"""Turn the bench's results into tables with ratios to the floor, the scaling curve, and the issue's targets.

Every function here reads the results dict that run.py writes as JSON (cells already in their JSON form),
so a saved results file can be re-rendered without measuring again: `python bench/report.py latest.json`.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

FIX_TOOLS = ("bnlint fix --no-verify", "onnxruntime basic", "onnxoptimizer", "onnxsim", "onnxslim", "onnxscript")
FIX_FLOOR = "onnx load+save"


def ordered(results: dict) -> list[tuple[str, dict]]:
    """Models in reading order: the depth series by depth, then the wide and external-data models."""
    rank = {"depth": 0, "wide": 1, "external": 2}
    return sorted(results["models"].items(), key=lambda item: (rank.get(item[1]["kind"], 3), item[1]["bytes"]))


def ok(cell: dict | None) -> bool:
    return bool(cell) and cell.get("status") == "ok" and cell.get("median_s") is not None


def seconds(value: float) -> str:
    if value < 0.1:
        return f"{value * 1000:.1f} ms"
    return f"{value:.3f} s" if value < 10 else f"{value:.1f} s"


def _in_unit(value: float, unit: str) -> str:
    if unit == "ms":
        return f"{value * 1000:.1f}"
    return f"{value:.3f}" if value < 10 else f"{value:.1f}"


def timing(cell: dict | None) -> str:
    """`median (min-max)` in the median's unit, n= when fewer runs than asked, or the cell's status and reason."""
    if not cell:
        return "-"
    if not ok(cell):
        return f"{cell['status']}: {cell['reason']}" if cell.get("reason") else cell["status"]
    unit = "ms" if cell["median_s"] < 0.1 else "s"
    text = f"{_in_unit(cell['median_s'], unit)} {unit} ({_in_unit(cell['min_s'], unit)}-{_in_unit(cell['max_s'], unit)})"
    if cell["runs"] < cell.get("runs_wanted", 0):
        text += f" n={cell['runs']}"
    return text


def ratio(cell: dict | None, floor: dict | None, key: str = "median_s") -> float | None:
    if not (ok(cell) and ok(floor)) or not floor.get(key) or cell.get(key) is None:
        return None
    return cell[key] / floor[key]


def paired_ratio(cell: dict | None) -> tuple[float, float, float] | None:
    """(median, min, max) of the per-round ratios of a cell run alternately with its floor (run.py `paired`):
    both times of a round come from the same process and the same minute, so the machine's drift cancels."""
    if not ok(cell):
        return None
    floors = (cell.get("extra") or {}).get("paired_s") or []
    rounds = [t / f for t, f in zip(cell["times_s"], floors) if f > 0]
    if not rounds:
        return None
    rounds.sort()
    middle = len(rounds) // 2
    median = rounds[middle] if len(rounds) % 2 else (rounds[middle - 1] + rounds[middle]) / 2
    return median, rounds[0], rounds[-1]


def paired_text(cell: dict | None) -> str:
    found = paired_ratio(cell)
    return "-" if found is None else f"{times(found[0])} ({found[1]:.2f}-{found[2]:.2f})"


def times(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.3f}x" if value < 0.01 else f"{value:.2f}x"


def megabytes(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.1f} MB" if value < 10 else f"{value:,.0f} MB"


def table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(r[i])) for r in [headers, *rows]) for i in range(len(headers))]
    lines = []
    for n, row in enumerate([headers, ["-" * w for w in widths], *rows]):
        cells = [str(c).ljust(w) if i == 0 or n == 1 else str(c).rjust(w) for i, (c, w) in enumerate(zip(row, widths))]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def _model_label(name: str, model: dict) -> str:
    return f"{name} ({model['nodes']:,} nodes, {model['bytes'] / 1e6:,.0f} MB)"


def check_tables(results: dict) -> list[str]:
    out = []
    rows = []
    for name, model in ordered(results):
        check = model.get("check")
        if not check:
            continue
        inp = check["in_process"]
        floor, graph_only, lint = inp.get("onnx.load"), inp.get("onnx.load(graph only)"), inp.get("bnlint check")
        view = inp.get("check floor: tables + output")  # absent from runs before 2026-12-07
        rows.append([
            name, f"{model['nodes']:,}", timing(floor), timing(lint), times(ratio(lint, floor)),
            paired_text(inp.get("bnlint check | onnx.load")),
            times(ratio(lint, graph_only)) if graph_only else "",
            timing(view), times(ratio(view, floor)), times(ratio(lint, view)),
            megabytes(floor and floor.get("peak_rss_mb")), megabytes(lint and lint.get("peak_rss_mb")),
            times(ratio(lint, floor, "peak_rss_mb")),
            megabytes(lint.get("read_mb")) if ok(lint) else "-",
        ])
    if rows:
        out.append("bnlint check, in-process (CLI main called in the process; imports excluded; target <= 1.5x "
                   "onnx.load; `x load, paired runs`: median (min-max) of the per-round ratios when one process runs "
                   "check and onnx.load alternately; `tables + output`: bnlint's load, node tables and printing the "
                   "same findings, without the rules that decide them)\n" +
                   table(["model", "nodes", "onnx.load", "bnlint check", "x load", "x load, paired runs",
                          "x graph-only load",
                          "tables + output", "x load", "check x it", "RSS load", "RSS check", "x RSS", "read by check"],
                         rows))
    rows = []
    for name, model in ordered(results):
        check = model.get("check")
        if not check:
            continue
        whole = check["whole_process"]
        floor, graph_only, lint = whole.get("onnx.load"), whole.get("onnx.load(graph only)"), whole.get("bnlint check")
        rows.append([name, timing(floor), timing(lint), times(ratio(lint, floor)),
                     times(ratio(lint, graph_only)) if graph_only else "",
                     megabytes(floor and floor.get("peak_rss_mb")), megabytes(lint and lint.get("peak_rss_mb"))])
    if rows:
        # runs before 2026-12-04 recorded no command: they ran `python -m bnlint`
        command = results.get("bnlint_command", "python -m bnlint")
        command = "python -m bnlint" if command.endswith(" -m bnlint") else "bnlint"
        out.append(f"bnlint check, whole process (`{command} check M` vs `python -c 'import onnx; onnx.load(M)'`; "
                   "target <= 1.3x)\n" +
                   table(["model", "python -c onnx.load", f"{command} check", "x load", "x graph-only load",
                          "RSS load", "RSS check"], rows))
    out.extend(format_table(results))
    return out


def format_table(results: dict) -> list[str]:
    """Output formats on the model that has them: time against the default `full` output and onnx.load."""
    out = []
    for name, model in ordered(results):
        formats = (model.get("check") or {}).get("formats")
        if not formats:
            continue
        inp = model["check"]["in_process"]
        floor, default = inp.get("onnx.load"), inp.get("bnlint check")
        rows = [["full (default)", timing(default), times(ratio(default, default)), times(ratio(default, floor))]]
        rows += [[fmt, timing(cell), times(ratio(cell, default)), times(ratio(cell, floor))]
                 for fmt, cell in formats.items()]
        out.append(f"bnlint check --format F on {name} (in-process; {model['blocks']:,} blocks, two findings each)\n"
                   + table(["format", "time median (min-max)", "x full", "x onnx.load"], rows))
    return out


def fix_tables(results: dict) -> list[str]:
    out = []
    for name, model in ordered(results):
        fix = model.get("fix")
        if not fix:
            continue
        floor = fix.get(FIX_FLOOR)
        rows = []
        for tool in (FIX_FLOOR, *FIX_TOOLS):
            cell = fix.get(tool)
            if cell is None:
                continue
            extra = cell.get("extra", {})
            error = extra.get("max_abs_error")
            rows.append([
                tool, timing(cell), times(ratio(cell, floor)) if tool != FIX_FLOOR else "1.00x",
                megabytes(cell.get("peak_rss_mb")) if ok(cell) else "-",
                times(ratio(cell, floor, "peak_rss_mb")) if tool != FIX_FLOOR else "1.00x",
                str(extra["count"]) if "count" in extra else "-",
                f"{error:.2e}" if error is not None else extra.get("error_note", "-"),
            ])
        out.append(f"fix on {_model_label(name, model)}: time vs load+save (target: bnlint <= 1.2x and faster than "
                   "every peer; RSS <= 1.3x)\n" + table(["tool", "time median (min-max)", "x load+save", "peak RSS", "x RSS", "BN left",
                          "max abs error"], rows))
    return out


def verify_table(results: dict) -> list[str]:
    rows = []
    for name, model in ordered(results):
        verify = model.get("verify")
        if not verify:
            continue
        floor, full = verify.get("2 onnxruntime sessions"), verify.get("bnlint fix (verify)")
        no_verify = model.get("fix", {}).get("bnlint fix --no-verify")
        overhead = full["median_s"] - no_verify["median_s"] if ok(full) and ok(no_verify) else None
        imported = (floor or {}).get("extra", {}).get("import_s") if ok(floor) else None
        with_import = ({"status": "ok", "median_s": floor["median_s"] + imported}
                       if imported is not None else None)
        rows.append([name, timing(floor), seconds(imported) if imported is not None else "-", timing(full),
                     times(ratio(full, floor)), times(ratio(full, with_import)) if with_import else "-",
                     timing(no_verify), seconds(overhead) if overhead is not None else "-"])
    if not rows:
        return []
    return ["verification: `bnlint fix` (verify on) vs creating and running the two onnxruntime sessions it needs "
            "(target <= 2.5x; `bnlint fix` also imports onnxruntime, in its verification child, which the sessions "
            "cell does before its clock starts)\n"
            + table(["model", "2 ORT sessions + runs", "import onnxruntime", "bnlint fix (verify)", "x sessions",
                     "x sessions + import", "bnlint fix --no-verify", "verify overhead"], rows)]


def scaling_rows(results: dict) -> list[dict]:
    """Time per 1,000 nodes for each step across the depth series."""
    rows = []
    for name, model in ordered(results):
        if model.get("kind") != "depth":
            continue
        check = model.get("check", {})
        fix = model.get("fix", {})
        cells = {
            "onnx.load": check.get("in_process", {}).get("onnx.load"),
            "bnlint check": check.get("in_process", {}).get("bnlint check"),
            "onnx load+save": fix.get(FIX_FLOOR),
            "bnlint fix --no-verify": fix.get("bnlint fix --no-verify"),
        }
        per_1k = {key: (cell["median_s"] * 1000 / model["nodes"] * 1000 if ok(cell) else None)
                  for key, cell in cells.items()}
        rows.append({"model": name, "blocks": model["blocks"], "nodes": model["nodes"], "ms_per_1k_nodes": per_1k})
    return rows


def scaling_ratio(rows: list[dict], key: str, small_blocks: int) -> float | None:
    """ms per 1k nodes of the deepest model over that of the `small_blocks` model (target <= 1.5)."""
    small = next((r for r in rows if r["blocks"] == small_blocks), None)
    deep = max(rows, key=lambda r: r["blocks"], default=None)
    if not small or not deep or deep is small:
        return None
    a, b = small["ms_per_1k_nodes"].get(key), deep["ms_per_1k_nodes"].get(key)
    return b / a if a and b else None


def scaling_table(results: dict) -> list[str]:
    rows = results.get("scaling") or []
    if not rows:
        return []
    keys = list(rows[0]["ms_per_1k_nodes"])
    body = [[r["model"], f"{r['nodes']:,}", *("-" if r["ms_per_1k_nodes"][k] is None else f"{r['ms_per_1k_nodes'][k]:.1f}"
                                                for k in keys)] for r in rows]
    lines = ["scaling: milliseconds per 1,000 nodes (medians; flat = linear; target: deepest within 1.5x of "
             f"{results['settings']['scaling_reference_blocks']:,} blocks)",
             table(["model", "nodes", *keys], body)]
    base = results["settings"]["scaling_reference_blocks"]
    parts = [f"{k}: {times(scaling_ratio(rows, k, base))}" for k in keys]
    lines.append(f"deepest vs {base:,} blocks: " + ", ".join(parts))
    return ["\n".join(lines)]


TWO_HALVES = "two --jobs 1 processes at once"  # folder mode's ceiling on this machine (run.two_halves_at_once)


def folder_results(results: dict) -> list[dict]:
    """Folder-mode measurements, one per model size (results of older benches had a single `folder`)."""
    if "folders" in results:
        return results["folders"]
    return [results["folder"]] if results.get("folder") else []


def folder_speedup(folder: dict) -> float | None:
    one, two = folder.get("bnlint check --jobs 1"), folder.get("bnlint check --jobs 2")
    return one["median_s"] / two["median_s"] if ok(one) and ok(two) else None


def folder_table(results: dict) -> list[str]:
    sections = []
    for folder in folder_results(results):
        floor, one, two = (folder.get("onnx.load every file"), folder.get("bnlint check --jobs 1"),
                           folder.get("bnlint check --jobs 2"))
        rows = [["python: onnx.load every file", timing(floor), "1.00x",
                 megabytes(floor and floor.get("peak_rss_mb"))],
                ["bnlint check --jobs 1", timing(one), times(ratio(one, floor)),
                 megabytes(one and one.get("peak_rss_mb"))],
                ["bnlint check --jobs 2", timing(two), times(ratio(two, floor)),
                 megabytes(two and two.get("peak_rss_mb"))]]
        halves = folder.get(TWO_HALVES)
        if halves:  # benches before 2026-12-04 did not measure it
            rows.append(["2 x --jobs 1 at once, half each", timing(halves), times(ratio(halves, floor)),
                         megabytes(halves.get("peak_rss_mb"))])
        lines = [f"folder mode: {folder['models']:,} small models ({folder['nodes_each']} nodes each), whole process"
                 + (f"; {folder['note']}" if folder.get("note") else ""),
                 table(["command", "time median (min-max)", "x load", "peak RSS (largest process)"], rows),
                 f"--jobs 2 speedup over --jobs 1: {times(folder_speedup(folder))} (target: close to 2x on 2 cores)"]
        if ok(halves) and ok(one):
            lines.append(f"this machine's ceiling, two --jobs 1 processes on half the folder each at once: "
                         f"{times(one['median_s'] / halves['median_s'])} over --jobs 1")
        sections.append("\n".join(lines))
    return sections


def _check_ratio(cells: dict) -> float | None:
    """check / onnx.load in-process: from the paired cell when the run has one, else from the two cells."""
    paired = paired_ratio(cells.get("bnlint check | onnx.load"))
    return paired[0] if paired else ratio(cells.get("bnlint check"), cells.get("onnx.load"))


def targets(results: dict) -> list[dict]:
    """The issue's targets, each with the measured worst case and whether it is met."""
    found = []

    def add(name, values, limit, better="low"):
        values = [v for v in values if v is not None]
        if not values:
            found.append({"target": name, "value": None, "limit": limit, "met": None})
            return
        worst = max(values) if better == "low" else min(values)
        met = worst <= limit if better == "low" else worst >= limit
        found.append({"target": name, "value": round(worst, 3), "limit": limit, "met": met})

    models = results["models"].values()
    checks = [m["check"] for m in models if m.get("check") and not m.get("external")]
    add("check in-process <= 1.5x onnx.load (worst model with weights in the file; paired runs where measured)",
        [_check_ratio(c["in_process"]) for c in checks], 1.5)
    add("check whole process <= 1.3x python -c onnx.load (worst model with weights in the file)",
        [ratio(c["whole_process"].get("bnlint check"), c["whole_process"].get("onnx.load")) for c in checks], 1.3)
    external_checks = [m["check"] for m in models if m.get("check") and m.get("external")]
    add("external data: check whole process <= 1.3x loading the graph alone (python -c, worst model)",
        [ratio(c["whole_process"].get("bnlint check"), c["whole_process"].get("onnx.load(graph only)"))
         for c in external_checks], 1.3)
    fixes = [m["fix"] for m in models if m.get("fix")]
    add("fix --no-verify <= 1.2x load+save (worst model)",
        [ratio(f.get("bnlint fix --no-verify"), f.get(FIX_FLOOR)) for f in fixes], 1.2)
    add("fix --no-verify peak RSS <= 1.3x load+save (worst model)",
        [ratio(f.get("bnlint fix --no-verify"), f.get(FIX_FLOOR), "peak_rss_mb") for f in fixes], 1.3)
    beats = []
    for f in fixes:
        own = f.get("bnlint fix --no-verify")
        for tool in FIX_TOOLS[1:]:
            if ok(own) and ok(f.get(tool)):
                beats.append(own["median_s"] / f[tool]["median_s"])
    add("fix --no-verify faster than every peer that finished (worst bnlint/peer time ratio < 1)", beats, 1.0)
    verifies = [m["verify"] for m in models if m.get("verify")]
    add("fix with verification <= 2.5x two onnxruntime sessions (worst model)",
        [ratio(v.get("bnlint fix (verify)"), v.get("2 onnxruntime sessions")) for v in verifies], 2.5)
    rows = results.get("scaling") or []
    base = results["settings"]["scaling_reference_blocks"]
    add(f"check: ms per 1k nodes at the deepest model <= 1.5x that at {base:,} blocks",
        [scaling_ratio(rows, "bnlint check", base)], 1.5)
    add(f"fix --no-verify: ms per 1k nodes at the deepest model <= 1.5x that at {base:,} blocks",
        [scaling_ratio(rows, "bnlint fix --no-verify", base)], 1.5)
    externals = [m for m in models if m.get("external") and m.get("check")]
    add("check on external-data models reads <= 1% of the model's bytes (worst fraction, in %)",
        [100 * m["check"]["in_process"]["bnlint check"]["read_mb"] * 1e6 / m["bytes"] for m in externals
         if ok(m["check"]["in_process"].get("bnlint check"))], 1.0)
    add("check on external-data models: peak RSS <= 10% of the model's bytes (worst fraction, in %)",
        [100 * m["check"]["whole_process"]["bnlint check"]["peak_rss_mb"] * 1e6 / m["bytes"] for m in externals
         if ok(m["check"]["whole_process"].get("bnlint check")) and m["bytes"] > 1e9], 10.0)
    for folder in folder_results(results):
        add(f"folder mode ({folder['nodes_each']}-node models): --jobs 2 speedup over --jobs 1 close to 2x (>= 1.7x)",
            [folder_speedup(folder)], 1.7, better="high")
    return found


def targets_table(found: list[dict]) -> list[str]:
    rows = [[t["target"], "-" if t["value"] is None else f"{t['value']:.2f}", f"{t['limit']}",
             {True: "met", False: "NOT met", None: "not measured"}[t["met"]]] for t in found]
    return ["targets (issue 6)\n" + table(["target", "measured", "limit", "verdict"], rows)]


def render(results: dict) -> str:
    from machine import summary_lines

    paragraphs = ["\n".join(summary_lines(results["machine"]))]
    settings = results["settings"]
    paragraphs.append(
        f"runs per cell: {settings['runs']} (median, min-max); a peer run slower than {settings['peer_limit_s']:.0f} s"
        f" is skipped; a cell stops repeating before it passes {settings['cell_cap_s']:.0f} s (n= shows fewer runs);"
        f" warm page cache; peak RSS is per child process (wait4), never below the bench's own "
        f"{settings.get('bench_process_peak_rss_mb', 0):.0f} MB")
    for section in (check_tables(results), fix_tables(results), verify_table(results), scaling_table(results),
                    folder_table(results), targets_table(targets(results))):
        paragraphs.extend(section)
    if results.get("notes"):
        paragraphs.append("\n".join(["notes:", *(f"- {note}" for note in results["notes"])]))
    return "\n\n".join(paragraphs) + "\n"


def plot_scaling(results: dict, path: Path) -> bool:
    """PNG of ms per 1,000 nodes against depth; False when matplotlib is missing or there is nothing to plot."""
    rows = results.get("scaling") or []
    if len(rows) < 2:
        return False
    try:
        import matplotlib
    except ImportError:
        return False
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    styles = {"onnx.load": ("tab:blue", "--"), "bnlint check": ("tab:blue", "-"),
              "onnx load+save": ("tab:red", "--"), "bnlint fix --no-verify": ("tab:red", "-")}
    figure, axes = plt.subplots(figsize=(7, 4.2), dpi=120)
    for key in rows[0]["ms_per_1k_nodes"]:
        points = [(r["nodes"], r["ms_per_1k_nodes"][key]) for r in rows if r["ms_per_1k_nodes"][key] is not None]
        color, line = styles.get(key, (None, "-"))
        if points:
            axes.plot(*zip(*points), marker="o", color=color, linestyle=line,
                      label=key + (" (floor)" if line == "--" else ""))
    axes.set_xscale("log")
    axes.set_yscale("log")
    axes.set_xlabel("nodes in the model (Conv+BN+Relu chain)")
    axes.set_ylabel("ms per 1,000 nodes (median)")
    axes.set_title("bnlint bench: cost per node across depth (flat = linear)")
    axes.grid(True, which="both", alpha=0.3)
    axes.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
    return True


if __name__ == "__main__":
    sys.stdout.write(render(json.loads(Path(sys.argv[1]).read_text())))
