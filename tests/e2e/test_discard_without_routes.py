"""discard_via = auto on a Postfix without mxhook's transport_maps entries (an upgrade that did
not re-run `mxhook postfix-config --apply`): webhook-only mail must not take the normal route."""
from __future__ import annotations

import re

import pytest

from tests.support.postfix import make_message

pytestmark = pytest.mark.e2e
SENDER = "alice@sender.example"


def test_webhook_only_mail_is_not_relayed_without_the_transport_entry(make_stack):
    st = make_stack(postfix_main_cf={"transport_maps": ""})
    st.add_rule("support", "/hook", "--when", r"To~^support@ours\.example$", "--discard")
    st.wait_milter_snapshot()
    res = st.send(SENDER, ["support@ours.example"], make_message(to="support@ours.example"))
    assert res.accepted, res
    (req,) = st.receiver.wait_for(1, timeout=15, path="/hook")
    assert req.json()["envelope"]["recipients"] == ["support@ours.example"]
    st.postfix.wait_log(r"milter-discard|discard: ")
    log = st.postfix.log_text()
    assert "discard.mxhook.invalid" not in log
    assert not re.search(r"to=<[^>]*>.*relay=127\.0\.0\.1", log), log
    warning = st.milter.stderr_text()
    assert "WARNING" in warning and "transport_maps lacks mxhook's entries" in warning
    assert "mxhook postfix-config --apply" in warning
