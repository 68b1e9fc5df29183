"""Mail given to Postfix's sendmail(1) with `non_smtpd_milters = $smtpd_milters` (the common
opendkim recipe) naming mxhook's milter: cleanup's pretended connection reaches the real
mxhook-milter, the message is outbound (a `queued` event with its subject and custom header), a
block-listed recipient is removed at end of message with a `blocked` event (never refused at
RCPT: Postfix would defer the whole message, "can't reject recipient in non-smtpd(8)
submission"), and the other recipient gets the mail."""
from __future__ import annotations

import shutil
import subprocess

import pytest

from tests.e2e.test_events import (
    APP, CUSTOM_HEADER, OK_DOMAIN, add_endpoint, find, has_all, summary, wait_events, wait_for)
from tests.support.postfix import make_message

pytestmark = pytest.mark.e2e

SENDMAIL = shutil.which("sendmail") or "/usr/sbin/sendmail"


def test_sendmail_through_non_smtpd_milters(make_stack):
    st = make_stack(postfix_main_cf={"non_smtpd_milters": "$smtpd_milters"},
                    config={"milter": {"event_headers": CUSTOM_HEADER}})
    add_endpoint(st)
    kept, gone = f"kept@{OK_DOMAIN}", f"gone@{OK_DOMAIN}"
    st.cli("block", "add", gone)
    msg = make_message(from_=f"App <{APP}>", to=f"{kept}, {gone}", subject="Password reset",
                       headers={CUSTOM_HEADER: "reset-9"})
    proc = subprocess.run([SENDMAIL, "-C", st.postfix.config_dir, "-f", APP, "-i", kept, gone],
                          input=msg, capture_output=True, timeout=60)
    assert proc.returncode == 0, proc.stderr

    evs = wait_events(st, has_all([("queued", kept), ("blocked", gone)]))
    (queued,) = find(evs, "queued", kept)
    assert (queued["subject"], queued["custom_headers"]) == ("Password reset", {CUSTOM_HEADER: "reset-9"}), queued
    (blocked,) = find(evs, "blocked", gone)
    assert blocked["subject"] == "Password reset" and blocked["queue_id"] == queued["queue_id"], blocked
    assert not find(evs, "queued", gone), summary(evs)

    wait_for("delivery to the kept recipient",
             lambda: f"to=<{kept}>" in st.postfix.log_text() and "status=sent" in st.postfix.log_text(), st=st)
    log = st.postfix.log_text()
    assert "can't reject recipient" not in log, log
    assert f"to=<{gone}>" not in log, log


def test_check_reads_the_real_instance(make_stack):
    """`postconf -x` expands `$smtpd_milters` and `postfix status` tells a stopped instance, on
    the real Postfix."""
    from mxhook.services.check import check_local_submission, check_postfix_running
    from mxhook.services.postfix import Postfix
    from tests.support.daemons import MILTER_SOCKET_SPEC

    st = make_stack(postfix_main_cf={"non_smtpd_milters": "$smtpd_milters"}, spooler=False)
    postfix = Postfix(st.postfix.config_dir)
    values = {"queue_directory": st.postfix.queue_dir, "non_smtpd_milters": "$smtpd_milters",
              "milter_default_action": "tempfail"}
    [r] = check_local_submission(postfix, values, MILTER_SOCKET_SPEC)
    assert r["ok"] and "(through $smtpd_milters) names mxhook's milter" in r["message"], r
    [r] = check_postfix_running(postfix)
    assert r["ok"], r
    st.postfix.stop()
    [r] = check_postfix_running(postfix)
    assert not r["ok"] and r["code"] == "postfix_stopped", r
