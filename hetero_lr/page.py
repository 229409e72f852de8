"""One report, two renderings: Markdown (figures beside it as PNG files) and one self-contained
HTML page (figures embedded as base64 PNG), from the same sections. Text and table cells take
`code`, **bold** and [links](url), as in Markdown."""

from __future__ import annotations

import base64
import html
import re
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd


@dataclass
class Section:
    """A heading, paragraphs, tables and figures (PNG file names in the report folder)."""

    title: str
    text: list[str] = field(default_factory=list)
    tables: list[tuple[str, pd.DataFrame]] = field(default_factory=list)
    """(caption, table) pairs; an index with a name is shown as a column."""
    figures: list[str] = field(default_factory=list)
    folded: bool = False
    """Long tables: folded away on the HTML page."""


def _cell(value: object) -> str:
    if isinstance(value, float):
        return "" if pd.isna(value) else f"{value:.4g}"
    return str(value)


def _plain(table: pd.DataFrame) -> pd.DataFrame:
    return table.reset_index() if table.index.name else table


def markdown_table(table: pd.DataFrame) -> str:
    """A GitHub-flavoured Markdown table (floats to 4 significant digits)."""
    table = _plain(table)
    lines = ["| " + " | ".join(map(str, table.columns)) + " |", "|" + "---|" * len(table.columns)]
    lines += [
        "| " + " | ".join(_cell(v) for v in row) + " |" for row in table.itertuples(index=False)
    ]
    return "\n".join(lines)


def to_markdown(title: str, sections: list[Section]) -> str:
    """The report as Markdown; figures are links to the PNG files beside it."""
    lines = [f"# {title}", ""]
    for section in sections:
        lines += [f"## {section.title}", ""]
        for paragraph in section.text:
            lines += [paragraph, ""]
        for caption, table in section.tables:
            lines += [f"{caption}", ""] if caption else []
            lines += [markdown_table(table), ""]
        for name in section.figures:
            lines += [f"![{Path(name).stem}]({name})", ""]
    return "\n".join(lines)


def html_table(table: pd.DataFrame) -> str:
    """An HTML table (floats to 4 significant digits, text escaped, Markdown links kept)."""
    table = _plain(table)
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in table.columns)
    body = "".join(
        "<tr>" + "".join(f"<td>{_inline(_cell(v))}</td>" for v in row) + "</tr>"
        for row in table.itertuples(index=False)
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _inline(text: str) -> str:
    """Escape, then `code` and **bold** as in the Markdown rendering."""
    out, code = [], False
    for part in html.escape(text).split("`"):
        out.append(f"<code>{part}</code>" if code else _bold(part))
        code = not code
    return "".join(out)


def _bold(text: str) -> str:
    parts = text.split("**")
    bold = "".join(f"<strong>{p}</strong>" if k % 2 else p for k, p in enumerate(parts))
    return _LINK.sub(r'<a href="\2">\1</a>', bold)


_LINK = re.compile(r"\[([^\]]+)\]\(([^)\s]+)\)")
"""A Markdown link in escaped text: [text](url)."""


STYLE = """
body { font-family: system-ui, sans-serif; max-width: 1200px; margin: 2em auto; padding: 0 1em;
       color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.2em; font-size: 0.85em; }
th, td { border: 1px solid #ccc; padding: 3px 7px; text-align: right; }
th { background: #f3f3f3; } td:first-child, th:first-child { text-align: left; }
img { max-width: 100%; } a { color: #0b62a4; } code { background: #f5f5f5; padding: 0 3px; }
h2 { border-bottom: 1px solid #ddd; padding-bottom: 0.2em; margin-top: 1.6em; }
.caption { color: #555; font-size: 0.9em; }
"""


def to_html(title: str, sections: list[Section], folder: Path) -> str:
    """The report as one HTML page; each figure is read from `folder` and embedded."""
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{html.escape(title)}</title><style>{STYLE}</style></head><body>",
        f"<h1>{_inline(title)}</h1>",
        "<nav><ul>"
        + "".join(
            f'<li><a href="#s{k}">{html.escape(s.title)}</a></li>' for k, s in enumerate(sections)
        )
        + "</ul></nav>",
    ]
    for k, section in enumerate(sections):
        body = [f"<p>{_inline(p)}</p>" for p in section.text]
        for caption, table in section.tables:
            if caption:
                body.append(f'<p class="caption">{_inline(caption)}</p>')
            body.append(html_table(table))
        for name in section.figures:
            data = base64.b64encode((folder / name).read_bytes()).decode("ascii")
            alt = html.escape(Path(name).stem)
            body.append(f'<figure><img alt="{alt}" src="data:image/png;base64,{data}"></figure>')
        content = "\n".join(body)
        if section.folded:
            content = f"<details><summary>show</summary>{content}</details>"
        parts += [f'<section id="s{k}"><h2>{html.escape(section.title)}</h2>', content]
        parts.append("</section>")
    parts.append("</body></html>")
    return "\n".join(parts)
