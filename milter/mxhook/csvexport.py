"""Formula-safe CSV: UTF-8 text, LF line ends, header row = the column names.

Mail data is attacker-controlled (a Subject of `=HYPERLINK(...)`), and spreadsheets run cells
that start with a formula character. As OWASP recommends, a cell starting with `=`, `+`, `-`,
`@`, tab or carriage return gets a leading single quote, which spreadsheets show as text.

Quoting is done here rather than by the `csv` module: with an LF line terminator, `csv.writer`
leaves a bare CR inside a cell unquoted, which readers then take for a line end.
"""
from __future__ import annotations

from typing import Iterable, TextIO

DANGEROUS_FIRST = ("=", "+", "-", "@", "\t", "\r")
_NEEDS_QUOTES = (",", '"', "\r", "\n")


def safe_cell(value) -> str:
    """The text of one cell, neutralized: None → "", formula starters get a leading `'`."""
    if value is None:
        return ""
    text = value if isinstance(value, str) else str(value)
    if text.startswith(DANGEROUS_FIRST):
        return "'" + text
    return text


def _field(text: str) -> str:
    if any(c in text for c in _NEEDS_QUOTES):
        return '"' + text.replace('"', '""') + '"'
    return text


def _line(cells: Iterable[str]) -> str:
    fields = [_field(c) for c in cells]
    if fields == [""]:  # a lone empty cell would read back as a blank line (no row at all)
        return '""\n'
    return ",".join(fields) + "\n"


def write_csv(rows: Iterable[dict], columns: list[str], out: TextIO) -> int:
    """Write the header row and one line per row (cells in `columns` order, missing keys
    empty); returns the number of rows written (without the header)."""
    out.write(_line(columns))
    count = 0
    for row in rows:
        out.write(_line(safe_cell(row.get(col)) for col in columns))
        count += 1
    return count
