"""Reports: ``report.html`` (self-contained, PNGs embedded as base64) and ``report.md`` (PNGs beside it)."""
from __future__ import annotations

import base64
import html
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from ..utils.io import atomic_write_text
from ..utils.tables import format_cell, markdown_table


@dataclass
class Table:
    """A titled table; columns are the union of the rows' keys in first-seen order."""

    title: str
    rows: list[dict]

    def columns(self) -> list[str]:
        return list(dict.fromkeys(k for r in self.rows for k in r))


@dataclass
class Section:
    """One part of a report: text, figures (PNG files under the report directory), tables."""

    title: str
    text: str = ""
    figures: list[Path] = field(default_factory=list)
    tables: list[Table] = field(default_factory=list)


def _md_table(t: Table) -> str:
    return f"**{t.title}**\n\n" + markdown_table(t.rows, t.columns())


def _html_table(t: Table) -> str:
    cols = t.columns()
    head = "".join(f"<th>{html.escape(c)}</th>" for c in cols)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(format_cell(r.get(c)))}</td>" for c in cols) + "</tr>" for r in t.rows)
    return f"<h3>{html.escape(t.title)}</h3><table><tr>{head}</tr>{body}</table>"


def render_markdown(title: str, sections: Sequence[Section], root: Path) -> str:
    """Markdown with images linked relative to ``root``."""
    parts = [f"# {title}"]
    for s in sections:
        parts.append(f"## {s.title}")
        if s.text:
            parts.append(s.text)
        parts += [f"![{f.stem}]({f.relative_to(root).as_posix()})" for f in s.figures]
        parts += [_md_table(t) for t in s.tables]
    return "\n\n".join(parts) + "\n"


def _img(path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<img alt="{html.escape(path.stem)}" src="data:image/png;base64,{data}">'


def render_html(title: str, sections: Sequence[Section]) -> str:
    """One self-contained HTML page (images inlined)."""
    style = ("body{font-family:sans-serif;max-width:1100px;margin:auto}img{max-width:48%;margin:4px}"
             "table{border-collapse:collapse;margin:8px 0}td,th{border:1px solid #ccc;padding:2px 6px;font-size:13px}")
    out = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
           f"<style>{style}</style></head><body><h1>{html.escape(title)}</h1>"]
    for s in sections:
        out.append(f"<h2>{html.escape(s.title)}</h2>")
        if s.text:
            out.append(f"<p>{html.escape(s.text)}</p>")
        out += [_img(f) for f in s.figures]
        out += [_html_table(t) for t in s.tables]
    out.append("</body></html>")
    return "\n".join(out)


def write_report(out_dir: str | Path, title: str, sections: Sequence[Section]) -> tuple[Path, Path]:
    """Write ``report.html`` and ``report.md`` into ``out_dir``; returns their paths."""
    out_dir = Path(out_dir)
    html_path, md_path = out_dir / "report.html", out_dir / "report.md"
    atomic_write_text(html_path, render_html(title, sections))
    atomic_write_text(md_path, render_markdown(title, sections, out_dir))
    return html_path, md_path
