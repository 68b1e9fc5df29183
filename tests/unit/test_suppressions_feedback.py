"""Mail to mxhook's own addresses into events (store/ingest + services/feedback), and the
suppressions those events make (services/feedback.settle, as the spooler runs it)."""
from __future__ import annotations

import base64
import os
from pathlib import Path

import pytest

from mxhook import spool
from mxhook.model import tracktokens as tt
from mxhook.model.events import Event
from mxhook.services import feedback
from mxhook.store import ingest, rulesdb
from mxhook.store.statedb import StateStore

FIXTURES = Path(__file__).parent / "fixtures" / "arf"
KEY = os.urandom(32)
REF = tt.Track(tt.REFERENCE, "4XbQ1Z", "carol@outlook.example", "shop.example", 1764800000)


@pytest.fixture()
def store(tmp_path):
    s = StateStore(str(tmp_path / "state.db"))
    yield s
    s.close()


@pytest.fixture()
def handler(tmp_path):
    path = tmp_path / "tracking.key"
    path.write_text(base64.b64encode(KEY).decode() + "\n")
    return feedback.Handler(str(path))


def internal(rid: str, raw: bytes, route: str = "feedback") -> spool.Record:
    meta = {"received": "2026-12-04T00:10:00.000000Z", "queue_id": "4QIN", "mail_from": "staff@hotmail.example",
            "client_addr": "192.0.2.9", "client_name": "mx.hotmail.example", "helo": "mx",
            "header_from": "staff@hotmail.example", "subject": "complaint", "message_id": "<r@h>",
            "deliveries": [], "internal": route}
    return spool.Record(id=rid, kind="inbound", meta=meta, payload=raw)


def queued(rid: str, recipient: str, message_id: str, sender: str = "news@shop.example") -> spool.Record:
    event = Event(type="queued", at="2026-12-03T20:00:00.000000Z", id=rid, source="milter",
                  queue_id="4XbQ1Z", recipient=recipient, sender=sender, message_id=message_id)
    return spool.event_record(event)


def arf(name: str, ref: str = "") -> bytes:
    return (FIXTURES / name).read_bytes().replace(b"@@REF@@", ref.encode())


def stored(store: StateStore, etype: str) -> list[tuple]:
    return store.conn.execute(
        "SELECT recipient, block_state, json_extract(meta, '$.engagement.sending_domain'),"
        " json_extract(meta, '$.engagement.feedback_type'), json_extract(meta, '$.source')"
        " FROM events WHERE type = ?", (etype,)).fetchall()


def log_rows(store: StateStore) -> list[tuple]:
    return store.conn.execute("SELECT kind, status, filter_name, reason FROM inbound_log"
                              " ORDER BY id").fetchall()


def test_redacted_report_with_a_valid_reference_is_a_complaint(store, handler):
    rec = internal("f1", arf("jmrp-redacted.eml", tt.make_token((KEY,), REF)))
    assert ingest.records(store, [rec], block_hard_bounces=True, feedback=handler) == 2
    assert stored(store, "complained") == [("carol@outlook.example", "pending", "shop.example", "abuse", "feedback")]
    [(kind, status, route, reason)] = log_rows(store)
    assert (kind, status, route) == ("feedback", "succeeded", "feedback") and "X-Mxhook-Ref" in reason
    # the same record again (a crash before its file went): stored once
    assert ingest.records(store, [rec], block_hard_bounces=True, feedback=handler) == 0
    assert len(stored(store, "complained")) == 1
    assert [e["type"] for e in ingest.pending_blocks(store)] == ["complained"]


def test_forged_or_missing_reference_suppresses_nobody(store, handler):
    forged = tt.make_token((os.urandom(32),), REF)
    ingest.records(store, [internal("f1", arf("jmrp-redacted.eml", forged)),
                           internal("f2", arf("not-arf.eml")), internal("f3", arf("malformed.eml"))],
                   block_hard_bounces=True, feedback=handler)
    assert stored(store, "complained") == []
    rows = log_rows(store)
    assert [r[1] for r in rows] == ["denied"] * 3
    assert "names no recipient" in rows[0][3] and "not a valid reference token" in rows[0][3]
    assert "not multipart/report" in rows[1][3]
    assert "no message/feedback-report part" in rows[2][3]


def test_claimed_recipient_counts_only_for_mail_we_sent(store, handler):
    raw = arf("yahoo-unredacted.eml").replace(b"news@shop.example>\nOriginal-Rcpt-To",
                                               b"news@forged.example>\nOriginal-Rcpt-To")
    ingest.records(store, [internal("f1", raw)], block_hard_bounces=True, feedback=handler)
    assert stored(store, "complained") == []
    assert "no message with that Message-ID was sent from here" in log_rows(store)[0][3]
    ingest.records(store, [queued("q1", "bob@yahoo.example", "<sale-43@shop.example>",
                                  sender="news@Shop.Example")])
    ingest.records(store, [internal("f2", raw)], block_hard_bounces=True, feedback=handler)
    # the sending domain is the one we sent from, not the report's word
    assert stored(store, "complained") == [("bob@yahoo.example", "pending", "shop.example", "abuse", "feedback")]


def test_mailto_unsubscribe(store, handler):
    token = tt.make_token((KEY,), tt.Track(tt.UNSUBSCRIBE, "Q9", "erin@example.net", "shop.example", 1))
    raw = f"From: erin.alias@else.example\r\nSubject: unsubscribe {token}\r\n\r\n\r\n".encode()
    bad = b"From: x@else.example\r\nSubject: unsubscribe nope.nope\r\n\r\n"
    ingest.records(store, [internal("u1", raw, "unsubscribe"), internal("u2", bad, "unsubscribe")],
                   block_hard_bounces=True, feedback=handler)
    assert stored(store, "unsubscribed") == [("erin@example.net", "pending", "shop.example", None, "feedback")]
    assert [r[1] for r in log_rows(store)] == ["succeeded", "denied"]


def test_without_a_key_file_every_token_is_unverified(store, tmp_path):
    missing = feedback.Handler(str(tmp_path / "absent.key"))
    ingest.records(store, [internal("f1", arf("jmrp-redacted.eml", tt.make_token((KEY,), REF)))],
                   feedback=missing)
    assert stored(store, "complained") == [] and log_rows(store)[0][1] == "denied"


def _event(etype: str, eid: str, recipient: str = "carol@outlook.example", domain: str = "shop.example") -> dict:
    return {"id": eid, "type": etype, "recipient": recipient, "source": "feedback",
            "engagement": {"sending_domain": domain}, "message_id": "<sale-42@shop.example>"}


def test_settle_adds_and_removes_suppressions(tmp_path):
    at = "2026-12-04T00:20:00.000000Z"
    with rulesdb.RulesStore(str(tmp_path / "rules.db")) as rules:
        eid, reg = feedback.settle(rules, _event("complained", "c1"), at)
        assert eid == "c1" and reg["type"] == "registered" and reg["id"] == "registered-carol@outlook.example-c1"
        assert "spam" in reg["reason"] and reg["message_id"] == "<sale-42@shop.example>"
        # redone after a crash: the registered event is still owed, the entry not added twice
        assert feedback.settle(rules, _event("complained", "c1"), at)[1]["id"] == reg["id"]
        # suppressed already (by the complaint): nothing added, nothing owed
        assert feedback.settle(rules, _event("unsubscribed", "u1"), at) == ("u1", None)
        assert feedback.settle(rules, _event("unsubscribed", "u2", domain="news.example"), at)[1]
        assert [(r["scope"], r["source"]) for r in rules.block_list()] == [
            ("shop.example", "complaint"), ("news.example", "unsubscribe")]
        # resubscribing takes the unsubscribe away, never a complaint
        assert feedback.settle(rules, _event("resubscribed", "r1"), at) == ("r1", None)
        _, deleted = feedback.settle(rules, _event("resubscribed", "r2", domain="news.example"), at)
        assert deleted["type"] == "deleted" and "resubscribed" in deleted["reason"]
        assert [r["source"] for r in rules.block_list()] == ["complaint"]
        assert feedback.settle(rules, _event("complained", "c9", recipient="not an address"), at) == ("c9", None)


def test_a_key_added_to_the_file_verifies_without_a_restart(store, tmp_path, caplog):
    path = tmp_path / "rotating.key"
    handler = feedback.Handler(str(path))  # no file yet: logged, nothing verifies
    newer = os.urandom(32)
    raw = arf("jmrp-redacted.eml", tt.make_token((newer,), REF))
    ingest.records(store, [internal("f1", raw)], feedback=handler)
    assert "cannot read the tracking keys" in caplog.text and stored(store, "complained") == []
    path.write_text(base64.b64encode(KEY).decode() + "\n" + base64.b64encode(newer).decode() + "\n")
    ingest.records(store, [internal("f2", raw)], feedback=handler)
    assert [r[0] for r in stored(store, "complained")] == ["carol@outlook.example"]


def test_an_internal_record_has_no_deliveries_and_a_known_route():
    from mxhook.model.records import InboundRecord, RecordError

    meta = internal("f1", b"").meta
    assert InboundRecord.from_meta(meta).internal == "feedback"
    assert InboundRecord.from_meta(meta).to_meta()["internal"] == "feedback"
    with pytest.raises(RecordError, match="unknown internal route"):
        InboundRecord.from_meta({**meta, "internal": "other"})
    with pytest.raises(RecordError, match="without a 'deliveries' list"):
        InboundRecord.from_meta({**meta, "internal": None})


def test_rule_test_shows_the_internal_route():
    from mxhook.model import inbound
    from mxhook.model.envelope import Envelope
    from tests.unit.inbound_support import NOW, mail, snapshot

    envelope = Envelope(sender="staff@hotmail.example")
    for r in ("fbl@ours.example", "sales@ours.example"):
        envelope.recipient(r)
    policy = inbound.Policy(internal=inbound.internal_routes("FBL@ours.example", ""))
    out = inbound.explain(snapshot(), policy, mail(to="fbl@ours.example"), envelope, routes=True,
                          clock=lambda: NOW)
    assert (out.result, out.decided_by) == ("accept", "internal:feedback")
    fbl, sales = out.recipients
    assert (fbl.outcome, fbl.decided_by) == ("accepted", "internal:feedback")
    assert (sales.outcome, sales.smtp) == ("deferred", "452 4.5.3")
    assert out.spooled.record.internal == "feedback" and out.deleted == ["<fbl@ours.example>"]
