"""Mermaid flowcharts of `Picture`s, as GitHub renders them in Markdown (step summaries, PR comments).

Labels are quoted and every character Mermaid or the Markdown around it could read as syntax is written as
a Mermaid entity code (`#quot;`, `#60;`, ...), so a node named `a"b<c>` cannot break the diagram.
"""

from __future__ import annotations

from bnlint.pictures import CONTEXT, FINDING, INPUT, OUTPUT, RELATED, Picture
from bnlint.report.safe_text import printable

_ENTITIES = {"#": "#35;", '"': "#quot;", "<": "#lt;", ">": "#gt;", "`": "#96;", "&": "#amp;", "|": "#124;",
             "[": "#91;", "]": "#93;", "{": "#123;", "}": "#125;", "\n": " ", "\r": " "}

CLASS_DEFS = (
    "classDef finding fill:#ffd9d9,stroke:#c62828,stroke-width:3px,color:#000",
    "classDef related fill:#fff1c2,stroke:#b7791f,stroke-width:2px,color:#000",
    "classDef context fill:#f4f4f4,stroke:#888,color:#000",
    "classDef terminal fill:#e8f0fe,stroke:#5b7fbf,color:#000",
    "classDef cut fill:none,stroke:none,color:#888",
)


def escape_label(text: str) -> str:
    """Text safe inside a quoted Mermaid label (control characters escaped, line breaks as spaces)."""
    return "".join(_ENTITIES.get(ch, ch) for ch in printable(text, keep="\r\n"))


def _shape(node) -> str:
    if node.role == INPUT:
        return f'{node.id}(["in: {escape_label(node.label)}"])'
    if node.role == OUTPUT:
        return f'{node.id}(["out: {escape_label(node.label)}"])'
    return f'{node.id}["{escape_label(node.op_type)}<br/>{escape_label(node.label)}"]'


def render_mermaid(picture: Picture, direction: str = "TD") -> str:
    """The flowchart text (without the ```mermaid fence)."""
    lines = [f"flowchart {direction}"]
    lines += [f"  {_shape(node)}" for node in picture.nodes]
    if picture.cut_above:
        lines.append('  cut_above["…"]')
    if picture.cut_below:
        lines.append('  cut_below["…"]')
    lines += [f"  {a} --> {b}" for a, b in picture.edges]
    lines += [f"  cut_above -.-> {node_id}" for node_id in picture.cut_above]
    lines += [f"  {node_id} -.-> cut_below" for node_id in picture.cut_below]
    lines += [f"  {definition}" for definition in CLASS_DEFS]
    groups = {FINDING: [], RELATED: [], CONTEXT: [], "terminal": []}
    for node in picture.nodes:
        groups["terminal" if node.role in (INPUT, OUTPUT) else node.role].append(node.id)
    cuts = [name for name, present in (("cut_above", picture.cut_above), ("cut_below", picture.cut_below)) if present]
    groups["cut"] = cuts
    lines += [f"  class {','.join(ids)} {name}" for name, ids in groups.items() if ids]
    return "\n".join(lines) + "\n"


def mermaid_block(picture: Picture, direction: str = "TD") -> str:
    """A fenced ```mermaid block ready to paste into Markdown."""
    return "```mermaid\n" + render_mermaid(picture, direction) + "```\n"


def render_before_after(before: Picture, after: Picture, title: str | None = None) -> str:
    """Markdown for `fix --diff`: the subgraph before and after a rewrite, one diagram each.

    Build the pictures with `bnlint.pictures.change_pictures(before_graph, after_graph, touched_names)`.
    """
    parts = [f"#### {title}\n\n" if title else ""]
    parts.append("**Before**\n\n" + mermaid_block(before) + "\n")
    parts.append("**After**\n\n" + mermaid_block(after))
    return "".join(parts)
