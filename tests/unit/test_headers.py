from hypothesis import given, strategies as st

from mxhook import headers


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
    # what IDNA cannot encode is compared punycoded as written (lower case, no trailing dot), never raised
    long_label = "a" * 70 + "\u00fc"  # over 63 characters: no A-label for it
    assert headers.normalize_address(f"x@{long_label}.B\u00fc.") == f"x@xn--{long_label[:-1]}-tih.xn--b-eha"
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
