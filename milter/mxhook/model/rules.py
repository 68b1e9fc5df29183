"""Inbound rules: the model, its validation, and matching. Pure: no database, no milter.

A rule is a route: name, priority (lower runs first), enabled flag, after-accept action,
conditions, and the destination its deliveries are posted to (model/targets.py). A condition is a
header name (case-insensitive; `To` means the envelope recipient, `Recipient` the envelope
recipient without its tag: `support+ticket-4711@x` is tested as `support@x`) plus a regex,
optionally negated. The reserved names `spf`, `dkim`, `dmarc`, `dmarc_policy` and `arc` are
the message's authentication verdicts, never header fields (known only at end of message). All
conditions of a rule must hold. Regexes are searched (not anchored), case-insensitively, with a
time bound: a pattern that runs out of time counts as no match.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import cached_property

import regex

from mxhook.model.recipients import DEFAULT_RECIPIENT_DELIMITER, split_recipient
from mxhook.model.targets import Destination, Target, check_destination

FORMATS = ("json", "multipart", "raw")
ENVELOPE_RECIPIENT = "to"  # a condition on this header name tests the envelope recipient
UNTAGGED_RECIPIENT = "recipient"  # ... and on this one, the envelope recipient without its tag
ENVELOPE_FIELDS = frozenset({ENVELOPE_RECIPIENT, UNTAGGED_RECIPIENT})  # decided at RCPT
# Reserved: a condition on one of these names tests the message's authentication verdict
# (mailauth's Verdicts.conditions()), never a header field of that name. Known only at end of
# message; without verdicts ([authentication] mode = off) such a condition holds never, negated
# or not.
AUTHENTICATION_FIELDS = frozenset({"spf", "dkim", "dmarc", "dmarc_policy", "arc"})

_FIELD_NAME = re.compile(r"^[\x21-\x39\x3b-\x7e]+$")  # RFC 5322 ftext
_RULE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


class RuleError(ValueError):
    """Invalid rule input; the message is meant for the admin as it stands."""


@dataclass(frozen=True)
class Condition:
    header: str  # lower-case field name
    pattern: str
    negate: bool = False

    def __str__(self) -> str:
        return f"{'not ' if self.negate else ''}{self.header}~{self.pattern}"


@dataclass(frozen=True)
class Rule:
    name: str
    destination: Destination
    conditions: tuple[Condition, ...] = ()
    priority: int = 0
    enabled: bool = True
    discard: bool = False
    # fan-out: a message this rule takes is also offered to the rules after it
    continue_matching: bool = False
    include_raw: bool = False  # the native payload carries the raw message too (`raw`)
    reject_text: str | None = None  # the 5xx text for recipients refused by its header conditions
    id: int | None = None

    @cached_property
    def needs_authentication(self) -> bool:
        """Has a condition on an authentication verdict: decided at end of message."""
        return any(c.header in AUTHENTICATION_FIELDS for c in self.conditions)

    @cached_property  # the milter asks for it for every message a rule takes
    def target(self) -> Target:
        """Where and how this rule's deliveries are posted. Its record form (with `discard`)
        goes into the spool record, so a message keeps the settings it was accepted under if
        the rule is removed."""
        return Target.of("rule", self.id, self.name, self.destination)

    def target_record(self) -> dict:
        """The target as a spool record carries it, with the rule's `discard` and
        `include_raw` (the payload reads it from the record)."""
        return self.target.to_record(discard=self.discard, include_raw=self.include_raw)


def parse_condition(spec: str, *, negate: bool = False) -> Condition:
    """'HEADER~REGEX' -> Condition, validated (header name syntax, regex compiles)."""
    header, sep, pattern = spec.partition("~")
    header = header.strip()
    if not sep or not header:
        raise RuleError(f"condition {spec!r} is not HEADER~REGEX (e.g. 'Subject~^Invoice')")
    if not _FIELD_NAME.match(header):
        raise RuleError(f"condition {spec!r}: {header!r} is not a valid header name")
    check_regex(pattern)
    return Condition(header=header.lower(), pattern=pattern, negate=negate)


def check_regex(pattern: str) -> regex.Pattern:
    """The compiled pattern (case-insensitive), or RuleError saying what is wrong with it."""
    if pattern == "":
        raise RuleError("empty regex: use '.*' to match anything, or leave the condition out")
    try:
        compiled = regex.compile(pattern, regex.IGNORECASE)
    except (regex.error, ValueError, OverflowError) as exc:
        raise RuleError(f"invalid regex {pattern!r}: {exc}") from None
    if _RECURSION.search(pattern):
        # The regex module allows them; no time bound stops their memory use.
        raise RuleError(f"invalid regex {pattern!r}: recursive patterns ((?R), (?1), (?&name)) "
                        "are not allowed")
    return compiled


# The start of a recursion or group call, unless its "(" is escaped (an odd number of
# backslashes before it); verbose mode allows blanks before its ")", so that is not looked at.
# Also found in a class or a comment, where it is literal: refused there too, on the safe side.
_RECURSION = regex.compile(r"(?<!\\)(?:\\\\)*\(\?(?:R|[+-]?\d|&|P>)")


_PATTERN_TOKEN = regex.compile(r"""
    \\(?P<ref>[1-9]|g<|k<)            # a backreference
  | \\.                              # any other escape: never a quantifier
  | \[\^?\]?(?:\\.|[^\]\\])*\]          # a character class: its * + ? { are literal
  | \(\?\#(?:\\.|[^)\\])*\)            # a comment: skipped as the regex module skips it
  | \(\?(?P<flags>[a-zA-Z01]*)(?:-[a-zA-Z]*)?(?=[:)])   # inline flags, scoped or not
  | \(\?(?P<named>P=)?                # a group prefix: its ? is no quantifier
  | (?P<rep>[*+]|\{\d*,?\d*\})        # a repeat
  | (?P<fuzzy>\{[^{}]*(?<![a-z])[eisd](?![a-z])[^{}]*\})   # fuzzy matching: {e<=2}, {i+d<3}
  | (?P<opt>\?)                       # optional (or a lazy marker)
  | .""", regex.VERBOSE | regex.DOTALL)


def backtracking_risk(pattern: str) -> str | None:
    """Advice for `mxhook rule add`: why a pattern may take more than linear time, or None
    when this rough reading of it sees no quantifier.

    Only advice: every search is bounded by `regex_timeout` whatever this says, because a
    reading of a pattern outside the regex engine can be fooled (comments, verbose mode, the
    module's own syntax). Two or more repeats (nested like `(a+)+`, or in a row like
    `.*a.*b`), a repeated group of alternatives (`(a|aa)+`: harmless when the alternatives
    cannot match the same text, which is not checked), a backreference, fuzzy matching, or a
    pattern this reading cannot follow (verbose mode) can backtrack catastrophically: those
    are the warnings (`is_catastrophic_risk`).
    """
    repeats = optionals = refs = fuzzy = 0
    groups: list[bool] = []  # per open group: whether it holds an alternation
    closed_alternation = repeated_alternation = False
    for m in _PATTERN_TOKEN.finditer(pattern):
        token = m.group()
        flags = m.group("flags")
        if flags is not None and "x" in flags:
            # In verbose mode `#` starts a comment and blanks are ignored: not read here.
            return ("uses verbose mode ((?x)), whose comments this check does not read: it may "
                    "backtrack catastrophically on long header values")
        if m.group("rep"):
            repeats += 1
            repeated_alternation |= closed_alternation
        elif m.group("fuzzy"):
            fuzzy += 1
        elif m.group("opt"):
            optionals += 1
        elif m.group("ref") or m.group("named"):
            refs += 1
        closed_alternation = False
        if token == "(" or (token.startswith("(?") and not token.startswith("(?#")):
            groups.append(False)
        elif token == "|" and groups:
            groups[-1] = True
        elif token == ")" and groups:
            closed_alternation = groups.pop()
    if refs:
        return "uses a backreference (matching time can grow exponentially)"
    if fuzzy:
        return ("uses fuzzy matching ({e<=n}): matching time grows steeply with the value's "
                "length and the number of errors allowed")
    if repeated_alternation:
        return ("repeats a group of alternatives, like (a|aa)+: when two alternatives can match "
                "the same text, matching time grows exponentially with the value's length")
    if repeats >= 2:
        return (f"has {repeats} repeats (*, +, {{n,m}}): nested or adjacent ones can backtrack "
                "catastrophically on long header values")
    if repeats or optionals:
        return "has a quantifier (bounded in time, not catastrophic on its own)"
    return None


def is_catastrophic_risk(pattern: str) -> bool:
    """True when `mxhook rule add` should warn: the pattern may hit the time bound on hostile
    input, and a pattern that times out counts as no match."""
    risk = backtracking_risk(pattern)
    return risk is not None and not risk.startswith("has a quantifier")


# "550 5.7.1 " + text + CRLF must fit the 512 octets of an SMTP reply line (RFC 5321 4.5.3.1.5)
MAX_REJECT_TEXT = 512 - len("550 5.7.1 ") - 2


def check_reject_text(text: str | None) -> str | None:
    """A custom reject text as the milter can send it in its 5xx reply: printable ASCII, no
    line end, not `%` (libmilter would read it as a format character), and short enough for
    the reply line. RuleError saying what is wrong; None and '' mean "no custom text"."""
    if not text:
        return None
    bad = next((c for c in text if not " " <= c <= "~" or c == "%"), None)
    if bad is not None:
        raise RuleError(f"reject text: {bad!r} is not allowed (printable ASCII only, no line "
                        "ends, no '%')")
    if text != text.strip():
        raise RuleError("reject text: no leading or trailing spaces")
    if len(text) > MAX_REJECT_TEXT:
        raise RuleError(f"reject text is {len(text)} characters; at most {MAX_REJECT_TEXT} fit "
                        "the 512-octet SMTP reply line after '550 5.7.1 '")
    return text


def validate(rule: Rule) -> Rule:
    """Raise RuleError (DestinationError for the destination) on the first problem; return the
    rule unchanged when it is sound."""
    if not _RULE_NAME.match(rule.name or ""):
        raise RuleError(
            f"rule name {rule.name!r} must be 1-64 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    check_destination(rule.destination, FORMATS)
    if not rule.conditions:
        raise RuleError("a rule needs at least one condition (--when 'HEADER~REGEX')")
    for cond in rule.conditions:
        if not _FIELD_NAME.match(cond.header):
            raise RuleError(f"{cond.header!r} is not a valid header name")
        check_regex(cond.pattern)
    check_reject_text(rule.reject_text)
    if rule.include_raw and (rule.destination.dialect != "native" or rule.destination.format == "raw"):
        raise RuleError("--include-raw adds the raw message to the native json or multipart "
                        "body: not with a dialect, nor with --format raw (which is the raw message)")
    return rule


# ---------------------------------------------------------------------------------------------
# Matching

@dataclass
class ConditionResult:
    condition: Condition
    satisfied: bool
    matched_value: str | None = None  # the value that matched (or, negated, that spoiled it)
    timed_out: bool = False
    unknown: bool = False  # an authentication condition without verdicts: holds never


@dataclass
class RuleResult:
    rule: Rule
    matched: bool
    conditions: list[ConditionResult] = field(default_factory=list)

    def reason(self) -> str:
        if not self.rule.enabled:
            return "disabled"
        failed = [c for c in self.conditions if not c.satisfied]
        if not failed:
            return "all conditions hold"
        c = failed[0]
        if c.timed_out:
            return f"{c.condition} timed out (counts as no match)"
        if c.unknown:
            return (f"{c.condition}: no authentication verdicts ([authentication] mode = off): "
                    "a rule with such a condition never matches")
        what = _ENVELOPE_WHAT.get(c.condition.header, c.condition.header)
        if c.condition.negate:
            return f"{c.condition}: {what} is {c.matched_value!r}"
        if c.condition.header in AUTHENTICATION_FIELDS:
            return f"{c.condition}: the {what} is {c.matched_value!r}"
        if c.condition.header in ENVELOPE_FIELDS:
            return f"{c.condition}: the {what} does not match"
        return f"{c.condition}: no {what} value matches"


_ENVELOPE_WHAT = {ENVELOPE_RECIPIENT: "envelope recipient",
                  UNTAGGED_RECIPIENT: "envelope recipient without its tag",
                  **{name: f"{name} verdict" for name in AUTHENTICATION_FIELDS}}


@dataclass
class MatchResult:
    recipient: str
    rule: Rule | None  # the first rule that takes it
    evaluated: list[RuleResult] = field(default_factory=list)
    # every rule that takes it, in matching order: the first, and after each `--continue` rule
    # the next one that matches (fan-out)
    taken: list[Rule] = field(default_factory=list)

    def take(self, rule: Rule) -> bool:
        """Record that `rule` takes the recipient; True when matching goes on to the rules
        after it (`continue_matching`)."""
        if self.rule is None:
            self.rule = rule
        self.taken.append(rule)
        return rule.continue_matching

    @property
    def timeouts(self) -> list[ConditionResult]:
        return [c for r in self.evaluated for c in r.conditions if c.timed_out]


class RuleSet:
    """An immutable, compiled snapshot of the rules, ordered by (priority, id, name).

    The milter swaps a whole new RuleSet in when rules.db changes, so matching never takes a
    lock. `headers` for matching is a dict of lower-case field name -> list of decoded values.
    """

    def __init__(self, rules: list[Rule], *, regex_timeout: float = 0.05,
                 recipient_delimiter: str = DEFAULT_RECIPIENT_DELIMITER):
        if isinstance(regex_timeout, bool) or not isinstance(regex_timeout, (int, float)) \
                or not regex_timeout > 0:
            # None or a negative number would mean "no bound" to the regex module
            raise RuleError(f"[milter] regex_timeout must be a number of seconds above 0, "
                            f"not {regex_timeout!r}")
        self.rules = tuple(sorted(rules, key=lambda r: (r.priority, r.id or 0, r.name)))
        self.regex_timeout = regex_timeout
        # `[milter] recipient_delimiter`: how `Recipient` conditions cut the tag off
        self.recipient_delimiter = recipient_delimiter
        self._untagged_tested = any(c.header == UNTAGGED_RECIPIENT for r in self.rules for c in r.conditions)
        # A pattern that does not compile (written to rules.db by other means than `mxhook
        # rule`) takes only its own rule out, never the others: (rule, reason) for the log.
        self.broken: list[tuple[Rule, str]] = []
        self._compiled = {}
        for r in self.rules:
            try:
                for c in r.conditions:
                    if c.pattern not in self._compiled:
                        self._compiled[c.pattern] = check_regex(c.pattern)
            except RuleError as exc:
                self.broken.append((r, str(exc)))
        self._broken_ids = {id(r) for r, _ in self.broken}
        self._usable = [r for r in self.rules if id(r) not in self._broken_ids]
        # The milter's hot path: enabled rules, each as (rule, [(is_rcpt, header, (header,
        # pattern), search, timeout, negate, condition)]). Every search carries the time bound:
        # whether a pattern can backtrack is not decided outside the regex engine.
        self._plan = [
            (r, [(c.header in ENVELOPE_FIELDS, c.header, (c.header, c.pattern),
                  self._compiled[c.pattern].search, regex_timeout, c.negate, c)
                 for c in r.conditions])
            for r in self._usable if r.enabled
        ]
        self._prefilters = self._build_prefilters()
        self._plan_position = {id(rule): i for i, (rule, _) in enumerate(self._plan)}
        # the header fields the rules look at (`To` and `Recipient` are the envelope's, the
        # authentication names the verdicts': no field)
        self.header_names = (frozenset(c.header for r in self._usable for c in r.conditions)
                             - ENVELOPE_FIELDS - AUTHENTICATION_FIELDS)
        self._everything = frozenset(range(len(self._plan)))

    def _build_prefilters(self) -> dict[str, tuple]:
        """Per header: one alternation of its patterns, searched before any rule. When it finds
        nothing, none of those patterns can match, so a hundred rules that test Subject cost one
        search instead of a hundred (the regex module scans an alternation of literals in one
        pass), and the rules that need one of them are skipped without a look.
        header -> (search, timeout, {(header, pattern)} it rules out, plan indexes it rules out)."""
        by_header: dict[str, set[str]] = {}
        for _, conditions in self._plan:
            for _, header, (_, pattern), *_ in conditions:
                if shares_alternation(pattern) and not is_catastrophic_risk(pattern):
                    by_header.setdefault(header, set()).add(pattern)
        prefilters = {}
        for header, patterns in by_header.items():
            if len(patterns) < 2:
                continue
            ordered = sorted(patterns)
            try:
                combined = regex.compile("|".join(f"(?:{p})" for p in ordered), regex.IGNORECASE)
            except (regex.error, ValueError, OverflowError, RecursionError):
                continue  # each pattern is still searched on its own
            keys = frozenset((header, p) for p in ordered)
            needing = frozenset(i for i, (_, conditions) in enumerate(self._plan)
                                if any(key in keys and not negate for _, _, key, _, _, negate, _ in conditions))
            prefilters[header] = (combined.search, self.regex_timeout, keys, needing)
        return prefilters

    def __len__(self) -> int:
        return len(self.rules)

    def _check(self, cond: Condition, values: list[str]) -> ConditionResult:
        pattern = self._compiled[cond.pattern]
        hit = None
        for value in values:
            try:
                if pattern.search(value, timeout=self.regex_timeout):
                    hit = value
                    break
            except TimeoutError:
                return ConditionResult(cond, satisfied=False, timed_out=True)
        if cond.negate:
            return ConditionResult(cond, satisfied=hit is None, matched_value=hit)
        return ConditionResult(cond, satisfied=hit is not None, matched_value=hit)

    def _check_verdict(self, cond: Condition, values: list[str] | None) -> ConditionResult:
        """An authentication condition: its verdict as the value (None: no verdicts, so the
        condition holds never, negated or not)."""
        if values is None:
            return ConditionResult(cond, satisfied=False, unknown=True)
        res = self._check(cond, values)
        if not res.timed_out:
            res.matched_value = values[0] if values else ""
        return res

    def envelope_values(self, recipient: str) -> dict[str, list[str]]:
        """What `To` and `Recipient` conditions test for this envelope recipient."""
        if not self._untagged_tested:  # the address without its tag is cut only when tested
            return {ENVELOPE_RECIPIENT: [recipient]}
        return {ENVELOPE_RECIPIENT: [recipient],
                UNTAGGED_RECIPIENT: [split_recipient(recipient, self.recipient_delimiter)[0]]}

    def evaluate(self, rule: Rule, recipient: str, headers: dict[str, list[str]]) -> RuleResult:
        results = []
        envelope = self.envelope_values(recipient)
        for cond in rule.conditions:
            if cond.header in AUTHENTICATION_FIELDS:
                res = self._check_verdict(cond, headers.get(cond.header))
                results.append(res)
                if not res.satisfied:
                    break
                continue
            values = envelope.get(cond.header) or headers.get(cond.header, [])
            res = self._check(cond, values)
            results.append(res)
            if not res.satisfied:
                break
        matched = rule.enabled and all(r.satisfied for r in results)
        return RuleResult(rule, matched, results)

    def match(self, recipient: str, headers: dict[str, list[str]], *, explain: bool = False) -> MatchResult:
        """The enabled rules that take this recipient: the first whose conditions all hold,
        and, after one with `continue_matching`, the next that holds (fan-out). With
        explain=True every rule is evaluated and reported (for `mxhook rule test`); otherwise
        evaluation stops at the last rule that takes it, and only timed-out conditions are
        reported."""
        if not explain:
            return self._first_match(recipient, headers)
        result = MatchResult(recipient, None)
        going = True
        for rule in self.rules:
            usable = rule.enabled and id(rule) not in self._broken_ids
            rr = self.evaluate(rule, recipient, headers) if usable else RuleResult(rule, False)
            result.evaluated.append(rr)
            if rr.matched and going:
                going = result.take(rule)
        return result

    def match_many(self, recipients: list[str], headers: dict[str, list[str]], *,
                   explain: bool = False) -> list[MatchResult]:
        """`match` for each recipient of one message. Header conditions do not depend on the
        recipient, so each header pattern is searched once per message: forty recipients and
        a pattern that runs into `regex_timeout` on a hostile Subject cost one timeout, not
        forty, of the SMTP session's time."""
        if explain:
            return [self.match(r, headers, explain=True) for r in recipients]
        header_known: dict = {}
        return [self._first_match(r, headers, header_known) for r in recipients]

    def _first_match(self, recipient: str, headers: dict[str, list[str]],
                     header_known: dict | None = None) -> MatchResult:
        result = MatchResult(recipient, None)
        envelope = self.envelope_values(recipient)
        empty: list[str] = []
        # (header, pattern) -> hit (None: timed out): each pattern is searched once however
        # many rules share it, per recipient for `To`, per message for header fields (shared
        # through `header_known`, which also keeps the header prefilters' answers by header).
        # `ruled_out` holds the prefilters' verdicts.
        rcpt_known: dict[tuple[str, str], bool | None] = {}
        if header_known is None:
            header_known = {}
        ruled_out: list[frozenset] = []
        skip: set[int] = set()
        for header, (search, timeout, keys, needing) in self._prefilters.items():
            if header in ENVELOPE_FIELDS:
                found = _search_values(search, timeout, envelope[header])
            else:
                found = header_known.get(header, _UNKNOWN)
                if found is _UNKNOWN:
                    found = header_known[header] = _search_values(search, timeout, headers.get(header, empty))
            if found is False:  # else each pattern is searched on its own
                ruled_out.append(keys)
                skip |= needing
        plan = self._plan
        for index in sorted(self._everything - skip) if skip else range(len(plan)):
            rule, conditions = plan[index]
            for is_rcpt, header, key, search, timeout, negate, cond in conditions:
                known = rcpt_known if is_rcpt else header_known
                hit = known.get(key, _UNKNOWN)
                if hit is _UNKNOWN:
                    hit = known[key] = False if any(key in keys for keys in ruled_out) else _search_values(
                        search, timeout, envelope[header] if is_rcpt else headers.get(header, empty))
                if hit is None:
                    result.evaluated.append(RuleResult(rule, False, [ConditionResult(cond, False, timed_out=True)]))
                    break
                if hit == negate or (negate and header in AUTHENTICATION_FIELDS and header not in headers):
                    break  # (no verdicts: an authentication condition holds never)
            else:
                if not result.take(rule):
                    return result
        return result

    # -- two-step matching: envelope at RCPT, headers at end of headers (the milter) ----------

    def envelope_candidates(self, recipient: str) -> tuple[Rule, ...]:
        """The enabled rules that can still match `recipient` once its envelope conditions
        (`To`, `Recipient`) are evaluated, in matching order, ending at the first one without
        header conditions and without `continue_matching` (it matches whatever the headers
        say, so no later rule is ever reached).
        Empty: no rule can match this recipient, whatever the message says. A `To` pattern
        that runs out of time counts as no match, as in `match`."""
        found: list[Rule] = []
        envelope = self.envelope_values(recipient)
        rcpt_known: dict[tuple[str, str], bool | None] = {}
        for rule, conditions in self._plan:
            needs_headers = False
            for is_rcpt, header, key, search, timeout, negate, _cond in conditions:
                if not is_rcpt:
                    needs_headers = True
                    continue
                hit = rcpt_known.get(key, _UNKNOWN)
                if hit is _UNKNOWN:
                    hit = rcpt_known[key] = _search_values(search, timeout, envelope[header])
                if hit is None or hit == negate:
                    break
            else:
                found.append(rule)
                if not needs_headers and not rule.continue_matching:
                    break
        return tuple(found)

    def header_alternatives(self, candidates: tuple[Rule, ...]) -> frozenset | None:
        """What decides whether one of `candidates` matches: the set of their header-condition
        sets (any one set holding suffices), or None when one candidate has no header
        condition (it matches whatever the headers say). Cached per candidate tuple: the
        milter asks for every RCPT, and most recipients share a handful of tuples."""
        cache = self.__dict__.setdefault("_alternatives", {})
        key = tuple(map(id, candidates))
        found = cache.get(key, _UNKNOWN)
        if found is _UNKNOWN:
            sets = set()
            for rule in candidates:
                conditions = frozenset(c for c in rule.conditions if c.header not in ENVELOPE_FIELDS)
                if not conditions:
                    sets = None
                    break
                sets.add(conditions)
            found = None if sets is None else frozenset(sets)
            if len(cache) >= 10000:
                cache.clear()
            cache[key] = found
        return found

    def match_candidates(self, recipient: str, candidates: tuple[Rule, ...],
                         headers: dict[str, list[str]], header_known: dict | None = None) -> MatchResult:
        """The first of `candidates` (from `envelope_candidates`, whose envelope conditions
        already hold) whose header conditions hold, and after a `continue_matching` one the
        next (MatchResult.taken). `header_known` shares each header
        pattern's answer, and the header prefilters' verdicts, between the recipients of one
        message."""
        result = MatchResult(recipient, None)
        known = {} if header_known is None else header_known
        skip, ruled_out = self._header_prefilters(headers, known)
        empty: list[str] = []
        position = self._plan_position
        for rule in candidates:
            if skip and position.get(id(rule)) in skip:
                continue  # needs a header pattern its prefilter found nowhere
            for cond in rule.conditions:
                if cond.header in ENVELOPE_FIELDS:
                    continue
                key = ("candidate", cond.header, cond.pattern)
                hit = known.get(key, _UNKNOWN)
                if hit is _UNKNOWN:
                    hit = known[key] = False if (cond.header, cond.pattern) in ruled_out \
                        else _search_values(self._compiled[cond.pattern].search, self.regex_timeout,
                                            headers.get(cond.header, empty))
                if hit is None:
                    result.evaluated.append(RuleResult(rule, False, [ConditionResult(cond, False, timed_out=True)]))
                    break
                if hit == cond.negate or (cond.negate and cond.header in AUTHENTICATION_FIELDS
                                          and cond.header not in headers):
                    break
            else:
                if not result.take(rule):
                    return result
        return result

    def _header_prefilters(self, headers: dict[str, list[str]], known: dict) -> tuple[frozenset, frozenset]:
        """(plan indexes to skip, (header, pattern) keys known not to match): each header
        field's prefilter alternation searched once per message (kept in `known`)."""
        found = known.get(_PREFILTERED)
        if found is None:
            skip: set[int] = set()
            ruled_out: set = set()
            for header, (search, timeout, keys, needing) in self._prefilters.items():
                if header not in ENVELOPE_FIELDS and _search_values(search, timeout, headers.get(header, [])) is False:
                    skip |= needing
                    ruled_out |= keys
            found = known[_PREFILTERED] = (frozenset(skip), frozenset(ruled_out))
        return found


_UNKNOWN = object()
_PREFILTERED = ("prefilter",)  # the key of `_header_prefilters`' answer in a `known` dict


def _search_values(search, timeout: float, values: list[str]) -> bool | None:
    """Whether the pattern is found in any value; None when it ran out of time (which counts
    as no match, for every rule that uses the pattern)."""
    try:
        return any(search(value, timeout=timeout) for value in values)
    except TimeoutError:
        return None


def shares_alternation(pattern: str) -> bool:
    """True when `pattern` means the same inside `(?:...)|(?:...)` as alone: no inline flags
    (which can apply to the whole pattern), group names or numbers, or backtracking verbs that
    could reach into a neighbour. Conservative: a false answer only costs speed."""
    if "(*" in pattern or regex.search(r"\\(?:[0-9]|g|k)", pattern):
        return False
    for m in regex.finditer(r"\(\?", pattern):
        if not pattern.startswith((":", "=", "!", "<=", "<!"), m.end()):
            return False
    return True
