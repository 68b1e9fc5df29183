"""Fuzzing rule input and matching.

- `parse_condition` on any string: a Condition or a RuleError (whose message is meant for the
  admin), never another exception;
- `validate` on random rules: the rule or a RuleError;
- `RuleSet.match` with random rules and headers never raises, and a pattern that backtracks
  catastrophically is cut off by the regex timeout (counted as no match, reported as timed out).
"""
from __future__ import annotations

import time
from dataclasses import replace

from hypothesis import assume, example, given
from hypothesis import strategies as st

from mxhook.model import rules
from mxhook.model.rules import Condition, Rule, RuleError, RuleSet
from mxhook.model.targets import Destination, DestinationError

from . import FUZZ, scaled

REGEX_BITS = st.sampled_from([
    "(", ")", "[", "]", "{", "}", "*", "+", "?", "|", "^", "$", ".", "\\", "\\d", "\\w", "\\p{L}",
    "(?i)", "(?P<n>", "(?P=n)", "(?<=a)", "(?<!b)", "{2,3}", "{99999999999}", "\\N{LATIN SMALL LETTER A}",
    "(?V1)", "(?r)", "[[:alpha:]]", "\\g<0>", "(?|a|b)", "(?>a+)", "a++", "\\X", "(?f)", "\\1", "\x00",
    "a", "b", "@", "~", ":", " ",
])
PATTERNS = st.one_of(st.lists(REGEX_BITS, max_size=12).map("".join), st.text(max_size=40))
HEADER_NAMES = st.one_of(
    st.sampled_from(["To", "to", "Subject", "From", "X-Tag", "Reply-To", "", " ", "Sub ject", "Ä", "a:b"]),
    st.text(max_size=15),
)


@FUZZ
@given(st.text(max_size=80))
@example("")
@example("~")
@example("Subject~")
@example("Subject~(")
@example("Subject~a{99999999999}")
@example("Subject~\\N{NOT A NAME}")
@example("Sub\x00ject~x")
def test_parse_condition_arbitrary(spec):
    try:
        cond = rules.parse_condition(spec)
    except RuleError as exc:
        assert str(exc)  # a message for the admin
        return
    assert isinstance(cond, Condition)
    assert cond.header == cond.header.lower() and cond.pattern


@FUZZ
@given(HEADER_NAMES, PATTERNS, st.booleans())
def test_parse_condition_structured(header, pattern, negate):
    try:
        cond = rules.parse_condition(f"{header}~{pattern}", negate=negate)
    except RuleError as exc:
        assert str(exc)
        return
    assert cond.negate is negate
    # a condition that parsed can be compiled into a rule set and matched
    rs = RuleSet([Rule("r", Destination("https://h.example/"), (cond,))], regex_timeout=0.05)
    rs.match("a@ours.example", {cond.header: ["value"]})


@FUZZ
@given(st.builds(
    Rule,
    name=st.text(max_size=70),
    destination=st.builds(
        Destination,
        url=st.text(max_size=60) | st.sampled_from(
            ["https://h.example/x", "http://h.example/", "https://u:p@h.example/", "https://h.example:99999/",
             "https://[::1/", "ftp://h.example/", "https:///nohost"]),
        format=st.sampled_from(["json", "multipart", "raw", "xml", ""]),
        basic_auth=st.none() | st.text(max_size=10), bearer=st.none() | st.text(max_size=10),
        retry_interval=st.integers(-5, 700), retry_period=st.integers(-1, 12),
        timeout=st.integers(-1, 1200), allow_http=st.booleans()),
    conditions=st.lists(st.builds(Condition, header=HEADER_NAMES, pattern=PATTERNS, negate=st.booleans()),
                        max_size=3).map(tuple),
    priority=st.integers(-10**6, 10**6),
))
def test_validate_random_rules(rule):
    try:
        assert rules.validate(rule) is rule
    except (RuleError, DestinationError) as exc:
        assert str(exc)


VALUES = st.one_of(st.text(max_size=200), st.sampled_from(["a" * 40 + "!", "x" * 5000, "", "\udcff"]))


@st.composite
def rule_sets(draw):
    out = []
    for i in range(draw(st.integers(1, 4))):
        conds = []
        for _ in range(draw(st.integers(1, 3))):
            # compiled (and invalid ones replaced) in the test: regex touches `random` on compile,
            # which hypothesis does not want inside a strategy
            conds.append(Condition(draw(st.sampled_from(["to", "subject", "from", "x-tag"])), draw(PATTERNS),
                                   draw(st.booleans())))
        out.append(Rule(f"r{i}", Destination("https://h.example/"), tuple(conds),
                        priority=draw(st.integers(-3, 3)), enabled=draw(st.booleans()), id=i + 1))
    return out


def compilable(rule_list: list[Rule], stand_in: str) -> list[Rule]:
    """The rules with each pattern that does not compile replaced by `stand_in`."""
    def valid(cond):
        try:
            rules.check_regex(cond.pattern)
            return cond
        except RuleError:
            return Condition(cond.header, stand_in, cond.negate)

    return [replace(r, conditions=tuple(map(valid, r.conditions))) for r in rule_list]


@scaled(150)
@given(rule_sets(), st.dictionaries(st.sampled_from(["subject", "from", "x-tag", "cc"]),
                                    st.lists(VALUES, max_size=3), max_size=4),
       st.text(max_size=40), st.booleans())
def test_match_never_raises(rule_list, hdrs, rcpt, explain):
    rs = RuleSet(compilable(rule_list, "."), regex_timeout=0.05)
    result = rs.match(rcpt, hdrs, explain=explain)
    assert result.rule is None or result.rule.enabled
    if result.rule is not None:
        # the first enabled rule (in priority order) whose conditions hold
        for earlier in rs.rules:
            if earlier is result.rule:
                break
            if earlier.enabled:
                assert not rs.evaluate(earlier, rcpt, hdrs).matched
    for rr in result.evaluated:
        rr.reason()


# Patterns that really backtrack exponentially in the `regex` module (it defuses simpler ones
# such as (a+)+$ by itself); each runs for seconds, or longer, on 30 a's and a "!" unbounded.
# The last ones hide their repeats in comments: the bound must not depend on reading them.
CATASTROPHIC = [r"(a|a)+$", r"(a|aa)+$", r"(.*){1,32000}[bc]", r"x?(a|a)+$", r"(?#[)(a|a)+$(?#])",
                "(?x)#[\n(a|a)+$ #]"]


@scaled(12)
@given(st.sampled_from(CATASTROPHIC), st.integers(28, 40))
def test_match_respects_regex_timeout(pattern, n):
    """A pattern with catastrophic backtracking on a hostile value: the match is cut off by the
    timeout (no match, reported as timed out), it does not stall the milter."""
    timeout = 0.05
    value = "a" * n + "!"
    rs = RuleSet([Rule("slow", Destination("https://h.example/"), (Condition("subject", pattern),),
                       id=1)],
                 regex_timeout=timeout)
    start = time.monotonic()
    result = rs.match("in@ours.example", {"subject": [value, value]})
    elapsed = time.monotonic() - start
    assert result.rule is None
    assert result.timeouts, "the pattern should have timed out (counts as no match)"
    # one timeout per condition, not per value; generous bound for a loaded machine
    assert elapsed < 2.0, f"matching took {elapsed:.2f}s with regex_timeout={timeout}"
    assert "timed out" in result.evaluated[0].reason()


MATCH_BITS = st.sampled_from(["ticket", "-1", "1", "a", "A", "@", "ours", ".example", " ", "é", "É",
                              "\u017f", "s", "\u212a", "k", "\n", "!"])


@st.composite
def crowded_rule_sets(draw):
    """Many rules on the same few headers, so the per-header prefilters really exist."""
    # inline flags and verbs that would change a neighbour's meaning inside one alternation
    # (comments too: they must not hide a flag from the check, nor become one inside a neighbour)
    spoilers = st.sampled_from(["(?x)", "(?-i)", "(*SKIP)(*FAIL)", "(*PRUNE)", "(?s)", "(a)\\1", "(?V1)",
                                "(?#", "(?#)", "(?#(?-i))", "(?#[)", "]", "#", "\n", "(?x)#", "(?#\\)"])
    patterns = st.one_of(PATTERNS, st.lists(st.one_of(MATCH_BITS, REGEX_BITS, spoilers), min_size=1, max_size=5)
                         .map("".join))
    out = []
    for i in range(draw(st.integers(2, 10))):
        conds = tuple(Condition(draw(st.sampled_from(["to", "recipient", "subject"])), draw(patterns),
                                draw(st.booleans()))
                      for _ in range(draw(st.integers(1, 2))))
        out.append(Rule(f"r{i}", Destination("https://h.example/"), conds, priority=i, id=i + 1,
                        continue_matching=draw(st.booleans())))
    return out


@scaled(300)
@given(crowded_rule_sets(), st.lists(st.lists(MATCH_BITS, max_size=6).map("".join), max_size=3),
       st.lists(MATCH_BITS, max_size=6).map("".join))
def test_prefilters_never_change_the_first_match(rule_list, subjects, rcpt):
    """The milter's path (combined per-header prefilter, shared results) picks the same rule as
    evaluating every condition on its own (`explain`, what `mxhook rule test` shows)."""
    rs = RuleSet(compilable(rule_list, "ticket"), regex_timeout=0.5)
    hdrs = {"subject": subjects}
    fast = rs.match(rcpt, hdrs)
    slow = rs.match(rcpt, hdrs, explain=True)
    assume(not fast.timeouts and not slow.timeouts)
    assert fast.rule is slow.rule
    assert list(map(id, fast.taken)) == list(map(id, slow.taken))  # fan-out: the same rules


@scaled(300)
@given(crowded_rule_sets(), st.lists(st.lists(MATCH_BITS, max_size=6).map("".join), max_size=3),
       st.lists(MATCH_BITS, max_size=6).map("".join))
def test_two_step_match_picks_the_rule_match_picks(rule_list, subjects, rcpt):
    """The milter's two steps (envelope candidates at RCPT, their header conditions at end of
    headers, with the header prefilters) pick the same rule as evaluating every condition."""
    rs = RuleSet(compilable(rule_list, "ticket"), regex_timeout=0.5)
    hdrs = {"subject": subjects}
    two_step = rs.match_candidates(rcpt, rs.envelope_candidates(rcpt), hdrs)
    slow = rs.match(rcpt, hdrs, explain=True)
    assume(not two_step.timeouts and not slow.timeouts)
    assert two_step.rule is slow.rule
    assert list(map(id, two_step.taken)) == list(map(id, slow.taken))  # fan-out: the same rules
