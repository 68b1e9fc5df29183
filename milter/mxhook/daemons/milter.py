"""mxhook-milter: the pymilter shell around the pure decision (decision.py) and the spool.

One `MxhookMilter` object per SMTP connection; per-message state is reset at MAIL FROM.

  RCPT     recipient domain not permitted → `unknown_domains` (reject: 550 5.7.1, logged denied;
           pass: the recipient is left alone), decided by decision.RcptStage. Permitted: no rule can match its envelope →
           550 5.7.1; an outcome that may differ from the recipients already accepted in this
           transaction (decision.outcome_class) → 452 4.5.3, the client sends it again alone;
           past `max_rcpt_refusals` refusals in the transaction → 250 (smtpd's error limits).
  EOH      heuristics, then the header conditions of each recipient's candidate rules
           (decision.decide). Nothing matched → 550 5.7.1 (the whole transaction shares it).
           Some refused while others are accepted (only past the cap) → Postfix bounces them.
           The body is read only when a recipient matched.
  EOM      raw message + envelope → spool (segment, group fdatasync), then ACCEPT; recipients
           of `--discard` rules and consumed bounce reports are removed (delrcpt), and a
           message left without recipients goes to Postfix's discard(8) transport; a refused
           recipient is replaced by its reject.mxhook.invalid stand-in (error(8) bounces it).
           Any failure → 451.

Outbound mail (authenticated client, trusted network, or an `outbound_daemon_names` service)
is not subject to inbound rules: RCPT to an address on the block list is refused (event
`blocked`), and at end of message a `queued` event per recipient is spooled before ACCEPT.
"""
from __future__ import annotations

import argparse
import functools
import grp
import ipaddress
import logging
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone

import Milter

from mxhook import config as configmod
from mxhook.model import bounces
from mxhook.model import events
from mxhook.model import heuristics
from mxhook.daemons import logsetup
from mxhook.postfix import postconf
from mxhook import spool
from mxhook.model import decision as decisionmod
from mxhook.store.rulesdb import BlocklistReader, Snapshot, SnapshotWatcher
from mxhook.model.decision import Decision, RcptStage, decide
from mxhook.model.rules import RuleError
from mxhook.model.headers import (
    address_domain,
    decode_value,
    first_address,
    normalize_address,
    plain_address,
    to_text,
)

log = logging.getLogger(__name__)

SMTP_DENY = ("550", "5.7.1")
SMTP_TEMPFAIL = ("451", "4.3.0")
SMTP_SPLIT = ("452", "4.5.3")  # "too many recipients": the client retries it in a new transaction


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
    event_headers: tuple[str, ...]  # lower case
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

    def __post_init__(self):
        self.outbound_daemon_names = frozenset(self.outbound_daemon_names)
        self.event_headers = tuple(h.lower() for h in self.event_headers)
        self.heuristics = tuple(h for h, on in (
            (heuristics.FROM_PERMITTED_DOMAIN, self.heuristic_from_permitted_domain),
            (heuristics.FROM_EQUALS_TO, self.heuristic_from_equals_to),
        ) if on)
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
        .invalid domains of postfixconf)? `auto`: only while Postfix is seen to have them."""
        if self.discard_via == "auto":
            return self.routes.ready()
        return self.discard_via == "transport"


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


def utc_now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def guarded(callback):
    """An exception in a callback logs a traceback and answers 451: never 250, never a crash."""

    @functools.wraps(callback)
    def wrapper(self, *args):
        try:
            if self.failed:  # an earlier callback that could not answer failed
                raise RuntimeError(f"earlier failure: {self.failed}")
            return callback(self, *args)
        except Exception:
            log.exception("internal error in %s (queue id %s); answering 451", callback.__name__,
                          self.queue_id or "-")
            self.setreply(*SMTP_TEMPFAIL, "mxhook: temporary internal error, try again later")
            return Milter.TEMPFAIL

    return wrapper


@Milter.header_leading_space
class MxhookMilter(Milter.Base):
    # Set by main() (or a test) before the first connection.
    settings: MilterSettings
    watcher: SnapshotWatcher
    blocklist: BlocklistReader
    segments: spool.SegmentWriter  # inbound records and events: shared segment, group fdatasync

    def __init__(self):
        self.client_addr = ""
        self.client_name = ""
        self.helo = ""
        self._reset()

    def _reset(self) -> None:
        self.failed = ""  # set by a @noreply callback that failed; the next answer is 451
        self.snapshot: Snapshot | None = None
        self.outbound = ""  # why this message is outbound ("" = inbound)
        self.auth_user = ""
        self.outbound_rcpts: list[str] = []
        self.mail_from = ""
        self.queue_id = ""
        self.managed: list[str] = []  # recipients in permitted domains, for the rules
        self.passed: list[str] = []  # recipients left alone (unknown_domains = pass)
        self.held: list[str] = []  # null-sender recipients no rule takes: a bounce report's?
        self.held_why: dict[str, tuple[str, str]] = {}  # held recipient -> (filter, reason) if not
        self.candidates: dict[str, tuple] = {}  # managed recipient -> rules its envelope allows
        self.overflow: set[str] = set()  # accepted past the cap on refusals, of another class
        self.routes = False  # Postfix's discard and error transports may be used (envfrom)
        self.bounced: list[str] = []  # refused at end of headers, others accepted: Postfix bounces
        self.rcpt_stage: RcptStage | None = None  # inbound: the RCPT answers (decision.py)
        self.rcpt_as_given: dict[str, list[str]] = {}  # normalized -> as Postfix has it (delrcpt)
        self.dsn = False  # the message is a bounce report (multipart/report delivery-status)
        self.raw_headers: list[tuple[str, bytes]] = []
        self.header_block: list[bytes] = []
        self.body_chunks: list[bytes] = []
        self.body_size = 0
        self.decision: Decision | None = None

    # -- connection ---------------------------------------------------------------------------

    @Milter.noreply
    def connect(self, hostname, family, hostaddr):
        self.client_name = hostname or ""
        self.client_addr = hostaddr[0] if isinstance(hostaddr, tuple) and hostaddr else ""
        return Milter.CONTINUE

    @Milter.noreply
    def hello(self, heloname):
        self.helo = heloname or ""
        return Milter.CONTINUE

    # -- envelope -----------------------------------------------------------------------------

    def _direction(self) -> str:
        """Why this message is outbound, or "" when it is inbound."""
        self.auth_user = self.getsymval("{auth_authen}") or ""
        if self.auth_user:
            return "authenticated"
        if self.getsymval("{daemon_name}") in self.settings.outbound_daemon_names:
            return "daemon_name"
        if self.settings.is_trusted(self.client_addr):
            return "trusted_network"
        return ""

    @Milter.noreply
    def envfrom(self, mailfrom, *params):
        # No answer is needed here (Postfix need not wait: one round trip less per message). A
        # failure is remembered and answered with 451 by the next callback that does answer.
        self._reset()
        try:
            self.mail_from = normalize_address(to_text(mailfrom))
            self.outbound = self._direction()
            if not self.outbound:
                self.snapshot = self.watcher.current
                # Without Postfix's error transport a recipient refused after 250 would have
                # no way back to the sender: split without a cap then.
                self.routes = self.settings.postfix_routes()
                self.rcpt_stage = RcptStage(
                    self.snapshot.ruleset, self.snapshot.domains, null_sender=self.mail_from == "",
                    unknown_domains=self.settings.unknown_domains,
                    enabled_heuristics=self.settings.heuristics,
                    max_refusals=self.settings.max_rcpt_refusals if self.routes else None)
        except Exception as exc:
            log.exception("internal error in envfrom")
            self.failed = f"envfrom: {exc}"
        return Milter.CONTINUE

    @guarded
    def envrcpt(self, to, *params):
        given = to_text(to).strip()
        rcpt = normalize_address(given)
        # Postfix removes a recipient only when delrcpt names it exactly, case included.
        self.rcpt_as_given.setdefault(rcpt, []).append(given if given.startswith("<") else f"<{given}>")
        if self.outbound:
            # Events name the recipient as the application wrote it (U-labels and all), as
            # Postfix's log does; comparisons normalize both sides (block list, state.db).
            return self._outbound_rcpt(plain_address(given))
        outcome = self.rcpt_stage.recipient(rcpt)
        if outcome.kind == decisionmod.SPLIT:
            return self._split(rcpt)
        if outcome.overflow:
            log.debug("<%s>: accepted past %d refusals although its outcome may differ",
                      rcpt, self.settings.max_rcpt_refusals)
            self.overflow.add(rcpt)
        if outcome.kind == decisionmod.MANAGED:
            self.candidates[rcpt] = outcome.candidates
            self.managed.append(rcpt)
        elif outcome.kind == decisionmod.PASS:
            self.passed.append(rcpt)
        elif outcome.kind == decisionmod.HOLD:
            self.held.append(rcpt)
            self.held_why[rcpt] = (outcome.filter, outcome.reason)
        else:
            self._log_decision("denied", [rcpt], outcome.filter, outcome.reason)
            self._spool_denied([rcpt], outcome.filter, outcome.reason)
            self.setreply(*SMTP_DENY, f"<{rcpt}>: {outcome.reason}")
            return Milter.REJECT
        return Milter.CONTINUE

    def _split(self, rcpt: str):
        log.debug("<%s>: outcome may differ from the transaction's recipients; 452 4.5.3", rcpt)
        self.setreply(*SMTP_SPLIT, f"<{rcpt}>: send this recipient again in a separate "
                      "transaction (its outcome may differ from the recipients already accepted)")
        return Milter.TEMPFAIL

    # -- content ------------------------------------------------------------------------------

    @Milter.noreply
    @Milter.decode("bytes")
    def header(self, name, value):
        # Kept as bytes exactly as received (leading space included: header_leading_space), so
        # the spooled message is the one the sender sent and 8-bit headers cannot crash us.
        self.raw_headers.append((name, value))
        folded = value.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")  # Postfix folds with LF
        self.header_block.append(name.encode("ascii", "surrogateescape") + b":" + folded + b"\r\n")
        return Milter.CONTINUE

    @guarded
    def eoh(self):
        self.queue_id = self.getsymval("i") or ""
        if self.outbound:
            return Milter.CONTINUE  # the queued events are written at end of message
        content_types = self._header("content-type")
        self.dsn = self.mail_from == "" and bool(content_types) and bounces.is_dsn_content_type(
            decode_value(content_types[0]))
        # One outcome class per transaction (envrcpt): held, passed or managed recipients,
        # unless recipients were accepted past the cap on refusals (self.overflow).
        refused: list[tuple[str, str, list[str]]] = []  # (filter, reason, recipients)
        if self.held and not self.dsn:  # a bounce report's are consumed as events at eom
            by_filter: dict[str, list[str]] = {}
            for rcpt in self.held:
                by_filter.setdefault(self.held_why[rcpt][0], []).append(rcpt)
            refused += [(f, self.held_why[rs[0]][1], rs) for f, rs in by_filter.items()]
        if not self.managed:
            if refused:
                return self._refuse(refused, kept=bool(self.passed))
            # Only pass-through recipients: not ours, unless it is a bounce report.
            return Milter.CONTINUE if self.dsn else Milter.ACCEPT
        decision = decide(
            self.snapshot.ruleset, self.snapshot.domains, self.managed, self.raw_headers,
            enabled_heuristics=self.settings.heuristics, missing_from=self.settings.missing_from,
            candidates=self.candidates,
        )
        timed_out = {c.condition.pattern: None for m in decision.matches for c in m.timeouts}
        for pattern in timed_out:  # once per message, however many recipients met it
            log.warning("queue id %s: regex %r timed out, counted as no match", self.queue_id or "-", pattern)
        if decision.verdict is not None:  # the message is refused, whoever it is for
            filt = "heuristic:" + decision.verdict.heuristic
            return self._deny(self.managed, filt, decision.verdict.reason)
        if not self.dsn and decision.denied:
            accepted = [r for r, _ in decision.accepted]
            if (any(r not in self.overflow for r in accepted)
                    and any(r not in self.overflow for r in decision.denied)):
                # recipients of one outcome class share their outcome
                log.error("queue id %s: recipients of one class decided apart (%s accepted, %s "
                          "not); answering 451", self.queue_id or "-",
                          ",".join(accepted), ",".join(decision.denied))
                self.setreply(*SMTP_TEMPFAIL, "mxhook: temporary internal error, try again later")
                return Milter.TEMPFAIL
            refused.insert(0, ("no_rule", "no inbound rule matches "
                               + ", ".join(f"<{r}>" for r in decision.denied), decision.denied))
        # Accepted, or a bounce report (its recipients without a rule are consumed at eom).
        self.decision = decision
        if refused:
            return self._refuse(refused, kept=bool(self.passed or decision.accepted))
        return Milter.CONTINUE

    def _refuse(self, refused: list[tuple[str, str, list[str]]], kept: bool):
        """Refused recipients: with nobody else accepted, the whole message (550); else
        Postfix bounces each to the sender at end of message (error(8) transport)."""
        if not kept:
            for filt, reason, rcpts in refused:
                self._log_decision("denied", rcpts, filt, reason)
                self._spool_denied(rcpts, filt, reason)
            self.setreply(*SMTP_DENY, f"mxhook: {refused[0][1]}")
            return Milter.REJECT
        for filt, reason, rcpts in refused:
            self._log_decision("denied", rcpts, filt, reason + "; Postfix bounces it to the sender")
            self._spool_denied(rcpts, filt, reason)
            self.bounced += rcpts
        return Milter.CONTINUE

    @Milter.noreply
    def body(self, chunk):
        if self.outbound:
            return Milter.CONTINUE  # events need no body
        self.body_size += len(chunk)
        if self.body_size <= self.settings.max_message_size:
            self.body_chunks.append(chunk)
        return Milter.CONTINUE

    @guarded
    def eom(self):
        if self.outbound:
            return self._outbound_eom()
        decision = self.decision
        if decision is None and not (self.dsn or self.bounced):  # eoh already answered
            return Milter.CONTINUE
        self.queue_id = self.getsymval("i") or self.queue_id
        # Always an empty line after the fields: with none, Postfix itself put an empty line
        # first, and any parser must read "no header section" as the decision did.
        separator = b"\r\n"
        size = sum(map(len, self.header_block)) + len(separator) + self.body_size
        if size > self.settings.max_message_size:
            self.setreply("552", "5.3.4", f"message size {size} exceeds the limit of "
                          f"{self.settings.max_message_size} bytes for webhook delivery")
            self._log_decision("denied", self.managed + self.held, "size", "message too large")
            return Milter.REJECT
        raw = b"".join(self.header_block) + separator + b"".join(self.body_chunks)
        try:
            # A report's events and the message go in one append: on failure neither is
            # kept, so nothing of an attempt answered 451 is posted.
            reported = self._dsn_events(raw) if self.dsn else []
            records = [spool.event_record(e) for e in reported]
            groups = decision.grouped() if decision else []
            record = None
            if groups:
                meta = self._envelope_meta()
                meta["deliveries"] = [
                    {"recipients": rcpts, "rule": rule.target.to_record(discard=rule.discard)} for rule, rcpts in groups
                ]
                record = spool.Record(spool.new_id(), "inbound", meta, raw)
                records.append(record)
            self.segments.append_many(records)  # on disk when this returns
        except OSError as exc:
            log.error("queue id %s: cannot spool message (%s); answering 451", self.queue_id, exc)
            self.setreply(*SMTP_TEMPFAIL, "mxhook: cannot store the message right now, try again later")
            return Milter.TEMPFAIL
        if self.dsn:
            self._log_decision("bounce-report", self.managed + self.held + self.passed, "dsn",
                               f"{len(reported)} event(s), to be checked against the mail we sent, for "
                               + ",".join(sorted({e.recipient or "?" for e in reported})))
        if record is not None:
            names = ",".join(rule.name for rule, _ in groups)
            self._log_decision("accepted", [r for _, rs in groups for r in rs], names,
                               f"spooled as {record.id}")
        return self._finish(decision, groups)

    def _dsn_events(self, raw: bytes) -> list[events.Event]:
        # Anyone can send a report: the spooler keeps only the events about a recipient of a
        # message we sent (its queued events), which it knows and the milter does not.
        return bounces.events_from_dsn(raw, key=self.queue_id or spool.new_id())

    def _finish(self, decision: Decision | None, groups) -> int:
        """Recipients of `--discard` rules (posted) and those of a bounce report without a rule
        (consumed as events) are removed. A message left without recipients gets Postfix's
        discard(8) transport as its one recipient (while Postfix has the route): a milter
        DISCARD counts as an error in smtpd, and after ten of them (smtpd_soft_error_limit)
        every later command of the session waits smtpd_error_sleep_time (1 s). A refused
        recipient (self.bounced) is replaced by its stand-in in the reject domain, with ORCPT
        naming it, which Postfix's error(8) transport bounces to the sender."""
        consumed = ((decision.denied if decision else []) + self.held) if self.dsn else []
        drop = set(consumed) | {r for rule, rs in groups if rule.discard for r in rs}
        if not drop and not self.bounced:
            return Milter.ACCEPT
        everyone = not self.passed and not self.bounced and drop >= set(self.managed) | set(self.held)
        if everyone and not self.routes:
            return Milter.DISCARD
        for rcpt in drop | set(self.bounced):
            for given in self.rcpt_as_given[rcpt]:  # every recipient came through envrcpt
                self.delrcpt(given)
        for rcpt in self.bounced:
            self.addrcpt(f"<{postconf.reject_address(rcpt)}>", postconf.orcpt(rcpt))
        if everyone:
            self.addrcpt(f"<{postconf.DISCARD_RECIPIENT}>")
        return Milter.ACCEPT

    def abort(self):
        self._reset()
        return Milter.CONTINUE

    def close(self):
        return Milter.CONTINUE

    # -- outbound -----------------------------------------------------------------------------

    def _events(self, event_type: str, recipients: list[str], **fields) -> list[events.Event]:
        """One event per recipient; the message's fields are looked up once."""
        meta = self._envelope_meta()
        custom = {}
        for name in self.settings.event_headers:
            values = self._header(name)
            if values:
                custom[name] = decode_value(values[0])
        return [events.Event(
            type=event_type, at=meta["received"], id=spool.new_id(), source="milter",
            queue_id=self.queue_id or None, recipient=rcpt, sender=self.mail_from,
            header_from=meta["header_from"] or None, message_id=meta["message_id"] or None,
            subject=meta["subject"] or None, client_addr=self.client_addr or None,
            auth_user=self.auth_user or None, custom_headers=dict(custom), **fields,
        ) for rcpt in recipients]

    def _outbound_rcpt(self, rcpt: str):
        if self.settings.blocklist and self.blocklist.contains(rcpt):
            reason = "address is on the block list after a hard bounce"
            try:
                self.segments.append(spool.event_record(self._events("blocked", [rcpt], reason=reason)[0]))
            except OSError as exc:  # the event must not be lost: let the client retry
                log.error("cannot spool blocked event for <%s>: %s; answering 451", rcpt, exc)
                self.setreply(*SMTP_TEMPFAIL, "mxhook: cannot record this right now, try again later")
                return Milter.TEMPFAIL
            self._log_decision("blocked", [rcpt], "blocklist", reason)
            self.setreply("550", "5.1.1", f"<{rcpt}>: recipient {reason}; not sent")
            return Milter.REJECT
        self.outbound_rcpts.append(rcpt)
        return Milter.CONTINUE

    def _outbound_eom(self):
        self.queue_id = self.getsymval("i") or self.queue_id
        records = [spool.event_record(e) for e in self._events("queued", self.outbound_rcpts)]
        try:
            # The log follower's outcomes for these recipients come later, in files named
            # after this segment: the spooler takes them only once it is sealed (ingest_bound).
            self.segments.append_many(records)
        except OSError as exc:
            log.error("queue id %s: cannot spool queued events (%s); answering 451", self.queue_id, exc)
            self.setreply(*SMTP_TEMPFAIL, "mxhook: cannot record the message right now, try again later")
            return Milter.TEMPFAIL
        self._log_decision("queued", self.outbound_rcpts, self.outbound, "outbound")
        return Milter.ACCEPT

    # -- helpers ------------------------------------------------------------------------------

    def _header(self, name: str) -> list[bytes]:
        return [v for n, v in self.raw_headers if n.lower() == name]

    def _envelope_meta(self) -> dict:
        subject = self._header("subject")
        message_id = self._header("message-id")
        header_from = self._header("from")
        return {
            "received": utc_now(),
            "queue_id": self.queue_id,
            "mail_from": self.mail_from,
            "client_addr": self.client_addr,
            "client_name": self.client_name,
            "helo": self.helo,
            "header_from": first_address(header_from[0]) if header_from else "",
            "subject": to_text(subject[0]).strip() if subject else "",
            "message_id": to_text(message_id[0]).strip() if message_id else "",
        }

    def _deny(self, recipients: list[str], filt: str, reason: str):
        self._log_decision("denied", recipients, filt, reason)
        self._spool_denied(recipients, filt, reason)
        self.setreply(*SMTP_DENY, f"mxhook: {reason}")
        return Milter.REJECT

    def _spool_denied(self, recipients: list[str], filt: str, reason: str) -> None:
        snapshot = self.snapshot
        if filt != "unknown_domain" and snapshot is not None and not any(
            address_domain(r) in snapshot.log_denied for r in recipients
        ):
            return
        meta = self._envelope_meta()
        meta.update(recipients=recipients, filter=filt, reason=reason)
        try:
            spool.write(self.settings.spool_dir, spool.Record(spool.new_id(), "denied", meta), durable=False)
        except OSError as exc:  # a lost denial costs a log line, never the SMTP answer
            log.warning("queue id %s: could not log denial: %s", self.queue_id or "-", exc)

    def _log_decision(self, outcome: str, recipients: list[str], by: str, reason: str) -> None:
        log.info("queue_id=%s outcome=%s from=<%s> rcpt=%s by=%s client=%s[%s] reason=%s",
                 self.queue_id or "-", outcome, self.mail_from,
                 ",".join(f"<{r}>" for r in recipients), by or "-", self.client_name or "-",
                 self.client_addr or "-", reason)


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


def main(argv: list[str] | None = None) -> int:
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, set())
    try:
        return _run(argv)
    finally:
        # Called in-process (tests, a wrapper), the caller's threads and children get their
        # signals back.
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)


def _run(argv: list[str] | None) -> int:
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
        watcher = SnapshotWatcher(cfg.rules_db, interval=settings.rules_reload_interval,
                                  regex_timeout=settings.regex_timeout)
    except (configmod.ConfigError, RuleError) as exc:
        print(f"mxhook-milter: {exc}", file=sys.stderr)
        return 2
    except sqlite3.Error as exc:  # e.g. rules.db not readable by this user
        print(f"mxhook-milter: cannot read rules database {cfg.rules_db}: {exc}", file=sys.stderr)
        return 1
    spool.ensure_dirs(settings.spool_dir)
    spool.recover_segments(settings.spool_dir)  # a previous run's, if it died
    MxhookMilter.segments = spool.SegmentWriter(settings.spool_dir)
    MxhookMilter.settings = settings
    MxhookMilter.watcher = watcher
    MxhookMilter.blocklist = BlocklistReader(cfg.rules_db)
    Milter.factory = MxhookMilter
    Milter.set_flags(Milter.DELRCPT | Milter.ADDRCPT | Milter.ADDRCPT_PAR)

    path = socket_path(socket_spec)
    if path:
        try:
            prepare_socket_dir(path, socket_group)
        except (OSError, KeyError) as exc:
            print(f"mxhook-milter: cannot prepare socket directory for {path}: {exc}", file=sys.stderr)
            return 1
        os.umask(0o117)  # the socket is born 0660; spool files keep their explicit 0640
    log.info("listening on %s: %d rules, %d domains, unknown_domains=%s, spool %s, Postfix "
             "routes for discard/reject: %s", socket_spec, len(watcher.current.ruleset),
             len(watcher.current.domains), settings.unknown_domains, settings.spool_dir,
             "yes" if settings.postfix_routes() else "no")
    try:
        Milter.runmilter("mxhook", socket_spec, timeout)
    finally:
        MxhookMilter.segments.close()
        watcher.stop()
    log.info("stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
