"""The inbound decision of one message, from RCPT to end of message (pure).

`Inbound` is one inbound transaction: the milter's callbacks (daemons/milter.py) and the dry
run of `mxhook rule test` (`explain`) feed it the envelope, the header fields and the message,
and it answers each stage with an outcome the caller performs:

  RCPT     `rcpt()`: 250, 550 5.7.1 (the recipient's domain is not enabled, or no rule can match
           its envelope; the domain's reject text if it has one), or 452 4.5.3 (its outcome may differ from the transaction's: the
           client sends it again alone); decision.RcptStage.
  EOH      `end_of_headers()`: heuristics, then the header conditions of each recipient's
           candidate rules (decision.decide); null-sender recipients no rule takes are refused
           unless the message is a bounce report. Nobody accepted → 550 5.7.1 for the whole
           message; some refused beside accepted ones (only past the cap on refusals) → Postfix
           bounces them. In a domain with `unmatched = pass` nobody is refused: recipients
           no rule takes are left to Postfix. Only pass-through recipients → accepted without
           reading the body. When a candidate rule has a condition on an authentication
           verdict (`dmarc~^fail$`), only the heuristics run here and the rules wait for EOM.
  EOM      `end_of_message()`: the authentication verdicts (the injected `authenticate`), a
           DMARC refusal they ask for (550 5.7.1), the rules that waited for them (refused as
           at EOH, but after the body), then the message record and the bounce report's
           events to spool, the recipients to delete (`--discard` rules, consumed bounce
           reports) and to replace by their reject stand-ins, and whether a message left
           without recipients goes to Postfix's discard transport or gets a milter DISCARD.

Refused recipients come back as `Denial`s (the decision log line, and the `denied` record to
spool when their domain logs denied mail). Nothing here does I/O: the clock and record ids are
injected.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from mxhook.model import bounces, heuristics
from mxhook.model.decision import (
    DENY, HOLD, MANAGED, PASS, SPLIT, UNMATCHED_PASS, Decision, RcptOutcome, RcptStage, decide,
    match_rules, screen)
from mxhook.model.envelope import Envelope, Recipient, header_values, message_fields, utc_now
from mxhook.model.headers import address_domain, decode_value, first_address, normalize_address
from mxhook.model.message import header_section
from mxhook.model.records import DeniedRecord, InboundRecord, Routed, iso

# What the milter answers; the adapter maps these to pymilter's codes.
CONTINUE, ACCEPT, REJECT, TEMPFAIL, DISCARD = "continue", "accept", "reject", "tempfail", "discard"

SMTP_DENY = ("550", "5.7.1")
SMTP_TEMPFAIL = ("451", "4.3.0")
SMTP_SPLIT = ("452", "4.5.3")  # "too many recipients": the client retries it in a new transaction
SMTP_TOO_LARGE = ("552", "5.3.4")
INTERNAL_ERROR = (*SMTP_TEMPFAIL, "mxhook: temporary internal error, try again later")


@dataclass(frozen=True, slots=True)
class Policy:
    """The settings the inbound decision depends on (the `[milter]` section)."""
    unknown_domains: str = "reject"  # reject | pass
    heuristics: tuple[str, ...] = heuristics.ALL
    missing_from: str = "reject"  # reject | accept
    max_rcpt_refusals: int = 5
    max_message_size: int = 50 * 1024 * 1024
    # addresses of mail mxhook answers itself -> its route (records.INTERNAL_ROUTES)
    internal: tuple[tuple[str, str], ...] = ()

    @classmethod
    def from_section(cls, value: Callable[[str], Any], internal: tuple[tuple[str, str], ...] = ()) -> Policy:
        """From the `[milter]` section: `value(key)` is the key's typed value (config.Config.value,
        or the attributes of MilterSettings), so the milter and `rule test` read it alike.
        `internal`: `internal_routes` of the `[tracking]` addresses."""
        return cls(
            unknown_domains=value("unknown_domains"),
            heuristics=tuple(h for h, key in HEURISTIC_KEYS if value(key)),
            missing_from=value("missing_from"),
            max_rcpt_refusals=value("max_rcpt_refusals"),
            max_message_size=value("max_message_size"),
            internal=internal,
        )


def internal_routes(feedback_address: str, unsubscribe_address: str) -> tuple[tuple[str, str], ...]:
    """The Policy's `internal` of the `[tracking]` addresses (empty: none)."""
    return tuple((normalize_address(a), route) for a, route in
                 ((feedback_address, "feedback"), (unsubscribe_address, "unsubscribe")) if a)


# each heuristic and the [milter] key that turns it on
HEURISTIC_KEYS = (
    (heuristics.FROM_PERMITTED_DOMAIN, "heuristic_from_permitted_domain"),
    (heuristics.FROM_EQUALS_TO, "heuristic_from_equals_to"),
)


@dataclass(frozen=True, slots=True)
class Authentication:
    """A message's authentication verdicts as the decision uses them (mailauth/ makes them:
    `mailauth.authenticate.for_decision`)."""
    conditions: dict  # rule condition name (spf, dkim, dmarc, dmarc_policy, arc) -> result
    payload: dict  # the spool record's and payload's `authentication` object
    reject: str | None = None  # dmarc_reject: the text of the 550 5.7.1 refusing the message


# The filter a DMARC refusal is logged under
DMARC_REJECT = "dmarc_reject"


@dataclass(slots=True)
class Logged:
    """One line of the decision log."""
    outcome: str  # denied, accepted, passed, bounce-report
    recipients: list[str]
    by: str
    reason: str


@dataclass(slots=True)
class Denial:
    recipients: list[str]
    filter: str  # unknown_domain, no_rule, heuristic:<name>
    reason: str
    record: DeniedRecord | None  # the `denied` spool record; None: the domain does not log them
    bounced: bool = False  # accepted beside others, so Postfix bounces it to the sender

    def logged(self) -> Logged:
        return Logged("denied", self.recipients, self.filter,
                      self.reason + "; Postfix bounces it to the sender" if self.bounced else self.reason)


@dataclass(slots=True)
class Answer:
    action: str = CONTINUE
    reply: tuple[str, str, str] | None = None  # for setreply
    denials: tuple[Denial, ...] = ()


@dataclass(slots=True)
class RcptAnswer(Answer):
    note: str = ""  # why a recipient was split or accepted past the cap (debug log)


@dataclass(slots=True)
class HeadersAnswer(Answer):
    timed_out: tuple[str, ...] = ()  # patterns that hit the regex timeout (counted as no match)
    error: str = ""  # TEMPFAIL: what went wrong
    log: tuple[Logged, ...] = ()  # recipients passed to Postfix (a domain's unmatched = pass)


@dataclass(slots=True)
class SpooledMessage:
    """An accepted message: its spool record (kind `inbound`) is (id, record.to_meta(), raw)."""
    id: str
    record: InboundRecord
    raw: bytes


@dataclass(slots=True)
class MessageAnswer(Answer):
    """Spool `message` and `events` in one append (on failure neither is kept, and the answer
    is 451), then log `log`, then change the recipients, then answer `action`."""
    message: SpooledMessage | None = None
    events: tuple = ()  # events.Event of a bounce report
    log: tuple[Logged, ...] = ()
    delete: tuple[str, ...] = ()  # recipients as given (delrcpt)
    bounce: tuple[str, ...] = ()  # replace each by its reject stand-in (error(8) bounces it)
    add_discard: bool = False  # the message's one recipient becomes Postfix's discard transport
    timed_out: tuple[str, ...] = ()  # rules decided here: patterns that hit the regex timeout
    error: str = ""  # TEMPFAIL: what went wrong


def _split(address: str) -> RcptAnswer:
    return RcptAnswer(TEMPFAIL, (*SMTP_SPLIT, f"<{address}>: send this recipient again in a "
                                 "separate transaction (its outcome may differ from the "
                                 "recipients already accepted)"),
                      note="outcome may differ from the transaction's recipients; 452 4.5.3")


def header_block(raw_headers: list[tuple[str, bytes]]) -> bytes:
    """The header fields as Postfix's milter protocol gave them, back to the bytes of the
    message: Postfix folds with LF, the message has CRLF."""
    return b"".join([name.encode("ascii", "surrogateescape") + b":"
                     + value.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n") + b"\r\n"
                     for name, value in raw_headers])


class Inbound:
    """One inbound transaction (MAIL FROM to end of message), stage by stage in SMTP order.

    snapshot: the rules with `ruleset`, `domains` (permitted) and `log_denied`. routes: Postfix
    has mxhook's discard and error transports (without them a recipient refused after 250
    could not be bounced, so recipients are split without a cap, and a message left without
    recipients gets a milter DISCARD). authenticate: the message bytes -> its
    `Authentication` (None: no verdicts); None when `[authentication] mode = off`, so rules with
    authentication conditions never match and need not wait for the end of the message."""

    def __init__(self, snapshot, policy: Policy, envelope: Envelope, *, routes: bool,
                 clock=utc_now, new_id: Callable[[], str],
                 authenticate: Callable[[bytes], Authentication | None] | None = None):
        self.snapshot = snapshot
        self.authenticate = authenticate
        self.authentication: Authentication | None = None
        # the rules wait for the verdicts: the refusals decided at EOH meanwhile
        self.waiting: list[tuple[str, str, list[str]]] | None = None
        self.policy = policy
        self.envelope = envelope
        self.routes = routes
        self.clock = clock
        self.new_id = new_id
        self.stage = RcptStage(
            snapshot.ruleset, snapshot.domains, null_sender=envelope.sender == "",
            unknown_domains=policy.unknown_domains, enabled_heuristics=policy.heuristics,
            max_refusals=policy.max_rcpt_refusals if routes else None,
            pass_unmatched=snapshot.pass_unmatched, verdicts=authenticate is not None)
        self.rcpt_outcomes: list[tuple[str, RcptOutcome]] = []  # every RCPT, in order
        self.managed: list[str] = []  # recipients in permitted domains, for the rules
        # managed recipients of domains with unmatched = pass: passed to Postfix when no rule
        # takes them (or a heuristic keeps them from the rules), never refused
        self.passing: set[str] = set()
        self.passed: list[str] = []  # recipients left to Postfix (unknown_domains or unmatched = pass)
        self.held: list[str] = []  # null-sender recipients no rule takes: a bounce report's?
        self.held_why: dict[str, tuple[str, str]] = {}  # held recipient -> (filter, reason) if not
        self.candidates: dict[str, tuple] = {}  # managed recipient -> rules its envelope allows
        self.overflow: set[str] = set()  # accepted past the cap on refusals, of another class
        self.bounced: list[str] = []  # refused at end of headers, others accepted: Postfix bounces
        self.raw_headers: list[tuple[str, bytes]] = []
        self.dsn = False  # the message is a bounce report (multipart/report delivery-status)
        self.decision: Decision | None = None
        self.reported: list = []  # the bounce report's events
        # recipients that are mxhook's own addresses, and their route: such a message is
        # spooled for mxhook's handler (records.INTERNAL_ROUTES) and in a transaction of its own
        self.internal: list[str] = []
        self.internal_route = ""

    # -- RCPT -----------------------------------------------------------------------------------

    def rcpt(self, recipient: Recipient) -> RcptAnswer:
        """The answer to RCPT TO of `recipient` (marked refused when it is 4xx or 5xx)."""
        address = recipient.address
        route = dict(self.policy.internal).get(address) if self.policy.internal else None
        if route or self.internal:
            return self._internal_rcpt(recipient, route)
        outcome = self.stage.recipient(address)
        self.rcpt_outcomes.append((address, outcome))
        kind = outcome.kind
        recipient.refused = kind in (SPLIT, DENY)
        if kind == SPLIT:
            return _split(address)
        if kind == DENY:
            return RcptAnswer(REJECT, (*SMTP_DENY, self.reply_text(address, outcome.filter,
                                                                   f"<{address}>: {outcome.reason}")),
                              (self._denial([address], outcome.filter, outcome.reason),))
        if kind == MANAGED:
            self.candidates[address] = outcome.candidates
            self.managed.append(address)
            if outcome.passing:
                self.passing.add(address)
        elif kind == PASS:
            self.passed.append(address)
        elif kind == HOLD:
            self.held.append(address)
            self.held_why[address] = (outcome.filter, outcome.reason)
        if outcome.overflow:
            self.overflow.add(address)
            return RcptAnswer(note=f"accepted past {self.policy.max_rcpt_refusals} refusals "
                                   "although its outcome may differ")
        return RcptAnswer()

    def _internal_rcpt(self, recipient: Recipient, route: str | None) -> RcptAnswer:
        """A recipient that is one of mxhook's own addresses (`route`), or any recipient after
        one: accepted whatever the rules say when it is the transaction's kind, else split."""
        address = recipient.address
        if route is None or (route != self.internal_route and self.internal) \
                or self.managed or self.passed or self.held:
            recipient.refused = True
            return _split(address)
        self.internal.append(address)
        self.internal_route = route
        return RcptAnswer(note=f"mxhook's own {route} address")

    # -- end of headers -------------------------------------------------------------------------

    def end_of_headers(self, raw_headers: list[tuple[str, bytes]]) -> HeadersAnswer:
        """raw_headers: (name, value as received) in message order."""
        self.raw_headers = raw_headers
        if self.internal:  # read at end of message
            return HeadersAnswer()
        if self.envelope.sender == "":
            content_types = header_values(raw_headers, "content-type")
            self.dsn = bool(content_types) and bounces.is_dsn_content_type(decode_value(content_types[0]))
        # One outcome class per transaction (rcpt): held, passed or managed recipients, unless
        # recipients were accepted past the cap on refusals (self.overflow).
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
            return HeadersAnswer() if self.dsn else HeadersAnswer(ACCEPT)
        policy = self.policy
        if self.authenticate is not None and any(
                rule.needs_authentication for rules in self.candidates.values() for rule in rules):
            verdict = screen(self.snapshot.domains, self.managed, raw_headers,
                             enabled_heuristics=policy.heuristics, missing_from=policy.missing_from)
            if verdict is None:  # the rules are decided at EOM, with the verdicts
                self.waiting = refused
                return HeadersAnswer()
            decision = self.decision = Decision(verdict=verdict)
        else:
            decision = self.decision = decide(
                self.snapshot.ruleset, self.snapshot.domains, self.managed, raw_headers,
                enabled_heuristics=policy.heuristics, missing_from=policy.missing_from,
                candidates=self.candidates)
        return self._rules_answer(decision, refused)

    def _rules_answer(self, decision: Decision, refused: list[tuple[str, str, list[str]]]) -> HeadersAnswer:
        """The answer to the rules' decision (at EOH, or at EOM when they waited for the
        verdicts), with `refused`: the held recipients refused before it."""
        timed_out = tuple({c.condition.pattern: None for m in decision.matches for c in m.timeouts})
        if decision.verdict is not None:  # the message is refused, whoever it is for...
            reason = decision.verdict.reason
            by = "heuristic:" + decision.verdict.heuristic
            if not self.passing:
                denial = self._denial(self.managed, by, reason)
                return HeadersAnswer(REJECT, (*SMTP_DENY, f"mxhook: {reason}"), (denial,), timed_out)
            # ...but for the rules only where the domain passes recipients no rule takes
            passed = self._pass([r for r in self.managed if r in self.passing], by, reason)
            refused.insert(0, (by, reason, [r for r in self.managed if r not in self.passing]))
            return self._refuse([x for x in refused if x[2]], kept=True, timed_out=timed_out, log=passed) \
                if any(x[2] for x in refused) else self._passed_only(passed, timed_out)
        passed = self._pass([r for r in decision.denied if r in self.passing], UNMATCHED_PASS,
                            "no inbound rule takes it")
        denied = [r for r in decision.denied if r not in self.passing]
        if not self.dsn and denied:
            accepted = [r for r, _ in decision.accepted]
            if (any(r not in self.overflow for r in accepted)
                    and any(r not in self.overflow for r in denied)):
                # recipients of one outcome class share their outcome
                return HeadersAnswer(TEMPFAIL, INTERNAL_ERROR, timed_out=timed_out, error=(
                    f"recipients of one class decided apart ({','.join(accepted)} accepted, "
                    f"{','.join(denied)} not)"))
            refused.insert(0, ("no_rule", "no inbound rule matches "
                               + ", ".join(f"<{r}>" for r in denied), denied))
        # Accepted, or a bounce report (its recipients without a rule are consumed at eom).
        if refused:
            return self._refuse(refused, kept=bool(self.passed or decision.accepted), timed_out=timed_out,
                                log=passed)
        if not decision.accepted:
            return self._passed_only(passed, timed_out)
        return HeadersAnswer(timed_out=timed_out, log=passed)

    def _pass(self, recipients: list[str], by: str, reason: str) -> tuple[Logged, ...]:
        """Recipients of domains with unmatched = pass that no rule takes: left to Postfix."""
        if not recipients:
            return ()
        self.passed += recipients
        return (Logged("passed", recipients, by, reason + "; passed to Postfix (its domain has "
                                                          "unmatched = pass)"),)

    def _passed_only(self, log: tuple[Logged, ...], timed_out: tuple[str, ...]) -> HeadersAnswer:
        """No rule takes anyone and nobody is refused: Postfix delivers the message as it
        would without mxhook (a bounce report still has its events read at end of message)."""
        if self.dsn:
            return HeadersAnswer(timed_out=timed_out, log=log)
        return HeadersAnswer(ACCEPT, timed_out=timed_out, log=log)

    def _refuse(self, refused: list[tuple[str, str, list[str]]], kept: bool,
                timed_out: tuple[str, ...] = (), log: tuple[Logged, ...] = ()) -> HeadersAnswer:
        """Refused recipients: with nobody else accepted, the whole message (550); else
        Postfix bounces each to the sender at end of message (error(8) transport)."""
        if not kept:
            denials = tuple(self._denial(rcpts, filt, reason) for filt, reason, rcpts in refused)
            filt, reason, rcpts = refused[0]
            return HeadersAnswer(REJECT, (*SMTP_DENY, self.reply_text(rcpts[0], filt, f"mxhook: {reason}")),
                                 denials, timed_out, log=log)
        denials = []
        for filt, reason, rcpts in refused:
            denials.append(self._denial(rcpts, filt, reason, bounced=True))
            self.bounced += rcpts
        return HeadersAnswer(CONTINUE, None, tuple(denials), timed_out, log=log)

    # -- end of message -------------------------------------------------------------------------

    def end_of_message(self, body: list[bytes], body_size: int) -> MessageAnswer:
        """body: its chunks, kept up to max_message_size; body_size: the bytes it really had."""
        if self.internal:
            return self._internal_message(body, body_size)
        decision = self.decision
        if decision is None and not (self.dsn or self.bounced or self.waiting is not None):
            return MessageAnswer()  # end of headers answered
        # Always an empty line after the fields: with none, Postfix itself put an empty line
        # first, and any parser must read "no header section" as the decision did.
        separator = b"\r\n"
        head = header_block(self.raw_headers)
        size = len(head) + len(separator) + body_size
        limit = self.policy.max_message_size
        if size > limit:
            return MessageAnswer(REJECT, (*SMTP_TOO_LARGE, f"message size {size} exceeds the limit "
                                          f"of {limit} bytes for webhook delivery"),
                                 log=(Logged("denied", self.managed + self.held, "size", "message too large"),))
        raw = head + separator + b"".join(body)
        log = []
        denials: tuple[Denial, ...] = ()
        timed_out: tuple[str, ...] = ()
        if self.authenticate is not None and (self.waiting is not None
                                              or (decision is not None and decision.accepted)):
            self.authentication = auth = self.authenticate(raw)
            if auth is not None and auth.reject:
                rcpts = self.managed + self.held
                return MessageAnswer(REJECT, (*SMTP_DENY, auth.reject),
                                     (self._denial(rcpts, DMARC_REJECT, auth.reject),))
            if self.waiting is not None:
                rules = self._rules_at_eom(auth)
                if rules.action != CONTINUE:
                    return MessageAnswer(rules.action, rules.reply, rules.denials, log=rules.log,
                                         timed_out=rules.timed_out, error=rules.error)
                decision, denials, timed_out = self.decision, rules.denials, rules.timed_out
                log += rules.log
        if self.dsn:
            # Anyone can send a report: the spooler keeps only the events about a recipient of
            # a message we sent (its queued events), which it knows and the milter does not.
            self.reported = bounces.events_from_dsn(raw, key=self.envelope.queue_id or self.new_id())
            log.append(Logged("bounce-report", self.managed + self.held + self.passed, "dsn",
                              f"{len(self.reported)} event(s), to be checked against the mail we "
                              "sent, for " + ",".join(sorted({e.recipient or "?" for e in self.reported}))))
        groups = decision.grouped() if decision else []
        message = None
        if groups:
            record = InboundRecord(
                **message_fields(self.envelope, self.raw_headers, iso(self.clock())),
                deliveries=[Routed(rcpts, rule.target_record())
                            for rule, rcpts in groups],
                recipient_delimiter=self.snapshot.ruleset.recipient_delimiter,
                authentication=self.authentication.payload if self.authentication else None)
            message = SpooledMessage(self.new_id(), record, raw)
            log.append(Logged("accepted", list(dict.fromkeys(r for _, rs in groups for r in rs)),
                              ",".join(rule.name for rule, _ in groups), f"spooled as {message.id}"))
        answer = self._finish(decision, groups, message, tuple(log))
        answer.denials, answer.timed_out = denials, timed_out
        return answer

    def _internal_message(self, body: list[bytes], body_size: int) -> MessageAnswer:
        """Mail to mxhook's own address: spooled for its handler (the spooler parses it), and
        taken out of Postfix's delivery."""
        head = header_block(self.raw_headers)
        size = len(head) + 2 + body_size
        if size > self.policy.max_message_size:
            return MessageAnswer(REJECT, (*SMTP_TOO_LARGE, f"message size {size} exceeds the limit "
                                          f"of {self.policy.max_message_size} bytes"),
                                 log=(Logged("denied", self.internal, "size", "message too large"),))
        record = InboundRecord(**message_fields(self.envelope, self.raw_headers, iso(self.clock())),
                               internal=self.internal_route)
        message = SpooledMessage(self.new_id(), record, head + b"\r\n" + b"".join(body))
        log = (Logged("accepted", list(self.internal), self.internal_route,
                      f"spooled as {message.id} for mxhook's {self.internal_route} handler"),)
        if not self.routes:
            return MessageAnswer(DISCARD, None, (), message, (), log)
        return MessageAnswer(ACCEPT, None, (), message, (), log,
                             delete=tuple(self.envelope.given(set(self.internal))), add_discard=True)

    def _rules_at_eom(self, auth: Authentication | None) -> HeadersAnswer:
        """The rules that waited for the verdicts, decided as end of headers decides them."""
        # the heuristics passed at end of headers (screen), on these same header fields
        self.decision = Decision(matches=match_rules(
            self.snapshot.ruleset, self.managed, self.raw_headers, candidates=self.candidates,
            authentication=auth.conditions if auth else None))
        return self._rules_answer(self.decision, self.waiting)

    def _finish(self, decision: Decision | None, groups, message, log) -> MessageAnswer:
        """Recipients of `--discard` rules (posted; with fan-out, one of the rules that take it
        having `--discard` is enough) and those of a bounce report without a rule (consumed as
        events) are removed. A message left without recipients gets Postfix's
        discard(8) transport as its one recipient (while Postfix has the route): a milter
        DISCARD counts as an error in smtpd, and after ten of them (smtpd_soft_error_limit)
        every later command of the session waits smtpd_error_sleep_time (1 s). A refused
        recipient (self.bounced) is replaced by its stand-in in the reject domain, which
        Postfix's error(8) transport bounces to the sender."""
        consumed = ((decision.denied if decision else []) + self.held) if self.dsn else []
        consumed = [r for r in consumed if r not in self.passing]  # their mailboxes get the report
        drop = set(consumed) | {r for rule, rs in groups if rule.discard for r in rs}
        events = tuple(self.reported)
        if not drop and not self.bounced:
            return MessageAnswer(ACCEPT, None, (), message, events, log)
        everyone = not self.passed and not self.bounced and drop >= set(self.managed) | set(self.held)
        if everyone and not self.routes:
            return MessageAnswer(DISCARD, None, (), message, events, log)
        return MessageAnswer(ACCEPT, None, (), message, events, log,
                             delete=tuple(self.envelope.given(drop | set(self.bounced))),
                             bounce=tuple(self.bounced), add_discard=everyone)

    # -- helpers --------------------------------------------------------------------------------

    def reply_text(self, recipient: str, filt: str, default: str) -> str:
        """The text of the 5xx refusing `recipient` because no rule takes it (`no_rule`): the
        reject text of its first candidate rule that has one (the rule whose envelope it
        matched but whose header conditions refused it), else its domain's, else `default`
        (mxhook's own reason, which other refusals always get)."""
        if filt == "no_rule":
            for rule in self.candidates.get(recipient, ()):
                if rule.reject_text:
                    return rule.reject_text
            text = self.snapshot.reject_texts.get(address_domain(recipient))
            if text:
                return text
        return default

    def _denial(self, recipients: list[str], filt: str, reason: str, bounced: bool = False) -> Denial:
        record = None
        if filt == "unknown_domain" or any(address_domain(r) in self.snapshot.log_denied for r in recipients):
            record = DeniedRecord(**message_fields(self.envelope, self.raw_headers, iso(self.clock())),
                                  recipients=recipients, filter=filt, reason=reason)
        return Denial(recipients, filt, reason, record, bounced)


# -- the dry run ------------------------------------------------------------------------------

@dataclass
class RecipientOutcome:
    """What happens to one recipient, at which stage, and why."""
    recipient: str
    outcome: str  # accepted, rejected, deferred, passed, denied, bounced, consumed
    stage: str  # rcpt | eoh | eom (rules with authentication conditions)
    smtp: str
    decided_by: str  # rule:<name>, no_rule, unknown_domain, heuristic:<name>, outcome_class, dsn, ...
    reason: str
    rule: object = None  # the first accepting Rule
    reply: str = ""  # refused at RCPT: the text of its 5xx
    rules: list | None = None  # rules.RuleResult of every rule (recipients in permitted domains)
    taken: list = field(default_factory=list)  # every Rule that takes it (fan-out: several)

    def as_dict(self) -> dict:
        rule = self.rule
        out = {"recipient": self.recipient, "outcome": self.outcome, "stage": self.stage,
               "smtp": self.smtp, "decided_by": self.decided_by, "rule": rule and rule.name,
               "reason": self.reason}
        if self.reply:
            out["reply"] = self.reply
        if rule is not None:
            discarded = any(r.discard for r in self.taken)
            out.update(action="discard" if discarded else "deliver", url=rule.destination.url,
                       format=rule.destination.format)
            out["taken_by"] = [{"rule": r.name, "url": r.destination.url, "format": r.destination.format,
                                "dialect": r.destination.dialect, "continue": r.continue_matching,
                                "discard": r.discard} for r in self.taken]
        if self.rules is not None:
            out["rules"] = [{
                "name": rr.rule.name, "priority": rr.rule.priority, "enabled": rr.rule.enabled,
                "matched": rr.matched, "reason": rr.reason(),
                "conditions": [{"condition": str(c.condition), "satisfied": c.satisfied,
                                "value": c.matched_value, "timed_out": c.timed_out}
                               for c in rr.conditions],
            } for rr in self.rules]
        return out


@dataclass
class Explanation:
    """The milter's answer to a whole message, and each recipient's."""
    mail_from: str | None
    header_from: str
    subject: str
    header_defects: list[str]
    policy: Policy
    verdict: heuristics.Verdict | None
    rule_count: int
    result: str  # accept, reject, tempfail, pass
    smtp: str
    decided_by: str
    reason: str
    reply: str = ""  # refused at end of headers: the text of the 5xx the client gets
    recipients: list[RecipientOutcome] = field(default_factory=list)
    events: tuple = ()  # a bounce report's events
    deleted: list[str] = field(default_factory=list)  # as given, removed from Postfix's delivery
    spooled: SpooledMessage | None = None  # what the milter would spool (`rule test --payload`)
    authentication: Authentication | None = None  # the verdicts (None: mode = off)

    def as_dict(self) -> dict:
        """Plain data for JSON (`mxhook rule test --json`)."""
        verdict = self.verdict
        return {
            "mail_from": self.mail_from, "header_from": self.header_from, "subject": self.subject,
            "header_defects": self.header_defects, "unknown_domains": self.policy.unknown_domains,
            "missing_from": self.policy.missing_from,
            "heuristics": {"enabled": list(self.policy.heuristics), "verdict": verdict and {
                "heuristic": verdict.heuristic, "reason": verdict.reason}},
            "rule_count": self.rule_count, "result": self.result, "smtp": self.smtp,
            "decided_by": self.decided_by, "reason": self.reason, "reply": self.reply,
            "recipients": [r.as_dict() for r in self.recipients],
            "removed": self.deleted, "events": [e.to_dict() for e in self.events],
            "authentication": self.authentication.payload if self.authentication else None,
        }


DSN_CONSUMED = "a bounce report: its events are kept, the recipient is removed from Postfix's delivery"


def explain(snapshot, policy: Policy, raw: bytes, envelope: Envelope, *, routes: bool,
            clock=utc_now,
            authenticate: Callable[[bytes], Authentication | None] | None = None) -> Explanation:
    """What the milter answers for this message and envelope (recipients in RCPT order, a
    repeated one answered as the first), at which stage, and why: the very `Inbound` the milter
    runs, on the header section as Postfix splits it (message.header_section), with every rule
    explained for each recipient in a permitted domain, also past the first match.
    envelope.sender None: not given (any sender but the null sender decides alike).
    authenticate: as the milter's (None: mode = off); the verdicts are shown however the
    message is decided."""
    raw_headers, body_at, defects = header_section(raw)
    inbound = Inbound(snapshot, policy, envelope, routes=routes, clock=clock, new_id=lambda: "dry-run",
                      authenticate=authenticate)
    first: dict[str, Recipient] = {}
    for r in envelope.recipients:
        if r.address in first:
            r.refused = first[r.address].refused
        else:
            first[r.address] = r
            inbound.rcpt(r)
    rcpts = list(first)
    headers = message = None
    if inbound.managed or inbound.passed or inbound.held or inbound.internal:
        headers = inbound.end_of_headers(raw_headers)
        if headers.action == CONTINUE:
            body = raw[body_at:]
            message = inbound.end_of_message([body], len(body))
    decision = inbound.decision
    if authenticate is not None and inbound.authentication is None:
        inbound.authentication = authenticate(raw)
    from_values = header_values(raw_headers, "from")
    subjects = header_values(raw_headers, "subject")
    out = Explanation(
        mail_from=envelope.sender, header_from=first_address(from_values[0]) if from_values else "",
        subject=decode_value(subjects[0]) if subjects else "", header_defects=defects,
        policy=policy, verdict=decision.verdict if decision else None, rule_count=len(snapshot.ruleset),
        result="", smtp="", decided_by="", reason="",
        events=tuple(inbound.reported), deleted=list(message.delete) if message else [],
        spooled=message.message if message else None, authentication=inbound.authentication)
    outcomes = {r: _recipient_outcome(inbound, r, outcome) for r, outcome in inbound.rcpt_outcomes}
    for r in rcpts:  # mxhook's own addresses, and recipients split from their transaction
        if r not in outcomes:
            outcomes[r] = _internal_outcome(inbound, r)
    ours = [r for r in rcpts if address_domain(r) in snapshot.domains]
    auth = inbound.authentication
    explained = decide(snapshot.ruleset, snapshot.domains, ours, raw_headers,
                       enabled_heuristics=policy.heuristics, explain=True, missing_from=policy.missing_from,
                       authentication=auth.conditions if auth else None)
    for m in explained.matches:
        outcomes[m.recipient].rules = m.evaluated
    if inbound.waiting is not None:  # the rules waited for the verdicts
        for r in inbound.managed:
            outcomes[r].stage = "eom"
    refused = message.denials[0] if message and message.action == REJECT and message.denials else None
    if refused is not None and refused.filter == DMARC_REJECT:  # whatever the rules said
        for r in refused.recipients:
            o = outcomes[r]
            o.outcome, o.stage, o.smtp = "denied", "eom", " ".join(SMTP_DENY)
            o.decided_by, o.reason, o.rule, o.taken = refused.filter, refused.reason, None, []
    out.recipients = [outcomes[r] for r in rcpts]
    _result(out, inbound, headers, message)
    return out


def _internal_outcome(inbound: Inbound, r: str) -> RecipientOutcome:
    route = inbound.internal_route
    if r in inbound.internal:
        return RecipientOutcome(r, "accepted", "rcpt", "250", "internal:" + route,
                                f"mxhook's own {route} address: the message is spooled for its "
                                "handler and taken out of Postfix's delivery")
    return RecipientOutcome(r, "deferred", "rcpt", " ".join(SMTP_SPLIT), "outcome_class",
                            f"mail to mxhook's own {route} address takes a transaction of its own: "
                            "the client sends this recipient again separately")


def _recipient_outcome(inbound: Inbound, r: str, outcome: RcptOutcome) -> RecipientOutcome:
    kind = outcome.kind
    if kind == DENY:
        return RecipientOutcome(r, "rejected", "rcpt", " ".join(SMTP_DENY), outcome.filter, outcome.reason,
                                reply=inbound.reply_text(r, outcome.filter, f"<{r}>: {outcome.reason}"))
    if kind == SPLIT:
        return RecipientOutcome(r, "deferred", "rcpt", " ".join(SMTP_SPLIT), "outcome_class",
                                "its outcome may differ from the recipients accepted before it: the "
                                "client sends it again in a separate transaction (test it alone to "
                                "see that one)")
    if kind == PASS:
        return RecipientOutcome(r, "passed", "rcpt", "250", outcome.filter, outcome.reason)
    decision = inbound.decision
    bounced = ("bounced", "eoh", "250, then a bounce from Postfix (5.7.1)")
    if kind == HOLD:
        if inbound.dsn:
            return RecipientOutcome(r, "consumed", "eoh", "250", "dsn", DSN_CONSUMED)
        reason = outcome.reason + " (null sender: held until end of headers in case the message " \
                                  "is a bounce report)"
        if r in inbound.bounced:
            return RecipientOutcome(r, *bounced, outcome.filter, reason + "; accepted past the cap on "
                                    "refusals at RCPT, so Postfix's error transport bounces it")
        return RecipientOutcome(r, "denied", "eoh", " ".join(SMTP_DENY), outcome.filter, reason)
    # MANAGED: end of headers decides
    passed = ("passed", "eoh", "250")
    if decision is not None and decision.verdict is not None:
        if r in inbound.passing:
            return RecipientOutcome(r, *passed, "heuristic:" + decision.verdict.heuristic,
                                    decision.verdict.reason + "; kept from the rules and passed to "
                                    "Postfix (its domain has unmatched = pass)")
        return RecipientOutcome(r, "denied", "eoh", " ".join(SMTP_DENY),
                                "heuristic:" + decision.verdict.heuristic, decision.verdict.reason)
    match = next((m for m in decision.matches if m.recipient == r), None) if decision else None
    if match is not None and match.rule is not None:
        names = ", ".join(t.name for t in match.taken)
        return RecipientOutcome(r, "accepted", "eoh", "250", "rule:" + match.rule.name,
                                f"rule {names}: all conditions hold" if len(match.taken) == 1
                                else f"rules {names} (fan-out: --continue): all conditions hold",
                                rule=match.rule, taken=list(match.taken))
    if r in inbound.passing:
        return RecipientOutcome(r, *passed, UNMATCHED_PASS, f"no inbound rule takes <{r}>; its domain "
                                "passes such recipients to Postfix (unmatched = pass)")
    if inbound.dsn:
        return RecipientOutcome(r, "consumed", "eoh", "250", "dsn", "no rule matches; " + DSN_CONSUMED)
    if r in inbound.bounced:
        return RecipientOutcome(r, *bounced, "no_rule", f"no inbound rule matches <{r}>; accepted past "
                                "the cap on refusals at RCPT (max_rcpt_refusals), so Postfix's "
                                "error transport bounces it to the sender")
    return RecipientOutcome(r, "denied", "eoh", " ".join(SMTP_DENY), "no_rule",
                            f"no inbound rule matches <{r}>")


def _result(out: Explanation, inbound: Inbound, headers: HeadersAnswer | None,
            message: MessageAnswer | None) -> None:
    if headers is None:  # nobody accepted at RCPT
        first = out.recipients[0]
        out.result, out.smtp, out.decided_by = "reject", "554 5.5.1", first.decided_by
        out.reason = "every recipient was rejected at RCPT (no valid recipients)"
    elif headers.action == REJECT:
        denial = headers.denials[0]
        refused = next(o for o in out.recipients if o.recipient == denial.recipients[0])
        out.result, out.smtp, out.decided_by = "reject", " ".join(SMTP_DENY), denial.filter
        out.reason = denial.reason if denial.filter == "no_rule" or out.verdict else refused.reason
        out.reply = headers.reply[2]
    elif headers.action == TEMPFAIL:
        out.result, out.smtp, out.decided_by = "tempfail", " ".join(SMTP_TEMPFAIL), "internal_error"
        out.reason = "recipients of one outcome class decided apart"
    elif headers.action == ACCEPT:
        out.result, out.smtp = "pass", "250"
        out.decided_by = _passed_by(out)
        out.reason = "no recipient a rule takes: the milter leaves the message to Postfix"
    elif message.action == REJECT and message.denials:  # dmarc_reject, or rules decided at eom
        denial = message.denials[0]
        out.result, out.smtp, out.decided_by = "reject", " ".join(SMTP_DENY), denial.filter
        out.reason, out.reply = denial.reason, message.reply[2]
    elif message.action == REJECT:
        out.result, out.smtp, out.decided_by = "reject", " ".join(SMTP_TOO_LARGE), "size"
        out.reason = message.reply[2]
    elif message.action == TEMPFAIL:
        out.result, out.smtp, out.decided_by = "tempfail", " ".join(SMTP_TEMPFAIL), "internal_error"
        out.reason = "recipients of one outcome class decided apart"
    elif message.message is not None and message.message.record.internal:
        route = message.message.record.internal
        out.result, out.smtp, out.decided_by = "accept", "250", "internal:" + route
        out.reason = f"mail to mxhook's own {route} address, spooled for its handler"
    elif message.message is not None:
        names = [d.name for d in message.message.record.deliveries]
        out.result, out.smtp, out.decided_by = "accept", "250", "rules"
        out.reason = "accepted for " + ", ".join(names)
    elif inbound.dsn:  # a bounce report without a recipient any rule takes
        out.result, out.smtp, out.decided_by = "accept", "250", "dsn"
        out.reason = "a bounce report for mail this server sent"
        if inbound.passed:
            out.reason += (f": {len(out.events)} event(s) kept, its recipients left to Postfix "
                           "(unknown_domains = pass)")
    else:  # recipients in permitted domains bounced, the others left to Postfix
        out.result, out.smtp, out.decided_by = "pass", "250", _passed_by(out)
        out.reason = "no recipient a rule takes: the milter leaves the message to Postfix"


def _passed_by(out: Explanation) -> str:
    """What left a message's recipients to Postfix: unknown_domains or a domain's unmatched."""
    return next((o.decided_by for o in out.recipients if o.outcome == "passed"), "unknown_domains=pass")
