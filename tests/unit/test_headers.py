from hypothesis import given, strategies as st

from mxhook import headers


def test_8bit_latin1_and_utf8_and_encoded_words():
    assert headers.decode_value(b"caf\xe9") == "café"
    assert headers.decode_value("caf\xe9".encode()) == "café"
    assert headers.decode_value(b"=?iso-8859-1?q?caf=E9?= ok") == "café ok"
    assert headers.decode_value(b"=?x-unknown?q?abc?=") == "abc"
    assert headers.decode_value(b"folded\r\n\tvalue") == "folded value"


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
    # what IDNA cannot encode is compared as written (lower case, no trailing dot), never raised
    assert headers.normalize_address("x@a..b\u00fc.") == "x@a..b\u00fc"
    assert headers.normalize_address("<>") == "" and headers.normalize_address("postmaster") == "postmaster"
    assert headers.domain_a_label("B\u00fccher.Example.") == "xn--bcher-kva.example"


@given(st.binary(max_size=300))
def test_never_raises_on_arbitrary_bytes(raw):
    assert isinstance(headers.decode_value(raw), str)
    assert isinstance(headers.parse_addresses(raw), list)
