"""Fuzzing the formula-safe CSV writer (`csvexport.write_csv`).

Properties, for any cell values (attacker-controlled mail data):
- the output reads back with `csv.reader` into exactly the rows written: same number of rows,
  same number of cells per row, and every cell equal to `safe_cell(value)`;
- no data cell read back starts with a formula character (=, +, -, @, tab, CR), nor has one
  behind characters a spreadsheet skips (U+FEFF, zero-width and bidi characters, white space);
- a neutralized cell is the original text with one leading quote, nothing else changed.
"""
from __future__ import annotations

import csv
import io

from hypothesis import example, given
from hypothesis import strategies as st

from mxhook.services import csvexport

from . import FUZZ

DANGEROUS = ("=", "+", "-", "@", "\t", "\r")
FORMULA = ("=", "+", "-", "@", "\uff1d", "\uff0b", "\uff0d", "\uff20")
# What spreadsheets skip or do not show before a formula character (independent of csvexport).
INVISIBLE = ["\ufeff", "\u200b", "\u200c", "\u200d", "\u2060", "\u200e", "\u200f", "\u202a",
             "\u202e", "\u2066", "\u061c", "\u00ad", "\u034f", "\u180e", "\ufe0f", "\u3164",
             " ", "\t", "\r", "\n", "\x0b", "\x0c", "\x00", "\x85", "\u00a0", "\u2007", "\u3000",
             "\u2028", "\U000e0001"]
HIDDEN_FORMULA = st.builds(lambda pre, f, rest: "".join(pre) + f + rest,
                           st.lists(st.sampled_from(INVISIBLE), min_size=1, max_size=5),
                           st.sampled_from(FORMULA), st.text(max_size=20))
COLUMNS = ["id", "received", "status", "from", "to", "hostName", "messageId", "filterName", "reason"]

CELL = st.one_of(
    st.none(),
    st.text(max_size=40),
    st.sampled_from(["=HYPERLINK(\"http://x\")", "+1", "-1", "@SUM(A1)", "\t=1", "\r=1", '"', '""', ",",
                     "\n", "\r", "\r\n", "'", "'=1", " =1", "", "a\x00b", "\u2028", "\x85", "\x0b", "\x0c"]),
    st.lists(st.sampled_from(list(DANGEROUS) + ['"', ",", "\n", "\r", "a", " "]), max_size=8).map("".join),
    st.integers(), st.floats(allow_nan=True), st.booleans(),
    HIDDEN_FORMULA,
)
ROWS = st.lists(st.dictionaries(st.sampled_from(COLUMNS + ["extra"]), CELL), max_size=12)


def read_back(text: str) -> list[list[str]]:
    return list(csv.reader(io.StringIO(text, newline="")))


@FUZZ
@given(ROWS)
@example([{"id": ""}])
@example([{}])
@example([{"reason": "a\rb"}])
@example([{"from": "=1+2", "to": "\r=cmd|' /C calc'!A0"}])
@example([{"reason": "\ufeff=HYPERLINK(\"http://x\")", "to": " =1", "from": "\u200b\u200e@x"}])
def test_write_csv_round_trips_and_is_formula_safe(rows):
    out = io.StringIO(newline="")
    n = csvexport.write_csv(rows, COLUMNS, out)
    assert n == len(rows)
    back = read_back(out.getvalue())
    assert back[0] == COLUMNS
    assert len(back) == len(rows) + 1, out.getvalue()
    for row, cells in zip(rows, back[1:]):
        assert cells == [csvexport.safe_cell(row.get(c)) for c in COLUMNS]
        for cell in cells:
            assert not cell.startswith(DANGEROUS), cell
            assert not cell.lstrip("".join(INVISIBLE)).startswith(FORMULA), ascii(cell)


@FUZZ
@given(st.lists(st.text(min_size=1, max_size=20), min_size=1, max_size=6, unique=True), ROWS)
def test_arbitrary_columns_round_trip(columns, rows):
    rows = [{columns[i % len(columns)]: v for i, v in enumerate(r.values())} for r in rows]
    out = io.StringIO(newline="")
    csvexport.write_csv(rows, columns, out)
    back = read_back(out.getvalue())
    assert back[0] == columns
    assert back[1:] == [[csvexport.safe_cell(r.get(c)) for c in columns] for r in rows]


@FUZZ
@given(CELL)
def test_safe_cell(value):
    cell = csvexport.safe_cell(value)
    text = "" if value is None else (value if isinstance(value, str) else str(value))
    if text.startswith(DANGEROUS) or text.lstrip("".join(INVISIBLE)).startswith(FORMULA):
        assert cell == "'" + text
    else:
        assert cell in (text, "'" + text)  # other invisible characters may be in front
    assert not cell.startswith(DANGEROUS)
    assert not cell.lstrip("".join(INVISIBLE)).startswith(FORMULA), ascii(cell)


@FUZZ
@given(HIDDEN_FORMULA)
def test_formula_behind_invisible_characters_is_neutralized(text):
    assert csvexport.safe_cell(text) == "'" + text
