"""Address and header shapes found in real mail (issue 14, sections 3b and 5): one parser for the
heuristics and the payload, RFC 2047 charsets, RFC 5322 unfolding, quoting, comments, IDNA 2008.
The fixtures are written here for these shapes."""
from __future__ import annotations

import base64

import pytest

from mxhook.model import headers
from mxhook.model import heuristics
from mxhook.model import message
from mxhook.store.rulesdb import normalize_domain

OURS = frozenset({"ours.example"})


def _message(*fields: bytes) -> dict:
    raw = b"".join(f + b"\r\n" for f in fields) + b"Subject: x\r\n\r\nbody\r\n"
    return message.normalize(raw)


# -- 3b: an `@` in an unquoted display name ----------------------------------------------------

AT_IN_NAME = b"ceo@ours.example <ceo@ours.example>"


def test_at_in_an_unquoted_display_name_the_heuristic_sees_the_angle_addr():
    v = heuristics.check([AT_IN_NAME], [], ["support@ours.example"], OURS)
    assert v is not None and v.heuristic == heuristics.FROM_PERMITTED_DOMAIN
    assert "ceo@ours.example" in v.reason
    assert heuristics.header_from_addresses([AT_IN_NAME]) == ["ceo@ours.example"]


def test_at_in_an_unquoted_display_name_the_payload_lists_the_angle_addr():
    m = _message(b"From: " + AT_IN_NAME, b"To: support@ours.example",
                 b"Cc: boss@x.example <boss@x.example>, other@y.example",
                 b"Reply-To: bob@evil.example <reply@evil.example>")
    assert m["from"] == [{"name": "ceo@ours.example", "address": "ceo@ours.example"}]
    assert m["cc"] == [{"name": "boss@x.example", "address": "boss@x.example"},
                       {"name": "", "address": "other@y.example"}]
    assert m["reply_to"] == [{"name": "bob@evil.example", "address": "reply@evil.example"}]


# -- charsets of encoded words -----------------------------------------------------------------

def _b_word(charset: str, text: str, codec: str) -> bytes:
    return f"=?{charset}?b?".encode() + base64.b64encode(text.encode(codec)) + b"?="


@pytest.mark.parametrize("label, text, codec", [
    ("gb2312", "\u6731\u9555\u57fa", "gb18030"),  # 镕 is GBK, not GB 2312
    ("GB2312", "\u20ac\u4e2d", "gb18030"),
    ("big5", "\u5cef\u4e0a", "big5hkscs"),  # 峯 is HKSCS, not Big5
    ("ks_c_5601-1987", "\uac02", "cp949"),  # a UHC syllable
    ("iso-8859-8-i", "\u05e9\u05dc\u05d5\u05dd", "iso8859-8"),
])
def test_encoded_words_are_decoded_with_the_superset_of_their_label(label, text, codec):
    raw = b"Subject: " + _b_word(label, text, codec)
    assert headers.decode_value(raw[9:]) == text
    assert _message(b"From: a@b.example", raw)["subject"] == text


def test_encoded_words_in_one_charset_decode_together_and_space_between_them_goes():
    word = "\u00e9\u00e8".encode("utf-8")
    # a two-byte character split over two encoded words, white space between them
    raw = b"=?utf-8?q?a=" + b"%02X" % word[0] + b"?= \r\n =?utf-8?q?=" + b"%02X" % word[1] + b"b?= c"
    assert headers.decode_value(raw) == "a\u00e9b c"


# -- unfolding ---------------------------------------------------------------------------------

def test_unfolding_removes_the_line_breaks_only():
    raw = b"Subject: two  spaces\r\n\tand a tab\r\n   three more "
    m = message.normalize(b"From: a@b.example\r\n" + raw + b"\r\n\r\nbody\r\n")
    assert m["subject"] == "two  spaces\tand a tab   three more "
    assert headers.decode_value(raw[9:]) == "two  spaces\tand a tab   three more "
    # the white space after the colon is no part of the value (Postfix hands milters none either)
    assert headers.decode_value(b"\r\n\tfolded first") == "folded first"


# -- quoting of decoded display names ----------------------------------------------------------

def test_decoded_display_names_are_quoted_where_the_text_would_parse_otherwise():
    raw = b"To: =?utf-8?q?Foo=2C_Bar?= <foo.bar@example.com>, =?utf-8?q?J=C3=B6rg?= <j@x.example>"
    m = _message(b"From: a@b.example", raw)
    (to_value,) = [h["value"] for h in m["headers"] if h["name"] == "To"]
    assert to_value == '"Foo, Bar" <foo.bar@example.com>, J\u00f6rg <j@x.example>'
    assert headers.parse_addresses(to_value) == [("Foo, Bar", "foo.bar@example.com"), ("J\u00f6rg", "j@x.example")]
    assert m["to"] == [{"name": "Foo, Bar", "address": "foo.bar@example.com"},
                       {"name": "J\u00f6rg", "address": "j@x.example"}]
    # a field that is no address field is decoded as it is
    subject = _message(b"Subject: =?utf-8?q?Foo=2C_Bar?= <x@y>")["subject"]
    assert subject == "Foo, Bar <x@y>"


# -- comments and odd forms --------------------------------------------------------------------

@pytest.mark.parametrize("value, expected", [
    (rb"Pete(A wonderful \) chap) <pete(his account)@silly.test(his host)>", [("Pete", "pete@silly.test")]),
    (b"Big Bug bb@bug.com", [("Big Bug", "bb@bug.com")]),
    (b"bb@bug.com (Big Bug)", [("Big Bug", "bb@bug.com")]),
    (b"Crew: ann@ship.test, (the captain) Cap <cap@ship.test>;, bob@shore.test",
     [("", "ann@ship.test"), ("Cap", "cap@ship.test"), ("", "bob@shore.test")]),
    (b"<@relay.test:route@end.test>", [("", "route@end.test")]),
    (b"undisclosed-recipients:;", []),
])
def test_comments_groups_and_odd_forms(value, expected):
    assert headers.parse_addresses(value) == expected
    m = _message(b"From: " + value)
    assert [(a["name"], a["address"]) for a in m["from"]] == expected


# -- internationalized addresses ---------------------------------------------------------------

def test_internationalized_addresses_are_posted_as_written_and_compared_normalized():
    m = _message("From: J\u00f6rg <joerg@b\u00fccher.example>".encode(), b"To: x@xn--bcher-kva.example")
    assert m["from"] == [{"name": "J\u00f6rg", "address": "joerg@b\u00fccher.example"}]
    assert m["to"] == [{"name": "", "address": "x@xn--bcher-kva.example"}]
    # compared normalized: the U-label in From is the A-label of the permitted domain
    v = heuristics.check(["joerg@B\u00fccher.example".encode()], [], ["x@xn--bcher-kva.example"],
                         frozenset({"xn--bcher-kva.example"}))
    assert v is not None and v.heuristic == heuristics.FROM_PERMITTED_DOMAIN


def test_idna_2008_keeps_sharp_s_and_final_sigma():
    assert headers.normalize_address("x@fa\u00df.example") == "x@xn--fa-hia.example"
    assert headers.address_domain("x@FA\u00df.Example.") == "xn--fa-hia.example"
    assert normalize_domain("fa\u00df.example") == "xn--fa-hia.example"
    sofos = "\u03c3\u03bf\u03c6\u03bf\u03c2"  # ends in a final sigma, which IDNA 2003 made a sigma
    assert normalize_domain(f"{sofos}.example") == f"xn--{sofos.encode('punycode').decode()}.example"
    # the A-label as written is the same domain; `fass` is another
    assert normalize_domain("xn--fa-hia.example") == "xn--fa-hia.example"
    assert normalize_domain("fass.example") == "fass.example"


def test_a_label_idna_2008_refuses_is_refused_as_a_domain_and_compared_punycoded_in_mail():
    from mxhook.model.rules import RuleError

    with pytest.raises(RuleError):
        normalize_domain("\u2603.example")  # a symbol: IDNA 2003 took it, IDNA 2008 does not
    # what IDNA 2003 stored for it, and what mail to it compares as
    assert headers.normalize_address("x@\u2603.example") == "x@xn--n3h.example"


# -- cost ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("value", [
    "a." * 15000 + "@" + ":" * 30000,  # group colons after an address
    "<a>" * 20000,  # many angle-addrs without an address in one mailbox
    "x <a> " * 10000,
    "a b " * 20000 + "c@d",
])
def test_parsing_stays_linear_on_hostile_header_values(value):
    """Each of these took seconds to minutes while the parser rescanned its tokens per token;
    Postfix lets a header reach 100 kB (header_size_limit)."""
    import time

    start = time.process_time()
    headers.mailboxes(value)
    headers.decode_field("To", value)
    assert time.process_time() - start < 2.0


# -- raw specials inside a Q-encoded display name ----------------------------------------------

def test_raw_comma_in_an_encoded_display_name_does_not_split_the_mailbox():
    field = b"=?utf-8?q?Doe,_John?= <j@x.example>, =?utf-8?q?A.B:C?= <a@b.example>"
    assert [(m.name, m.address) for m in headers.mailboxes(field)] == [
        ("Doe, John", "j@x.example"), ("A.B:C", "a@b.example")]
    assert headers.decode_field("To", field) == '"Doe, John" <j@x.example>, "A.B:C" <a@b.example>'


def test_an_address_inside_an_encoded_word_is_still_seen_by_the_heuristic():
    field = b"=?utf-8?q?x<ceo@ours.example>?="
    v = heuristics.check([field], [], ["support@ours.example"], OURS)
    assert v is not None and v.heuristic == heuristics.FROM_PERMITTED_DOMAIN
