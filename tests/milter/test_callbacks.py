"""The milter adapter driven through its callbacks by tests/milter/driver.py (no MTA), with a
real rules.db and spool."""
import os
from datetime import datetime, timezone

import Milter
import pytest

from mxhook import config
from mxhook import spool
from mxhook.daemons.milter import MilterSettings, MxhookMilter, Wiring, reloader
from mxhook.model.message import header_section
from mxhook.model.rules import Rule, parse_condition
from mxhook.model.targets import Destination
from mxhook.store.rulesdb import BlocklistReader, RulesStore, SnapshotWatcher
from tests.milter.driver import Connection


@pytest.fixture
def env(tmp_path):
    store = RulesStore(str(tmp_path / "rules.db"))
    store.add_domain("ours.example", log_denied=True)
    store.add_rule(Rule(name="sales",
                        destination=Destination("http://127.0.0.1:9/in", allow_http=True),
                        conditions=(parse_condition("To~^sales@"),)))
    store.add_rule(Rule(name="trash",
                        destination=Destination("http://127.0.0.1:9/t", allow_http=True),
                        discard=True, conditions=(parse_condition("To~^trash@"),)))
    spool_dir = str(tmp_path / "spool")
    spool.ensure_dirs(spool_dir)

    made = []

    def make(*, clock=None, new_id=None, tracking=None, **milter_settings):
        milter_settings.setdefault("discard_via", "transport")  # no Postfix to look at here
        cfg = config.from_dict({"paths": {"spool_dir": spool_dir}, "milter": milter_settings,
                                "tracking": tracking or {}})
        settings = MilterSettings.from_config(cfg)
        watcher = SnapshotWatcher(str(tmp_path / "rules.db"), interval=0.05)
        wiring = Wiring(settings, snapshot=lambda: watcher.current,
                        blocklist=BlocklistReader(str(tmp_path / "rules.db")),
                        segments=spool.SegmentWriter(spool_dir, seal_after=60),
                        **{k: v for k, v in (("clock", clock), ("new_id", new_id)) if v})
        made.append((wiring, watcher))
        make.wiring, make.watcher = wiring, watcher  # the latest
        return Connection(wiring)

    make.store = store
    make.spool_dir = spool_dir
    yield make
    for wiring, watcher in made:
        watcher.stop()
        wiring.segments.close()


HEADERS = [("From", b" Alice <alice@sender.example>"), ("To", b" sales@ours.example"),
           ("Subject", b" Caf\xe9 order"), ("Message-ID", b" <m1@sender.example>")]


def records(env):
    env.wiring.segments.flush()
    spool_dir = env.spool_dir
    return [r for p in spool.pending(spool_dir) for r in spool.read_all(p)]


def test_accepted_message_is_spooled_with_envelope_before_accept(env):
    ctx = env()
    assert ctx.send(["<Sales@Ours.Example>"], HEADERS, body=b"Line 1\r\nLine 2\r\n") == ("eom", Milter.ACCEPT)
    [rec] = records(env)
    assert rec.kind == "inbound"
    assert rec.payload == (b"From: Alice <alice@sender.example>\r\nTo: sales@ours.example\r\n"
                           b"Subject: Caf\xe9 order\r\nMessage-ID: <m1@sender.example>\r\n\r\nLine 1\r\nLine 2\r\n")
    m = rec.meta
    assert (m["queue_id"], m["mail_from"], m["client_addr"], m["client_name"], m["helo"]) == (
        "4QX1", "alice@sender.example", "192.0.2.7", "mail.sender.example", "mail.sender.example")
    assert (m["header_from"], m["subject"], m["message_id"]) == ("alice@sender.example", "Café order", "<m1@sender.example>")
    [delivery] = m["deliveries"]
    assert delivery["recipients"] == ["sales@ours.example"]
    assert delivery["rule"]["name"] == "sales" and delivery["rule"]["endpoint"] == "http://127.0.0.1:9/in"


def test_the_clock_and_record_ids_come_from_the_wiring(env):
    ids = iter(["id-1", "id-2"])
    ctx = env(clock=lambda: datetime(2026, 11, 22, 12, 0, tzinfo=timezone.utc), new_id=lambda: next(ids))
    assert ctx.send(["<sales@ours.example>"], HEADERS) == ("eom", Milter.ACCEPT)
    [rec] = records(env)
    assert (rec.id, rec.meta["received"]) == ("id-1", "2026-11-22T12:00:00.000000Z")


def test_recipient_no_rule_can_match_is_refused_at_rcpt_and_logged_denied(env):
    ctx = env()
    assert ctx.send(["<nobody@ours.example>"], HEADERS) == ("rcpt", Milter.REJECT)
    assert ctx.reply[:2] == ("550", "5.7.1")
    assert "no inbound rule matches <nobody@ours.example>" in ctx.reply[2]
    [rec] = records(env)
    assert rec.kind == "denied" and rec.meta["filter"] == "no_rule" and rec.meta["recipients"] == ["nobody@ours.example"]


def test_denied_mail_is_not_logged_when_the_domain_says_so(env):
    env.store.set_domain("ours.example", log_denied=False)
    ctx = env()
    assert ctx.send(["<nobody@ours.example>"], HEADERS) == ("rcpt", Milter.REJECT)
    assert records(env) == []


def test_recipient_domain_with_a_trailing_dot_or_as_u_label_is_ours(env):
    env.store.add_domain("b\u00fccher.example")  # stored as its A-label
    ctx = env()
    stage, rc = ctx.send(["<Sales@Ours.Example.>", "<sales@B\u00fccher.example>"], HEADERS)
    assert (stage, rc) == ("eom", Milter.ACCEPT)
    [rec] = [r for r in records(env) if r.kind == "inbound"]
    assert rec.meta["deliveries"][0]["recipients"] == ["sales@ours.example", "sales@xn--bcher-kva.example"]


def test_unknown_domain_rejected_at_rcpt_or_passed(env):
    ctx = env()
    assert ctx.send(["<x@elsewhere.example>"], HEADERS) == ("rcpt", Milter.REJECT)
    assert ctx.reply[:2] == ("550", "5.7.1") and "elsewhere.example is not enabled" in ctx.reply[2]
    assert records(env)[0].meta["filter"] == "unknown_domain"
    ctx = env(unknown_domains="pass")
    assert ctx.send(["<x@elsewhere.example>"], HEADERS)[1] == Milter.ACCEPT  # left alone at EOH


def test_records_and_events_name_this_mx_as_postfix_gives_it(env):
    """Postfix's myhostname (the `j` macro at connect) is the hostName of the logs (seed 000:
    the server that recorded the log); the client keeps its own fields."""
    import socket

    ctx = env()
    ctx.macros["j"] = "mx1.ours.example"
    ctx.milter.connect("mail.sender.example", socket.AF_INET, ("192.0.2.7", 40000))
    ctx.milter.hello("mail.sender.example")
    assert ctx.send(["<sales@ours.example>"], HEADERS)[1] == Milter.ACCEPT
    ctx.macros["{auth_authen}"] = "app1"
    assert ctx.send(["<x@else.example>"], OUT_HEADERS, queue_id="4QOUT8") == ("eom", Milter.ACCEPT)
    inbound, queued = sorted((r for r in records(env)), key=lambda r: r.kind != "inbound")
    assert (inbound.meta["host_name"], inbound.meta["client_name"]) == ("mx1.ours.example", "mail.sender.example")
    assert (queued.meta["type"], queued.meta["host_name"]) == ("queued", "mx1.ours.example")
    ctx = env()  # no j macro (a Postfix told not to send it): this host's name
    assert ctx.send(["<nobody@elsewhere.example>"], HEADERS) == ("rcpt", Milter.REJECT)
    assert [r.meta["host_name"] for r in records(env) if r.kind == "denied"] == [socket.gethostname()]


def test_decision_lines_start_with_the_queue_id_as_postfix_lines_do(env, caplog):
    """`QID: ...`, or NOQUEUE before Postfix opened a queue file (a refusal at the first RCPT):
    one grep for a queue id follows a message from Postfix to the milter to its webhook."""
    caplog.set_level("INFO", "mxhook.daemons.milter")
    ctx = env()
    assert ctx.send(["<x@elsewhere.example>"], HEADERS, queue_id="") == ("rcpt", Milter.REJECT)
    ctx = env()
    assert ctx.send(["<x@elsewhere.example>"], HEADERS, queue_id="4F9D52E3A1") == ("rcpt", Milter.REJECT)
    ctx = env()
    ctx.macros["{auth_authen}"] = "app1"
    assert ctx.send(["<x@else.example>"], OUT_HEADERS, queue_id="4QOUT9") == ("eom", Milter.ACCEPT)
    lines = [r.getMessage() for r in caplog.records if "outcome=" in r.getMessage()]
    assert [line.split(" ", 2)[:2] for line in lines] == [
        ["NOQUEUE:", "outcome=denied"], ["4F9D52E3A1:", "outcome=denied"], ["4QOUT9:", "outcome=queued"]]
    assert [getattr(r, "QUEUE_ID", None) for r in caplog.records if "outcome=" in r.getMessage()] == [
        None, "4F9D52E3A1", "4QOUT9"]  # the journal's field (log = journal)


@pytest.mark.parametrize("from_value,heuristic", [
    (b" Boss <boss@OURS.example>", "from_permitted_domain"),
    (b" sales@ours.example", "from_permitted_domain"),
    (b" <bob@else.example>", "from_equals_to"),
])
def test_heuristics_reject_the_message(env, from_value, heuristic):
    ctx = env()
    headers = [("From", from_value), ("To", b" bob@else.example")]
    assert ctx.send(["<sales@ours.example>"], headers) == ("eoh", Milter.REJECT)
    assert ctx.reply[:2] == ("550", "5.7.1")
    assert records(env)[0].meta["filter"] == "heuristic:" + heuristic


def test_heuristics_can_be_switched_off(env):
    ctx = env(heuristic_from_permitted_domain="no")
    assert ctx.send(["<sales@ours.example>"], [("From", b" boss@ours.example")])[1] == Milter.ACCEPT


OUT_HEADERS = [("From", b" App <noreply@ours.example>"), ("To", b" x@else.example"),
               ("Subject", b" Your receipt"), ("Message-ID", b" <r1@ours.example>"),
               ("X-App-Id", b" shop-7")]


def test_authenticated_mail_is_outbound_and_yields_queued_events_per_recipient(env):
    ctx = env(event_headers="X-App-Id, X-Missing")
    ctx.macros["{auth_authen}"] = "app1"
    rc = ctx.send(["<X@Else.example>", "<nobody@ours.example>"], OUT_HEADERS, queue_id="4QOUT1")
    assert rc == ("eom", Milter.ACCEPT)  # no inbound rule, no heuristic applies to outbound mail
    evs = sorted((r.meta for r in records(env)), key=lambda m: m["recipient"])
    assert [(e["type"], e["recipient"]) for e in evs] == [("queued", "nobody@ours.example"), ("queued", "x@else.example")]
    e = evs[1]
    assert (e["queue_id"], e["sender"], e["auth_user"], e["message_id"], e["subject"], e["source"]) == (
        "4QOUT1", "alice@sender.example", "app1", "<r1@ours.example>", "Your receipt", "milter")
    assert e["custom_headers"] == {"X-App-Id": "shop-7"}  # named as the admin configured it
    assert all(r.kind == "event" for r in records(env))


def test_the_custom_headers_endpoints_select_are_captured_too(env):
    from mxhook.model.endpoints import Endpoint

    env.store.add_endpoint(Endpoint(Destination("https://h.example/a"), custom_headers=("X-Campaign", "X-APP-ID")))
    env.store.add_endpoint(Endpoint(Destination("https://h.example/b"), custom_headers=("X-Off",), enabled=False))
    ctx = env(event_headers="X-App-Id")
    ctx.macros["{auth_authen}"] = "app1"
    headers = OUT_HEADERS + [("x-campaign", b" autumn =?utf-8?q?f=C3=AAte?="), ("X-Off", b" no")]
    assert ctx.send(["<x@else.example>"], headers, queue_id="4QOUT4") == ("eom", Milter.ACCEPT)
    [e] = [r.meta for r in records(env)]
    # [milter] event_headers as configured; an endpoint's selection in lower case (each
    # endpoint's body shows its own as given: payloads/registry.py), X-APP-ID once
    assert e["custom_headers"] == {"X-App-Id": "shop-7", "x-campaign": "autumn f\u00eate"}
    # a change in rules.db reaches the next message
    env.store.set_endpoint_enabled(2, True)
    assert env.watcher.check()
    ctx = env(event_headers="")
    ctx.macros["{auth_authen}"] = "app1"
    assert ctx.send(["<y@else.example>"], headers, queue_id="4QOUT5") == ("eom", Milter.ACCEPT)
    assert [r.meta["custom_headers"] for r in records(env) if r.meta["queue_id"] == "4QOUT5"] == [
        {"x-campaign": "autumn f\u00eate", "x-app-id": "shop-7", "x-off": "no"}]


def test_outbound_events_name_the_recipient_as_written_and_the_block_list_still_applies(env):
    env.store.block_add("gone@xn--bcher-kva.example", reason=None, source="cli")
    ctx = env()
    ctx.macros["{auth_authen}"] = "app1"
    assert ctx.send(["<Kunde@B\u00fccher.example>"], OUT_HEADERS, queue_id="4QOUT2") == ("eom", Milter.ACCEPT)
    assert [r.meta["recipient"] for r in records(env)] == ["kunde@b\u00fccher.example"]
    ctx = env()
    ctx.macros["{auth_authen}"] = "app1"
    assert ctx.send(["<gone@B\u00fccher.example.>"], OUT_HEADERS, queue_id="4QOUT3") == ("rcpt", Milter.REJECT)


@pytest.mark.parametrize("settings,macro", [
    ({"trusted_networks": "192.0.2.0/24"}, None),
    ({}, ("{daemon_name}", "ORIGINATING")),
    ({"outbound_daemon_names": "submission"}, ("{daemon_name}", "submission")),
])
def test_trusted_networks_and_daemon_names_mark_outbound(env, settings, macro):
    ctx = env(**settings)
    if macro:
        ctx.macros.update([macro])
    assert ctx.send(["<x@else.example>"], OUT_HEADERS) == ("eom", Milter.ACCEPT)
    assert [r.meta["type"] for r in records(env)] == ["queued"]


def test_untrusted_client_with_another_daemon_name_is_inbound(env):
    ctx = env(trusted_networks="198.51.100.0/24")
    ctx.macros["{daemon_name}"] = "mx.ours.example"
    assert ctx.send(["<x@else.example>"], OUT_HEADERS) == ("rcpt", Milter.REJECT)


def test_blocked_recipient_is_refused_and_reported(env):
    env.store.block_add("gone@else.example", reason="5.1.1 user unknown", source="cli")
    ctx = env()
    ctx.macros["{auth_authen}"] = "app1"
    ctx.macros["i"] = "4QB"
    assert ctx.mail("<alice@sender.example>") == Milter.NOREPLY
    assert ctx.rcpt("<Gone@Else.Example>") == Milter.REJECT
    assert ctx.reply[:2] == ("550", "5.1.1") and "block list" in ctx.reply[2]
    assert ctx.rcpt("<ok@else.example>") == Milter.CONTINUE
    [blocked] = [r.meta for r in records(env)]
    assert (blocked["type"], blocked["recipient"], blocked["auth_user"]) == ("blocked", "gone@else.example", "app1")


def local_submission(env, **settings):
    """What cleanup(8) pretends for mail given to sendmail(1) (non_smtpd_milters)."""
    env(**settings)
    return Connection(env.wiring, client=("127.0.0.1", "localhost"), helo="localhost", port=0)


def test_local_submission_is_outbound_with_subject_and_custom_headers(env):
    ctx = local_submission(env, event_headers="X-App-Id", trusted_networks="192.0.2.0/24")
    assert ctx.send(["<x@else.example>", "<nobody@ours.example>"], OUT_HEADERS,
                    mail_from="<www-data@ours.example>", queue_id="4QLOC1") == ("eom", Milter.ACCEPT)
    evs = sorted((r.meta for r in records(env)), key=lambda m: m["recipient"])
    assert [(e["type"], e["recipient"]) for e in evs] == [("queued", "nobody@ours.example"), ("queued", "x@else.example")]
    assert (evs[1]["subject"], evs[1]["custom_headers"], evs[1]["client_addr"]) == (
        "Your receipt", {"X-App-Id": "shop-7"}, "127.0.0.1")


def test_a_local_smtp_client_is_not_a_local_submission(env):
    env(trusted_networks="192.0.2.0/24")
    ctx = Connection(env.wiring, client=("127.0.0.1", "localhost"), helo="localhost", port=41000)
    assert ctx.send(["<x@else.example>"], OUT_HEADERS) == ("rcpt", Milter.REJECT)  # inbound


def test_local_submission_blocked_recipient_is_deleted_at_end_of_message_never_refused(env):
    env.store.block_add("gone@else.example", reason="5.1.1 user unknown", source="cli")
    ctx = local_submission(env, event_headers="X-App-Id")
    assert ctx.mail("<www-data@ours.example>") == Milter.NOREPLY
    assert ctx.rcpt("<Gone@Else.Example>") == Milter.CONTINUE  # Postfix defers the message on REJECT
    assert ctx.rcpt("<ok@else.example>") == Milter.CONTINUE
    ctx.macros["i"] = "4QLOC2"
    assert ctx.data(OUT_HEADERS) == ("eom", Milter.ACCEPT)
    assert ctx.deleted == ["<Gone@Else.Example>"]
    evs = {r.meta["type"]: r.meta for r in records(env)}
    assert evs["queued"]["recipient"] == "ok@else.example"
    blocked = evs["blocked"]
    assert (blocked["recipient"], blocked["queue_id"], blocked["subject"], blocked["custom_headers"]) == (
        "gone@else.example", "4QLOC2", "Your receipt", {"X-App-Id": "shop-7"})
    assert "block list" in blocked["reason"] or "user unknown" in blocked["reason"]


def test_local_submission_with_only_blocked_recipients_is_discarded(env):
    env.store.block_add("gone@else.example", reason=None, source="cli")
    ctx = local_submission(env)
    assert ctx.send(["<gone@else.example>"], OUT_HEADERS, queue_id="4QLOC3") == ("eom", Milter.DISCARD)
    assert ctx.deleted == ["<gone@else.example>"]
    assert [(r.meta["type"], r.meta["recipient"]) for r in records(env)] == [("blocked", "gone@else.example")]


def test_suppression_refuses_only_mail_of_its_sending_domain(env):
    env.store.block_add("carol@else.example", reason="unsubscribed", source="unsubscribe",
                        scope="shop.example")
    ctx = env()
    ctx.macros["{auth_authen}"] = "app1"
    assert ctx.mail("<news@Shop.Example>") == Milter.NOREPLY
    assert ctx.rcpt("<carol@else.example>") == Milter.REJECT
    assert ctx.reply[:2] == ("550", "5.1.1") and "unsubscribed from mail of shop.example" in ctx.reply[2]
    [blocked] = [r.meta for r in records(env)]
    assert (blocked["type"], blocked["recipient"]) == ("blocked", "carol@else.example")
    assert "unsubscribed" in blocked["reason"]
    ctx = env()
    ctx.macros["{auth_authen}"] = "app1"
    assert ctx.mail("<billing@other.example>") == Milter.NOREPLY
    assert ctx.rcpt("<carol@else.example>") == Milter.CONTINUE  # another sending domain


FEEDBACK = {"feedback_address": "FBL@Complaints.Example", "unsubscribe_address": "unsub@complaints.example"}
ARF_HEADERS = [("From", b" staff@hotmail.example"), ("To", b" fbl@complaints.example"),
               ("Subject", b" complaint"),
               ("Content-Type", b" multipart/report; report-type=feedback-report; boundary=b")]


def test_mail_to_the_feedback_address_is_spooled_for_the_handler_whatever_the_rules_say(env):
    ctx = env(tracking=FEEDBACK)
    assert ctx.send(["<fbl@complaints.example>"], ARF_HEADERS, body=b"--b--\r\n",
                    mail_from="<staff@hotmail.example>") == ("eom", Milter.ACCEPT)
    [rec] = records(env)
    assert rec.kind == "inbound" and rec.meta["internal"] == "feedback" and rec.meta["deliveries"] == []
    assert rec.payload.endswith(b"\r\n\r\n--b--\r\n")
    # taken out of Postfix's delivery: nobody has a mailbox there
    assert ctx.deleted == ["<fbl@complaints.example>"] and ctx.added


def test_the_feedback_address_takes_a_transaction_of_its_own(env):
    ctx = env(tracking=FEEDBACK)
    assert ctx.mail("<x@sender.example>") == Milter.NOREPLY
    assert ctx.rcpt("<sales@ours.example>") == Milter.CONTINUE
    assert ctx.rcpt("<fbl@complaints.example>") == Milter.TEMPFAIL
    assert ctx.reply[:2] == ("452", "4.5.3")
    ctx = env(tracking=FEEDBACK)
    assert ctx.mail("<x@sender.example>") == Milter.NOREPLY
    assert ctx.rcpt("<unsub@complaints.example>") == Milter.CONTINUE
    assert ctx.rcpt("<fbl@complaints.example>") == Milter.TEMPFAIL
    assert ctx.rcpt("<sales@ours.example>") == Milter.TEMPFAIL


def test_without_a_feedback_address_such_mail_is_refused(env):
    ctx = env()
    assert ctx.send(["<fbl@complaints.example>"], ARF_HEADERS) == ("rcpt", Milter.REJECT)


def test_blocklist_can_be_switched_off(env):
    env.store.block_add("gone@else.example", reason="x", source="cli")
    ctx = env(blocklist="no")
    ctx.macros["{auth_authen}"] = "app1"
    assert ctx.send(["<gone@else.example>"], OUT_HEADERS) == ("eom", Milter.ACCEPT)


def test_outbound_event_spool_failure_answers_4xx(env):
    ctx = env()
    ctx.macros["{auth_authen}"] = "app1"
    os.rmdir(os.path.join(env.spool_dir, "tmp"))
    open(os.path.join(env.spool_dir, "tmp"), "w").close()
    assert ctx.send(["<x@else.example>"], OUT_HEADERS) == ("eom", Milter.TEMPFAIL)


def test_spool_failure_answers_4xx_never_250(env):
    ctx = env()
    os.rmdir(os.path.join(env.spool_dir, "tmp"))
    open(os.path.join(env.spool_dir, "tmp"), "w").close()  # writes into tmp/ now fail, even as root
    assert ctx.send(["<sales@ours.example>"], HEADERS) == ("eom", Milter.TEMPFAIL)
    assert ctx.reply[:2] == ("451", "4.3.0")


def test_discard_rule_hands_a_message_left_without_recipients_to_the_discard_transport(env):
    ctx = env()
    assert ctx.send(["<trash@ours.example>"], HEADERS) == ("eom", Milter.ACCEPT)  # no milter DISCARD
    assert records(env)[0].meta["deliveries"][0]["rule"]["name"] == "trash"
    assert ctx.deleted == ["<trash@ours.example>"]
    assert ctx.added == [("<webhook-only@discard.mxhook.invalid>", None)]
    ctx = env(discard_via="milter")
    assert ctx.send(["<trash@ours.example>"], HEADERS) == ("eom", Milter.DISCARD)


def test_discard_rule_recipient_beside_a_delivered_one_is_only_removed(env):
    ctx = env()
    rc = ctx.send(["<sales@ours.example>", "<trash@ours.example>"], HEADERS)
    assert rc == ("eom", Milter.ACCEPT)  # both rules match on the envelope alone: no 452
    assert ctx.deleted == ["<trash@ours.example>"] and ctx.added == []


def test_delrcpt_names_recipients_as_the_client_wrote_them(env):
    # Postfix removes a recipient only on an exact (case-sensitive) match
    ctx = env()
    rc = ctx.send(["<Sales@Ours.Example>", "<TRASH@ours.example>"], HEADERS)
    assert rc == ("eom", Milter.ACCEPT)
    assert ctx.deleted == ["<TRASH@ours.example>"]


def add_header_rule(store, name="vip", to="^vip@", when="Subject~urgent", discard=False):
    store.add_rule(Rule(name=name,
                        destination=Destination("http://127.0.0.1:9/" + name, allow_http=True),
                        discard=discard,
                        conditions=(parse_condition("To~" + to), parse_condition(when))))


def rcpt_replies(ctx, rcpts, mail_from="<alice@sender.example>"):
    """RCPT answers of one transaction: recipient -> (rc, SMTP code)."""
    ctx.mail(mail_from)
    out = {}
    for r in rcpts:
        rc = ctx.rcpt(r)
        out[r] = (rc, ctx.reply[0] if rc != Milter.CONTINUE else "250")
    return out


def test_recipient_whose_outcome_may_differ_gets_452_and_the_next_transaction_takes_it(env):
    add_header_rule(env.store)
    ctx = env()
    replies = rcpt_replies(ctx, ["<sales@ours.example>", "<vip@ours.example>", "<nobody@ours.example>"])
    assert replies == {"<sales@ours.example>": (Milter.CONTINUE, "250"),
                       "<vip@ours.example>": (Milter.TEMPFAIL, "452"),
                       "<nobody@ours.example>": (Milter.REJECT, "550")}
    # the client sends the deferred ones again in a new transaction (MAIL FROM resets)
    # the client sends it again alone: its own answer, from the headers
    assert ctx.send(["<vip@ours.example>"], HEADERS) == ("eoh", Milter.REJECT)
    assert ctx.send(["<vip@ours.example>"], HEADERS + [("Subject", b" urgent!")]) == ("eom", Milter.ACCEPT)


def test_a_recipient_accepted_past_the_cap_is_bounced_through_its_stand_in(env):
    """Past max_rcpt_refusals a recipient is accepted although its outcome may differ; when
    it differs, Postfix bounces it: it is swapped for its reject stand-in (with its ORCPT).
    The 452'd form of the same address was never Postfix's, so it is not deleted."""
    add_header_rule(env.store)
    ctx = env(max_rcpt_refusals="1")
    replies = rcpt_replies(ctx, ["<sales@ours.example>", "<vip@ours.example>", "<Vip@ours.example>"])
    assert [v[1] for v in replies.values()] == ["250", "452", "250"]
    assert ctx.data(HEADERS + [("Subject", b" not now")], b"Hello\r\n") == ("eom", Milter.ACCEPT)
    assert ctx.deleted == ["<Vip@ours.example>"]
    assert ctx.added == [("<vip=ours.example@reject.mxhook.invalid>", "ORCPT=rfc822;vip@ours.example")]


def test_recipients_with_the_same_header_conditions_share_a_transaction(env):
    add_header_rule(env.store)
    add_header_rule(env.store, name="vip2", to="^vip2@")  # another rule, same header condition
    ctx = env()
    assert ctx.send(["<vip@ours.example>", "<vip2@ours.example>"], HEADERS) == ("eoh", Milter.REJECT)
    rc = ctx.send(["<vip@ours.example>", "<vip2@ours.example>"], HEADERS + [("Subject", b" urgent")])
    assert rc == ("eom", Milter.ACCEPT)
    [rec] = [r for r in records(env) if r.kind == "inbound"]
    assert [d["rule"]["name"] for d in rec.meta["deliveries"]] == ["vip", "vip2"]


def test_pass_through_and_rule_recipients_are_split(env):
    ctx = env(unknown_domains="pass")
    replies = rcpt_replies(ctx, ["<x@elsewhere.example>", "<sales@ours.example>", "<y@else.example>"])
    assert [v[1] for v in replies.values()] == ["250", "452", "250"]


def test_from_equals_recipient_splits_recipients_only_without_the_domain_heuristic(env):
    add_header_rule(env.store, name="all", to="@ours\\.example$", when="Subject~.")
    assert [v[1] for v in rcpt_replies(env(), ["<a@ours.example>", "<b@ours.example>"]).values()] == ["250", "250"]
    ctx = env(heuristic_from_permitted_domain="no")
    assert [v[1] for v in rcpt_replies(ctx, ["<a@ours.example>", "<b@ours.example>"]).values()] == ["250", "452"]
    # the client sends the deferred ones again in a new transaction (MAIL FROM resets)
    assert ctx.send(["<b@ours.example>"], [("From", b" b@ours.example"), ("Subject", b" x")]) == ("eoh", Milter.REJECT)
    assert ctx.send(["<a@ours.example>"], [("From", b" b@ours.example"), ("Subject", b" x")]) == ("eom", Milter.ACCEPT)


def test_null_sender_recipients_without_a_rule_are_held_apart_from_rule_recipients(env):
    ctx = env()
    replies = rcpt_replies(ctx, ["<sales@ours.example>", "<nobody@ours.example>", "<x@elsewhere.example>"],
                           mail_from="<>")
    assert [v[1] for v in replies.values()] == ["250", "452", "452"]
    # the client sends the deferred ones again in a new transaction (MAIL FROM resets)
    rc = ctx.send(["<nobody@ours.example>", "<x@elsewhere.example>"], HEADERS, mail_from="<>")
    assert rc == ("eoh", Milter.REJECT)  # not a bounce report: both refused, neither vanishes
    assert sorted((r.meta["filter"], tuple(r.meta["recipients"])) for r in records(env)) == [
        ("no_rule", ("nobody@ours.example",)), ("unknown_domain", ("x@elsewhere.example",))]


def test_message_without_a_from_header_is_refused_by_default(env):
    body = b" From: ceo@ours.example\r\nSubject: hi\r\n\r\nbody\r\n"
    ctx = env()
    assert ctx.send(["<sales@ours.example>"], [], body=body) == ("eoh", Milter.REJECT)
    assert ctx.reply[:2] == ("550", "5.7.1") and "no From header" in ctx.reply[2]
    ctx = env(missing_from="accept")
    assert ctx.send(["<sales@ours.example>"], [], body=body) == ("eom", Milter.ACCEPT)
    [rec] = [r for r in records(env) if r.kind == "inbound"]
    assert rec.payload == b"\r\n" + body  # no header field: the empty line comes first


def test_8bit_and_broken_headers_do_not_crash(env):
    ctx = env()
    headers = [("From", b" \xff\xfe<<@@>"), ("Subject", b" =?bogus?Q?=ZZ?= \x80\x81"), ("X-Null", b" \x00")]
    assert ctx.send(["<sales@ours.example>"], headers)[1] == Milter.ACCEPT


def test_internal_error_answers_451(env, monkeypatch):
    ctx = env()
    monkeypatch.setattr("mxhook.model.inbound.decide", lambda *a, **k: 1 / 0)
    assert ctx.send(["<sales@ours.example>"], HEADERS) == ("eoh", Milter.TEMPFAIL)
    assert ctx.reply[:2] == ("451", "4.3.0")


def test_oversized_message_is_refused(env):
    ctx = env(max_message_size="100")
    assert ctx.send(["<sales@ours.example>"], HEADERS, body=b"x" * 200) == ("eom", Milter.REJECT)
    assert ctx.reply[:2] == ("552", "5.3.4")


def test_rule_edits_reach_the_running_milter(env):
    ctx = env()
    assert ctx.send(["<support@ours.example>"], HEADERS) == ("rcpt", Milter.REJECT)
    env.store.add_rule(Rule(name="support",
                            destination=Destination("http://127.0.0.1:9/s", allow_http=True),
                            conditions=(parse_condition("To~^support@"),)))
    env.watcher.check()  # the watcher's poll, now (its thread may have done it already)
    assert "support" in [r.name for r in env.watcher.current.ruleset.rules]
    assert ctx.send(["<support@ours.example>"], HEADERS)[1] == Milter.ACCEPT


DSN_FIXTURE = os.path.join(os.path.dirname(__file__), "..", "unit", "fixtures", "maillog", "dsn_remote_exchange.eml")


def feed_raw(ctx, raw: bytes, rcpts, mail_from="<>"):
    """A whole message through the callbacks, its header split as Postfix splits it."""
    fields, body_at, _ = header_section(raw)
    return ctx.send(rcpts, fields, body=raw[body_at:], mail_from=mail_from)


def test_bounce_report_for_our_mail_becomes_events_even_for_a_foreign_domain(env):
    ctx = env()
    raw = open(DSN_FIXTURE, "rb").read()
    assert feed_raw(ctx, raw, ["<app@example.org>"]) == ("eom", Milter.ACCEPT)
    assert ctx.deleted == ["<app@example.org>"]  # consumed; discard(8) takes the message
    assert ctx.added == [("<webhook-only@discard.mxhook.invalid>", None)]
    evs = sorted((r.meta for r in records(env)), key=lambda m: m["recipient"])
    assert [(e["type"], e["recipient"], e["bounce_type"]) for e in evs] == [
        ("bounced", "former.employee@contoso.example", "hard"),
        ("bounced", "full.box@contoso.example", "soft"),
        ("deferred", "slow@contoso.example", None)]
    assert {e["message_id"] for e in evs} == {"<20261122120001.1@example.org>"}


def test_null_sender_mail_that_is_no_bounce_report_is_refused_for_foreign_domains(env):
    ctx = env()
    rc = ctx.send(["<x@elsewhere.example>"], HEADERS, mail_from="<>")
    assert rc == ("eoh", Milter.REJECT) and "elsewhere.example is not enabled" in ctx.reply[2]
    assert records(env)[0].meta["filter"] == "unknown_domain"


def test_bounce_report_to_a_rule_recipient_is_posted_and_yields_events(env):
    ctx = env()
    raw = open(DSN_FIXTURE, "rb").read().replace(b"To: app@example.org", b"To: sales@ours.example")
    assert feed_raw(ctx, raw, ["<sales@ours.example>"]) == ("eom", Milter.ACCEPT)
    kinds = sorted(r.kind for r in records(env))
    assert kinds == ["event", "event", "event", "inbound"]


def test_bounce_report_answered_451_leaves_none_of_its_events(env, monkeypatch):
    """The report's events and the message are one append: when the message cannot be stored,
    no event of that attempt is left to be posted (the sender will send the report again)."""
    ctx = env()
    writer = env.wiring.segments
    real_append_many = writer.append_many

    def failing_for_inbound(records):
        if any(r.kind == "inbound" for r in records):
            raise OSError(5, "Input/output error")
        real_append_many(records)

    monkeypatch.setattr(writer, "append_many", failing_for_inbound)
    monkeypatch.setattr(writer, "append", lambda record: failing_for_inbound([record]))
    raw = open(DSN_FIXTURE, "rb").read().replace(b"To: app@example.org", b"To: sales@ours.example")
    assert feed_raw(ctx, raw, ["<sales@ours.example>"]) == ("eom", Milter.TEMPFAIL)
    assert ctx.reply[:2] == ("451", "4.3.0")
    assert records(env) == []


def test_failure_in_the_unanswered_mail_from_callback_answers_451_at_rcpt(env, monkeypatch):
    ctx = env()
    monkeypatch.setattr(MxhookMilter, "_direction", lambda self: 1 / 0)
    assert ctx.send(["<sales@ours.example>"], HEADERS) == ("rcpt", Milter.TEMPFAIL)
    assert ctx.reply[:2] == ("451", "4.3.0")
    monkeypatch.undo()
    assert ctx.send(["<sales@ours.example>"], HEADERS)[1] == Milter.ACCEPT  # next message is fine


def test_bench_null_milter_negotiates_exactly_what_mxhook_does():
    """bench/milter_throughput's (b) is the protocol's own cost only if the null milter asks
    Postfix for the same events with the same no-reply flags as mxhook-milter."""
    import importlib.util
    path = os.path.join(os.path.dirname(__file__), "..", "..", "bench", "null_milter.py")
    spec = importlib.util.spec_from_file_location("null_milter", path)
    null = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(null)
    assert null.NullMilter.protocol_mask() == MxhookMilter.protocol_mask()


def test_a_reload_gives_new_connections_the_new_settings_and_keeps_the_rest(env):
    ctx = env()
    assert ctx.send(["<someone@elsewhere.example>"], HEADERS) == ("rcpt", Milter.REJECT)
    original = Milter.factory
    try:
        reloader(env.wiring)(config.from_dict({
            "paths": {"spool_dir": env.spool_dir},
            "milter": {"discard_via": "transport", "unknown_domains": "pass"}}))
        wiring = Milter.factory.args[0]
        assert wiring.policy.unknown_domains == "pass"
        assert (wiring.segments, wiring.blocklist) == (env.wiring.segments, env.wiring.blocklist)
        assert Connection(wiring).send(["<someone@elsewhere.example>"], HEADERS)[1] != Milter.REJECT
        assert ctx.milter.wiring.policy.unknown_domains == "reject"  # a connection keeps its own
    finally:
        Milter.factory = original
