"""The two steps of the inbound decision that depend on the rules: the RCPT stage (`RcptStage`)
and the heuristics and rules at end of headers (`decide`). model/inbound.py composes them into
the whole per-message decision that the milter and `mxhook rule test` both run.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

from mxhook.model import heuristics
from mxhook.model.headers import address_domain, decode_field, normalize_address
from mxhook.model.rules import AUTHENTICATION_FIELDS, MatchResult, Rule, RuleSet

MISSING_FROM = "missing_from"  # the decision's name for a message without a From header


def header_index(raw_headers: list[tuple[str, bytes | str]],
                 only: frozenset[str] | None = None) -> dict[str, list[str]]:
    """lower-case field name -> decoded values, in message order; with `only`, just those
    fields (decoding a long Received chain no rule looks at is most of the work). A value is
    the text the payload's `headers` show (`decode_field`), so a rule matches what is posted."""
    index: dict[str, list[str]] = {}
    for name, value in raw_headers:
        key = name.lower()
        if only is None or key in only:
            index.setdefault(key, []).append(decode_field(name, value))
    return index


@dataclass
class Decision:
    verdict: heuristics.Verdict | None = None  # a heuristic rejected the whole message
    matches: list[MatchResult] = field(default_factory=list)  # one per recipient, in order

    @property
    def accepted(self) -> list[tuple[str, Rule]]:
        """(recipient, rule) for every rule that takes a recipient (several with fan-out)."""
        return [(m.recipient, rule) for m in self.matches for rule in m.taken]

    @property
    def denied(self) -> list[str]:
        return [m.recipient for m in self.matches if m.rule is None]

    @property
    def rejects_message(self) -> bool:
        return self.verdict is not None or not self.accepted

    def grouped(self) -> list[tuple[Rule, list[str]]]:
        """(rule, recipients) pairs in match order: one delivery per rule (a recipient that
        several rules take, `--continue`, is in each of their deliveries)."""
        groups: dict[str, tuple[Rule, list[str]]] = {}
        for rcpt, rule in self.accepted:
            groups.setdefault(rule.name, (rule, []))[1].append(rcpt)
        return list(groups.values())

    def reason(self) -> str:
        if self.verdict is not None:
            return self.verdict.reason
        if not self.accepted:
            return "no inbound rule matches " + ", ".join(f"<{r}>" for r in self.denied)
        return "accepted"


def screen(permitted_domains: frozenset[str], recipients: list[str],
           raw_headers: list[tuple[str, bytes | str]], *,
           enabled_heuristics: tuple[str, ...] = heuristics.ALL,
           missing_from: str = "reject") -> heuristics.Verdict | None:
    """What refuses the whole message before any rule: a missing From header field with
    `missing_from = reject` (nothing to check the heuristics against; a message whose first
    line starts with white space has no header section at all), then the heuristics."""
    from_values = [v for n, v in raw_headers if n.lower() == "from"]
    to_values = [v for n, v in raw_headers if n.lower() == "to"]
    if not from_values and missing_from == "reject":
        return heuristics.Verdict(
            MISSING_FROM, "the message has no From header field (a message whose first line "
            "starts with white space has no header section at all)")
    return heuristics.check(from_values, to_values, recipients, permitted_domains, enabled_heuristics)


def decide(
    ruleset: RuleSet,
    permitted_domains: frozenset[str],
    recipients: list[str],
    raw_headers: list[tuple[str, bytes | str]],
    *,
    enabled_heuristics: tuple[str, ...] = heuristics.ALL,
    explain: bool = False,
    missing_from: str = "reject",
    candidates: dict[str, tuple[Rule, ...]] | None = None,
    authentication: dict[str, str] | None = None,
) -> Decision:
    """`screen` first (it rejects the whole message), then `match_rules` per recipient."""
    verdict = screen(permitted_domains, recipients, raw_headers,
                     enabled_heuristics=enabled_heuristics, missing_from=missing_from)
    decision = Decision(verdict=verdict)
    if verdict is not None and not explain:
        return decision
    decision.matches = match_rules(ruleset, recipients, raw_headers, explain=explain,
                                   candidates=candidates, authentication=authentication)
    return decision


def match_rules(
    ruleset: RuleSet,
    recipients: list[str],
    raw_headers: list[tuple[str, bytes | str]],
    *,
    explain: bool = False,
    candidates: dict[str, tuple[Rule, ...]] | None = None,
    authentication: dict[str, str] | None = None,
) -> list[MatchResult]:
    """Each recipient's rules against the header fields.

    candidates: recipient -> `RuleSet.envelope_candidates` as the milter computed them at RCPT,
    so end of headers only evaluates header conditions and cannot disagree with the answer RCPT
    gave. authentication: the verdicts' condition values (`spf`, `dkim`, `dmarc`,
    `dmarc_policy`, `arc`), None when there are none (a condition on them then holds never)."""
    index = header_index(raw_headers, None if explain else ruleset.header_names)
    for name in AUTHENTICATION_FIELDS:  # the verdicts, never header fields of those names
        index.pop(name, None)
    if authentication is not None:
        index.update((name, [authentication.get(name, "")]) for name in AUTHENTICATION_FIELDS)
    if candidates is not None and not explain:
        known: dict = {}
        return [ruleset.match_candidates(r, candidates[r], index, known) for r in recipients]
    return ruleset.match_many(recipients, index, explain=explain)


ALWAYS = "always"  # outcome class of a recipient that some rule matches whatever the headers say


def outcome_class(ruleset: RuleSet, candidates: tuple[Rule, ...], recipient: str,
                  enabled_heuristics: tuple[str, ...] = heuristics.ALL) -> tuple:
    """What the end-of-headers outcome of a recipient depends on, beyond the message itself:
    recipients of one message with equal classes are all accepted or all refused, so one SMTP
    transaction may hold them together (the milter answers 452 4.5.3 to a recipient whose
    class differs from the transaction's, and the client sends it again on its own).

    - the header conditions of its candidate rules (`RuleSet.envelope_candidates`): it is
      accepted when every header condition of one candidate holds. A candidate without
      header conditions accepts it whatever the headers say (ALWAYS). Which rule accepts it
      does not matter here (each accepted recipient goes to its own rule's webhook), nor
      `--discard`: a discarded recipient is accepted too, posted, then dropped from Postfix's
      delivery, which the other recipients do not notice.
    - the heuristics reject whole transactions: header From in a permitted domain, or equal to
      a To header address, is the same for every recipient. "From equals the envelope
      recipient" depends on the recipient; with `from_permitted_domain` on it never decides
      alone (the recipient is in a permitted domain, so such a From is as well), without it
      the recipient's own address is part of the class.
    - a missing From header refuses every recipient alike.
    """
    alternatives = ruleset.header_alternatives(candidates)
    key: tuple = ("rules", ALWAYS if alternatives is None else alternatives)
    if (heuristics.FROM_EQUALS_TO in enabled_heuristics
            and heuristics.FROM_PERMITTED_DOMAIN not in enabled_heuristics):
        key += (normalize_address(recipient),)
    return key


# Outcome classes of recipients the rules do not decide (outcome_class for the rest).
# Never refused: unknown_domains = pass (left to Postfix, whatever the message says), and the
# recipients of a domain with `unmatched = pass` (a rule takes it, or Postfix delivers it)
PASSED = ("passed",)
HELD = ("held",)  # null sender, no rule: consumed if the message is a bounce report, else refused

# RcptOutcome kinds: what the milter answers at RCPT.
MANAGED = "managed"  # 250; the header conditions of its candidate rules decide at end of headers
PASS = "pass"  # 250; left to Postfix: unknown_domains = pass, or a domain's unmatched = pass
HOLD = "hold"  # 250; a null-sender recipient no rule takes: refused at end of headers (filter,
#               reason) unless the message is a bounce report, whose events consume it
DENY = "deny"  # 550 5.7.1 at RCPT (filter, reason)
SPLIT = "split"  # 452 4.5.3: its outcome may differ from the transaction's; sent again alone


UNKNOWN_PASS = "unknown_domains=pass"
UNMATCHED_PASS = "unmatched=pass"


def unknown_domain_reason(rcpt: str) -> str:
    return f"domain {address_domain(rcpt) or '(none)'} is not enabled for inbound mail on this server"


@dataclass(frozen=True)
class RcptOutcome:
    kind: str
    candidates: tuple[Rule, ...] = ()  # MANAGED: `RuleSet.envelope_candidates`
    filter: str = ""  # DENY, HOLD: "no_rule" or "unknown_domain"; PASS: UNKNOWN_PASS or UNMATCHED_PASS
    reason: str = ""
    passing: bool = False  # MANAGED in a domain with unmatched = pass: never refused
    # MANAGED, PASS, HOLD: accepted although its class differs from the transaction's, because
    # the transaction already has `max_refusals` refusals (a split would be one more smtpd error)
    overflow: bool = False


class RcptStage:
    """The RCPT answers of one inbound transaction, recipient by recipient in SMTP order: the
    first recipient accepted sets the transaction's outcome class, and a recipient of another
    class is split off (452 4.5.3).

    Every refusal at RCPT (452 and 550) is an error to Postfix's smtpd, which slows the session
    down after smtpd_soft_error_limit (10) and drops it at smtpd_hard_error_limit (20), before
    DATA: nothing of the transaction is queued. So once the transaction has `max_refusals`
    refusals, a recipient of another class is accepted (`overflow`); end of headers decides it,
    and if it is refused while others are accepted, Postfix bounces it (error(8) transport)."""

    def __init__(self, ruleset: RuleSet, permitted_domains: frozenset[str], *, unknown_domains: str,
                 null_sender: bool, enabled_heuristics: tuple[str, ...] = heuristics.ALL,
                 max_refusals: int | None = None, pass_unmatched: frozenset[str] = frozenset(),
                 verdicts: bool = True):
        self.ruleset = ruleset
        # False ([authentication] mode = off): a rule on the verdicts can take nobody, so it is
        # no candidate at all (the recipient is refused here, not accepted and refused later)
        self.verdicts = verdicts
        self.permitted_domains = permitted_domains
        self.pass_unmatched = pass_unmatched  # permitted domains whose unmatched recipients pass
        self.unknown_domains = unknown_domains
        self.null_sender = null_sender
        self.enabled_heuristics = enabled_heuristics
        self.max_refusals = max_refusals  # None: split without limit
        self.refusals = 0  # DENY and SPLIT answers given in this transaction
        self.outcome_class: tuple | None = None  # shared by every recipient of this transaction

    def recipient(self, rcpt: str) -> RcptOutcome:
        """The answer for a normalized recipient address."""
        domain = address_domain(rcpt)
        if domain in self.permitted_domains:
            candidates = self.ruleset.envelope_candidates(rcpt)
            if not self.verdicts:
                candidates = tuple(r for r in candidates if not r.needs_authentication)
            if domain in self.pass_unmatched:
                # never refused, whatever the message says: a rule takes it, or Postfix does
                return self._join(PASSED, RcptOutcome(MANAGED, candidates, passing=True) if candidates
                                  else RcptOutcome(PASS, filter=UNMATCHED_PASS, reason=(
                                      f"no inbound rule can take <{rcpt}>; domain {domain} passes "
                                      "recipients no rule takes to Postfix (unmatched = pass)")))
            if candidates:
                cls = outcome_class(self.ruleset, candidates, rcpt, self.enabled_heuristics)
                return self._join(cls, RcptOutcome(MANAGED, candidates))
            filt, reason = "no_rule", f"no inbound rule matches <{rcpt}>"
        elif self.unknown_domains == "pass":
            return self._join(PASSED, RcptOutcome(PASS, filter=UNKNOWN_PASS, reason=(
                f"domain {domain or '(none)'} is not permitted; unknown_domains = pass leaves it "
                "to Postfix (no rules)")))
        else:
            filt, reason = "unknown_domain", unknown_domain_reason(rcpt)
        if self.null_sender:
            # A null-sender message may be a bounce (DSN) for mail our applications sent: its
            # headers decide, so the refusal of such a recipient waits until end of headers.
            return self._join(HELD, RcptOutcome(HOLD, filter=filt, reason=reason))
        self.refusals += 1
        return RcptOutcome(DENY, filter=filt, reason=reason)

    def _join(self, cls: tuple, outcome: RcptOutcome) -> RcptOutcome:
        if self.outcome_class is None:
            self.outcome_class = cls
        if cls == self.outcome_class:
            return outcome
        if self.max_refusals is not None and self.refusals >= self.max_refusals:
            return replace(outcome, overflow=True)
        self.refusals += 1
        return RcptOutcome(SPLIT)
