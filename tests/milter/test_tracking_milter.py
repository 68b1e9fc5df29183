"""Tracking of outbound mail in the milter, driven through its callbacks (tests/milter/driver.py)
with a real rules.db, spool and key file: what end of message changes (body, List-Unsubscribe,
X-Mxhook-Ref, X-Mxhook-Track removed), and that nothing in tracking ever costs a message its
delivery. The rewriter is replaced by a recording one here (its own tests are its helper's);
one test runs the real one."""
import base64
import email
import email.policy
import os
import re
from datetime import datetime, timezone

import Milter
import pytest

from mxhook import config, spool
from mxhook.daemons.milter import MilterSettings, TrackingSettings, Wiring
from mxhook.model import tracking as rewriter
from mxhook.model import tracktokens
from mxhook.model.keyring import parse_keys
from mxhook.store.rulesdb import BlocklistReader, RulesStore, SnapshotWatcher
from tests.milter.driver import Connection

KEY = base64.b64encode(bytes(range(32))).decode()
NOW = datetime(2026, 12, 4, 9, 30, tzinfo=timezone.utc)
PUBLIC = "https://t.example.com"
HTML = (b'<html><body><p>Hi</p><a href="https://shop.example/offer?id=1">Offer</a>'
        b'</body></html>\r\n')
HEADERS = [("From", b" Shop <news@shop.example>"), ("To", b" bob@else.example"),
           ("Subject", b" Offer"), ("Message-ID", b" <n1@shop.example>"),
           ("MIME-Version", b" 1.0"), ("Content-Type", b" text/html; charset=utf-8")]


class Recording(Connection):
    """The driver, also recording the header and body changes of end of message."""

    def __init__(self, wiring, actions=Milter.CURR_ACTS):
        self.changed, self.headers_added, self.bodies = [], [], []
        self.actions = actions
        super().__init__(wiring)
        self.milter.negotiate([actions, 0x1FFFFF, 0, 0])

    def chgheader(self, name, index, value):
        assert self.at_eom
        self.changed.append((name, index, value))

    def addheader(self, name, value, index):
        assert self.at_eom
        self.headers_added.append((name, value))

    def replacebody(self, body):
        assert self.at_eom
        self.bodies.append(body)

    def mail(self, sender, *params):
        self.changed, self.headers_added, self.bodies = [], [], []
        return super().mail(sender, *params)

    def added_header(self, name):
        return [v for n, v in self.headers_added if n == name]


class FakeRewriter:
    """Answers like model/tracking.rewrite: the body with a mark, or None with a reason."""

    def __init__(self):
        self.calls = []
        self.answer = None  # a Rewritten to give instead
        self.error = None

    def __call__(self, headers, body, plan):
        self.calls.append((headers, body, plan))
        if self.error:
            raise self.error
        if self.answer is not None:
            return self.answer
        url = plan.token(tracktokens.CLICK, 0, "https://shop.example/offer?id=1")
        return rewriter.Rewritten(body.replace(b"https://shop.example/offer?id=1",
                                               f"{plan.base_url}/c/{url}".encode()), "", 1, plan.opens)


@pytest.fixture
def env(tmp_path):
    rules_db = str(tmp_path / "rules.db")
    store = RulesStore(rules_db)
    store.set_tracking("shop.example", opens=True, clicks=True, unsubscribe=True)
    spool_dir = str(tmp_path / "spool")
    spool.ensure_dirs(spool_dir)
    key_file = tmp_path / "tracking.key"
    key_file.write_text(KEY + "\n")
    made = []

    def make(*, tracking=None, feedback_address="", unsubscribe_address="", rewrite=None,
             actions=Milter.CURR_ACTS, **milter):
        milter.setdefault("discard_via", "transport")
        cfg = config.from_dict({"paths": {"spool_dir": spool_dir}, "milter": milter,
                                "tracking": {"public_url": PUBLIC, "key_file": str(key_file),
                                             "feedback_address": feedback_address,
                                             "unsubscribe_address": unsubscribe_address,
                                             **(tracking or {})}})
        settings = TrackingSettings.from_config(cfg)
        watcher = SnapshotWatcher(rules_db, interval=0.05)
        make.rewriter = rewrite or FakeRewriter()
        wiring = Wiring(MilterSettings.from_config(cfg), snapshot=lambda: watcher.current,
                        blocklist=BlocklistReader(rules_db), clock=lambda: NOW,
                        segments=spool.SegmentWriter(spool_dir, seal_after=60),
                        tracking=settings, rewrite=make.rewriter)
        made.append((wiring, watcher))
        make.wiring, make.watcher = wiring, watcher
        ctx = Recording(wiring, actions)
        ctx.macros["{auth_authen}"] = "shop"
        return ctx

    make.store, make.spool_dir, make.key_file = store, spool_dir, key_file
    make.keys = parse_keys(KEY)
    yield make
    for wiring, watcher in made:
        watcher.stop()
        wiring.segments.close()


def queued(env):
    env.wiring.segments.flush()
    return [r.meta for p in spool.pending(env.spool_dir) for r in spool.read_all(p)]


def send(ctx, rcpts=("<bob@else.example>",), headers=HEADERS, body=HTML,
         mail_from="<news@shop.example>", queue_id="4QT1"):
    return ctx.send(list(rcpts), headers, body=body, mail_from=mail_from, queue_id=queue_id)


def test_a_tracked_domain_gets_its_body_rewritten_and_unsubscribe_headers(env):
    ctx = env()
    assert send(ctx) == ("eom", Milter.ACCEPT)
    [(headers, body, plan)] = env.rewriter.calls
    assert headers == HEADERS and body == HTML
    assert (plan.opens, plan.clicks, plan.text_links, plan.honeypot, plan.base_url, plan.max_size) == (
        True, True, False, False, PUBLIC, 10 * 1024 * 1024)
    [new] = ctx.bodies
    token = new.split(b"/c/")[1].split(b'"')[0].decode()
    assert tracktokens.verify(env.keys, token, kind="c") == tracktokens.Track(
        "c", "4QT1", "bob@else.example", "shop.example", int(NOW.timestamp()), 0,
        "https://shop.example/offer?id=1")
    [unsubscribe] = ctx.added_header("List-Unsubscribe")
    assert unsubscribe.startswith(f" <{PUBLIC}/u/") and unsubscribe.endswith(">")  # leading space: ours
    track = tracktokens.verify(env.keys, unsubscribe[len(f" <{PUBLIC}/u/"):-1], kind="u")
    assert (track.queue_id, track.recipient, track.sending_domain) == ("4QT1", "bob@else.example", "shop.example")
    assert ctx.added_header("List-Unsubscribe-Post") == [" List-Unsubscribe=One-Click"]
    [ref] = ctx.added_header("X-Mxhook-Ref")
    assert tracktokens.verify(env.keys, ref.strip(), kind="r").queue_id == "4QT1"
    assert ctx.changed == []
    [event] = queued(env)
    assert event["type"] == "queued" and event.get("reason") is None


def test_the_header_is_removed_and_overrides_the_domain(env):
    ctx = env()
    headers = HEADERS + [("X-Mxhook-Track", b" none"), ("x-mxhook-track", b" opens")]
    assert send(ctx, headers=headers) == ("eom", Milter.ACCEPT)
    assert env.rewriter.calls == [] and ctx.bodies == [] and ctx.headers_added == []
    assert ctx.changed == [("X-Mxhook-Track", 2, None), ("X-Mxhook-Track", 1, None)]  # last first

    ctx = env()  # a domain without settings, tracked by the message's own wish
    headers = [("From", b" a@other.example")] + HEADERS[1:] + [("X-Mxhook-Track", b" opens, unsubscribe")]
    assert send(ctx, headers=headers, mail_from="<a@other.example>") == ("eom", Milter.ACCEPT)
    [(_, _, plan)] = env.rewriter.calls
    assert (plan.opens, plan.clicks) == (True, False)
    assert ctx.added_header("List-Unsubscribe-Post") and ctx.changed == [("X-Mxhook-Track", 1, None)]
    assert tracktokens.verify(env.keys, ctx.added_header("X-Mxhook-Ref")[0].strip()).sending_domain == "other.example"


def test_the_header_is_removed_even_with_tracking_off(env):
    ctx = env(tracking={"public_url": ""})
    assert send(ctx, headers=HEADERS + [("X-Mxhook-Track", b" opens")]) == ("eom", Milter.ACCEPT)
    assert env.rewriter.calls == [] and ctx.headers_added == [] and ctx.bodies == []
    assert ctx.changed == [("X-Mxhook-Track", 1, None)]
    assert [e.get("reason") for e in queued(env)] == [None]


def test_untracked_mail_and_bounces_are_left_alone(env):
    ctx = env()
    headers = [("From", b" a@other.example")] + HEADERS[1:]
    for sender in ("<a@other.example>", "<>"):  # a domain without settings, a bounce
        assert send(ctx, headers=headers, mail_from=sender) == ("eom", Milter.ACCEPT)
        assert env.rewriter.calls == [] and ctx.headers_added == [] and ctx.bodies == [] and ctx.changed == []


def test_several_recipients_share_tokens_without_a_recipient(env):
    ctx = env()
    assert send(ctx, rcpts=("<bob@else.example>", "<carol@else.example>")) == ("eom", Milter.ACCEPT)
    token = ctx.bodies[0].split(b"/c/")[1].split(b'"')[0].decode()
    assert tracktokens.verify(env.keys, token).recipient == ""
    assert sorted(e["recipient"] for e in queued(env)) == ["bob@else.example", "carol@else.example"]


def test_a_message_with_its_own_list_unsubscribe_keeps_it(env):
    ctx = env()
    headers = HEADERS + [("List-Unsubscribe", b" <https://shop.example/unsub>")]
    assert send(ctx, headers=headers) == ("eom", Milter.ACCEPT)
    assert ctx.added_header("List-Unsubscribe") == [] and ctx.added_header("List-Unsubscribe-Post") == []
    assert len(ctx.added_header("X-Mxhook-Ref")) == 1 and len(ctx.bodies) == 1


def test_mailto_unsubscribe_and_the_feedback_reference(env):
    ctx = env(unsubscribe_address="unsubscribe@t.example.com")
    send(ctx)
    [value] = ctx.added_header("List-Unsubscribe")
    web, mailto = value.strip().split(", ")
    assert mailto.startswith("<mailto:unsubscribe@t.example.com?subject=unsubscribe%20")
    assert mailto[len("<mailto:unsubscribe@t.example.com?subject=unsubscribe%20"):-1] == web[len(f"<{PUBLIC}/u/"):-1]

    ctx = env(feedback_address="fbl@t.example.com")  # every message gets the reference
    headers = [("From", b" a@other.example")] + HEADERS[1:]
    send(ctx, headers=headers, mail_from="<a@other.example>")
    assert ctx.bodies == [] and [n for n, _ in ctx.headers_added] == ["X-Mxhook-Ref"]


def test_a_message_over_the_size_limit_goes_untouched_with_the_reason(env):
    ctx = env(tracking={"max_message_size": "100"})
    big = HTML + b"x" * 200 + b"\r\n"
    assert send(ctx, body=big) == ("eom", Milter.ACCEPT)
    assert env.rewriter.calls == [] and ctx.bodies == []
    assert ctx.added_header("List-Unsubscribe")  # headers cost nothing: still added
    [event] = queued(env)
    assert event["reason"] == "tracking not applied: the message is larger than [tracking] max_message_size (100 bytes)"


def test_a_message_the_rewriter_cannot_track_goes_untouched_with_its_reason(env):
    ctx = env(tracking={"max_message_size": "1M"})
    env.rewriter.answer = rewriter.Rewritten(None, "no HTML part", 0, False)
    assert send(ctx) == ("eom", Milter.ACCEPT)
    assert ctx.bodies == []
    assert queued(env)[0]["reason"] == "tracking not applied: no HTML part"


@pytest.mark.parametrize("broken", ["rewriter", "key_file", "empty_key_file"])
def test_a_failure_in_tracking_never_stalls_mail(env, broken):
    ctx = env()
    if broken == "rewriter":
        env.rewriter.error = RuntimeError("boom")
    elif broken == "key_file":
        env.key_file.write_text("not a key\n")
    else:
        os.unlink(env.key_file)
    assert send(ctx, headers=HEADERS + [("X-Mxhook-Track", b" opens")]) == ("eom", Milter.ACCEPT)
    assert ctx.bodies == [] and ctx.headers_added == []
    assert ctx.changed == [("X-Mxhook-Track", 1, None)]  # the header never leaves
    [event] = queued(env)
    assert event["reason"].startswith("tracking not applied: ")
    assert ("boom" if broken == "rewriter" else "key_file") in event["reason"]


def test_an_mta_that_refuses_the_changes_still_gets_the_message(env):
    ctx = env(actions=Milter.CURR_ACTS & ~(Milter.CHGBODY | Milter.ADDHDRS | Milter.CHGHDRS))
    assert send(ctx, headers=HEADERS + [("X-Mxhook-Track", b" opens")]) == ("eom", Milter.ACCEPT)
    assert ctx.bodies == [] and ctx.headers_added == [] and ctx.changed == []


def test_a_key_rotation_is_seen_by_the_next_message(env):
    ctx = env()
    send(ctx)
    new = base64.b64encode(bytes(range(1, 33))).decode()
    env.key_file.write_text(f"{KEY}\n{new}\n")
    send(ctx, queue_id="4QT2")
    ref = ctx.added_header("X-Mxhook-Ref")[0].strip()
    assert tracktokens.verify(parse_keys(new), ref).queue_id == "4QT2"


def test_the_domain_settings_reach_the_milter_without_restart(env):
    ctx = env()
    env.store.set_tracking("shop.example", opens=False, clicks=False, unsubscribe=False)
    env.watcher.check()
    send(ctx)
    assert env.rewriter.calls == [] and ctx.headers_added == []


def test_the_real_rewriter_is_the_default(env):
    assert Wiring.__dataclass_fields__["rewrite"].default is rewriter.rewrite


def test_a_gmail_message_through_the_real_rewriter(env):
    """The milter hands the rewriter the header fields as received (leading space, bytes) and
    Postfix's CRLF body, and replaces the body with what it answers."""
    path = os.path.join(os.path.dirname(__file__), "..", "unit", "fixtures", "tracking", "gmail_alternative.eml")
    raw = open(path, "rb").read().replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    head, body = raw.split(b"\r\n\r\n", 1)
    headers = []
    for line in head.split(b"\r\n"):
        if line[:1] in (b" ", b"\t"):
            headers[-1] = (headers[-1][0], headers[-1][1] + b"\r\n" + line)
        else:
            name, value = line.split(b":", 1)
            headers.append((name.decode(), value))
    ctx = env(rewrite=rewriter.rewrite)
    assert send(ctx, headers=headers, body=body, mail_from="<joerg@shop.example>") == ("eom", Milter.ACCEPT)
    [new] = ctx.bodies
    assert new != body and new[:120] == body[:120] and new.endswith(b"--000000000000a1b2c3d4e5f6--\r\n")
    message = email.message_from_bytes(head + b"\r\n\r\n" + new, policy=email.policy.default)
    html = message.get_body(("html",)).get_content()
    tokens = re.findall(re.escape(PUBLIC) + r"/c/([A-Za-z0-9_.-]+)", html)
    urls = [tracktokens.verify(env.keys, t, kind="c").url for t in tokens]
    assert "https://docs.example.com/report?id=42&utm_source=gmail" in urls
    assert 'href="mailto:help@example.com"' in html and re.search(re.escape(PUBLIC) + r"/o/", html)
    assert "https://docs.example.com/report?id=42" in message.get_body(("plain",)).get_content()
    assert queued(env)[0].get("reason") is None
