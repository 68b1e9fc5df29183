import time

import pytest
from hypothesis import given, strategies as st

from mxhook.model import headers


def test_8bit_latin1_and_utf8_and_encoded_words():
    assert headers.decode_value(b"caf\xe9") == "café"
    assert headers.decode_value("caf\xe9".encode()) == "café"
    assert headers.decode_value(b"=?iso-8859-1?q?caf=E9?= ok") == "café ok"
    assert headers.decode_value(b"=?x-unknown?q?abc?=") == "abc"
    assert headers.decode_value(b"folded\r\n\tvalue") == "folded\tvalue"  # RFC 5322: the CRLF only


def test_pymilter_surrogate_escaped_strings_decode_like_bytes():
    s = b"caf\xe9".decode("utf-8", "surrogateescape")
    assert headers.decode_value(s) == "café"


def test_addresses_are_normalized():
    assert headers.parse_addresses(b'"Doe, J" <J.Doe@EXAMPLE.org>, x@y.example') == [
        ("Doe, J", "j.doe@example.org"), ("", "x@y.example")]
    assert headers.first_address(None) == ""
    assert headers.address_domain("<A@B.Example>") == "b.example"


def test_domains_compare_as_a_labels_without_a_trailing_dot():
    assert headers.normalize_address("<Bob@Ours.Example.>") == "bob@ours.example"
    assert headers.normalize_address("bob@B\u00fccher.Example") == "bob@xn--bcher-kva.example"
    assert headers.address_domain("bob@b\u00fccher.example.") == "xn--bcher-kva.example"
    # what IDNA refuses is compared punycoded as written (lower case, no trailing dot), never raised
    assert headers.normalize_address("x@\u0300a\u00fc.B\u00fc.") == "x@xn--a-eha06m.xn--b-eha"
    assert headers.normalize_address("<>") == "" and headers.normalize_address("postmaster") == "postmaster"
    assert headers.domain_a_label("B\u00fccher.Example.") == "xn--bcher-kva.example"


def test_invisible_characters_and_other_idna_dots_do_not_make_another_domain():
    for domain in ("ours.example.\u200b", "ours.example.\u00ad", "ours.example\uff0e",
                   "ours.example\u3002\u3002", "ou\u200brs.example", "\uff4f\uff55\uff52\uff53.example",
                   "ours.example\x85.", "ours.example\u2028", "ours.exam\x00ple"):
        assert headers.normalize_address(f"ceo@{domain}") == "ceo@ours.example", repr(domain)


@given(st.text(alphabet=st.characters(blacklist_characters="<>"), max_size=20))
def test_normalized_addresses_stay_as_they_are(domain):
    once = headers.normalize_address("a@" + domain)
    assert headers.normalize_address(once) == once


@given(st.binary(max_size=300))
def test_never_raises_on_arbitrary_bytes(raw):
    assert isinstance(headers.decode_value(raw), str)
    assert isinstance(headers.parse_addresses(raw), list)


def test_an_overlong_non_ascii_label_is_a_cheap_stand_in_that_is_no_host_name():
    long_label = "a" * 70 + "\u00fc"  # over 63 characters: no A-label for it
    other = "a" * 71 + "\u00fc"
    assert headers.normalize_address(f"x@{long_label}.B\u00fc.").endswith(".xn--b-eha")
    assert headers.address_domain(f"x@{long_label}") != headers.address_domain(f"x@{other}")
    assert headers.address_domain(f"x@{long_label}") == headers.address_domain(f"X@{long_label}.")
    assert "!" in headers.address_domain(f"x@{long_label}")  # never a permitted domain's label
    with pytest.raises(UnicodeError):
        headers.domain_a_label(long_label)


def test_idna_of_a_huge_hostile_domain_is_linear():
    # IDNA punycodes before it checks the 63-octet limit, quadratic in distinct code points:
    # 4,000 distinct CJK characters took seconds per label
    for domain in ("".join(chr(0x4E00 + i) for i in range(20_000)),
                   ".".join(chr(0x4E00 + i) * 3 for i in range(20_000)),
                   "\u30fb" * 50_000, "\u0661" * 50_000):
        start = time.perf_counter()
        headers.address_domain("ceo@" + domain)
        assert time.perf_counter() - start < 0.5
