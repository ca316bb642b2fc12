"""Reporters are pure functions of findings: they return text and never print."""

from pathlib import Path

from bnlint.report.json_format import render_json
from bnlint.report.text import render_concise, render_full, render_statistics, summary_line

FORMATS = ("full", "concise", "json", "json-lines", "sarif", "github", "gitlab", "junit", "markdown")


def render(fmt: str, findings, errors, *, color: bool = False, files: int = 0, root=None, checked=(),
           pictures=None, source_root: str | None = None) -> str:
    """`root`: the folder paths are made relative to (SARIF, GitHub, GitLab, fingerprints);
    `checked`: display paths of the models read (JUnit lists clean ones); `pictures`: Markdown diagrams;
    `source_root`: the folder Python source paths of findings are relative to (default: cwd)."""
    root = Path(root) if root is not None else Path.cwd()
    if fmt == "json":
        return render_json(findings, errors, files=files)
    if fmt == "json-lines":
        from bnlint.report.jsonlines import render_json_lines

        return render_json_lines(findings, root=root)
    if fmt == "sarif":
        from bnlint.report.sarif import render_sarif

        return render_sarif(findings, errors, root=root, source_root=source_root)
    if fmt == "github":
        from bnlint.report.github import render_github

        return render_github(findings, errors, root=root, source_root=source_root)
    if fmt == "gitlab":
        from bnlint.report.gitlab import render_gitlab

        return render_gitlab(findings, errors, root=root, source_root=source_root)
    if fmt == "junit":
        from bnlint.report.junit import render_junit

        return render_junit(findings, errors, checked=checked)
    if fmt == "markdown":
        from bnlint.report.markdown import render_markdown

        return render_markdown(findings, errors, files=files, pictures=pictures)
    if fmt == "concise":
        return render_concise(findings, color=color)
    return render_full(findings, color=color)


__all__ = ["FORMATS", "render", "render_full", "render_concise", "render_json", "render_statistics",
           "summary_line"]
