"""The daemons' log lines about a message start with its Postfix queue id (`QID: ...`, as
Postfix's own do), and carry QUEUE_ID= when they go to the journal (daemons/logsetup.py)."""
from __future__ import annotations

import logging

import pytest

from mxhook.daemons import logsetup
from mxhook.payloads import events as event_payloads


@pytest.fixture()
def restore_root():
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield root
    for handler in list(root.handlers):
        root.removeHandler(handler)
    for handler in handlers:
        root.addHandler(handler)
    root.setLevel(level)


def test_lines_about_a_message_start_with_its_queue_id(caplog):
    log = logging.getLogger("mxhook.test")
    with caplog.at_level(logging.INFO, "mxhook.test"):
        logsetup.for_message(log, "4F9D52E3A1").info("outcome=%s rcpt=<%s>", "queued", "a@x.example")
        logsetup.for_message(log, "").warning("outcome=denied by=%s", "no_rule")
        logsetup.for_message(log, None).info("100% sure")  # a message text is not a format
    first, noqueue, percent = caplog.records
    assert first.getMessage() == "4F9D52E3A1: outcome=queued rcpt=<a@x.example>"
    assert first.QUEUE_ID == "4F9D52E3A1"
    assert noqueue.getMessage() == "NOQUEUE: outcome=denied by=no_rule" and not hasattr(noqueue, "QUEUE_ID")
    assert percent.msg == "NOQUEUE: 100% sure"


def test_labels_of_deliveries_and_batches():
    assert logsetup.label("delivery d1 rule=r1", ["4F9D52E3A1"]) == "4F9D52E3A1: delivery d1 rule=r1"
    assert logsetup.label("event batch b1", []) == "event batch b1"
    assert logsetup.label("event batch b1", ["A1", "B2"]) == "event batch b1 queue_ids=A1,B2"
    many = [f"Q{i}" for i in range(11)]
    assert logsetup.label("event batch b1", many, limit=10).endswith("queue_ids=" + ",".join(many[:10]) + ",...")


def test_the_queue_ids_of_a_batch_from_dicts_and_prerendered_events():
    text = event_payloads.v1_text({"id": "e1", "type": "succeeded", "at": "2026-11-22T12:00:00.000000Z",
                                   "queue_id": "4F9D52E3A1", "subject": '","queue_id":"NOT"'})
    batch = [text, {"queue_id": "4F9D52E3A1"}, {"queue_id": None}, {"queue_id": "B2"}, {"queue_id": "C3"}]
    assert event_payloads.queue_ids(batch, 10) == ["4F9D52E3A1", "B2", "C3"]
    assert event_payloads.queue_ids(batch, 1) == ["4F9D52E3A1", "B2"]  # one more: there are more


def test_journal_lines_carry_the_queue_id_field(tmp_path, monkeypatch, restore_root):
    pytest.importorskip("systemd.journal")
    socket = tmp_path / "socket"
    socket.touch()
    monkeypatch.setattr(logsetup, "JOURNAL_SOCKET", str(socket))
    sent = []
    logsetup.setup("mxhook-test", "journal", "info")
    (handler,) = restore_root.handlers
    handler.send = lambda MESSAGE, **fields: sent.append((MESSAGE, fields))  # journal.send's signature
    logsetup.for_message(logging.getLogger("mxhook.test"), "4F9D52E3A1").info("outcome=%s", "queued")
    ((message, fields),) = sent
    assert message == "4F9D52E3A1: outcome=queued"
    assert (fields["QUEUE_ID"], fields["SYSLOG_IDENTIFIER"], fields["SYSLOG_FACILITY"]) == (
        "4F9D52E3A1", "mxhook-test", logsetup.SYSLOG_FACILITY_MAIL)


def test_journal_without_journald_falls_back_and_says_so(tmp_path, monkeypatch, restore_root, capsys):
    monkeypatch.setattr(logsetup, "JOURNAL_SOCKET", str(tmp_path / "absent"))
    monkeypatch.setattr(logsetup.os.path, "exists", lambda path: False)  # no /dev/log either: stderr
    logsetup.setup("mxhook-test", "journal", "info")
    (handler,) = restore_root.handlers
    assert isinstance(handler, logging.StreamHandler)
    assert "log = journal, but python3-systemd is not installed or journald does not run" in capsys.readouterr().err
