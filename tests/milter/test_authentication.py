"""The milter adapter with `[authentication]`: messages signed here, keys in an in-memory
resolver (no network). Verdicts in the spooled record, rules on `dmarc` decided at end of
message, dmarc_reject's 550 5.7.1, mode upstream from a trusted Authentication-Results only."""
import Milter
import pytest

from mxhook import config, spool
from mxhook.daemons.milter import MilterSettings, Wiring
from mxhook.mailauth.authenticate import AuthSettings
from mxhook.mailauth.resolvers import StaticResolver
from mxhook.model.message import header_section
from mxhook.model.rules import Rule, parse_condition
from mxhook.model.targets import Destination
from mxhook.store.rulesdb import BlocklistReader, RulesStore, SnapshotWatcher
from tests.milter.driver import Connection
from tests.support.dns_server import Key, publish, sign

CLIENT = ("192.0.2.10", "mail.sender.example")


@pytest.fixture(scope="module")
def key():
    return Key("rsa")


@pytest.fixture(scope="module")
def zone(key):
    z = {("sender.example", "TXT"): ["v=spf1 ip4:192.0.2.10 -all"],
         ("_dmarc.sender.example", "TXT"): ["v=DMARC1; p=reject"]}
    publish(z, key, "s1", "sender.example")
    return z


def hook(path):
    return Destination(f"http://127.0.0.1:9/{path}", allow_http=True)


@pytest.fixture
def env(tmp_path, zone):
    db = str(tmp_path / "rules.db")
    store = RulesStore(db)
    store.add_domain("ours.example", log_denied=True)
    store.add_rule(Rule(name="suspect", destination=hook("suspect"), priority=1,
                        conditions=(parse_condition("To~^support@"), parse_condition("dmarc~^fail$"))))
    store.add_rule(Rule(name="support", destination=hook("support"), priority=2,
                        conditions=(parse_condition("To~^support@"),)))
    store.add_rule(Rule(name="sales", destination=hook("sales"), priority=2,
                        conditions=(parse_condition("To~^sales@"),)))
    spool_dir = str(tmp_path / "spool")
    spool.ensure_dirs(spool_dir)
    made = []

    def make(**auth):
        cfg = config.from_dict({"paths": {"spool_dir": spool_dir},
                                "milter": {"discard_via": "transport"},
                                "authentication": {"mode": "verify", "authserv_id": "mx.ours.example",
                                                   **auth}})
        settings = MilterSettings.from_config(cfg)
        auth_settings = AuthSettings.from_config(cfg)
        auth_settings._resolver = StaticResolver(zone)  # the in-memory zone, no network
        watcher = SnapshotWatcher(db, interval=0.05)
        wiring = Wiring(settings, snapshot=lambda: watcher.current, blocklist=BlocklistReader(db),
                        segments=spool.SegmentWriter(spool_dir, seal_after=60), auth=auth_settings)
        made.append((wiring, watcher))
        make.wiring = wiring
        return Connection(wiring, client=CLIENT, helo="mail.sender.example")

    make.spool_dir = spool_dir
    make.made = made
    yield make
    for wiring, watcher in made:
        watcher.stop()
        wiring.segments.close()


def records(env):
    for wiring, _ in env.made:
        wiring.segments.flush()
    return [r for p in spool.pending(env.spool_dir) for r in spool.read_all(p)]


def message(key, to="support@ours.example", sign_it=True, alter=False, extra=b""):
    raw = (b"From: Alice <alice@sender.example>\r\nTo: " + to.encode() + b"\r\nSubject: hello\r\n"
           b"Date: Thu, 03 Dec 2026 19:00:00 +0000\r\nMessage-ID: <1@sender.example>\r\n\r\nHi\r\n")
    if sign_it:
        raw = sign(raw, key, "s1", "sender.example")
    if alter:
        raw = raw.replace(b"Hi\r\n", b"Hi!\r\n")
    fields, body_at, _ = header_section(extra + raw)
    return fields, (extra + raw)[body_at:]


def send(ctx, rcpt, fields, body, mail_from="<alice@sender.example>"):
    return ctx.send([f"<{rcpt}>"], fields, body=body, mail_from=mail_from)


def test_a_signed_message_passes_and_its_verdicts_are_spooled(env, key):
    ctx = env()
    assert send(ctx, "sales@ours.example", *message(key, to="sales@ours.example")) == ("eom", Milter.ACCEPT)
    [rec] = records(env)
    auth = rec.meta["authentication"]
    assert (auth["source"], auth["authserv_id"]) == ("mxhook", "mx.ours.example")
    assert auth["spf"]["result"] == "pass" and auth["spf"]["client_ip"] == "192.0.2.10"
    assert [(d["result"], d["domain"], d["selector"]) for d in auth["dkim"]] == [("pass", "sender.example", "s1")]
    assert (auth["dmarc"]["result"], auth["dmarc"]["policy"]) == ("pass", "reject")
    assert rec.payload.startswith(b"DKIM-Signature:")  # the message as it came, nothing added


def test_a_dmarc_condition_routes_at_end_of_message(env, key):
    ctx = env()
    assert send(ctx, "support@ours.example", *message(key)) == ("eom", Milter.ACCEPT)
    ctx2 = env()
    # altered body, another client: DKIM and SPF fail, so DMARC does
    ctx2.milter.connect("elsewhere.example", 2, ("198.51.100.7", 4000))
    ctx2.milter.hello("elsewhere.example")
    assert send(ctx2, "support@ours.example", *message(key, alter=True)) == ("eom", Milter.ACCEPT)
    by_rule = {r.meta["deliveries"][0]["rule"]["name"]: r.meta["authentication"] for r in records(env)}
    assert by_rule["support"]["dmarc"]["result"] == "pass"
    assert by_rule["suspect"]["dmarc"]["result"] == "fail"
    assert by_rule["suspect"]["dkim"][0]["result"] == "fail"
    assert by_rule["suspect"]["spf"]["result"] == "fail"


def test_dmarc_reject_refuses_in_the_session(env, key):
    ctx = env(dmarc_reject="yes")
    ctx.milter.connect("elsewhere.example", 2, ("198.51.100.7", 4000))
    ctx.milter.hello("elsewhere.example")
    assert send(ctx, "sales@ours.example", *message(key, to="sales@ours.example", sign_it=False)) == (
        "eom", Milter.REJECT)
    assert ctx.reply[:2] == ("550", "5.7.1")
    assert "DMARC policy of sender.example rejects this message" in ctx.reply[2]
    [rec] = records(env)
    assert rec.kind == "denied" and rec.meta["filter"] == "dmarc_reject"
    # the same message from the sender's own address passes SPF, so DMARC: accepted
    ctx = env(dmarc_reject="yes")
    assert send(ctx, "sales@ours.example", *message(key, to="sales@ours.example", sign_it=False)) == (
        "eom", Milter.ACCEPT)


def test_untrusted_authentication_results_are_marked(env, key):
    forged = b"Authentication-Results: mx.ours.example; dmarc=pass header.from=sender.example\r\n"
    ctx = env()
    assert send(ctx, "sales@ours.example", *message(key, to="sales@ours.example", extra=forged)) == (
        "eom", Milter.ACCEPT)
    [rec] = records(env)
    [up] = rec.meta["authentication"]["upstream"]
    assert up["authserv_id"] == "mx.ours.example" and up["trusted"] is False


def test_mode_upstream_takes_the_trusted_verifier_only(env, key):
    trusted = b"Authentication-Results: filter.ours.example; spf=pass smtp.mailfrom=sender.example; dmarc=fail header.from=sender.example policy.dmarc=reject\r\n"
    ctx = env(mode="upstream", trusted_authserv_ids="filter.ours.example")
    assert send(ctx, "support@ours.example", *message(key, sign_it=False, extra=trusted)) == (
        "eom", Milter.ACCEPT)
    [rec] = records(env)
    auth = rec.meta["authentication"]
    assert (auth["source"], auth["authserv_id"], auth["dmarc"]["result"]) == ("upstream", "filter.ours.example", "fail")
    assert rec.meta["deliveries"][0]["rule"]["name"] == "suspect"


def test_mode_off_spools_no_verdicts_and_the_dmarc_rule_never_matches(env, key):
    ctx = env(mode="off")
    assert send(ctx, "support@ours.example", *message(key, alter=True)) == ("eom", Milter.ACCEPT)
    [rec] = records(env)
    assert "authentication" not in rec.meta
    assert rec.meta["deliveries"][0]["rule"]["name"] == "support"
