"""Delivery events end to end (issue 3): outbound mail through a private Postfix relaying to
several smtp-sinks (one accepts, one refuses every RCPT with `500 5.3.0` = a hard bounce, one
with `450 4.3.0` = deferred, routed by transport_maps), the real mxhook-milter (`queued`,
`blocked`), the real mxhook-logfollow on Postfix's maillog_file (`succeeded`, `bounced`,
`deferred`), the real mxhook-spooler (join by queue id, batching, block list, `registered`), the
real `mxhook` CLI (`endpoint add`, `block`, `log events`) and a real HTTP receiver on loopback.

Outbound mail is submitted on an extra smtpd listener with
`-o milter_macro_daemon_name=ORIGINATING` (the milter's default `outbound_daemon_names`), or
from 127.0.0.2, a `[milter] trusted_networks` address.
"""
from __future__ import annotations

import csv
import email
import io
import re
import threading
import time
from collections import defaultdict
from datetime import datetime

import pytest

from tests.support.postfix import make_message
from tests.support.receiver import Response

pytestmark = pytest.mark.e2e

APP = "app@app.example"
CUSTOM_HEADER = "X-App-Id"
OK_DOMAIN, HARD_DOMAIN, SOFT_DOMAIN = "ok.example", "hard.example", "soft.example"
SINKS = {"hard": ["-f", "RCPT"], "soft": ["-r", "RCPT"]}
TRANSPORT = {HARD_DOMAIN: "hard", SOFT_DOMAIN: "soft"}
SUBMISSION = {"submission": {"milter_macro_daemon_name": "ORIGINATING"}}
TRUSTED_CLIENT = "127.0.0.2"
FINAL = ("succeeded", "bounced", "deferred", "failed")


# -- helpers ------------------------------------------------------------------------------------

def event_stack(make_stack, config=None):
    """Postfix with the three sinks and the submission listener, milter, spooler, log follower."""
    cfg = {"milter": {"event_headers": CUSTOM_HEADER, "trusted_networks": f"{TRUSTED_CLIENT}/32"}}
    for section, kv in (config or {}).items():
        cfg.setdefault(section, {}).update(kv)
    return make_stack(logfollow=True, listeners=SUBMISSION, sinks=SINKS, transport=TRANSPORT,
                      config=cfg)


def add_endpoint(st, path="/events", *args, interval=1, max_events=100) -> str:
    url = st.endpoint(path)
    st.cli("endpoint", "add", url, "--allow-http", "--interval", str(interval),
           "--max-events", str(max_events), "--retry-interval", "10", *args)
    return url


def send_outbound(st, rcpts, *, subject="Your invoice", app_id="order-1", trusted=False, **kw):
    """An application's message: on the submission listener, or from the trusted network."""
    msg = make_message(from_=f"App <{APP}>", to=", ".join(rcpts), subject=subject,
                       headers={CUSTOM_HEADER: app_id})
    message_id = email.message_from_bytes(msg)["Message-ID"]
    if trusted:
        res = st.send(APP, rcpts, msg, source_address=TRUSTED_CLIENT, **kw)
    else:
        res = st.send(APP, rcpts, msg, port=st.postfix.ports["submission"], **kw)
    return res, message_id


def posts(st, path="/events"):
    """[(request, document)] in arrival order."""
    return [(r, r.json()) for r in st.receiver.requests if r.path == path]


def events_posted(st, path="/events") -> list[dict]:
    """Every event posted to `path`, in arrival order (repeats included)."""
    return [e for _, doc in posts(st, path) for e in doc["events"]]


def find(evs, etype, rcpt=None) -> list[dict]:
    return [e for e in evs if e["type"] == etype and (rcpt is None or e["recipient"] == rcpt)]


def summary(evs) -> str:
    return ", ".join(f"{e['type']}:{e['recipient']}" for e in evs) or "nothing"


def wait_events(st, predicate, timeout=60.0, path="/events") -> list[dict]:
    """Poll what the receiver got on `path` until predicate(events) holds."""
    deadline = time.monotonic() + timeout
    while True:
        evs = events_posted(st, path)
        if predicate(evs):
            return evs
        if time.monotonic() > deadline:
            raise AssertionError(f"events on {path} after {timeout}s: {summary(evs)}\n{st.diagnostics()}")
        time.sleep(0.1)


def wait_for(what: str, predicate, timeout=60.0, st=None):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not after {timeout}s\n{st.diagnostics() if st else ''}")
        time.sleep(0.1)


def has_all(pairs):
    """Predicate: every (type, recipient) in pairs was posted."""
    return lambda evs: all(find(evs, t, r) for t, r in pairs)


def at_epoch(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def assert_order_per_recipient(evs):
    """`queued` reaches the endpoint before any outcome of the same recipient and message."""
    first: dict[tuple, int] = {}
    for i, e in enumerate(evs):
        first.setdefault((e["type"], e["recipient"], e["queue_id"]), i)
    wrong = [(t, r) for (t, r, q), i in first.items()
             if t in FINAL and first.get(("queued", r, q), -1) > i]
    assert not wrong, f"outcome posted before its queued event: {wrong}\n{summary(evs)}"


def assert_no_foreign_duplicates(st, path="/events"):
    """Events may arrive twice only as a re-post of the same batch (same webhook-id, same
    events); one event per (type, recipient, queue id) except deferrals (Postfix retries)."""
    by_batch: dict[str, list[str]] = {}
    seen_in: dict[str, str] = {}
    for req, doc in posts(st, path):
        wid = req.headers["webhook-id"]
        assert wid == doc["batch_id"]
        ids = [e["id"] for e in doc["events"]]
        assert len(ids) == doc["count"]
        if wid in by_batch:
            assert by_batch[wid] == ids, f"batch {wid} re-posted with other events"
            continue
        by_batch[wid] = ids
        for event_id in ids:
            assert event_id not in seen_in, f"event {event_id} in batches {seen_in[event_id]} and {wid}"
            seen_in[event_id] = wid
    ids_per_key = defaultdict(set)
    for e in events_posted(st, path):
        if e["type"] != "deferred":
            ids_per_key[(e["type"], e["recipient"], e["queue_id"])].add(e["id"])
    doubled = {k: v for k, v in ids_per_key.items() if len(v) > 1}
    assert not doubled, f"the same event under several ids: {doubled}"


# -- 1. queued, then succeeded / bounced / deferred ----------------------------------------------

def test_outbound_recipients_get_queued_then_their_outcome(make_stack):
    st = event_stack(make_stack)
    add_endpoint(st)
    ok, hard, soft = f"alice@{OK_DOMAIN}", f"nobody@{HARD_DOMAIN}", f"later@{SOFT_DOMAIN}"
    res, message_id = send_outbound(st, [ok, hard, soft], subject="Invoice 17", app_id="order-4711")
    assert res.accepted, res
    qid = res.queue_id

    evs = wait_events(st, has_all([("queued", ok), ("queued", hard), ("queued", soft),
                                   ("succeeded", ok), ("bounced", hard), ("deferred", soft)]))
    assert_order_per_recipient(evs)
    mine = [e for e in evs if e["queue_id"] == qid]
    for e in mine:  # joined by queue id: every event carries the message's fields
        assert e["message_id"] == message_id, e
        assert e["subject"] == "Invoice 17", e
        assert {k.lower(): v for k, v in e["custom_headers"].items()} == {"x-app-id": "order-4711"}, e
        assert e["sender"] == APP, e
    for rcpt in (ok, hard, soft):
        (queued,) = find(evs, "queued", rcpt)
        assert queued["source"] == "milter" and queued["queue_id"] == qid
        assert queued["header_from"] == APP and queued["client_addr"] == "127.0.0.1"

    (succeeded,) = find(evs, "succeeded", ok)
    assert succeeded["source"] == "log" and succeeded["queue_id"] == qid
    assert succeeded["dsn"] == "2.0.0"
    assert succeeded["relay"] == f"127.0.0.1[127.0.0.1]:{st.postfix.sink_ports['default']}"
    assert succeeded["bounce_type"] is None

    (bounced,) = find(evs, "bounced", hard)
    assert bounced["bounce_type"] == "hard"
    assert bounced["dsn"] == "5.3.0"
    assert bounced["remote_host"] == "127.0.0.1[127.0.0.1]"
    assert bounced["reply"].startswith("500 5.3.0"), bounced
    assert "in reply to RCPT TO command" in bounced["diagnostic"], bounced
    assert bounced["relay"] == f"127.0.0.1[127.0.0.1]:{st.postfix.sink_ports['hard']}"

    deferred = find(evs, "deferred", soft)
    assert deferred[0]["dsn"] == "4.3.0" and deferred[0]["bounce_type"] is None
    assert deferred[0]["reply"].startswith("450 4.3.0"), deferred[0]
    assert deferred[0]["remote_host"] == "127.0.0.1[127.0.0.1]"

    # nothing else for these recipients
    assert not find(evs, "bounced", ok) and not find(evs, "deferred", ok)
    assert not find(evs, "succeeded", hard) and not find(evs, "succeeded", soft)
    assert not find(evs, "bounced", soft) and not find(evs, "failed")
    for req, doc in posts(st):
        assert req.headers["Content-Type"].startswith("application/json")
        assert doc["type"] == "events" and doc["version"] == 1
        assert req.headers["webhook-id"] == doc["batch_id"] and doc["count"] == len(doc["events"])
    assert_no_foreign_duplicates(st)


# -- 2. batching ---------------------------------------------------------------------------------

def test_batches_respect_max_events_and_interval(make_stack):
    st = event_stack(make_stack)
    interval, max_events = 2, 100
    add_endpoint(st, interval=interval, max_events=max_events)
    rcpts = [f"r{i:03d}@{OK_DOMAIN}" for i in range(250)]
    res, _ = send_outbound(st, rcpts, subject="Newsletter")
    assert res.accepted, res
    assert all(r.code == 250 for r in res.rcpt.values())

    evs = wait_events(st, lambda evs: len({e["recipient"] for e in find(evs, "succeeded")}) == 250
                      and len({e["recipient"] for e in find(evs, "queued")}) == 250, timeout=120)
    sizes = []
    for req, doc in posts(st):
        n = doc["count"]
        sizes.append(n)
        assert 1 <= n <= max_events, f"a POST carried {n} events"
        if n < max_events:
            # not full: sent because the oldest event waited `interval` seconds
            oldest = min(at_epoch(e["at"]) for e in doc["events"])
            assert req.at - oldest >= interval - 0.05, (
                f"batch of {n} posted {req.at - oldest:.2f}s after its oldest event "
                f"(interval {interval}s)")
    assert max(sizes) == max_events, f"250 queued events at once should fill a batch: {sizes}"
    assert sum(sizes) == 500, sizes
    assert len(find(evs, "queued")) == 250 and len(find(evs, "succeeded")) == 250
    assert_order_per_recipient(evs)
    assert_no_foreign_duplicates(st)


# -- 3. hard bounce -> block list -> blocked -> removed --------------------------------------------

def test_hard_bounce_blocks_the_address_until_removed(make_stack):
    st = event_stack(make_stack)
    add_endpoint(st)
    victim = f"gone@{HARD_DOMAIN}"
    res, _ = send_outbound(st, [victim], trusted=True)  # outbound by trusted_networks
    assert res.accepted, res
    evs = wait_events(st, has_all([("queued", victim), ("bounced", victim), ("registered", victim)]))
    (bounced,) = find(evs, "bounced", victim)
    assert bounced["bounce_type"] == "hard"
    (registered,) = find(evs, "registered", victim)
    assert registered["reason"] == "hard bounce"
    assert registered["dsn"] == "5.3.0"
    assert [e["type"] for e in evs if e["recipient"] == victim][-1] == "registered"

    listed = {row["address"]: row for row in st.cli.json("block", "list")}
    assert victim in listed, listed
    assert listed[victim]["source"] == "bounce" and listed[victim]["dsn"] == "5.3.0"

    # the next message to it is refused at RCPT, and reported
    other = f"fine@{OK_DOMAIN}"
    res2, _ = send_outbound(st, [victim, other], trusted=True, app_id="order-2")
    assert res2.rcpt[victim].code == 550, res2
    assert "5.1.1" in res2.rcpt[victim].message and "block list" in res2.rcpt[victim].message
    assert res2.accepted, res2  # the other recipient still gets it
    evs = wait_events(st, has_all([("blocked", victim), ("succeeded", other)]))
    (blocked,) = find(evs, "blocked", victim)
    assert blocked["source"] == "milter" and blocked["sender"] == APP
    assert blocked["reason"], blocked
    assert not [e for e in find(evs, "queued", victim) if e["queue_id"] == res2.queue_id]

    # the admin removes it: `deleted`, and it can be mailed again
    st.cli("block", "remove", victim)
    assert victim not in {row["address"] for row in st.cli.json("block", "list")}
    evs = wait_events(st, has_all([("deleted", victim)]))
    assert find(evs, "deleted", victim)[0]["source"] == "cli"
    st.postfix.restart_sink([], name="hard")  # the address exists again
    res3, _ = send_outbound(st, [victim], trusted=True, app_id="order-3")
    assert res3.accepted, res3
    evs = wait_events(st, lambda evs: [e for e in find(evs, "succeeded", victim)
                                       if e["queue_id"] == res3.queue_id])
    assert len(find(evs, "blocked", victim)) == 1
    assert_order_per_recipient(evs)
    assert_no_foreign_duplicates(st)


# -- 4. endpoint filters ---------------------------------------------------------------------------

def test_endpoint_filters_by_category(make_stack):
    st = event_stack(make_stack)
    add_endpoint(st, "/all")
    add_endpoint(st, "/bounces", "--events", "bounces")
    add_endpoint(st, "/blocks", "--events", "blocks")
    ok, hard, soft = f"a@{OK_DOMAIN}", f"b@{HARD_DOMAIN}", f"c@{SOFT_DOMAIN}"
    res, _ = send_outbound(st, [ok, hard, soft])
    assert res.accepted, res
    wait_events(st, has_all([("queued", ok), ("succeeded", ok), ("bounced", hard),
                             ("deferred", soft), ("registered", hard)]), path="/all")
    wait_events(st, has_all([("bounced", hard)]), path="/bounces")
    wait_events(st, has_all([("registered", hard)]), path="/blocks")
    # Every event is fanned out when it is ingested, and all have been (they reached /all): the
    # event log has one row per (event, endpoint), so a wrongly routed event would show there
    # even before its batch is posted.
    rows = st.cli.json("log", "events", "--limit", "1000")["items"]
    types_for = defaultdict(set)
    for row in rows:
        types_for[row["endpointUrl"]].add(row["type"])
    assert types_for[st.endpoint("/bounces")] == {"bounced"}, rows
    assert types_for[st.endpoint("/blocks")] == {"registered"}, rows
    assert {"queued", "succeeded", "bounced", "deferred", "registered"} <= types_for[st.endpoint("/all")]
    assert {e["type"] for e in events_posted(st, "/bounces")} == {"bounced"}, summary(events_posted(st, "/bounces"))
    assert {e["type"] for e in events_posted(st, "/blocks")} == {"registered"}, summary(events_posted(st, "/blocks"))


# -- 5. kill -9 ------------------------------------------------------------------------------------

def test_kill_9_of_the_log_follower_mid_stream_loses_nothing(make_stack):
    st = event_stack(make_stack)
    add_endpoint(st)
    sent: dict[str, str] = {}  # recipient -> queue id
    errors: list[str] = []
    stop = threading.Event()

    def send_one(i):
        rcpt = f"m{i:03d}@{OK_DOMAIN}"
        res, _ = send_outbound(st, [rcpt], app_id=f"order-{i}")
        if res.accepted:
            sent[rcpt] = res.queue_id
        else:
            errors.append(f"{rcpt}: {res}")

    def stream():  # mail keeps flowing until told to stop
        i = 0
        while not stop.is_set() and i < 300:
            send_one(i)
            i += 1

    sender = threading.Thread(target=stream)
    sender.start()
    try:
        # kill -9 as soon as the follower has read (and spooled) the first delivery line
        sent_line = st.postfix.wait_log(r"status=sent", timeout=60)
        wait_for("the follower read past the first delivery",
                 lambda: (st.logfollow.position() or {}).get("offset", 0) >= sent_line.end(), st=st)
        st.logfollow.kill()
        at_kill = len(sent)
        # deliveries go on while it is down
        wait_for("more mail sent after the kill", lambda: len(sent) >= at_kill + 10, st=st)
    finally:
        stop.set()
        sender.join(120)
    for rcpt in list(sent):
        st.postfix.wait_log(rf"to=<{re.escape(rcpt)}>.*status=sent", timeout=60)
    st.logfollow.start()
    base = len(sent) + 1000
    for i in range(base, base + 5):
        send_one(i)
    assert not errors, errors
    evs = wait_events(st, lambda evs: {e["recipient"] for e in find(evs, "succeeded")} >= set(sent),
                      timeout=90)
    for rcpt, qid in sent.items():
        (ok,) = find(evs, "succeeded", rcpt)
        assert ok["queue_id"] == qid and ok["subject"] == "Your invoice", ok
        assert len(find(evs, "queued", rcpt)) == 1
    assert_order_per_recipient(evs)
    assert_no_foreign_duplicates(st)


def test_kill_9_of_the_spooler_mid_batch_loses_nothing(make_stack):
    st = event_stack(make_stack)
    # the first POST hangs, so the spooler is killed while it waits for the answer
    st.receiver.script("/events", [Response(delay=60), Response(200)])
    add_endpoint(st)
    rcpts = [f"k{i:02d}@{OK_DOMAIN}" for i in range(10)]
    res, _ = send_outbound(st, rcpts[:5])
    assert res.accepted, res
    (first,) = st.receiver.wait_for(1, timeout=60, path="/events")
    st.spooler.kill()  # SIGKILL mid-batch
    res2, _ = send_outbound(st, rcpts[5:])  # events pile up in the spool meanwhile
    assert res2.accepted, res2
    last = max(st.postfix.wait_log(rf"to=<{re.escape(rcpt)}>.*status=sent", timeout=60).end()
               for rcpt in rcpts)
    wait_for("the follower spooled every delivery line",  # while the spooler is down
             lambda: (st.logfollow.position() or {}).get("offset", 0) >= last, st=st)
    st.spooler.start()
    evs = wait_events(st, has_all([(t, r) for r in rcpts for t in ("queued", "succeeded")]), timeout=90)
    reposts = [req for req, _ in posts(st)[1:] if req.headers["webhook-id"] == first.headers["webhook-id"]]
    assert reposts, "the interrupted batch was not posted again with the same webhook-id"
    assert reposts[0].json()["events"] == first.json()["events"]
    assert_no_foreign_duplicates(st)
    assert_order_per_recipient(evs)


# -- 6. the event log --------------------------------------------------------------------------------

def test_log_events_csv(make_stack):
    st = event_stack(make_stack)
    url = add_endpoint(st)
    ok, hard = f"csv@{OK_DOMAIN}", f"csv@{HARD_DOMAIN}"
    res, _ = send_outbound(st, [ok, hard])
    assert res.accepted, res
    evs = wait_events(st, has_all([("queued", ok), ("queued", hard), ("succeeded", ok),
                                   ("bounced", hard), ("registered", hard)]))
    ids = {e["id"] for e in evs}
    rows = wait_for("every event delivery succeeded in the event log", lambda: (
        lambda rows: rows if {r["id"] for r in rows if r["status"] == "succeeded"} >= ids else None
    )(st.cli.json("log", "events")["items"]), timeout=30, st=st)
    assert len(rows) == len(ids), rows

    out = st.cli("log", "events", "--csv").stdout
    assert "\r" not in out
    lines = out.split("\n")
    assert lines[0] == "received,status,hostName,endpointUrl,reason"
    assert lines[-1] == ""
    table = list(csv.DictReader(io.StringIO(out)))
    assert len(table) == len(ids)
    assert {r["status"] for r in table} == {"succeeded"}
    assert {r["endpointUrl"] for r in table} == {url}
    assert {r["reason"] for r in table} == {""}
    for r in table:
        datetime.fromisoformat(r["received"].replace("Z", "+00:00"))
    # seed 000's hostName: the server that recorded the log, Postfix's myhostname (the milter's
    # j macro for queued, the log lines' host for succeeded and bounced, the bounce's for
    # registered), not the sinks that answered nor the submitting client
    assert {r["hostName"] for r in table} == {"mx.mxhook.test"}


def test_replay_of_one_event_posts_it_alone_with_a_new_webhook_id(make_stack):
    """`mxhook replay EVENT_ID`: one event of a failed batch of several goes alone, as a new
    batch (a new webhook-id); `--dry-run` says where to, without the URL's query."""
    st = event_stack(make_stack)
    url = add_endpoint(st, "/events?key=s3cret")
    st.receiver.script("/events", [(400, {}, b"bad"), (200, {}, b"")])  # the first batch fails
    a, b = f"one@{OK_DOMAIN}", f"two@{OK_DOMAIN}"
    res, _ = send_outbound(st, [a, b])
    assert res.accepted, res
    (_, doc), *_ = wait_for("the first batch posted", lambda: posts(st), st=st)
    assert doc["count"] >= 2, doc  # the queued events of both recipients, at least
    failed = wait_for("the first batch failed in the event log", lambda: [
        r for r in st.cli.json("log", "events", "--status", "failed")["items"]], timeout=30, st=st)
    event_id, batch = failed[0]["id"], failed[0]["batchId"]
    assert batch == doc["batch_id"]

    dry = st.cli("replay", event_id, "--dry-run").stdout
    assert f"{event_id}  event to endpoint 1 -> {url.split('?')[0]}?…" in dry, dry
    assert "would go alone in a new batch, with a new webhook-id" in dry and "s3cret" not in dry
    (item,) = st.cli.json("replay", event_id)["replayed"]
    new = item["webhook_id"]
    assert new.startswith("evb_") and new != batch
    (req, alone), = wait_for("the replayed event posted", lambda: [
        (r, d) for r, d in posts(st) if r.headers["webhook-id"] == new], timeout=30, st=st)
    assert [e["id"] for e in alone["events"]] == [event_id] and alone["batch_id"] == new
    detail = wait_for("the replay succeeded in the event log", lambda: (
        lambda d: d if [x["status"] for x in d["deliveries"]] == ["failed", "succeeded"] else None
    )(st.cli.json("log", "event", event_id)), timeout=30, st=st)
    assert [x["batchId"] for x in detail["deliveries"]] == [batch, new]
    # the failed batch was not touched: it still replays whole, with its own webhook-id
    assert [r["id"] for r in st.cli.json("replay", batch, "--dry-run")["replayed"]] == [batch]


# -- 7. asynchronous bounce reports: only for mail we sent ------------------------------------------

def delivery_report(final_recipient: str, message_id: str, report_id: str, *, to: str = APP,
                    status: str = "5.1.1") -> bytes:
    """A delivery-status report (RFC 3464) as a remote MTA sends it some time after accepting a
    message: the original recipient failed, the returned message's headers attached."""
    return (
        f"From: MAILER-DAEMON@mx.remote.example\r\nTo: {to}\r\n"
        "Subject: Undelivered Mail Returned to Sender\r\n"
        f"Message-ID: <{report_id}@mx.remote.example>\r\n"
        "MIME-Version: 1.0\r\nAuto-Submitted: auto-replied\r\n"
        'Content-Type: multipart/report; report-type=delivery-status; boundary="rep"\r\n\r\n'
        "--rep\r\nContent-Type: text/plain\r\n\r\nYour message could not be delivered.\r\n\r\n"
        "--rep\r\nContent-Type: message/delivery-status\r\n\r\n"
        "Reporting-MTA: dns; mx.remote.example\r\n\r\n"
        f"Final-Recipient: rfc822; {final_recipient}\r\nAction: failed\r\nStatus: {status}\r\n"
        f"Diagnostic-Code: smtp; 550 {status} <{final_recipient}>: Recipient address rejected:"
        " User unknown\r\n\r\n"
        "--rep\r\nContent-Type: text/rfc822-headers\r\n\r\n"
        f"From: App <{APP}>\r\nTo: {final_recipient}\r\nSubject: Your invoice\r\n"
        f"Message-ID: {message_id}\r\n\r\n--rep--\r\n"
    ).encode()


def test_forged_bounce_reports_neither_post_events_nor_block_addresses(make_stack):
    st = event_stack(make_stack)
    add_endpoint(st)
    kept, victim = f"kept@{OK_DOMAIN}", f"victim@{OK_DOMAIN}"
    res, message_id = send_outbound(st, [kept])
    assert res.accepted, res
    wait_events(st, has_all([("queued", kept), ("succeeded", kept)]))

    # Anyone can send us a report with the null sender: one for a Message-ID we never sent, one
    # for our real message naming an address that was not its recipient.
    for report in (delivery_report(victim, "<never.sent@app.example>", "forged-1"),
                   delivery_report(victim, message_id, "forged-2")):
        forged = st.send("", [APP], report)
        assert forged.accepted, forged  # taken in as a bounce report (and discarded)
    # The real one, last: the spooler ingests in spool order, so once its events are posted the
    # forged ones have been through ingest too.
    genuine = st.send("", [APP], delivery_report(kept, message_id, "genuine"))
    assert genuine.accepted, genuine
    evs = wait_events(st, has_all([("bounced", kept), ("registered", kept)]))
    (bounced,) = find(evs, "bounced", kept)
    assert (bounced["source"], bounced["bounce_type"], bounced["queue_id"]) == ("dsn", "hard", res.queue_id)
    assert not [e for e in evs if e["recipient"] == victim], summary(evs)
    assert victim not in {row["address"] for row in st.cli.json("block", "list")}
    assert kept in {row["address"] for row in st.cli.json("block", "list")}
    assert not [row for row in st.cli.json("log", "events", "--limit", "1000")["items"] if row["recipient"] == victim]
    spooler_log = st.spooler.stderr_text()
    assert spooler_log.count("ignored a delivery-status report") == 2, spooler_log
    assert ("Message-ID '<never.sent@app.example>' naming 'victim@ok.example': no message with that"
            " Message-ID was sent from here") in spooler_log
    assert (f"Message-ID '{message_id}' naming 'victim@ok.example': not a recipient of the message"
            " with that Message-ID") in spooler_log

    # mail to the victim still goes out
    res2, _ = send_outbound(st, [victim], app_id="order-2")
    assert res2.rcpt[victim].code == 250 and res2.accepted, res2
    wait_events(st, has_all([("succeeded", victim)]))
