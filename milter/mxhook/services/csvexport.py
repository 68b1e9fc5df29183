"""Formula-safe CSV: UTF-8 text, LF line ends, header row = the column names.

Mail data is attacker-controlled (a Subject of `=HYPERLINK(...)`), and spreadsheets run cells
that start with a formula character. As OWASP recommends, a cell starting with `=`, `+`, `-`,
`@`, tab or carriage return gets a leading single quote, which spreadsheets show as text.
Spreadsheets also skip what they do not show before the formula character (a byte order mark
U+FEFF, zero-width spaces and joiners, bidi marks, leading white space with "trim spaces" on
import), so the first character that counts is the first one that is not such an invisible
character: `\\ufeff=1` and ` =1` are neutralized too. The full-width `＝＋－＠` count as
formula characters as well (East Asian input methods turn them into the ASCII ones).

Quoting is done here rather than by the `csv` module: with an LF line terminator, `csv.writer`
leaves a bare CR inside a cell unquoted, which readers then take for a line end.
"""
from __future__ import annotations

import unicodedata
from typing import Iterable, TextIO

DANGEROUS_FIRST = ("=", "+", "-", "@", "\t", "\r")
FORMULA_CHARACTERS = frozenset("=+-@\uff1d\uff0b\uff0d\uff20")
# Unicode's Default_Ignorable_Code_Point characters outside the control, format and separator
# categories (which count as invisible by category): the combining grapheme joiner, Hangul
# fillers, Khmer inherent vowels, Mongolian and other variation selectors.
_IGNORABLE = frozenset(
    "\u034f\u115f\u1160\u17b4\u17b5\u180b\u180c\u180d\u180f\u3164\uffa0"
    + "".join(map(chr, range(0xFE00, 0xFE10))) + "".join(map(chr, range(0xE0100, 0xE01F0)))
)


def is_invisible(char: str) -> bool:
    """Whether a spreadsheet may skip `char` before a formula: white space, a control or format
    character (U+FEFF, U+200B, bidi marks, ...), a separator, or another default-ignorable one."""
    return char in _IGNORABLE or unicodedata.category(char)[0] in "CZ"


def starts_formula(text: str) -> bool:
    """Whether a spreadsheet could read `text` as a formula: its first character is a formula
    character, tab or CR, or is invisible and followed (after more invisible ones) by a formula
    character."""
    if not text:
        return False
    if "!" <= text[0] <= "~":  # visible ASCII, most cells: a formula character or nothing
        return text[0] in FORMULA_CHARACTERS
    if text.startswith(DANGEROUS_FIRST):
        return True
    for char in text:
        if not is_invisible(char):
            return char in FORMULA_CHARACTERS
    return False


def safe_cell(value) -> str:
    """The text of one cell, neutralized: None → "", formula starters get a leading `'`."""
    if value is None:
        return ""
    text = value if isinstance(value, str) else str(value)
    if starts_formula(text):
        return "'" + text
    return text


def _field(text: str) -> str:
    if "," in text or '"' in text or "\r" in text or "\n" in text:
        return '"' + text.replace('"', '""') + '"'
    return text


def _line(cells: Iterable[str]) -> str:
    fields = [_field(c) for c in cells]
    if fields == [""]:  # a lone empty cell would read back as a blank line (no row at all)
        return '""\n'
    return ",".join(fields) + "\n"


def header_line(columns: list[str]) -> str:
    return _line(columns)


def row_line(row: dict, columns: list[str]) -> str:
    """One row's line: cells in `columns` order, missing keys empty."""
    return _line(safe_cell(row.get(col)) for col in columns)


def write_csv(rows: Iterable[dict], columns: list[str], out: TextIO) -> int:
    """Write the header row and one line per row; returns the number of rows written
    (without the header)."""
    out.write(header_line(columns))
    count = 0
    for row in rows:
        out.write(row_line(row, columns))
        count += 1
    return count
