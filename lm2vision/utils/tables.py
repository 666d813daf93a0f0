"""Tables: one Markdown writer and one cell format for every table the project prints or saves
(``lm2v demo`` / ``grid``, ``lm2v phase``, analysis reports, benchmarks), and one CSV writer."""
from __future__ import annotations

import csv
import io
from typing import Any, Iterable, Mapping, Sequence


def format_cell(value: Any) -> str:
    """A table cell: floats with 4 significant digits (nan and inf as such), None as ``-``,
    anything else (text, ints, bools, pre-formatted numbers) as ``str``."""
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def markdown_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str] | None = None) -> str:
    """A Markdown table of ``rows`` (no trailing newline).

    ``columns`` default to the union of the rows' keys in first-seen order; a row without a
    column shows ``-`` there. Cells go through :func:`format_cell`.
    """
    cols = list(columns) if columns is not None else list(dict.fromkeys(k for r in rows for k in r))
    lines = [_line(cols), "|" + "---|" * len(cols)]
    lines += [_line(format_cell(r.get(c)) for c in cols) for r in rows]
    return "\n".join(lines)


def _line(cells: Iterable[str]) -> str:
    return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"  # a bare | would split the cell


def csv_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str] | None = None,
              lineterminator: str = "\r\n") -> str:
    """The CSV text of ``rows`` with a header line; ``columns`` as in :func:`markdown_table` (a row
    without a column leaves it empty). Values are written as :mod:`csv` writes them (no rounding)."""
    cols = list(columns) if columns is not None else list(dict.fromkeys(k for r in rows for k in r))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=cols, lineterminator=lineterminator)
    writer.writeheader()
    writer.writerows({c: r.get(c) for c in cols} for r in rows)
    return buf.getvalue()
