"""Inbound mail to webhooks, end to end: a private Postfix on 127.0.0.1, the real mxhook-milter
on a unix socket, the real mxhook-spooler, a real HTTP receiver on loopback, and the real
`mxhook` CLI for configuration and the inbound log. See tests/support/ and tests/conftest.py.
"""
from __future__ import annotations

import base64
import os
import shutil
import signal
import time

import pytest

from tests.support.postfix import make_message
from tests.support.receiver import Response
from mxhook.model import message

pytestmark = pytest.mark.e2e

SENDER = "alice@sender.example"
SUPPORT = "support@ours.example"


def add_support_rule(stack, path="/hook", *extra):
    stack.add_rule("support", path, "--when", r"To~^support@ours\.example$", *extra)
    stack.wait_milter_snapshot()


def rows_for(rows, **match):
    return [r for r in rows if all(r.get(k) == v for k, v in match.items())]


# -- accepted mail ------------------------------------------------------------------------------

def test_accepted_mail_arrives_as_json(mxhook_stack):
    st = mxhook_stack
    add_support_rule(st)
    attachment = bytes(range(256)) * 4
    msg = make_message(
        from_="Alice Example <alice@sender.example>", to=SUPPORT, subject="Printer on fire",
        text="Hello support,\nthe printer is on fire.\n",
        attachments=[("report.bin", "application/octet-stream", attachment)],
    )
    res = st.send(SENDER, [SUPPORT], msg)
    assert res.accepted, res
    assert res.queue_id

    (req,) = st.receiver.wait_for(1, timeout=15, path="/hook")
    assert req.method == "POST"
    assert req.headers["Content-Type"].startswith("application/json")
    doc = req.json()
    assert doc["rule"] == "support"
    assert req.headers["webhook-id"] == doc["id"]
    env = doc["envelope"]
    assert env["mail_from"] == SENDER
    assert env["recipients"] == [SUPPORT]
    assert env["queue_id"] == res.queue_id
    assert env["client_addr"] == "127.0.0.1"
    assert env["helo"] == "client.example.org"
    m = doc["message"]
    assert m["subject"] == "Printer on fire"
    assert m["from"] == [{"name": "Alice Example", "address": "alice@sender.example"}]
    assert [a["address"] for a in m["to"]] == [SUPPORT]
    assert m["text"].replace("\r\n", "\n") == "Hello support,\nthe printer is on fire.\n"
    (att,) = m["attachments"]
    assert att["filename"] == "report.bin"
    assert att["content_type"] == "application/octet-stream"
    assert att["size"] == len(attachment)
    assert base64.b64decode(att["content"]) == attachment
    header_names = [h["name"].lower() for h in m["headers"]]
    assert header_names[:3] == ["from", "to", "subject"]  # order kept

    rows = st.wait_status(lambda rows: rows_for(rows, status="succeeded"))
    (row,) = rows_for(rows, status="succeeded")
    assert row["to"] == SUPPORT and row["from"] == SENDER and row["filterName"] == "support"

    # Postfix delivered the message on as well (the default after-accept action)
    st.postfix.wait_log(rf"{res.queue_id}: to=<{SUPPORT}>.*status=sent")


def test_8bit_and_malformed_headers_are_accepted_and_posted(mxhook_stack):
    st = mxhook_stack
    add_support_rule(st)
    raw = (
        b"From: =?iso-8859-1?q?J=F6rg?= <joerg@sender.example>\r\n"
        b"To: support@ours.example\r\n"
        b"Subject: Gr\xfc\xdfe aus K\xf6ln \xff\xfe\r\n"  # raw Latin-1 and invalid UTF-8
        b"X-Broken: =?utf-8?b?not base64!?=\r\n"
        b"Content-Type: text/plain; charset=iso-8859-1\r\n"
        b"Content-Transfer-Encoding: 8bit\r\n"
        b"\r\n"
        b"Gr\xfc\xdfe!\r\n"
    )
    res = st.send("joerg@sender.example", [SUPPORT], raw)
    assert res.accepted, res
    (req,) = st.receiver.wait_for(1, timeout=15, path="/hook")
    m = req.json()["message"]
    assert "Gr" in m["subject"] and "K" in m["subject"]
    assert m["text"].strip() == "Grüße!"
    st.wait_status(lambda rows: rows_for(rows, status="succeeded"))


def test_recipient_without_a_possible_rule_is_refused_at_rcpt_not_removed_after_250(mxhook_stack):
    st = mxhook_stack
    st.add_rule("rich", "/rich", "--when", r"To~^rich@ours\.example$")
    st.wait_milter_snapshot()
    rich, other = "rich@ours.example", "nobody@ours.example"
    res = st.send(SENDER, [rich, other], make_message(to=f"{rich}, {other}"))
    assert res.accepted, res
    assert res.rcpt[rich].code == 250
    assert res.rcpt[other].code == 550 and "5.7.1" in res.rcpt[other].message, res
    (req,) = st.receiver.wait_for(1, timeout=15, path="/rich")
    assert req.json()["envelope"]["recipients"] == [rich]
    st.postfix.wait_log(rf"{res.queue_id}: to=<{rich}>.*status=sent")
    rows = st.wait_status(lambda rows: rows_for(rows, status="denied", to=other))
    assert rows_for(rows, status="denied", to=other)[0]["filterName"] == "no_rule"


def test_recipient_whose_outcome_depends_on_headers_is_split_off_with_452(mxhook_stack):
    """Each recipient ends delivered to its webhook, refused with 5xx, or deferred with 452
    and then taken in a transaction of its own; never 250 and then removed."""
    st = mxhook_stack
    st.add_rule("rich", "/rich", "--when", r"To~^rich@ours\.example$")
    st.add_rule("vip", "/vip", "--when", r"To~^vip@ours\.example$", "--when", "Subject~urgent")
    st.wait_milter_snapshot()
    rich, vip, nobody = "rich@ours.example", "vip@ours.example", "nobody@ours.example"
    for subject, vip_outcome in (("hello", 550), ("urgent: call me", 250)):
        st.receiver.requests.clear()
        msg = make_message(to=f"{rich}, {vip}, {nobody}", subject=subject)
        res = st.send(SENDER, [rich, vip, nobody], msg)
        assert res.accepted, res
        assert res.rcpt[rich].code == 250 and res.rcpt[nobody].code == 550, res
        assert res.rcpt[vip].code == 452 and "4.5.3" in res.rcpt[vip].message, res
        (req,) = st.receiver.wait_for(1, timeout=15, path="/rich")
        assert req.json()["envelope"]["recipients"] == [rich]
        st.postfix.wait_log(rf"{res.queue_id}: to=<{rich}>.*status=sent")
        # the client's second transaction for the deferred recipient
        again = st.send(SENDER, [vip], msg)
        if vip_outcome == 250:
            assert again.accepted, again
            (req,) = st.receiver.wait_for(1, timeout=15, path="/vip")
            assert req.json()["envelope"]["recipients"] == [vip]
            st.postfix.wait_log(rf"{again.queue_id}: to=<{vip}>.*status=sent")
        else:
            assert again.stage == "DATA" and again.code == 550, again
    assert " removed" not in "".join(  # no message lost a recipient to the milter
        line for line in st.postfix.log_text().splitlines() if "milter" in line)


def test_discard_rule_posts_but_postfix_does_not_deliver(mxhook_stack):
    st = mxhook_stack
    add_support_rule(st, "/hook", "--discard")
    res = st.send(SENDER, [SUPPORT], make_message(to=SUPPORT))
    assert res.accepted, res  # the sender sees 250
    st.receiver.wait_for(1, timeout=15)
    # Postfix's own discard(8) takes the message, not a milter DISCARD
    st.postfix.wait_log(rf"{res.queue_id}: to=<webhook-only@discard.mxhook.invalid>.*"
                        r"relay=none.*status=sent \(webhook-only\)")
    assert f"to=<{SUPPORT}>" not in st.postfix.log_text()
    assert "milter-discard" not in st.postfix.log_text()


def test_discard_rule_keeps_persistent_sessions_at_full_speed(make_stack):
    """A milter DISCARD made persistent sessions 3-8 times slower than a delivering rule
    (bench/RESULTS.md); discard(8) takes webhook-only mail at full speed. Both loads run in
    this test, so a busy machine slows both alike."""
    import subprocess
    st = make_stack(spooler=False)
    add_support_rule(st)
    st.add_rule("webhook-only", "/hook", "--when", r"To~^webhook-only@ours\.example$", "--discard")
    st.wait_milter_snapshot()

    def load(rcpt: str) -> float:
        t0 = time.monotonic()
        proc = subprocess.run(["smtp-source", "-s", "5", "-m", "250", "-l", "2000", "-f", SENDER,
                               "-t", rcpt, f"127.0.0.1:{st.postfix.port}"],
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0 and not proc.stderr.strip(), proc.stderr
        return time.monotonic() - t0

    delivering = load(SUPPORT)
    discarding = load("webhook-only@ours.example")
    deadline = time.monotonic() + 5
    while len(st.cfg.spooled_records()) < 500 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert len(st.cfg.spooled_records()) == 500  # every message spooled before its 250
    assert discarding < 1.5 * delivering, (discarding, delivering)




def test_rule_edits_reach_the_running_milter_within_a_second(mxhook_stack):
    st = mxhook_stack
    res = st.send(SENDER, [SUPPORT], make_message(to=SUPPORT))
    assert res.code == 550 and res.stage == "RCPT", res
    st.add_rule("support", "/hook", "--when", r"To~^support@ours\.example$")
    # rules_reload_interval is 0.2 s in tests; the production default is 1 s
    deadline = time.monotonic() + 1.5
    while True:
        res = st.send(SENDER, [SUPPORT], make_message(to=SUPPORT))
        if res.accepted or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert res.accepted, res


# -- denied mail --------------------------------------------------------------------------------

def test_rule_mismatch_is_550_and_logged_denied(mxhook_stack):
    st = mxhook_stack
    add_support_rule(st)
    st.add_rule("sales-urgent", "/hook", "--when", r"To~^sales@", "--when", "Subject~urgent")
    st.wait_milter_snapshot()
    res = st.send(SENDER, ["sales@ours.example"], make_message(to="sales@ours.example"))
    assert res.stage == "DATA" and res.code == 550, res  # a header condition decides
    assert res.rcpt["sales@ours.example"].code == 250
    assert "5.7.1" in res.reply.message
    res = st.send(SENDER, ["other@ours.example"], make_message(to="other@ours.example"))
    assert res.stage == "RCPT" and res.code == 550, res  # no rule can match its envelope
    rows = st.wait_status(lambda rows: rows_for(rows, status="denied"))
    row = rows_for(rows, status="denied", to="sales@ours.example")[0]
    assert row["from"] == SENDER
    assert row["filterName"] == "no_rule"
    assert "no inbound rule" in row["reason"]
    assert st.receiver.requests == []


def test_from_in_permitted_domain_is_550(mxhook_stack):
    st = mxhook_stack
    add_support_rule(st)
    res = st.send(SENDER, [SUPPORT], make_message(from_="CEO <ceo@ours.example>", to=SUPPORT))
    assert res.stage == "DATA" and res.code == 550, res
    rows = st.wait_status(lambda rows: rows_for(rows, status="denied"))
    assert rows_for(rows, status="denied")[0]["filterName"].startswith("heuristic:")
    assert st.receiver.requests == []


def test_from_equal_to_recipient_is_550(mxhook_stack):
    st = mxhook_stack
    add_support_rule(st)
    # From is the recipient itself, in another spelling (case, display name)
    res = st.send("x@sender.example", [SUPPORT],
                  make_message(from_="Support <SUPPORT@Ours.Example>", to=SUPPORT))
    assert res.stage == "DATA" and res.code == 550, res
    rows = st.wait_status(lambda rows: rows_for(rows, status="denied"))
    assert rows_for(rows, status="denied")[0]["filterName"].startswith("heuristic:")


def test_from_equal_to_header_with_heuristics_off_is_accepted(make_stack):
    st = make_stack(config={"milter": {"heuristic_from_equals_to": "no",
                                       "heuristic_from_permitted_domain": "no"}})
    add_support_rule(st)
    res = st.send("x@sender.example", [SUPPORT], make_message(from_=SUPPORT, to=SUPPORT))
    assert res.accepted, res


def test_unknown_domain_is_550_at_rcpt_in_reject_mode(make_stack):
    st = make_stack(config={"spooler": {"log_unknown_domains": "yes"}})
    add_support_rule(st)
    res = st.send(SENDER, ["someone@elsewhere.example"], make_message(to="someone@elsewhere.example"))
    assert res.stage == "RCPT" and res.code == 550, res
    assert res.final is None
    rows = st.wait_status(lambda rows: rows_for(rows, status="denied"))
    (row,) = rows_for(rows, status="denied")
    assert row["filterName"] == "unknown_domain"
    assert row["to"] == "someone@elsewhere.example"


def test_unknown_domain_denials_are_only_counted_by_default(mxhook_stack):
    st = mxhook_stack
    add_support_rule(st)
    for _ in range(2):
        res = st.send(SENDER, ["someone@elsewhere.example"], make_message(to="someone@elsewhere.example"))
        assert res.stage == "RCPT" and res.code == 550, res
    deadline = time.monotonic() + 15
    while st.cli.json("status")["unlogged_denials"]["last_hour"] < 2:
        assert time.monotonic() < deadline, st.diagnostics()
        time.sleep(0.2)
    assert st.inbound_log() == []
    assert "2 denial(s) of unknown domains in the last hour" in st.cli("status").stdout


WHITE_SPACE_FIRST = (
    b" \r\n"  # Postfix: a first line that starts with white space ends a header section
    b"From: ceo@ours.example\r\n"
    b"To: support@ours.example\r\n"
    b"Subject: wire the money\r\n"
    b"\r\n"
    b"Today, please.\r\n"
)


# Postfix adds the missing From, Date and Message-ID for clients in local_header_rewrite_clients
# (loopback, by default): an empty value makes the test client remote, as on the internet.
REMOTE_CLIENT = {"local_header_rewrite_clients": ""}


def test_message_without_header_section_is_refused_by_default(make_stack):
    st = make_stack(postfix_main_cf=REMOTE_CLIENT)
    add_support_rule(st)
    res = st.send(SENDER, [SUPPORT], WHITE_SPACE_FIRST)
    assert res.stage == "DATA" and res.code == 550, res
    assert "no From header" in res.reply.message
    rows = st.wait_status(lambda rows: rows_for(rows, status="denied"))
    assert rows_for(rows, status="denied")[0]["filterName"] == "heuristic:missing_from"
    assert st.receiver.requests == []


def test_message_without_header_section_is_spooled_as_postfix_has_it_when_accepted(make_stack):
    st = make_stack(config={"milter": {"missing_from": "accept"}}, postfix_main_cf=REMOTE_CLIENT,
                    spooler=False)
    add_support_rule(st)
    res = st.send(SENDER, [SUPPORT], WHITE_SPACE_FIRST)
    assert res.accepted, res
    (record,) = st.cfg.spooled_records()
    # No header field: the empty line Postfix put first, so a parser sees no header section.
    assert record.payload == b"\r\n" + WHITE_SPACE_FIRST
    normalized = message.normalize(record.payload)
    assert normalized["headers"] == [] and normalized["from"] == [] and normalized["subject"] is None


def test_unknown_domain_is_left_alone_in_pass_mode(make_stack):
    st = make_stack(config={"milter": {"unknown_domains": "pass"}})
    add_support_rule(st)
    res = st.send(SENDER, ["someone@elsewhere.example"], make_message(to="someone@elsewhere.example"))
    assert res.accepted, res
    st.postfix.wait_log(rf"{res.queue_id}: to=<someone@elsewhere.example>.*status=sent")
    time.sleep(0.5)
    assert st.receiver.requests == []


# -- delivery outcomes --------------------------------------------------------------------------

def test_receiver_500_then_recovering_is_deferred_then_succeeded(mxhook_stack):
    st = mxhook_stack
    st.receiver.script("/hook", [(500, {}, b"busy"), (200, {}, b"ok")])
    # retry interval 60 s runs as 3 s here (retry_time_scale 0.05): time to see `deferred`
    add_support_rule(st, "/hook", "--retry-interval", "60")
    res = st.send(SENDER, [SUPPORT], make_message(to=SUPPORT))
    assert res.accepted, res

    rows = st.wait_status(lambda rows: rows_for(rows, status="deferred"), timeout=15)
    entry = rows_for(rows, status="deferred")[0]["id"]
    st.wait_status(lambda rows: rows_for(rows, id=entry, status="succeeded"), timeout=20)
    first, second = st.receiver.wait_for(2, timeout=5, path="/hook")
    assert first.headers["webhook-id"] == second.headers["webhook-id"] == entry
    assert first.body == second.body or first.json()["id"] == second.json()["id"]

    detail = st.cli.json("log", "show", entry)
    codes = [a.get("status_code") for a in detail["attempts"]]
    assert codes == [500, 200], detail


def test_receiver_404_is_failed_without_retry(mxhook_stack):
    st = mxhook_stack
    st.receiver.script("/hook", [(404, {}, b"no such hook")])
    add_support_rule(st)
    res = st.send(SENDER, [SUPPORT], make_message(to=SUPPORT))
    assert res.accepted, res
    rows = st.wait_status(lambda rows: rows_for(rows, status="failed"), timeout=15)
    entry = rows_for(rows, status="failed")[0]["id"]
    time.sleep(1.5)  # longer than the scaled retry interval (0.5 s): no second attempt
    assert len(st.receiver.requests) == 1
    detail = st.cli.json("log", "show", entry)
    assert [a.get("status_code") for a in detail["attempts"]] == [404]


# -- faults -------------------------------------------------------------------------------------

def test_spooler_killed_before_ingest_posts_after_restart(mxhook_stack):
    st = mxhook_stack
    add_support_rule(st)
    st.spooler.kill(signal.SIGKILL)
    res = st.send(SENDER, [SUPPORT], make_message(to=SUPPORT, subject="while the spooler was down"))
    assert res.accepted, res
    assert len(st.cfg.spooled_records()) == 1  # durably handed over before the 250
    time.sleep(0.3)
    assert st.receiver.requests == []
    st.spooler.start()
    (req,) = st.receiver.wait_for(1, timeout=15)
    assert req.json()["message"]["subject"] == "while the spooler was down"
    st.wait_status(lambda rows: rows_for(rows, status="succeeded"))
    assert st.cfg.spool_files("new") == []


def test_spooler_killed_mid_request_reposts_with_same_webhook_id(mxhook_stack):
    st = mxhook_stack
    # the first request hangs (the receiver records it before the delay); later ones answer
    st.receiver.script("/hook", [Response(200, {}, b"late", delay=30), (200, {}, b"ok")])
    add_support_rule(st)
    res = st.send(SENDER, [SUPPORT], make_message(to=SUPPORT))
    assert res.accepted, res
    (first,) = st.receiver.wait_for(1, timeout=15)
    st.spooler.kill(signal.SIGKILL)
    st.spooler.start()
    _, second = st.receiver.wait_for(2, timeout=30)
    assert second.headers["webhook-id"] == first.headers["webhook-id"]
    st.wait_status(lambda rows: rows_for(rows, status="succeeded"), timeout=15)


def test_unwritable_spool_answers_4xx_never_250(mxhook_stack):
    st = mxhook_stack
    add_support_rule(st)
    # Tests run as root, so permissions would not stop the milter: replace tmp/ with a regular
    # file, which makes the open() of tmp/<id> fail (ENOTDIR) whoever we are.
    tmp_dir = os.path.join(st.cfg.spool_dir, "tmp")
    shutil.rmtree(tmp_dir)
    with open(tmp_dir, "w") as fh:
        fh.write("not a directory\n")
    try:
        res = st.send(SENDER, [SUPPORT], make_message(to=SUPPORT))
        assert not res.accepted, res
        assert res.stage == "DATA" and 400 <= res.code < 500, res
        assert st.cfg.spool_files("new") == []
    finally:
        os.unlink(tmp_dir)
        os.mkdir(tmp_dir, 0o750)
    # and it recovers without a restart
    res = st.send(SENDER, [SUPPORT], make_message(to=SUPPORT))
    assert res.accepted, res
    st.receiver.wait_for(1, timeout=15)


def test_milter_down_is_tempfail(mxhook_stack):
    st = mxhook_stack
    add_support_rule(st)
    st.milter.kill(signal.SIGKILL)
    res = st.send(SENDER, [SUPPORT], make_message(to=SUPPORT))
    assert not res.accepted, res
    assert res.code is not None and 400 <= res.code < 500, res  # milter_default_action = tempfail
    st.milter.start()
    res = st.send(SENDER, [SUPPORT], make_message(to=SUPPORT))
    assert res.accepted, res
