"""`postfix logrotate` while mxhook-logfollow is down, through the real private Postfix.

Postfix's own rotation of `maillog_file` renames it to `maillog.<date>-<time>`, has postlogd
open a new one and, a second later, gzips the old one (`maillog_file_compressor`): a new inode
with the old content. Deliveries logged in the old file after the follower stopped (one of them
a hard bounce) must still become events, and the bounced address must reach the block list.
"""
from __future__ import annotations

import glob
import os
import re
import subprocess

import pytest

from tests.e2e.test_events import (HARD_DOMAIN, OK_DOMAIN, add_endpoint, event_stack, find,
                                   has_all, send_outbound, wait_events, wait_for)

pytestmark = pytest.mark.e2e


def _delivered(st, rcpts) -> None:
    for rcpt in rcpts:
        st.postfix.wait_log(rf"to=<{re.escape(rcpt)}>.*status=(sent|bounced)", timeout=60)


def test_postfix_logrotate_with_gzip_while_the_follower_is_down(make_stack):
    st = event_stack(make_stack)
    add_endpoint(st)
    before = [f"b{i}@{OK_DOMAIN}" for i in range(3)]
    res, _ = send_outbound(st, before, trusted=True)
    assert res.accepted, res
    wait_events(st, has_all([("succeeded", r) for r in before]))
    st.logfollow.stop()

    # logged in the old file only: the follower never saw these lines
    down = [f"d{i}@{OK_DOMAIN}" for i in range(4)]
    victim = f"gone@{HARD_DOMAIN}"
    res, _ = send_outbound(st, [*down, victim], trusted=True, app_id="order-2")
    assert res.accepted, res
    _delivered(st, [*down, victim])

    maillog = st.postfix.log_path
    rotate = subprocess.run(["postfix", "-c", st.postfix.config_dir, "logrotate"],
                            capture_output=True, text=True, timeout=60)
    assert rotate.returncode == 0, rotate.stdout + rotate.stderr
    # compressed a moment later, in the background: maillog.20261203-093000.gz
    rotated = wait_for("the rotated maillog compressed",
                       lambda: glob.glob(maillog + ".*.gz") if not [p for p in glob.glob(maillog + ".*")
                                                                    if not p.endswith(".gz")] else None,
                       timeout=30)
    assert len(rotated) == 1 and re.fullmatch(r".*/maillog\.\d{8}-\d{6}\.gz", rotated[0]), rotated

    after = [f"a{i}@{OK_DOMAIN}" for i in range(3)]  # in the new file
    res, _ = send_outbound(st, after, trusted=True, app_id="order-3")
    assert res.accepted, res
    wait_for("the new maillog has the deliveries", lambda: os.path.exists(maillog), timeout=30)
    _delivered(st, after)

    st.logfollow.start()
    want = [("succeeded", r) for r in [*before, *down, *after]] + [("bounced", victim), ("registered", victim)]
    evs = wait_events(st, has_all(want), timeout=90)
    for rcpt in [*before, *down, *after]:
        assert len(find(evs, "succeeded", rcpt)) == 1, rcpt
    assert victim in {row["address"] for row in st.cli.json("block", "list")}
    err = st.logfollow.stderr_text()
    assert "resuming in rotated file" in err and rotated[0] in err, err[-2000:]
