"""Reporters are pure functions of findings: they return text and never print."""

from bnlint.report.json_format import render_json
from bnlint.report.text import render_concise, render_full, render_statistics, summary_line

FORMATS = ("full", "concise", "json")


def render(fmt: str, findings, errors, *, color: bool = False, files: int = 0) -> str:
    if fmt == "json":
        return render_json(findings, errors, files=files)
    if fmt == "concise":
        return render_concise(findings, color=color)
    return render_full(findings, color=color)


__all__ = ["FORMATS", "render", "render_full", "render_concise", "render_json", "render_statistics",
           "summary_line"]
