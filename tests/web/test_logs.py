"""The inbound and event logs through the API: a paging walk over 10,000 rows, filters, details
with attempts, the CSV of all matching rows (equal to `mxhook log ... --csv`), and replay."""
from __future__ import annotations

import json

import pytest

from mxhook import spool
from mxhook.model.endpoints import Endpoint
from mxhook.model.records import iso
from mxhook.model.targets import Destination
from mxhook.store import ingest
from mxhook.store.statedb import AttemptRecord, StateStore

ROWS = 10_000
BASE = 1_790_000_000.0  # 2026-09-22: every row in the past


def denied(i: int) -> spool.Record:
    # three rows a second: ties on the time, told apart by id
    meta = {"received": iso(BASE + i // 3), "queue_id": f"Q{i}", "mail_from": f"s{i}@else.example",
            "header_from": f"=s{i}@else.example", "client_addr": "192.0.2.1",
            "client_name": "mx.else.example", "subject": f"=cmd|{i}", "message_id": f"<{i}@else>",
            "recipients": [f"user{i % 7}@ours.example"],
            "filter": "no_rule" if i % 2 else "unknown_domain", "reason": "no rule takes it"}
    return spool.Record(id=f"{i:016x}" + "0" * 12, kind="denied", meta=meta)


@pytest.fixture(scope="module")
def filled(stack):
    """10,000 denied rows, one delivery of rule `hook` whose attempts failed, and events for
    endpoint 1 (through the store layer, as the spooler writes them)."""
    rule = stack("POST", "/v1/rules", json_body={"name": "hook", "url": "https://127.0.0.1:9/h",
                                                 "when": ["To~@ours"]}).json()
    endpoint = stack("POST", "/v1/endpoints", json_body={"url": "https://127.0.0.1:9/e"}).json()
    target = {"id": rule["id"], "name": "hook", "endpoint": "https://127.0.0.1:9/h", "format": "json"}
    rid = spool.new_id()
    inbound = spool.Record(id=rid, kind="inbound", payload=b"Subject: s\r\n\r\nbody\r\n", meta={
        "received": iso(BASE + ROWS), "queue_id": "QI", "mail_from": "a@else.example",
        "header_from": "a@else.example", "subject": "s", "message_id": "<in@else>",
        "deliveries": [{"recipients": ["invoices@ours.example"], "rule": target}]})
    events = [spool.Record(id=f"ev{i:04d}", kind="event", meta={
        "id": f"ev{i:04d}", "type": "bounced" if i % 2 else "succeeded", "at": iso(BASE + i),
        "received": iso(BASE + i), "source": "log", "queue_id": f"Q{i}",
        "recipient": f"rcpt{i % 3}@far.example", "bounce_type": "hard" if i % 2 else None,
        "custom_headers": {}}) for i in range(50)]
    with StateStore(stack.cfg.state_db) as st:
        ingest.records(st, [denied(i) for i in range(ROWS)] + [inbound])
        ingest.records(st, events, endpoints=[Endpoint(Destination("https://127.0.0.1:9/e"),
                                                       id=endpoint["id"])])
        did = ingest.delivery_id(rid, "hook")
        batch = st.create_batch(endpoint["id"], 1)  # the oldest event, ev0000
        st.record_attempts([
            AttemptRecord(did, iso(BASE + ROWS + 1), "failed", "failed", status_code=404,
                          error="HTTP 404", next_attempt_at=None),
            AttemptRecord(batch.id, iso(BASE + ROWS + 1), "failed", "failed", status_code=500,
                          error="HTTP 500", next_attempt_at=None)])
    return {"delivery": did, "events": [r.id for r in events], "batch": batch.id,
            "endpoint": endpoint["id"]}


def walk(stack, path: str, limit: int) -> tuple[list[dict], int]:
    rows, cursor, pages = [], None, 0
    while True:
        sep = "&" if "?" in path else "?"
        reply = stack("GET", f"{path}{sep}limit={limit}" + (f"&cursor={cursor}" if cursor else ""))
        assert reply.status == 200, reply.text
        page = reply.json()
        rows += page["items"]
        pages += 1
        assert len(page["items"]) <= limit
        cursor = page["next_cursor"]
        if cursor is None:
            return rows, pages


def test_paging_walks_all_10000_rows_in_the_cli_order(stack, filled):
    rows, pages = walk(stack, "/v1/logs/inbound", 100)
    assert len(rows) == ROWS + 1 and pages == 101
    listed = json.loads(stack.cli("log", "inbound", "--json", "--limit", "100000").stdout)["items"]
    assert [r["id"] for r in rows] == [r["id"] for r in listed]
    assert rows == listed


def test_filters(stack, filled):
    denied_rows, _ = walk(stack, "/v1/logs/inbound?status=denied", 1000)
    assert len(denied_rows) == ROWS and {r["status"] for r in denied_rows} == {"denied"}
    by_rule, _ = walk(stack, "/v1/logs/inbound?rule=no_rule", 1000)
    assert len(by_rule) == ROWS // 2 and {r["filterName"] for r in by_rule} == {"no_rule"}
    by_rcpt, _ = walk(stack, "/v1/logs/inbound?recipient=USER3@", 1000)
    assert len(by_rcpt) == len([i for i in range(ROWS) if i % 7 == 3])
    since, until = iso(BASE + 100), iso(BASE + 200)
    window, _ = walk(stack, f"/v1/logs/inbound?since={since}&until={until}", 50)
    assert len(window) == 300 and all(since <= r["received"] < until for r in window)
    hook, _ = walk(stack, "/v1/logs/inbound?rule=hook&status=failed", 10)
    assert [r["id"] for r in hook] == [filled["delivery"]]
    assert stack("GET", "/v1/logs/inbound?status=lost").code == "invalid"
    assert stack("GET", "/v1/logs/inbound?since=soon").code == "invalid_time"
    assert stack("GET", "/v1/logs/inbound?cursor=bm9wZQ").code == "bad_cursor"
    assert stack("GET", "/v1/logs/inbound?limit=0").code == "invalid"


def test_inbound_detail_has_the_attempts(stack, filled):
    d = stack("GET", f"/v1/logs/inbound/{filled['delivery']}").json()
    assert d["status"] == "failed" and d["to"] == "invoices@ours.example"
    assert [(a["outcome"], a["status_code"]) for a in d["attempts"]] == [("failed", 404)]
    assert stack("GET", "/v1/logs/inbound/nope").code == "not_found"


def test_csv_is_the_cli_csv_of_every_matching_row(stack, filled):
    reply = stack("GET", "/v1/logs/inbound.csv")
    assert reply.status == 200 and reply.headers["Content-Type"].startswith("text/csv")
    assert "attachment" in reply.headers["Content-Disposition"]
    cli = stack.cli("log", "inbound", "--csv", "--limit", "100000").stdout
    assert reply.text == cli and reply.text.count("\n") == ROWS + 2
    assert "'=s1@else.example" in reply.text  # formula-safe, as the CLI's
    filtered = stack("GET", "/v1/logs/inbound.csv?status=failed").text
    assert filtered == stack.cli("log", "inbound", "--csv", "--status", "failed").stdout
    events = stack("GET", "/v1/logs/events.csv").text
    assert events == stack.cli("log", "events", "--csv", "--limit", "100000").stdout
    assert events.count("\n") == 51


def test_event_log_pages_filters_and_detail(stack, filled):
    rows, pages = walk(stack, "/v1/logs/events", 7)
    assert len(rows) == 50 and pages == 8
    assert [r["id"] for r in rows] == list(reversed(filled["events"]))
    assert rows == json.loads(stack.cli("log", "events", "--json").stdout)["items"]
    one, _ = walk(stack, "/v1/logs/events?recipient=rcpt1@&endpoint=1&status=queued", 100)
    assert len(one) == len([i for i in range(50) if i % 3 == 1])
    assert walk(stack, "/v1/logs/events?endpoint=2", 100)[0] == []
    d = stack("GET", "/v1/logs/events/ev0001").json()
    assert d["event"]["type"] == "bounced" and [e["endpointId"] for e in d["deliveries"]] == [1]
    sent = stack("GET", "/v1/logs/events/ev0000").json()["deliveries"][0]
    assert sent["batchId"] == filled["batch"] and sent["status"] == "failed"
    assert [(a["outcome"], a["status_code"]) for a in sent["attempts"]] == [("failed", 500)]
    failed, _ = walk(stack, "/v1/logs/events?status=failed", 10)
    assert [r["id"] for r in failed] == ["ev0000"]
    assert stack("GET", "/v1/logs/events/nope").code == "not_found"


def test_replay_one_delivery_one_event_and_a_range(stack, filled):
    did = filled["delivery"]
    dry = stack("POST", f"/v1/logs/inbound/{did}/replay", json_body={"dry_run": True}).json()
    assert dry["dry_run"] and [r["id"] for r in dry["replayed"]] == [did]
    done = stack("POST", f"/v1/logs/inbound/{did}/replay", json_body={}).json()
    assert [r["id"] for r in done["replayed"]] == [did]
    again = stack("POST", "/v1/replay", json_body={"rule": "hook", "since": iso(BASE)}).json()
    assert again["replayed"] == [] and again["scope"] == "rule hook"
    assert stack("POST", "/v1/replay", json_body={}).code == "invalid"
    not_sent = stack("POST", "/v1/logs/events/ev0001/replay", json_body={})
    assert not_sent.status == 400 and not_sent.code == "not_sent_yet"
    event = stack("POST", "/v1/logs/events/ev0000/replay", json_body={}).json()
    # alone in its batch: that batch goes again, with its webhook-id
    assert [(r["id"], r["kind"], r["webhook_id"]) for r in event["replayed"]] == [
        ("ev0000", "event", filled["batch"])]
    assert stack("GET", "/v1/logs/events/ev0000").json()["deliveries"][0]["status"] == "queued"
    entries = stack.cli.json("audit", "--limit", "1000")
    assert any(e["action"] == "log.inbound.replay" and e["target"] == did for e in entries)
    assert any(e["action"] == "replay" and e["target"] == "hook" for e in entries)
