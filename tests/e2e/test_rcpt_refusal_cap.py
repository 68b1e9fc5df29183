"""Many outcome classes in one transaction: smtpd's error limits must not lose the message, and
a recipient accepted past the cap on refusals and then refused gets a bounce from Postfix."""
from __future__ import annotations

import glob
import os
import re
import shutil
import tempfile
import time

import pytest

from tests.support.postfix import make_message

pytestmark = pytest.mark.e2e
SENDER = "alice@sender.example"


def dump_sink() -> tuple[dict, str]:
    """An smtp-sink that keeps every message it takes (for the bounce's text)."""
    directory = tempfile.mkdtemp(prefix="mxhook-bounces-")  # pytest's tmp_path is root-only
    os.chmod(directory, 0o777)  # smtp-sink writes as postfix
    return {"keep": ["-d", os.path.join(directory, "%M.")]}, directory


def sent_dumps(directory: str, n: int, timeout: float = 30.0) -> list[bytes]:
    deadline = time.monotonic() + timeout
    while True:
        files = sorted(glob.glob(os.path.join(directory, "*")))
        if len(files) >= n or time.monotonic() > deadline:
            return [open(f, "rb").read() for f in files]
        time.sleep(0.2)


@pytest.fixture
def bounce_dumps():
    sinks, directory = dump_sink()
    yield sinks, directory
    shutil.rmtree(directory, ignore_errors=True)


def test_25_classes_in_one_transaction_are_queued_and_refused_ones_bounced(make_stack, bounce_dumps):
    sinks, dumps = bounce_dumps
    # heuristic_from_permitted_domain off (documented option): every recipient is its own class
    st = make_stack(config={"milter": {"heuristic_from_permitted_domain": "no"}},
                    sinks=sinks, transport={"sender.example": "keep"})
    st.add_rule("u0", "/u0", "--when", r"To~^u0@ours\.example$")
    st.add_rule("hi", "/hi", "--when", r"To~@ours\.example$", "--when", r"Subject~^hi$")
    st.wait_milter_snapshot()
    rcpts = [f"u{i}@ours.example" for i in range(25)]

    # Everyone's rule holds: 5 splits (the cap), the other 20 accepted and spooled, no 421.
    t0 = time.monotonic()
    res = st.send(SENDER, rcpts, make_message(to="u0@ours.example", subject="hi"))
    assert res.accepted, res
    assert time.monotonic() - t0 < 5  # no smtpd_error_sleep_time
    codes = {r: res.rcpt[r].code for r in rcpts}
    assert [r for r in rcpts if codes[r] == 452] == rcpts[1:6], codes
    posted = st.receiver.wait_for(2, timeout=20)
    assert sorted(len(p.json()["envelope"]["recipients"]) for p in posted) == [1, 19]

    # Only u0's rule holds: u1..u5 split, u6..u24 accepted past the cap, then refused: each
    # is bounced by Postfix to the sender, naming the original recipient.
    res = st.send(SENDER, rcpts, make_message(to="u0@ours.example", subject="bye"))
    assert res.accepted, res
    assert [r for r in rcpts if res.rcpt[r].code == 452] == rcpts[1:6]
    refused = rcpts[6:]
    for r in refused:
        local = r.split("@")[0]
        st.postfix.wait_log(rf"to=<{local}=ours\.example@reject\.mxhook\.invalid>, "
                            r"relay=none,.*status=bounced "
                            r"\(mxhook: no inbound rule accepts this recipient\)", timeout=30)
    (dsn,) = sent_dumps(dumps, 1)
    for r in refused:
        assert f"Original-Recipient: rfc822;{r}".encode() in dsn, dsn[:3000]
    assert b"Final-Recipient" in dsn and b"Status: 5.7.1" in dsn
    assert "Original-Recipient: rfc822;u0@ours.example" not in dsn.decode("utf-8", "replace")
    log = st.postfix.log_text()
    assert not re.search(r"to=<u\d+@ours\.example>.*status=bounced", log)
    posted = st.receiver.wait_for(3, timeout=20)
    assert [p.json()["envelope"]["recipients"] for p in posted[2:]] == [["u0@ours.example"]]
