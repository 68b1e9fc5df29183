"""Tracking tokens: signed, rotatable, never accepted when forged, cut or of another kind."""
from __future__ import annotations

import os

import pytest
from hypothesis import given, strategies as st

from mxhook.model import tracktokens as tt

K1, K2 = os.urandom(32), os.urandom(32)
CLICK = tt.Track(tt.CLICK, "4XbQ1", "rcpt@example.com", "shop.example", 1764800000, 3,
                 "https://shop.example/p?a=1&b=é#top")


def test_round_trip_and_rotation_with_overlap():
    token = tt.make_token((K1,), CLICK)
    assert tt.verify((K1,), token) == CLICK
    assert tt.verify((K1, K2), token) == CLICK  # a new key added: old tokens still good
    assert tt.verify((K2,), token) is None  # the old key dropped: refused
    newer = tt.make_token((K1, K2), CLICK)
    assert tt.verify((K2,), newer) == CLICK  # signed with the newest


def test_kind_is_checked_when_asked():
    token = tt.make_token((K1,), CLICK)
    assert tt.verify((K1,), token, kind=tt.CLICK) == CLICK
    assert tt.verify((K1,), token, kind=tt.OPEN) is None


@pytest.mark.parametrize("mangle", [
    lambda t: t[:-1] + ("A" if t[-1] != "A" else "B"),  # tag changed
    lambda t: "x" + t,  # payload changed
    lambda t: t.replace(".", ""),  # no separator
    lambda t: t.split(".")[0] + "." + t.split(".")[1][:10],  # tag cut
    lambda t: t + "=" * 3,
    lambda t: "",
    lambda t: "a" * (tt.MAX_TOKEN + 1),
])
def test_forged_or_damaged_tokens_are_refused(mangle):
    assert tt.verify((K1,), mangle(tt.make_token((K1,), CLICK))) is None


def test_a_click_needs_its_url_and_only_a_click_has_one():
    with pytest.raises(ValueError):
        tt.Track(tt.CLICK, "Q", "", "d.example", 1)
    with pytest.raises(ValueError):
        tt.Track(tt.OPEN, "Q", "", "d.example", 1, 0, "https://x.example/")
    with pytest.raises(ValueError):
        tt.make_token((), CLICK)


_text = st.text(st.characters(blacklist_characters="\x1f"), max_size=40)


@given(kind=st.sampled_from(tt.KINDS), queue_id=_text, recipient=_text, domain=_text,
       sent=st.integers(0, 2**40), link=st.integers(0, 10_000), url=_text)
def test_any_values_round_trip(kind, queue_id, recipient, domain, sent, link, url):
    click = kind == tt.CLICK
    values = (queue_id, recipient, domain) + ((url,) if click else ())
    args = (kind, queue_id, recipient, domain, sent, link if click else None, url if click else None)
    # a lone surrogate other than an undecodable byte's escape (U+DC80-U+DCFF) has no UTF-8:
    # refused with ValueError (the milter leaves such a message untracked), never a crash later
    if any(0xD800 <= ord(c) <= 0xDFFF and not 0xDC80 <= ord(c) <= 0xDCFF for v in values for c in v):
        with pytest.raises(ValueError, match="lone surrogate"):
            tt.Track(*args)
        return
    track = tt.Track(*args)
    assert tt.verify((K2, K1), tt.make_token((K1, K2), track)) == track


def test_a_lone_surrogate_is_refused_and_an_escaped_byte_round_trips():
    with pytest.raises(ValueError, match="lone surrogate"):
        tt.Track(tt.OPEN, "Q", "", "\ud800.example", 1)
    track = tt.Track(tt.OPEN, "Q", "b\udce9@x.example", "d.example", 1)  # the byte 0xE9, escaped
    assert tt.verify((K1,), tt.make_token((K1,), track)) == track


@given(st.text(max_size=300))
def test_arbitrary_text_is_never_a_token(text):
    assert tt.verify((K1,), text) is None
