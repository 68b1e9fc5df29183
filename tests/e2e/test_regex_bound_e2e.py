"""A rule regex that hides its repeats in comments is bounded by [milter] regex_timeout in the
real milter behind a private Postfix: the hostile Subject costs one timeout, the message is
decided by the next rule, and the timeout is logged."""
from __future__ import annotations

import time

import pytest

from tests.support.postfix import make_message

pytestmark = pytest.mark.e2e

HIDDEN = r"(?#[)(a|a)+$(?#])"  # minutes of milter CPU on 30 a's unbounded; no warning before


def test_comment_hidden_backtracking_is_cut_off_by_the_time_bound(make_stack):
    st = make_stack(config={"milter": {"regex_timeout": "0.05"}})
    st.add_rule("hidden", "/hidden", "--when", f"Subject~{HIDDEN}", "--priority", "1")
    st.add_rule("support", "/hook", "--when", r"To~^support@ours\.example$", "--priority", "2")
    st.wait_milter_snapshot()
    msg = make_message(from_="alice@sender.example", to="support@ours.example",
                       subject="a" * 30 + "!", text="hello\n")
    start = time.monotonic()
    res = st.send("alice@sender.example", ["support@ours.example"], msg, timeout=20)
    elapsed = time.monotonic() - start
    assert res.accepted, (res, st.diagnostics())
    assert elapsed < 5, f"{elapsed:.1f} s for one message"
    (req,) = st.receiver.wait_for(1, timeout=15, path="/hook")
    assert req.json()["rule"] == "support"
    log = st.milter.stderr_text()
    assert "timed out, counted as no match" in log and "(?#[)(a|a)+$(?#])" in log, log[-2000:]
