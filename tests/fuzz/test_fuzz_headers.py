"""Fuzzing header decoding (`headers.decode_value`, `parse_addresses`, ...) and the inbound
decision built on it (`decision.decide`), which the milter runs at end of headers for every
message: an exception there is a 451 for that message, every time it is retried.
"""
from __future__ import annotations

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from mxhook.model import decision
from mxhook.model import headers
from mxhook.model import rules
from mxhook.model.targets import Destination

from . import FUZZ

WEIRD_CHARSETS = [
    "utf-8", "iso-8859-1", "koi8-r", "shift_jis", "iso-2022-jp", "utf-16", "utf-7", "gb2312",
    "x-unknown", "idna", "punycode", "undefined", "rot13", "base64", "hex", "zlib", "uu",
    "unicode-escape", "raw-unicode-escape", "utf\x00-8", "mbcs", "oem", "utf-8*en", "us-ascii*",
]


@st.composite
def encoded_words(draw):
    charset = draw(st.sampled_from(WEIRD_CHARSETS) | st.text(
        st.characters(blacklist_characters="?", blacklist_categories=("Zs", "Cc", "Cs")), min_size=1, max_size=12))
    enc = draw(st.sampled_from("bBqQ"))
    payload = draw(st.text(st.characters(blacklist_characters="? \t\r\n"), max_size=30)
                   | st.sampled_from(["", "=", "==", "YWJj", "=FF=FE", "_=C3=A9", "!!", "\x00"]))
    return f"=?{charset}?{enc}?{payload}?="


def header_values():
    piece = st.one_of(encoded_words(), st.text(max_size=30), st.sampled_from(
        ["<a@b.example>", ",", '"Q, uoted" <q@x.example>', "\r\n ", "\n\t", "(comment)", ":;", "@", "<>"]))
    as_text = st.lists(piece, max_size=8).map("".join)
    as_bytes = st.one_of(as_text.map(lambda s: s.encode("utf-8", "surrogatepass")), st.binary(max_size=200))
    # str as pymilter hands it over: the wire bytes decoded as UTF-8 with surrogate escapes
    as_milter = as_bytes.map(lambda b: b.decode("utf-8", "surrogateescape"))
    return st.one_of(as_text, as_bytes, as_milter)


# Regression (fixed in headers.decode_value): these raised UnicodeError / ValueError, which made
# the milter answer 451 at end of headers for such a message, for ever.
CRASHERS = ["=?idna?q?abc?=", "=?undefined?q?a?=", "=?punycode?q?ab\xff?=", "=?utf\x00?q?abc?="]


@FUZZ
@given(header_values())
@example("=?idna?q?abc?=")
@example("=?undefined?q?a?=")
@example("=?punycode?q?ab\xff?=")
@example("=?utf\x00?q?abc?=")
@example(b"=?utf-8?b?\xff\xfe?=")
@example("\udcff\udcfe")  # pymilter's surrogate-escaped 8-bit bytes
def test_decode_value_never_raises(raw):
    text = headers.decode_value(raw)
    assert isinstance(text, str)
    assert headers.to_text(raw) is not None


@FUZZ
@given(header_values())
def test_parse_addresses_gives_normalized_addresses(raw):
    pairs = headers.parse_addresses(raw)
    for name, addr in pairs:
        assert isinstance(name, str)
        assert "@" in addr
        assert addr == addr.lower() and addr == addr.strip()
        assert not addr.startswith("<") and not addr.endswith(">")
    first = headers.first_address(raw)
    assert first == (pairs[0][1] if pairs else "")


@FUZZ
@given(st.text(max_size=100))
def test_address_helpers_total(addr):
    norm = headers.normalize_address(addr)
    assert norm == headers.normalize_address(norm)  # idempotent
    dom = headers.address_domain(addr)
    assert dom == "" or "@" in norm


def test_regression_crashers_decode_to_text():
    for raw in CRASHERS:
        assert isinstance(headers.decode_value(raw), str)
    assert headers.decode_value("=?idna?q?abc?=") == "abc"


@FUZZ
@given(st.lists(st.tuples(st.sampled_from(["From", "To", "Subject", "Cc", "X-Tag", "from", "TO"]),
                          header_values()), max_size=8),
       st.lists(st.sampled_from(["support@ours.example", "x@ours.example", "a@other.example"]),
                min_size=1, max_size=3))
@example([("Subject", "=?idna?q?x?=")], ["support@ours.example"])
def test_decide_never_raises(raw_headers, recipients):
    """What the milter runs at end of headers (eoh): heuristics + rules on decoded headers."""
    ruleset = rules.RuleSet([
        rules.Rule("support", Destination("https://hook.example/x"),
                   (rules.Condition("to", r"^support@"),), id=1),
        rules.Rule("tagged", Destination("https://hook.example/y"),
                   (rules.Condition("subject", r"urgent|\d{3}"),
                    rules.Condition("x-tag", "a", negate=True)), id=2),
    ])
    d = decision.decide(ruleset, frozenset({"ours.example"}), recipients, raw_headers, explain=True)
    assert len(d.matches) == len(recipients)
    d.reason()


UTF7_FILENAME = (
    b"Subject: x\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\n"
    b"Content-Type: application/octet-stream\r\n"
    b"Content-Disposition: attachment; filename*=utf-7''%2B2AA-\r\n\r\nabc\r\n--b--\r\n"
)


def test_utf7_lone_surrogate_filename_keeps_the_attachment():
    from mxhook.model import message

    result = message.normalize(UTF7_FILENAME)
    assert len(result["attachments"]) == 1, result["defects"]
    assert isinstance(headers.decode_value(headers.decode_value("=?utf-7?q?+2AA-?=")), str)


ATOM_CHARS = "aZ09!#$%&'*+/=?^_`{|}~-"


@st.composite
def plain_mailboxes(draw):
    """The forms `parse_addresses` answers without email.utils: a@b, <a@b>, Name <a@b>, and
    near misses (quotes, doubled dots and spaces, comments) that must take the slow path."""
    atom = st.text(st.sampled_from(ATOM_CHARS + "é."), min_size=1, max_size=6)
    local = draw(st.lists(atom, min_size=1, max_size=3).map(".".join))
    domain = draw(st.lists(st.text(st.sampled_from("aZ09-é"), min_size=1, max_size=5), min_size=1,
                           max_size=3).map(".".join))
    addr = f"{local}@{domain}"
    name = draw(st.lists(atom | st.sampled_from(['"q"', "(c)", ""]), max_size=3).map(
        lambda words: draw(st.sampled_from([" ", "  ", "\t"])).join(words)))
    form = draw(st.sampled_from(["{a}", "<{a}>", "{n} <{a}>", "{n}<{a}>", " {n} <{a}> ", "{a} ({n})"]))
    return form.format(a=addr, n=name)


@FUZZ
@given(plain_mailboxes())
@example("Bench <bench@sender.example>")
@example("O'Brien <x@y.example>")
@example("a..b@c.example")
@example("(c) <0@0>")
def test_plain_mailbox_shortcut_agrees_with_the_full_parser(text):
    assert headers.mailboxes(text) == headers._parse_mailboxes(headers.unfold(text))


@FUZZ
@given(header_values())
@example('"Foo, Bar" <foo.bar@example.com>')
@example("=?utf-8?q?Foo=2C_Bar?= <f@x.example>, =?utf-8?q?=22q=22?= <q@x.example>")
@example("=?utf-8?b??==?:<?b?:@?=")  # a nameless mailbox whose address holds a colon
def test_decoded_address_fields_parse_back_to_the_same_mailboxes(raw):
    """The header text posted for an address field names the mailboxes the payload lists."""
    text = headers.decode_field("To", raw)
    assert [(m.name, m.normalized) for m in headers.mailboxes(text)] == headers.parse_addresses(raw)
