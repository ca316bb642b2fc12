"""The fix report as text (stderr), JSON (stdout, for machines) and a diff of what would change.

Text output escapes control characters in names taken from the model (bnlint.report.safe_text); JSON
keeps names exact (json escapes control characters itself).
"""

from __future__ import annotations

from dataclasses import dataclass

from bnlint.fix.pipeline import FixOutcome
from bnlint.report.json_layout import dumps
from bnlint.report.safe_text import printable


@dataclass
class FixRun:
    """Everything `bnlint fix` reports: the rewrite, the verification and what was written."""

    model: str
    outcome: FixOutcome
    output: str | None = None
    written: bool = False
    data_file: str | None = None
    verification: object | None = None  # bnlint.verify.VerifyResult
    verified: bool | None = None
    seconds: float = 0.0
    exit_code: int = 0
    message: str | None = None
    diff: str | None = None  # render_diff text, for --diff


def _size(count: int) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if abs(count) < 1000 or unit == "GB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1000
    return str(count)


def bn_line(outcome: FixOutcome) -> str:
    bn = outcome.bn
    parts = [f"{bn.folded} into the preceding layer", f"{bn.folded_forward} forward"]
    return (f"BN folded {bn.folded + bn.folded_forward} of {bn.total} ({', '.join(parts)}), merged {bn.merged}, "
            f"kept {len(bn.kept)}")


SHOWN_PER_LIST = 10  # changes per rule, and BNs left, that the text report lists before it counts the rest


def render_text(run: FixRun, shown: int | None = SHOWN_PER_LIST) -> str:
    """The human report. A deep model can fold tens of thousands of BNs, so each list stops after `shown`
    entries and says how many it left out (None lists all; the JSON report always has every one)."""
    outcome = run.outcome
    lines = [f"bnlint fix: {run.model}" + (f" -> {run.output}" if run.output else "")]
    for result in outcome.passes:
        if not result.changes and not result.kept:
            continue
        lines.append(f"  {result.code} {result.title}: {len(result.changes)} change(s)")
        for change in result.changes[:shown]:
            where = "" if change.graph == "main" else f" [{change.graph}]"
            lines.append(f"    {change.message}{where}")
            lines.extend(f"      note: {note}" for note in change.notes)
        lines.extend(_left_out(result.changes, shown, "    "))
        left = [kept for kept in result.kept if result.code != "BN004"]  # BN004's are listed per BN below
        lines.extend(f"    left: {kept.reason}" for kept in left[:shown])
        lines.extend(_left_out(left, shown, "    "))
    lines.append(bn_line(outcome) + (":" if outcome.bn.kept else ""))
    for graph, _node, reason in outcome.bn.kept[:shown]:
        lines.append(f"  {reason}" + ("" if graph == "main" else f" [{graph}]"))
    lines.extend(_left_out(outcome.bn.kept, shown, "  "))
    removed = outcome.nodes_before - outcome.nodes_after
    lines.append(f"nodes: {outcome.nodes_before} -> {outcome.nodes_after} ({removed} removed); "
                 f"parameter bytes saved: {_size(outcome.bytes_saved)}")
    lines.extend(f"note: {note}" for note in outcome.notes)
    if run.verification is not None:
        from bnlint.verify import describe

        lines.extend(describe(run.verification).split("\n"))  # already printable
    if run.message:
        lines.append(run.message)
    if run.written:
        data = f" (+ external data {run.data_file})" if run.data_file else ""
        lines.append(f"wrote {run.output}{data} in {run.seconds:.2f}s")
    else:
        lines.append(f"wrote nothing ({run.seconds:.2f}s)")
    return "".join(printable(line) + "\n" for line in lines)


def _left_out(items: list, shown: int | None, indent: str) -> list[str]:
    """The line that counts what a capped list did not show (none when it showed everything)."""
    if shown is None or len(items) <= shown:
        return []
    return [f"{indent}... and {len(items) - shown:,} more (--show-changes lists them all; --format json has "
            "every one)"]


def render_json(run: FixRun) -> str:
    return dumps(report_dict(run), rows=REPORT_ROWS) + "\n"


REPORT_ROWS = ("changes", "kept")  # one change per line in the JSON report


def report_dict(run: FixRun) -> dict:
    """The JSON report of one run (`diff` holds the --diff text, else null)."""
    outcome = run.outcome
    data = {
        "model": run.model,
        "output": run.output,
        "written": run.written,
        "data_file": run.data_file,
        "exit_code": run.exit_code,
        "codes": list(outcome.codes),
        "passes": [{"code": r.code, "title": r.title, "changes": [c.to_dict() for c in r.changes],
                    "kept": [k.to_dict() for k in r.kept]} for r in outcome.passes],
        "bn": outcome.bn.to_dict(),
        "nodes": {"before": outcome.nodes_before, "after": outcome.nodes_after,
                  "removed": outcome.nodes_before - outcome.nodes_after},
        "parameter_bytes_saved": outcome.bytes_saved,
        "notes": outcome.notes,
        "verified": run.verified,
        "verification": run.verification.to_dict() if run.verification is not None else None,
        "message": run.message,
        "diff": run.diff,
        "seconds": round(run.seconds, 4),
    }
    return data


def render_diff(run: FixRun) -> str:
    """What the rewrite would change, hunk by hunk (`--diff`; nothing is written)."""
    outcome = run.outcome
    lines = [f"--- {run.model}", f"+++ {run.output or run.model} (not written)"]
    for change in outcome.changes:
        where = "" if change.graph == "main" else f" [{change.graph}]"
        lines.append(f"@@ {change.code}: {change.message}{where} @@")
        lines.extend(f"-  node {name}" for name in change.removed_nodes)
        lines.extend(f"+  tensor {name}" for name in change.new_tensors)
        lines.extend(f"   note: {note}" for note in change.notes)
    if not outcome.changes:
        lines.append("(no changes)")
    return "".join(printable(line) + "\n" for line in lines)
