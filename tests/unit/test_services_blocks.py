"""services.blocks and services.logs called directly."""
from __future__ import annotations

import os
import time

import pytest
from tests.support.services import make_config

from mxhook.model.records import iso
from mxhook.model.targets import Destination
from mxhook import spool
from mxhook.model import rules
from mxhook.services import blocks, logs
from mxhook.services.errors import Conflict, Failed, Invalid, NotFound, Unavailable
from mxhook.store import ingest
from mxhook.store.statedb import StateStore

RULE = rules.Rule(name="r1", destination=Destination("https://hooks.example/in"),
                  conditions=(rules.parse_condition("To~@ours"),))


@pytest.fixture
def cfg(tmp_path):
    return make_config(tmp_path)


def spooled(cfg) -> list[spool.Record]:
    return spool.handed_over(cfg.spool_dir)


def test_block_add_search_remove_spool_their_events(cfg):
    with pytest.raises(Unavailable) as exc:
        blocks.add(cfg, "a@b.example")
    assert exc.value.code == "spool_missing" and not os.path.exists(cfg.rules_db)
    spool.ensure_dirs(cfg.spool_dir)
    added = blocks.add(cfg, "A@B.example", reason="asked")
    assert added.address == "a@b.example"
    with pytest.raises(Conflict, match="already on the block list"):
        blocks.add(cfg, "a@b.example")
    found = blocks.search(cfg, "a@B.EXAMPLE")
    assert (found["address"], found["reason"], found["source"]) == ("a@b.example", "asked", "cli")
    assert [r["address"] for r in blocks.list_all(cfg)] == ["a@b.example"]
    removed = blocks.remove(cfg, "a@b.example")
    with pytest.raises(NotFound, match="not on the block list"):
        blocks.remove(cfg, "a@b.example")
    with pytest.raises(NotFound):
        blocks.search(cfg, "a@b.example")
    with pytest.raises(Invalid, match="not an email address"):
        blocks.add(cfg, "nobody")
    events = {r.id: r.meta["type"] for r in spooled(cfg)}
    assert events == {added.event_id: "registered", removed.event_id: "deleted"}


def test_block_add_whose_event_cannot_be_spooled_fails_after_the_write(cfg, monkeypatch):
    spool.ensure_dirs(cfg.spool_dir)

    def full(*_args, **_kw):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(spool, "write", full)
    with pytest.raises(Failed, match="was added to the block list, but") as exc:
        blocks.add(cfg, "a@b.example")
    assert exc.value.code == "event_not_spooled"
    assert [r["address"] for r in blocks.list_all(cfg)] == ["a@b.example"]


def test_logs(cfg):
    with pytest.raises(Unavailable) as exc:
        logs.inbound_page(cfg)
    assert exc.value.code == "state_db_missing"
    StateStore(cfg.state_db).close()
    empty = {"items": [], "next_cursor": None}
    assert logs.inbound_page(cfg) == empty and logs.events_page(cfg, status="failed") == empty
    with pytest.raises(Invalid, match="no status"):
        logs.inbound_page(cfg, status="lost")
    with pytest.raises(Invalid, match="no status"):
        logs.count(cfg, "events", status="denied")
    with pytest.raises(NotFound, match="no inbound log entry"):
        logs.inbound_detail(cfg, "nope")
    with pytest.raises(NotFound, match="no event with id"):
        logs.event_detail(cfg, "nope")
    assert "received" in logs.INBOUND_COLUMNS and "endpointUrl" in logs.EVENT_COLUMNS


def test_csv_chunks_write_every_row(cfg):
    received = iso(time.time() - 60)
    with StateStore(cfg.state_db) as st:
        for n in range(120):  # more than a listing's default limit
            meta = {"received": received, "queue_id": "4X", "mail_from": "a@x.example",
                    "header_from": "=cmd@x.example", "subject": "s", "message_id": f"<m{n}@x>",
                    "deliveries": [{"recipients": ["in@ours.example"], "rule": RULE.target_record()}]}
            ingest.records(st, [spool.Record(id=spool.new_id(), kind="inbound", meta=meta, payload=b"\r\n")])
    lines = "".join(logs.csv_chunks(cfg, "inbound")).splitlines()
    assert lines[0] == ",".join(logs.INBOUND_COLUMNS) and len(lines) == 121
    assert ",'=cmd@x.example," in lines[1]  # formula-safe
    assert "".join(logs.csv_chunks(cfg, "events")).splitlines() == [",".join(logs.EVENT_COLUMNS)]
    with pytest.raises(Invalid, match="no log 'mail'"):
        logs.csv_chunks(cfg, "mail")
