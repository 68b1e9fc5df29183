"""mxhook-milter: the pymilter adapter of the inbound decision (model/inbound.py) and the spool.

One `MxhookMilter` object per SMTP connection, made by `Wiring.factory()` with what it works
with (settings, rules snapshot, block list, spool writer, clock; Postfix's routes through the settings); per-message
state is reset at MAIL FROM. The callbacks fill the message's `Envelope`, ask the model at RCPT,
end of headers and end of message, and perform its answer: the SMTP reply, the spool writes
(the message and a bounce report's events in one append, group fdatasync, before ACCEPT), the
recipient changes (delrcpt, reject stand-ins, Postfix's discard transport) and the decision
log. Any failure → 451.

Outbound mail (authenticated client, trusted network, an `outbound_daemon_names` service, or a
local submission through sendmail(1) when non_smtpd_milters names mxhook) is not subject to
inbound rules: RCPT to an address on the block list is refused (event `blocked`), and at end of
message a `queued` event per recipient is spooled before ACCEPT. A local submission's recipients
cannot be refused (Postfix then defers the whole message as a configuration error): blocked
ones are deleted at end of message instead, and a message left without recipients is discarded.
Tracking (docs/tracking.md): what a message gets is decided at end of headers from its sending
domain's settings and its `X-Mxhook-Track` field; at end of message the body is rewritten
(model/tracking.py), List-Unsubscribe and X-Mxhook-Ref are added and X-Mxhook-Track removed.
Tracking never costs a message its delivery: whatever fails, it goes untouched (the queued
events' reason says why).
"""
from __future__ import annotations

import argparse
import dataclasses
import functools
import grp
import ipaddress
import logging
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import Callable

import Milter

from mxhook import config as configmod
from mxhook import spool
from mxhook.daemons import logsetup, systemd
from mxhook.mailauth import verify
from mxhook.mailauth.authenticate import AuthSettings, authenticator
from mxhook.model import inbound
from mxhook.model import tracking as rewriter
from mxhook.model import tracktokens
from mxhook.model.envelope import (
    AUTHENTICATED, DAEMON_NAME, INBOUND, LOCAL_CLIENT, LOCAL_SUBMISSION, TRUSTED_NETWORK, Envelope,
    header_values, milter_events, utc_now)
from mxhook.model.headers import address_domain, normalize_address, plain_address, to_text
from mxhook.model.records import DeniedRecord, iso
from mxhook.model.rules import RuleError
from mxhook.postfix import postconf
from mxhook.services import tracking as trackingsvc
from mxhook.services.keyfiles import KeyFile
from mxhook.store.rulesdb import BlocklistReader, Snapshot, SnapshotWatcher, refusal_reason

log = logging.getLogger(__name__)


@dataclass
class MilterSettings(configmod.FromConfig):
    """The [milter] keys the milter reads, checked at start-up, and what the callbacks derive
    from them once."""

    SECTION = "milter"
    spool_dir: str = configmod.from_section("paths")
    socket: str
    socket_group: str
    timeout: int
    unknown_domains: str
    trusted_networks: list
    outbound_daemon_names: frozenset[str]
    event_headers: tuple[str, ...]  # as the admin wrote them: the names events carry
    blocklist: bool
    heuristic_from_permitted_domain: bool
    heuristic_from_equals_to: bool
    missing_from: str
    discard_via: str
    max_rcpt_refusals: int
    postfix_config_dir: str
    postfix_check_interval: float
    max_message_size: int
    rules_reload_interval: float
    regex_timeout: float
    recipient_delimiter: str
    feedback_address: str = configmod.from_section("tracking")
    unsubscribe_address: str = configmod.from_section("tracking")

    def __post_init__(self):
        self.outbound_daemon_names = frozenset(self.outbound_daemon_names)
        self.event_headers = tuple(self.event_headers)
        self.routes = PostfixRoutes(self.postfix_config_dir, self.postfix_check_interval)
        self._trusted: dict[str, bool] = {}  # client address -> answer; clients come back

    def is_trusted(self, addr: str) -> bool:
        known = self._trusted.get(addr)
        if known is None:
            try:
                ip = ipaddress.ip_address(addr)
                known = any(ip in net for net in self.trusted_networks)
            except ValueError:
                known = False
            if len(self._trusted) >= 10000:
                self._trusted.clear()
            self._trusted[addr] = known
        return known

    def postfix_routes(self) -> bool:
        """May the milter hand mail to Postfix's discard and error transports (through the
        .invalid domains of postfix/postconf.py)? `auto`: only while Postfix is seen to have them."""
        if self.discard_via == "auto":
            return self.routes.ready()
        return self.discard_via == "transport"


@dataclass
class TrackingSettings(configmod.FromConfig):
    """The [tracking] keys the milter reads; `keys` reads the key file again when it changes."""

    SECTION = "tracking"
    public_url: str
    key_file: str
    max_message_size: int

    def __post_init__(self):
        self.public_url = self.public_url.rstrip("/")
        self.keys = KeyFile(self.key_file)


BODY_FEATURES = frozenset({"opens", "clicks", "text_links"})  # those that rewrite the body
TRACK_HEADER = trackingsvc.HEADER


@dataclass
class Tracked:
    """What end of message changes in an outbound message (nothing when all is empty)."""
    remove: int = 0  # X-Mxhook-Track fields to delete
    body: bytes | None = None
    add: list[tuple[str, str]] = field(default_factory=list)  # (name, value)
    reason: str = ""  # why tracking was not applied, for the queued events


POSTCONF = shutil.which("postconf") or "/usr/sbin/postconf"


class PostfixRoutes:
    """Does Postfix route mxhook's discard and reject addresses (transport_maps entries,
    discard and error services in master.cf)? Without them such mail would take the normal
    route: relayhost, or a bounce with the message to a possibly forged sender.

    Looked at on first use, then at most every `interval` seconds, and postconf runs only when
    main.cf or master.cf changed (mtime). One WARNING when they go missing."""

    def __init__(self, config_dir: str, interval: float, postconf: str = POSTCONF):
        self.config_dir = config_dir  # "" = Postfix's default
        self.interval = interval
        self.postconf = postconf
        self.problems: list[str] = ["not checked yet"]
        self._lock = threading.Lock()
        self._next = 0.0
        self._stamp: tuple | None = None

    def ready(self) -> bool:
        # One thread looks; the others meanwhile take the last answer.
        if time.monotonic() >= self._next and self._lock.acquire(blocking=False):
            try:
                self._refresh()
            finally:
                self._lock.release()
        return not self.problems

    def _stamp_now(self) -> tuple:
        directory = self.config_dir or "/etc/postfix"
        stamp = []
        for name in ("main.cf", "master.cf"):
            try:
                stamp.append(os.stat(os.path.join(directory, name)).st_mtime_ns)
            except OSError:
                stamp.append(None)
        return tuple(stamp)

    def _postconf(self, *args: str) -> str:
        argv = [self.postconf, *(["-c", self.config_dir] if self.config_dir else []), *args]
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=10)
        if proc.returncode != 0:
            raise OSError(" ".join((proc.stderr or "").split()) or f"exit status {proc.returncode}")
        return proc.stdout

    def _refresh(self) -> None:
        self._next = time.monotonic() + self.interval
        stamp = self._stamp_now()
        if stamp == self._stamp:
            return
        self._stamp = stamp
        try:
            problems = postconf.route_problems(self._postconf("-h", "transport_maps"),
                                                  postconf.parse_master(self._postconf("-F")))
        except (OSError, subprocess.SubprocessError) as exc:
            problems = [f"cannot read Postfix's configuration with postconf: {exc}"]
        if problems and problems != self.problems:
            log.warning("Postfix (%s) cannot take mxhook's webhook-only and refused mail: %s. "
                        "Until it can, webhook-only mail is dropped with a milter DISCARD and "
                        "recipients are split with 452 without limit (smtpd error limits apply). "
                        "Run `mxhook postfix-config --apply` and `postfix reload`, and keep the "
                        "discard and error services of Postfix's default master.cf",
                        self.config_dir or "/etc/postfix", "; ".join(problems))
        elif not problems and self.problems:
            log.info("Postfix routes mxhook's discard and reject addresses: using them")
        self.problems = problems


@dataclass
class Wiring:
    """What every connection's MxhookMilter works with, made once by main() (or a test)."""
    settings: MilterSettings
    snapshot: Callable[[], Snapshot]  # the current rules (SnapshotWatcher)
    blocklist: BlocklistReader
    segments: spool.SegmentWriter  # inbound records and events: shared segment, group fdatasync
    clock: Callable[[], datetime] = utc_now
    new_id: Callable[[], str] = spool.new_id
    auth: AuthSettings | None = None  # [authentication]; None: mode off
    tracking: TrackingSettings | None = None  # [tracking]; None: nothing tracked
    rewrite: Callable = rewriter.rewrite  # (headers, body, plan) -> Rewritten
    # this host's name where Postfix sends no `j` macro ($myhostname; it does by default)
    host_name: str = field(default_factory=socket.gethostname)
    policy: inbound.Policy = field(init=False)

    def __post_init__(self):
        settings = self.settings
        self.policy = inbound.Policy.from_section(
            lambda key: getattr(settings, key),
            internal=inbound.internal_routes(settings.feedback_address, settings.unsubscribe_address))

    def authenticator(self, envelope: Envelope) -> Callable[[bytes], inbound.Authentication | None] | None:
        """The verdicts of an inbound message of this envelope, checked at end of message
        (SPF too: only mail a rule may take pays for DNS); None with mode off."""
        if self.auth is None:
            return None
        return authenticator(self.auth, client_ip=envelope.client_addr, helo=envelope.helo,
                             mail_from=envelope.sender)

    def factory(self) -> Callable[[], MxhookMilter]:
        """pymilter's Milter.factory: one MxhookMilter per SMTP connection."""
        return functools.partial(MxhookMilter, self)


ANSWERS = {inbound.CONTINUE: Milter.CONTINUE, inbound.ACCEPT: Milter.ACCEPT,
           inbound.REJECT: Milter.REJECT, inbound.TEMPFAIL: Milter.TEMPFAIL,
           inbound.DISCARD: Milter.DISCARD}


def guarded(callback):
    """An exception in a callback logs a traceback and answers 451: never 250, never a crash."""

    @functools.wraps(callback)
    def wrapper(self, *args):
        try:
            if self.failed:  # an earlier callback that could not answer failed
                raise RuntimeError(f"earlier failure: {self.failed}")
            return callback(self, *args)
        except Exception:
            self.msglog.exception("internal error in %s; answering 451", callback.__name__)
            self.setreply(*inbound.INTERNAL_ERROR)
            return Milter.TEMPFAIL

    return wrapper


@Milter.header_leading_space
class MxhookMilter(Milter.Base):
    """The pymilter adapter of one SMTP connection: fills the Envelope from the callbacks, asks
    the model (model/inbound.py) at each stage, and performs its answer: the SMTP reply, the
    spool writes, the recipient changes, the decision log."""

    def __init__(self, wiring: Wiring):
        self.wiring = wiring
        self.settings = wiring.settings
        self.client = ("", "", "")  # client_addr, client_name, helo
        self.host_name = wiring.host_name  # this MX: Postfix's myhostname (macro j, at connect)
        self.local = False  # cleanup's pretended connection of a local submission (LOCAL_CLIENT)
        self._reset()

    def _reset(self) -> None:
        self.failed = ""  # set by a @noreply callback that failed; the next answer is 451
        addr, name, helo = self.client
        self.envelope = Envelope(client_addr=addr, client_name=name, helo=helo, host_name=self.host_name)
        self.inbound: inbound.Inbound | None = None  # inbound mail: the decision of this message
        self.outbound_rcpts: list[str] = []
        self.blocked_rcpts: list[tuple[str, str, str]] = []  # local submission: (rcpt, given, reason)
        self.raw_headers: list[tuple[str, bytes]] = []
        self.body_chunks: list[bytes] = []
        self.body_size = 0
        self.features: frozenset[str] = frozenset()  # outbound: the tracking this message gets
        self.collect = False  # outbound: keep the body (up to [tracking] max_message_size)

    @property
    def msglog(self) -> logsetup.MessageLog:
        """The log for lines about this message: they start with its Postfix queue id (from
        end of headers; before, the `i` macro once Postfix opened the queue file at a first
        accepted RCPT), else NOQUEUE, as Postfix's own lines do."""
        qid = self.envelope.queue_id
        if not qid:
            try:
                qid = self.getsymval("i") or ""
            except Exception:  # outside a callback (no context): not known
                qid = ""
        return logsetup.for_message(log, qid)

    # -- connection ---------------------------------------------------------------------------

    @Milter.noreply
    def connect(self, hostname, family, hostaddr):
        addr = hostaddr[0] if isinstance(hostaddr, tuple) and hostaddr else ""
        port = hostaddr[1] if isinstance(hostaddr, tuple) and len(hostaddr) > 1 else None
        self.client = (addr, hostname or "", "")
        self.local = (hostname, addr, port) == LOCAL_CLIENT
        self.host_name = self.getsymval("j") or self.host_name
        return Milter.CONTINUE

    @Milter.noreply
    def hello(self, heloname):
        self.client = (self.client[0], self.client[1], heloname or "")
        return Milter.CONTINUE

    # -- envelope -----------------------------------------------------------------------------

    def _direction(self) -> str:
        """Why this message is outbound, or "" when it is inbound."""
        self.envelope.auth_user = self.getsymval("{auth_authen}") or ""
        if self.envelope.auth_user:
            return AUTHENTICATED
        if self.local:
            return LOCAL_SUBMISSION
        if self.getsymval("{daemon_name}") in self.settings.outbound_daemon_names:
            return DAEMON_NAME
        if self.settings.is_trusted(self.envelope.client_addr):
            return TRUSTED_NETWORK
        return INBOUND

    @Milter.noreply
    def envfrom(self, mailfrom, *params):
        # No answer is needed here (Postfix need not wait: one round trip less per message). A
        # failure is remembered and answered with 451 by the next callback that does answer.
        self._reset()
        try:
            envelope = self.envelope
            envelope.sender = normalize_address(to_text(mailfrom))
            envelope.direction = self._direction()
            if envelope.direction == INBOUND:
                w = self.wiring
                self.inbound = inbound.Inbound(w.snapshot(), w.policy, envelope, routes=w.settings.postfix_routes(),
                                               clock=w.clock, new_id=w.new_id,
                                               authenticate=w.authenticator(envelope))
        except Exception as exc:
            self.msglog.exception("internal error in envfrom")
            self.failed = f"envfrom: {exc}"
        return Milter.CONTINUE

    @guarded
    def envrcpt(self, to, *params):
        text = to_text(to)
        if self.inbound is None:
            # Events name the recipient as the application wrote it (U-labels and all), as
            # Postfix's log does; comparisons normalize both sides (block list, state.db).
            return self._outbound_rcpt(plain_address(text), text.strip())
        rcpt = self.envelope.recipient(text)
        answer = self.inbound.rcpt(rcpt)
        if answer.note:
            self.msglog.debug("<%s>: %s", rcpt.address, answer.note)
        if answer.action == inbound.CONTINUE:  # most recipients: nothing to perform
            return Milter.CONTINUE
        return self._perform(answer)

    # -- content ------------------------------------------------------------------------------

    @Milter.noreply
    @Milter.decode("bytes")
    def header(self, name, value):
        # Kept as bytes exactly as received (leading space included: header_leading_space), so
        # the spooled message is the one the sender sent and 8-bit headers cannot crash us.
        self.raw_headers.append((name, value))
        return Milter.CONTINUE

    @guarded
    def eoh(self):
        self.envelope.queue_id = self.getsymval("i") or ""
        if self.inbound is None:
            self._outbound_eoh()
            return Milter.CONTINUE  # the queued events are written at end of message
        answer = self.inbound.end_of_headers(self.raw_headers)
        for pattern in answer.timed_out:  # once per message, however many recipients met it
            self.msglog.warning("regex %r timed out, counted as no match", pattern)
        if answer.error:
            self.msglog.error("%s; answering 451", answer.error)
        for entry in answer.log:
            self._log_decision(entry)
        return self._perform(answer)

    @Milter.noreply
    def body(self, chunk):
        if self.inbound is None and not self.collect:
            return Milter.CONTINUE  # events need no body
        self.body_size += len(chunk)
        limit = (self.wiring.policy.max_message_size if self.inbound is not None
                 else self.wiring.tracking.max_message_size)
        if self.body_size <= limit:
            self.body_chunks.append(chunk)
        return Milter.CONTINUE

    @guarded
    def eom(self):
        if self.inbound is None:
            return self._outbound_eom()
        self.envelope.queue_id = self.getsymval("i") or self.envelope.queue_id
        answer = self.inbound.end_of_message(self.body_chunks, self.body_size)
        for pattern in answer.timed_out:  # rules that waited for the authentication verdicts
            self.msglog.warning("regex %r timed out, counted as no match", pattern)
        if answer.error:
            self.msglog.error("%s; answering 451", answer.error)
        for event in answer.events:  # a bounce report's: this MX recorded them
            event.host_name = self.envelope.host_name or None
        records = [spool.event_record(e) for e in answer.events]
        if answer.message is not None:
            m = answer.message
            records.append(spool.Record(m.id, "inbound", m.record.to_meta(), m.raw))
        if records:
            try:
                # A report's events and the message go in one append: on failure neither is
                # kept, so nothing of an attempt answered 451 is posted.
                self.wiring.segments.append_many(records)  # on disk when this returns
            except OSError as exc:
                return self._tempfail("cannot spool message", exc, "store the message")
        for entry in answer.log:
            self._log_decision(entry)
        for given in answer.delete:
            self.delrcpt(given)
        for rcpt in answer.bounce:
            self.addrcpt(f"<{postconf.reject_address(rcpt)}>", postconf.orcpt(rcpt))
        if answer.add_discard:
            self.addrcpt(f"<{postconf.DISCARD_RECIPIENT}>")
        return self._perform(answer)

    def abort(self):
        self._reset()
        return Milter.CONTINUE

    def close(self):
        return Milter.CONTINUE

    # -- outbound -----------------------------------------------------------------------------

    def _events(self, event_type: str, recipients: list[str], **fields) -> list:
        # [milter] event_headers (named as configured) and the custom headers enabled
        # endpoints select (rules.db): each endpoint's body shows its own (payloads/registry.py)
        names = self.settings.event_headers + self.wiring.snapshot().event_headers
        return milter_events(self.envelope, self.raw_headers, event_type, recipients,
                             event_headers=names, received=iso(self.wiring.clock()),
                             new_id=self.wiring.new_id, **fields)

    def _outbound_rcpt(self, rcpt: str, given: str):
        domain = address_domain(self.envelope.sender)
        found = self.wiring.blocklist.find(rcpt, domain) if self.settings.blocklist else None
        if found:
            reason = refusal_reason(found[0], domain)
            if self.envelope.direction == LOCAL_SUBMISSION:  # refused at end of message
                self.blocked_rcpts.append((rcpt, given if given.startswith("<") else f"<{given}>", reason))
                return Milter.CONTINUE
            try:
                self.wiring.segments.append(spool.event_record(self._events("blocked", [rcpt], reason=reason)[0]))
            except OSError as exc:  # the event must not be lost: let the client retry
                return self._tempfail(f"cannot spool blocked event for <{rcpt}>", exc, "record this")
            self._log_decision(inbound.Logged("blocked", [rcpt], "blocklist", reason))
            self.setreply("550", "5.1.1", f"<{rcpt}>: recipient {reason}; not sent")
            return Milter.REJECT
        self.outbound_rcpts.append(rcpt)
        return Milter.CONTINUE

    def _outbound_eoh(self) -> None:
        """The tracking this message gets: its sending domain's settings, or what its
        X-Mxhook-Track field asks for; none for the null sender or without [tracking] public_url."""
        t = self.wiring.tracking
        sender = self.envelope.sender
        if t is None or not t.public_url or "@" not in sender:
            return
        try:
            asked = header_values(self.raw_headers, TRACK_HEADER.lower())
            settings = self.wiring.snapshot().tracking.get(sender.rpartition("@")[2])
            self.features = trackingsvc.features(settings, to_text(asked[0]) if asked else None)
        except Exception:  # never a reason to refuse mail
            self.msglog.exception("cannot tell what tracking this message gets; not tracked")
            self.features = frozenset()
        self.collect = bool(self.features & BODY_FEATURES)

    def _outbound_eom(self):
        self.envelope.queue_id = self.getsymval("i") or self.envelope.queue_id
        tracked = self._tracked()
        fields = {"reason": tracked.reason} if tracked.reason else {}
        records = [spool.event_record(e) for e in self._events("queued", self.outbound_rcpts, **fields)]
        records += [spool.event_record(e) for rcpt, _given, reason in self.blocked_rcpts
                    for e in self._events("blocked", [rcpt], reason=reason)]
        try:
            # The log follower's outcomes for these recipients come later, in files named
            # after this segment: the spooler takes them only once it is sealed (ingest_bound).
            self.wiring.segments.append_many(records)
        except OSError as exc:
            return self._tempfail("cannot spool queued events", exc, "record the message")
        for rcpt, given, reason in self.blocked_rcpts:
            self.delrcpt(given)
            self._log_decision(inbound.Logged("blocked", [rcpt], "blocklist", reason))
        if self.blocked_rcpts and not self.outbound_rcpts:
            return Milter.DISCARD  # no recipient left: Postfix would keep an empty queue file
        self._change(tracked)
        self._log_decision(inbound.Logged("queued", self.outbound_rcpts, self.envelope.direction,
                                          tracked.reason or "outbound"))
        return Milter.ACCEPT

    # -- tracking -----------------------------------------------------------------------------

    def _tracked(self) -> Tracked:
        """What end of message changes; an error leaves the message as it came (but for the
        X-Mxhook-Track fields, which never leave) with the reason."""
        tracked = Tracked(remove=len(header_values(self.raw_headers, TRACK_HEADER.lower())))
        t = self.wiring.tracking
        if t is None or not (self.features or self.settings.feedback_address) or "@" not in self.envelope.sender:
            return tracked
        try:
            self._track(t, tracked)
        except Exception as exc:
            self.msglog.exception("tracking failed; the message goes untouched")
            tracked = Tracked(remove=tracked.remove, reason=f"tracking not applied: internal error ({exc})")
        return tracked

    def _track(self, t: TrackingSettings, tracked: Tracked) -> None:
        try:
            keys = t.keys.keys()
        except (OSError, ValueError) as exc:
            keys, why = (), f"[tracking] key_file {t.key_file} cannot be read: {exc}"
        else:
            why = f"[tracking] key_file {t.key_file} holds no key (mxhook tracking rotate-key)"
        if not keys:
            if self.features:
                self.msglog.error("tracking not applied: %s", why)
                tracked.reason = f"tracking not applied: {why}"
            return
        env = self.envelope
        recipient = self.outbound_rcpts[0] if len(self.outbound_rcpts) == 1 else ""
        sent = int(self.wiring.clock().timestamp())
        domain = env.sender.rpartition("@")[2]

        def token(kind: str, link: int | None = None, url: str | None = None) -> str:
            return tracktokens.make_token(keys, tracktokens.Track(
                kind, env.queue_id, recipient, domain, sent, link, url))

        features = self.features
        rewritten = False
        if features & BODY_FEATURES:
            if self.body_size > t.max_message_size:
                tracked.reason = (f"tracking not applied: the message is larger than [tracking] "
                                  f"max_message_size ({t.max_message_size} bytes)")
            else:
                plan = rewriter.Plan(
                    opens="opens" in features, clicks="clicks" in features,
                    text_links="text_links" in features, honeypot="honeypot" in features,
                    base_url=t.public_url, token=token, max_size=t.max_message_size)
                answer = self.wiring.rewrite(self.raw_headers, b"".join(self.body_chunks), plan)
                if answer.body is None:
                    tracked.reason = f"tracking not applied: {answer.reason}"
                else:
                    tracked.body, rewritten = answer.body, True
        if "unsubscribe" in features and not header_values(self.raw_headers, "list-unsubscribe"):
            unsubscribe = token(tracktokens.UNSUBSCRIBE)
            value = f"<{t.public_url}/u/{unsubscribe}>"
            if self.settings.unsubscribe_address:
                value += f", <mailto:{self.settings.unsubscribe_address}?subject=unsubscribe%20{unsubscribe}>"
            tracked.add += [("List-Unsubscribe", value),
                            ("List-Unsubscribe-Post", "List-Unsubscribe=One-Click")]
        if rewritten or "unsubscribe" in features or self.settings.feedback_address:
            tracked.add.append(("X-Mxhook-Ref", token(tracktokens.REFERENCE)))

    def _change(self, tracked: Tracked) -> None:
        """Perform the changes; a failure is logged and the message goes on (Postfix keeps
        what it got: a failed libmilter call means the connection is gone anyway)."""
        try:
            for index in range(tracked.remove, 0, -1):  # from the last: indexes stay valid
                self.chgheader(TRACK_HEADER, index, None)
            if tracked.body is not None:
                self.replacebody(tracked.body)
            for name, value in tracked.add:
                self.addheader(name, " " + value)  # header_leading_space: ours to give
        except Exception:
            self.msglog.exception("cannot change the message for tracking")

    # -- performing the model's answers -------------------------------------------------------

    def _perform(self, answer: inbound.Answer) -> int:
        """Refusals logged (and their `denied` records written), the reply set, the answer."""
        for denial in answer.denials:
            self._log_decision(denial.logged())
            if denial.record is not None:
                self._spool_denied(denial.record)
        if answer.reply is not None:
            self.setreply(*answer.reply)
        return ANSWERS[answer.action]

    def _tempfail(self, what: str, exc: OSError, cannot: str) -> int:
        self.msglog.error("%s (%s); answering 451", what, exc)
        self.setreply(*inbound.SMTP_TEMPFAIL, f"mxhook: cannot {cannot} right now, try again later")
        return Milter.TEMPFAIL

    def _spool_denied(self, record: DeniedRecord) -> None:
        try:
            spool.write(self.settings.spool_dir, spool.Record(self.wiring.new_id(), "denied", record.to_meta()),
                        durable=False)
        except OSError as exc:  # a lost denial costs a log line, never the SMTP answer
            self.msglog.warning("could not log denial: %s", exc)

    def _log_decision(self, entry: inbound.Logged) -> None:
        env = self.envelope
        self.msglog.info("outcome=%s from=<%s> rcpt=%s by=%s client=%s[%s] reason=%s",
                 entry.outcome, env.sender,
                 ",".join(f"<{r}>" for r in entry.recipients), entry.by or "-",
                 env.client_name or "-", env.client_addr or "-", entry.reason)


# -- daemon -----------------------------------------------------------------------------------

def socket_path(spec: str) -> str | None:
    """The filesystem path of a `unix:`/`local:` milter socket spec, else None."""
    for prefix in ("unix:", "local:"):
        if spec.startswith(prefix):
            return spec[len(prefix):]
    if spec.startswith("/"):
        return spec
    return None


def prepare_socket_dir(path: str, group: str) -> None:
    """Make the socket's directory so that the socket libmilter creates in it is born with the
    right group: setgid directory of `group` (no window in which smtpd gets EACCES). The mode
    0660 comes from the umask main() sets."""
    directory = os.path.dirname(path) or "."
    os.makedirs(directory, exist_ok=True)
    if group:
        os.chown(directory, -1, grp.getgrnam(group).gr_gid)
        os.chmod(directory, 0o2750)


# libmilter takes SIGHUP as a stop (as SIGTERM): `systemctl reload` sends this one.
RELOAD_SIGNAL = signal.SIGUSR1

# The keys a reload applies (docs/install.md, "Reload"): each new connection takes a Wiring
# with the settings read again. The others (the socket, the rules watcher's, [authentication],
# [tracking] but its two addresses) are read only at start.
HOT_KEYS = frozenset({("milter", k) for k in (
    "unknown_domains", "trusted_networks", "outbound_daemon_names", "event_headers", "blocklist",
    "heuristic_from_permitted_domain", "heuristic_from_equals_to", "missing_from", "discard_via",
    "max_rcpt_refusals", "postfix_config_dir", "postfix_check_interval", "max_message_size")}
    | {("tracking", "feedback_address"), ("tracking", "unsubscribe_address")})


def main(argv: list[str] | None = None) -> int:
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, set())
    try:
        with systemd.SignalThread(RELOAD_SIGNAL) as reload:
            return _run(argv, reload)
    finally:
        # Called in-process (tests, a wrapper), the caller's threads and children get their
        # signals back.
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)


def reloader(wiring: Wiring) -> Callable[[configmod.Config], None]:
    """A Reload's `apply`: new connections get a Wiring with the settings of the Config given
    (sharing the rules, block list, spool writer, authentication and tracking); a connection
    under way keeps the one it started with."""
    current = [wiring]

    def apply(cfg: configmod.Config) -> None:
        current[0] = dataclasses.replace(current[0], settings=MilterSettings.from_config(cfg))
        Milter.factory = current[0].factory()

    return apply


def serve(socket_spec: str, timeout: int, on_listening: Callable[[], None]) -> None:
    """Milter.runmilter, calling `on_listening` once the socket exists: runmilter opens it
    (libmilter's smfi_opensocket) before it enters libmilter's loop, whose backlog holds
    Postfix's first connections until then."""
    opensocket = Milter.milter.opensocket

    def opened(*args):
        answer = opensocket(*args)
        on_listening()
        return answer

    Milter.milter.opensocket = opened
    try:
        Milter.runmilter("mxhook", socket_spec, timeout)
    finally:
        Milter.milter.opensocket = opensocket


def listening(socket_spec: str, group: str) -> str:
    """The STATUS= line once the socket exists; a unix socket's mode and group are checked
    (Postfix gets EACCES without them)."""
    path = socket_path(socket_spec)
    if path:
        try:
            st = os.stat(path)
        except OSError as exc:
            log.warning("the milter socket %s cannot be looked at: %s", path, exc)
        else:
            gid = grp.getgrnam(group).gr_gid if group else st.st_gid
            if st.st_mode & 0o777 != 0o660 or st.st_gid != gid:
                log.warning("the milter socket %s is mode %o, group %d, not 0660 and group %s: "
                            "Postfix may not connect", path, st.st_mode & 0o777, st.st_gid,
                            group or st.st_gid)
    return f"listening on {socket_spec}"


def _run(argv: list[str] | None, reload: systemd.SignalThread) -> int:
    parser = argparse.ArgumentParser(prog="mxhook-milter", description=__doc__.splitlines()[0])
    parser.add_argument("--config", help=f"config file (default: $MXHOOK_CONFIG or {configmod.DEFAULT_PATH})")
    args = parser.parse_args(argv)
    # libmilter stops cleanly on SIGTERM/SIGINT/SIGHUP by sigwait()ing in its own thread; any
    # thread we start must have them blocked too, or the default action kills the process.
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT, signal.SIGHUP})
    try:
        cfg = configmod.load(args.config)
        settings = MilterSettings.from_config(cfg)
        logsetup.setup("mxhook-milter", cfg.get("milter", "log"), cfg.get("milter", "log_level"))
        socket_spec = settings.socket
        timeout = settings.timeout
        socket_group = settings.socket_group
        auth = AuthSettings.from_config(cfg)
        tracking = TrackingSettings.from_config(cfg)
        watcher = SnapshotWatcher(cfg.rules_db, interval=settings.rules_reload_interval,
                                  regex_timeout=settings.regex_timeout,
                                  recipient_delimiter=settings.recipient_delimiter)
    except (configmod.ConfigError, RuleError) as exc:
        print(f"mxhook-milter: {exc}", file=sys.stderr)
        return 2
    except sqlite3.Error as exc:  # e.g. rules.db not readable by this user
        print(f"mxhook-milter: cannot read rules database {cfg.rules_db}: {exc}", file=sys.stderr)
        return 1
    spool.ensure_dirs(settings.spool_dir)
    spool.recover_segments(settings.spool_dir)  # a previous run's, if it died
    if auth.mode == "verify":  # read once here, not in the first SMTP session
        verify.organizational_domain("mxhook.invalid")
        auth.resolver  # noqa: B018 (made once: it reads resolv.conf)
    wiring = Wiring(settings, snapshot=lambda: watcher.current, blocklist=BlocklistReader(cfg.rules_db),
                    segments=spool.SegmentWriter(settings.spool_dir), auth=auth, tracking=tracking)
    Milter.factory = wiring.factory()
    # CHGBODY, ADDHDRS, CHGHDRS: tracking (replacebody, List-Unsubscribe, X-Mxhook-Track removed)
    Milter.set_flags(Milter.DELRCPT | Milter.ADDRCPT | Milter.ADDRCPT_PAR | Milter.CHGBODY
                     | Milter.ADDHDRS | Milter.CHGHDRS)

    path = socket_path(socket_spec)
    if path:
        try:
            prepare_socket_dir(path, socket_group)
        except (OSError, KeyError) as exc:
            print(f"mxhook-milter: cannot prepare socket directory for {path}: {exc}", file=sys.stderr)
            return 1
        os.umask(0o117)  # the socket is born 0660; spool files keep their explicit 0640
    log.info("listening on %s: %d rules, %d domains, unknown_domains=%s, spool %s, Postfix "
             "routes for discard/reject: %s, authentication: %s%s, tracking: %s", socket_spec,
             len(watcher.current.ruleset), len(watcher.current.domains), settings.unknown_domains,
             settings.spool_dir, "yes" if settings.postfix_routes() else "no", auth.mode,
             ", dmarc_reject" if auth.mode != "off" and auth.dmarc_reject else "",
             f"{len(watcher.current.tracking)} sending domains, links to {tracking.public_url}"
             if tracking.public_url else "off")
    if tracking.public_url:
        try:
            missing = "" if tracking.keys.keys() else "holds no key"
        except (OSError, ValueError) as exc:
            missing = f"cannot be read ({exc})"
        if missing:
            log.warning("[tracking] key_file %s %s: nothing is tracked until `mxhook tracking "
                        "rotate-key` makes one", tracking.key_file, missing)
    reload.action = systemd.Reload(
        "mxhook-milter", "milter", cfg, (MilterSettings, AuthSettings, TrackingSettings), HOT_KEYS,
        reloader(wiring), path=args.config, also_reads=(("paths", "rules_db"),))
    try:
        serve(socket_spec, timeout, lambda: systemd.ready(listening(socket_spec, socket_group)))
    finally:
        systemd.stopping()
        wiring.segments.close()
        watcher.stop()
    log.info("stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
