"""End of message in the inbound decision (model/inbound.py): what is spooled, which
recipients change, and the answer."""
from mxhook.model import inbound

from tests.unit.inbound_support import dsn, mail, message, rcpts, transaction


def test_an_accepted_message_is_one_record_with_its_envelope_and_deliveries():
    t = transaction()
    rcpts(t, "<Sales@Ours.Example>")
    _, m = message(t, mail(subject="Caf\u00e9", body="Line 1\r\n"))
    assert (m.action, m.delete, m.bounce, m.add_discard, m.events) == (inbound.ACCEPT, (), (), False, ())
    r = m.message
    assert r.id == "id1" and r.raw.endswith(b"\r\n\r\nLine 1\r\n")
    meta = r.record.to_meta()
    assert {k: meta[k] for k in ("received", "queue_id", "mail_from", "client_addr", "helo",
                                 "header_from", "message_id")} == {
        "received": "2026-11-22T12:00:00.000000Z", "queue_id": "4QX1",
        "mail_from": "alice@sender.example", "client_addr": "192.0.2.7",
        "helo": "mail.sender.example", "header_from": "alice@sender.example",
        "message_id": "<m1@sender.example>"}
    [d] = meta["deliveries"]
    assert d["recipients"] == ["sales@ours.example"] and d["rule"]["name"] == "sales"
    assert m.log == (inbound.Logged("accepted", ["sales@ours.example"], "sales", "spooled as id1"),)


def test_discard_rule_recipients_are_removed_and_the_message_goes_to_the_discard_transport():
    t = transaction()
    rcpts(t, "<TRASH@ours.example>")
    _, m = message(t, mail(to="trash@ours.example"))
    assert m.action == inbound.ACCEPT and m.message is not None
    assert m.delete == ("<TRASH@ours.example>",) and m.add_discard


def test_without_postfix_routes_a_message_left_without_recipients_is_discarded_by_the_milter():
    t = transaction(routes=False)
    rcpts(t, "<trash@ours.example>")
    _, m = message(t, mail(to="trash@ours.example"))
    assert m.action == inbound.DISCARD and m.message is not None and m.delete == ()


def test_a_discard_recipient_beside_a_delivered_one_is_only_removed():
    t = transaction()
    rcpts(t, "<sales@ours.example>", "<trash@ours.example>")
    _, m = message(t, mail())
    assert m.delete == ("<trash@ours.example>",) and not m.add_discard
    assert [d.name for d in m.message.record.deliveries] == ["sales", "trash"]


def test_a_message_too_large_for_webhook_delivery_is_refused_with_552():
    t = transaction(max_message_size=100)
    rcpts(t, "<sales@ours.example>")
    _, m = message(t, mail(body="x" * 200))
    assert m.action == inbound.REJECT and m.reply[:2] == ("552", "5.3.4") and m.message is None
    assert m.log[0].by == "size"


def test_a_bounce_report_to_a_foreign_recipient_becomes_events_and_the_recipient_is_consumed():
    t = transaction(sender="")
    rcpts(t, "<app@example.org>")
    _, m = message(t, dsn())
    assert m.action == inbound.ACCEPT and m.message is None
    assert sorted((e.type, e.recipient) for e in m.events) == [
        ("bounced", "former.employee@contoso.example"), ("bounced", "full.box@contoso.example"),
        ("deferred", "slow@contoso.example")]
    assert m.delete == ("<app@example.org>",) and m.add_discard
    assert m.log[0].outcome == "bounce-report"


def test_a_bounce_report_to_a_rule_recipient_is_posted_and_yields_events():
    t = transaction(sender="")
    rcpts(t, "<sales@ours.example>")
    _, m = message(t, dsn(to="sales@ours.example"))
    assert m.message is not None and len(m.events) == 3 and m.delete == ()


def test_bounced_recipients_are_replaced_by_their_stand_ins():
    t = transaction(max_rcpt_refusals=1)
    rcpts(t, "<sales@ours.example>", "<vip@ours.example>", "<Vip@ours.example>")
    _, m = message(t, mail(subject="not now"))
    assert m.bounce == ("vip@ours.example",)  # the first vip@ was split off (452)
    assert m.delete == ("<Vip@ours.example>",)  # as Postfix has it; not the 452 one
    assert not m.add_discard and m.message.record.deliveries[0].recipients == ["sales@ours.example"]


def test_after_end_of_headers_answered_there_is_nothing_left_to_do():
    t = transaction(unknown_domains="pass")
    rcpts(t, "<x@elsewhere.example>")
    t.end_of_headers([])
    assert t.end_of_message([], 0) == inbound.MessageAnswer()
