"""csvexport: formula neutralizing, quoting, and a round trip through the csv module."""
import csv
import io

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mxhook.services.csvexport import DANGEROUS_FIRST, is_invisible, safe_cell, write_csv

LOG_COLUMNS = ["received", "status", "from", "to", "hostName", "messageId", "filterName", "reason"]


@pytest.mark.parametrize("value, cell", [
    (None, ""),
    ("", ""),
    ("plain", "plain"),
    ("=HYPERLINK(\"http://evil\",\"x\")", "'=HYPERLINK(\"http://evil\",\"x\")"),
    ("+1", "'+1"),
    ("-2+3", "'-2+3"),
    ("@SUM(A1)", "'@SUM(A1)"),
    ("\t=1", "'\t=1"),
    ("\r=1", "'\r=1"),
    ("a=1", "a=1"),
    # what a spreadsheet skips before the formula character does not hide it
    ("\ufeff=1+1", "'\ufeff=1+1"),
    ("\ufeff\ufeff=1", "'\ufeff\ufeff=1"),
    (" =1", "' =1"),
    ("  \t=1", "'  \t=1"),
    ("\n=1", "'\n=1"),
    ("\u00a0=1", "'\u00a0=1"),
    ("\u3000+1", "'\u3000+1"),
    ("\u200b=1", "'\u200b=1"),
    ("\u200c\u200d-1", "'\u200c\u200d-1"),
    ("\u2060@SUM(A1)", "'\u2060@SUM(A1)"),
    ("\u200e=1", "'\u200e=1"),
    ("\u202e=1", "'\u202e=1"),
    ("\u2066=1", "'\u2066=1"),
    ("\u00ad=1", "'\u00ad=1"),
    ("\u034f=1", "'\u034f=1"),
    ("\u3164=1", "'\u3164=1"),
    ("\ufe0f=1", "'\ufe0f=1"),
    ("\U000e0100=1", "'\U000e0100=1"),
    ("\x00=1", "'\x00=1"),
    ("\u2028=1", "'\u2028=1"),
    ("\uff1d1+1", "'\uff1d1+1"),
    ("\ufeff\uff20x", "'\ufeff\uff20x"),
    # invisible characters before anything else stay as they are
    ("\ufeffplain", "\ufeffplain"),
    (" plain", " plain"),
    ("\u200b", "\u200b"),
    ("\ufeff'=1", "\ufeff'=1"),
    ("\u00e9=1", "\u00e9=1"),
    (42, "42"),
    (-1, "'-1"),
    ("'already", "'already"),
])
def test_safe_cell(value, cell):
    assert safe_cell(value) == cell


def test_write_csv_exact_output():
    rows = [
        {"received": "2026-11-22T12:00:00Z", "status": "denied", "from": "a@x.org", "to": "in@ours.example",
         "hostName": "mail.x.org", "messageId": "<1@x.org>", "filterName": "no_rule",
         "reason": "no inbound rule matches <in@ours.example>"},
        {"received": "2026-11-22T12:01:00Z", "status": "succeeded", "from": "=cmd|' /C calc'!A0",
         "to": "b@ours.example", "hostName": None, "messageId": "-1", "filterName": "invoices",
         "reason": 'said "hi", then\nleft'},
        {"status": "queued", "extra": "ignored"},
    ]
    out = io.StringIO()
    assert write_csv(rows, LOG_COLUMNS, out) == 3
    assert out.getvalue() == (
        "received,status,from,to,hostName,messageId,filterName,reason\n"
        "2026-11-22T12:00:00Z,denied,a@x.org,in@ours.example,mail.x.org,<1@x.org>,no_rule,"
        "no inbound rule matches <in@ours.example>\n"
        "2026-11-22T12:01:00Z,succeeded,'=cmd|' /C calc'!A0,b@ours.example,,'-1,invoices,"
        '"said ""hi"", then\nleft"\n'
        ",queued,,,,,,\n"
    )


def test_empty_rows_writes_only_the_header():
    out = io.StringIO()
    assert write_csv([], LOG_COLUMNS, out) == 0
    assert out.getvalue() == "received,status,from,to,hostName,messageId,filterName,reason\n"


def test_bare_carriage_return_inside_a_cell_is_quoted():
    out = io.StringIO()
    write_csv([{"a": "x\ry", "b": "z"}], ["a", "b"], out)
    assert out.getvalue() == 'a,b\n"x\ry",z\n'
    assert list(csv.reader(io.StringIO(out.getvalue(), newline=""))) == [["a", "b"], ["x\ry", "z"]]


def test_single_empty_cell_is_quoted_so_the_row_is_not_lost():
    out = io.StringIO()
    assert write_csv([{"v": None}, {"v": "x"}], ["v"], out) == 2
    assert out.getvalue() == 'v\n""\nx\n'
    assert list(csv.reader(io.StringIO(out.getvalue(), newline=""))) == [["v"], [""], ["x"]]


def test_utf8_text_round_trips():
    out = io.StringIO()
    write_csv([{"a": "Grüße — 会議"}], ["a"], out)
    assert out.getvalue().encode("utf-8") == "a\nGrüße — 会議\n".encode("utf-8")


def _no_cr_outside_quotes(text: str) -> bool:
    quoted = False
    for ch in text:
        if ch == '"':
            quoted = not quoted
        elif ch == "\r" and not quoted:
            return False
    return True


cells = st.one_of(st.none(), st.text(), st.integers(), st.sampled_from(["=1+1", "+x", "-", "@a", "\t", "\r\n="]))


@given(st.lists(st.lists(cells, min_size=3, max_size=3), max_size=8))
def test_property_no_parsed_cell_starts_dangerous_and_content_round_trips(table):
    columns = ["c1", "c2", "c3"]
    rows = [dict(zip(columns, r)) for r in table]
    out = io.StringIO()
    assert write_csv(rows, columns, out) == len(rows)
    text = out.getvalue()
    assert _no_cr_outside_quotes(text)  # records end with LF, never CRLF
    parsed = list(csv.reader(io.StringIO(text, newline="")))
    assert parsed[0] == columns
    assert len(parsed) == len(rows) + 1
    for row, got in zip(table, parsed[1:]):
        for value, cell in zip(row, got):
            assert not cell.startswith(DANGEROUS_FIRST)
            original = "" if value is None else str(value)
            visible = original.lstrip("".join(c for c in original if is_invisible(c)))
            if original.startswith(DANGEROUS_FIRST) or visible.startswith(("=", "+", "-", "@")):
                assert cell == "'" + original
            else:
                assert cell == original


@given(st.lists(st.text(alphabet=st.characters(blacklist_categories=("Cs",))), min_size=1, max_size=5))
def test_property_lines_end_with_lf_outside_quotes(values):
    out = io.StringIO()
    write_csv([{"v": v} for v in values], ["v"], out)
    text = out.getvalue()
    assert text.endswith("\n") and _no_cr_outside_quotes(text)
    # every record ends with LF: the reader, told that only \n ends lines, finds the same rows
    assert [r[0] for r in csv.reader(io.StringIO(text, newline=""))][1:] == [safe_cell(v) for v in values]


# Characters spreadsheets skip or do not show, written out here independently of csvexport.
INVISIBLE = ["\ufeff", "\u200b", "\u200c", "\u200d", "\u2060", "\u200e", "\u200f", "\u202a",
             "\u202e", "\u2066", "\u2069", "\u061c", "\u00ad", "\u034f", "\u180e", "\ufe0f",
             "\u3164", "\uffa0", " ", "\t", "\r", "\n", "\x0b", "\x0c", "\x00", "\x85",
             "\u00a0", "\u2007", "\u202f", "\u3000", "\u2028", "\u2029", "\U000e0001"]


@given(st.lists(st.sampled_from(INVISIBLE), min_size=1, max_size=4).map("".join),
       st.sampled_from(["=", "+", "-", "@", "\uff1d", "\uff0b", "\uff0d", "\uff20"]), st.text(max_size=10))
def test_property_invisible_prefix_does_not_hide_a_formula(prefix, starter, rest):
    text = prefix + starter + rest
    assert safe_cell(text) == "'" + text
    out = io.StringIO()
    write_csv([{"v": text}], ["v"], out)
    assert list(csv.reader(io.StringIO(out.getvalue(), newline="")))[1] == ["'" + text]
