import multiprocessing
import time

import pytest

from mxhook.model import rules
from mxhook.model.rules import Rule, RuleError, RuleSet, parse_condition, validate
from mxhook.model.targets import Destination, DestinationError
from tests.support.destinations import routed


def rule(name="r", conditions=("Subject~invoice",), url="https://hooks.example.net/in", **kw):
    conds = tuple(parse_condition(c) for c in conditions)
    return Rule(**routed(url, name=name, conditions=conds, **kw))


def test_parse_condition_lowercases_header_and_keeps_pattern():
    c = parse_condition("X-Custom-Tag~^A~B$")
    assert (c.header, c.pattern, c.negate) == ("x-custom-tag", "^A~B$", False)
    assert parse_condition("To~@x", negate=True).negate is True


@pytest.mark.parametrize("spec,message", [
    ("Subject", "HEADER~REGEX"),
    ("~foo", "HEADER~REGEX"),
    ("Sub ject~x", "not a valid header name"),
    ("Subject~(", "invalid regex"),
    ("Subject~", "empty regex"),
])
def test_parse_condition_rejects_bad_input_with_clear_message(spec, message):
    with pytest.raises(RuleError, match=message):
        parse_condition(spec)


@pytest.mark.parametrize("changes,message", [
    ({"url": "http://x.example/h"}, "not HTTPS"),
    ({"url": "ftp://x.example/h"}, "https:// URL"),
    ({"url": "https://u:p@x.example/h"}, "--basic-auth"),
    ({"basic_auth": "u:p", "bearer": "t"}, "not both"),
    ({"basic_auth": "nocolon"}, "USER:PASSWORD"),
    ({"retry_interval": 9}, "between 10 and 600"),
    ({"retry_interval": 601}, "between 10 and 600"),
    ({"retry_period": 0}, "between 1 and 10"),
    ({"retry_period": 11}, "between 1 and 10"),
    ({"timeout": 0}, "between 1 and 999"),
    ({"timeout": 1000}, "between 1 and 999"),
    ({"format": "xml"}, "format must be one of"),
    ({"name": "bad name"}, "rule name"),
])
def test_validate_rejects(changes, message):
    with pytest.raises((RuleError, DestinationError), match=message):
        validate(rule(**changes))


def test_validate_accepts_http_only_when_allowed_and_needs_a_condition():
    validate(rule(url="http://127.0.0.1:8080/h", allow_http=True))
    with pytest.raises(RuleError, match="at least one condition"):
        validate(Rule(name="x", destination=Destination("https://a.example/")))


def test_to_means_envelope_recipient_not_the_to_header():
    rs = RuleSet([rule(conditions=("To~^sales@",))])
    headers = {"to": ["sales@ours.example"]}
    assert rs.match("support@ours.example", headers).rule is None
    assert rs.match("sales@ours.example", {}).rule.name == "r"


def test_conditions_are_anded_and_case_insensitive():
    rs = RuleSet([rule(conditions=("Subject~invoice", "From~@supplier\\.example$"))])
    assert rs.match("a@ours.example", {"subject": ["INVOICE 7"], "from": ["x@supplier.example"]}).rule
    assert rs.match("a@ours.example", {"subject": ["INVOICE 7"], "from": ["x@other.example"]}).rule is None


def test_any_occurrence_of_a_repeated_header_matches_and_negation_needs_none():
    r = Rule(name="n", destination=Destination("https://a.example/"), conditions=(
        parse_condition("Received~relay1"), parse_condition("X-Spam~yes", negate=True)))
    rs = RuleSet([r])
    assert rs.match("a@b", {"received": ["from relay0", "from relay1"]}).rule
    assert rs.match("a@b", {"received": ["from relay1"], "x-spam": ["no", "YES"]}).rule is None


def test_priority_orders_rules_and_disabled_rules_are_skipped():
    low = rule("low", priority=10)
    high = rule("high", priority=1)
    off = rule("off", priority=0, enabled=False)
    rs = RuleSet([low, off, high])
    assert rs.match("a@b", {"subject": ["invoice"]}).rule.name == "high"
    explained = rs.match("a@b", {"subject": ["invoice"]}, explain=True)
    assert [r.rule.name for r in explained.evaluated] == ["off", "high", "low"]
    assert explained.evaluated[0].reason() == "disabled"


def test_missing_header_fails_a_positive_condition_and_reason_says_so():
    rs = RuleSet([rule()])
    m = rs.match("a@b", {}, explain=True)
    assert m.rule is None
    assert m.evaluated[0].reason() == "subject~invoice: no subject value matches"


def test_catastrophic_pattern_times_out_and_counts_as_no_match():
    # (a|a)* backtracks exponentially even in the `regex` module, which defuses many classics
    r = Rule(name="slow", destination=Destination("https://a.example/"),
             conditions=(parse_condition("Subject~^(a|a)*$"),))
    rs = RuleSet([r], regex_timeout=0.01)
    m = rs.match("a@b", {"subject": ["a" * 40 + "b"]})
    assert m.rule is None
    assert m.timeouts and m.timeouts[0].condition.pattern == "^(a|a)*$"
    assert "timed out" in rs.match("a@b", {"subject": ["a" * 40 + "b"]}, explain=True).evaluated[0].reason()


def test_header_patterns_are_searched_once_per_message_not_per_recipient(monkeypatch):
    # A hostile Subject that runs a pattern into the time bound must cost one timeout per
    # message: forty recipients used to hold the SMTP session forty timeouts long.
    searched = []
    real = rules._search_values
    monkeypatch.setattr(rules, "_search_values", lambda search, timeout, values: searched.append(values) or real(search, timeout, values))
    slow = Rule(name="slow", destination=Destination("https://a.example/"), priority=1,
                conditions=(parse_condition("Subject~^(a|a)*$"),))
    per_rcpt = Rule(name="per-rcpt", destination=Destination("https://a.example/"), priority=2,
                    conditions=(parse_condition("Subject~b$"), parse_condition("To~^r1@")))
    rs = RuleSet([slow, per_rcpt], regex_timeout=0.01)
    headers = {"subject": ["a" * 40 + "b"]}
    recipients = [f"r{i}@ours.example" for i in range(40)]
    matches = rs.match_many(recipients, headers)
    assert [m.rule.name if m.rule else None for m in matches] == [None, "per-rcpt"] + [None] * 38
    # every recipient still reports the timed-out pattern (the milter logs it once)
    assert all(m.timeouts[0].condition.pattern == "^(a|a)*$" for m in matches)
    assert len([v for v in searched if v == headers["subject"]]) == 2  # each pattern once; was 80
    assert len([v for v in searched if v == ["r1@ours.example"]]) == 1  # To: per recipient
    # the same answers as one recipient at a time
    assert [m.rule for m in matches] == [rs.match(r, headers).rule for r in recipients[:3]] + [None] * 37


@pytest.mark.parametrize("pattern,risk", [
    (r"^ticket-5\b", None),
    (r"@ours\.example$", None),
    (r"(?i)^(sales|support)@", None),
    (r"[*+?{}]", None),                      # literal inside a class
    (r"a\*b\+c\?", None),                      # escaped
    (r"^inv.*", "quantifier"),
    (r"colou?r", "quantifier"),
    (r"^(a+)+$", "repeats"),
    (r".*foo.*bar", "repeats"),
    (r"(a|a){1,30}x{2}", "repeats"),
    (r"(x)\1", "backreference"),
    (r"(?P<w>x)(?P=w)", "backreference"),
    (r"^(a|a)*$", "alternatives"),
    (r"(?:x|xx)+y", "alternatives"),
    (r"((a|b)c)+", "quantifier"),           # the repeated group holds no alternation itself
    (r"(ab|cd)?x", "quantifier"),           # optional, not repeated
    (r"[(|)]+", "quantifier"),              # a class: its ( | ) are literal
    (r"\(a|b\)*", "quantifier"),           # escaped parentheses are no group
    (r"(?#[)(a|a)+$(?#])", "alternatives"),  # comments are skipped, not read as a class
    (r"(?#a\)[)(a|a)+$(?#])", "alternatives"),
    (r"[(?#]a+", "quantifier"),              # in a class, (?# starts no comment
    ("(?x)(a|a)+$ #[", "verbose"),           # verbose mode is not read: warned about
    ("(?ix:a)", "verbose"),
    ("(?-x)a", None),
    (r"(?:invoice){e<=2}", "fuzzy"),
    (r"(?:invoice){1i+1d<2}", "fuzzy"),
    (r"\{e\}", None),
])
def test_backtracking_risk(pattern, risk):
    found = rules.backtracking_risk(pattern)
    assert (found is None) if risk is None else (risk in found)
    assert rules.is_catastrophic_risk(pattern) == (risk in ("repeats", "backreference", "alternatives",
                                                            "verbose", "fuzzy"))


def test_every_search_carries_the_time_bound():
    # also the patterns without any quantifier, and the per-header prefilter alternations
    rs = RuleSet([rule("a", conditions=("Subject~^plain", "From~a+", "To~^x@")),
                  rule("b", conditions=("Subject~^other", "To~^y@"))], regex_timeout=0.2)
    assert {timeout for _, conditions in rs._plan for _, _, _, _, timeout, *_ in conditions} == {0.2}
    assert set(rs._prefilters) == {"subject", "to"}
    assert {timeout for _, timeout, _, _ in rs._prefilters.values()} == {0.2}


@pytest.mark.parametrize("timeout", [None, 0, -1, "0.05", True])
def test_a_ruleset_without_a_real_time_bound_is_refused(timeout):
    with pytest.raises(RuleError, match=r"\[milter\] regex_timeout must be a number of seconds above 0"):
        RuleSet([rule()], regex_timeout=timeout)


def in_child(func, limit: float):
    """func() run in a forked process, its result returned; fails the test when it is still
    running after `limit` seconds (an unbounded search would hold the test for minutes)."""
    ctx = multiprocessing.get_context("fork")
    parent_end, child_end = ctx.Pipe(duplex=False)
    child = ctx.Process(target=lambda: child_end.send(func()), daemon=True)
    child.start()
    try:
        if not parent_end.poll(limit):
            pytest.fail(f"still searching after {limit} s: the search is not bounded")
        return parent_end.recv()
    finally:
        child.kill()
        child.join()


HOSTILE_SUBJECT = "a" * 30 + "!"
# Patterns that backtrack exponentially on HOSTILE_SUBJECT (30 characters: minutes unbounded)
# while hiding their repeats from a reading of the pattern outside the regex engine.
HIDDEN_REPEATS = [
    r"(?#[)(a|a)+$(?#])",             # a comment opens a "class" that another comment closes
    r"(?#a\)[)(a|a)+$(?#])",          # the regex module's comments take escapes
    "(?x)(a|a) # [ a comment between the group and its repeat\n+$ # ]",
    "(?x)#[\n(a|a)+$ #]",
    "(?x: # [\n(a|a)+$ # ]\n)",
]
BOUND = 0.05
MARGIN = 1.5  # a loaded machine: the bound is checked while the engine runs, not exact


@pytest.mark.parametrize("pattern", HIDDEN_REPEATS)
def test_patterns_that_hide_their_repeats_are_bounded(pattern):
    rs = RuleSet([rule("hidden", conditions=(f"Subject~{pattern}",))], regex_timeout=BOUND)
    headers = {"subject": [HOSTILE_SUBJECT]}

    def timed():
        start = time.monotonic()
        fast = rs.match_many(["in@ours.example", "x@ours.example"], headers)  # the milter's path
        explained = rs.match("in@ours.example", headers, explain=True)  # `mxhook rule test`
        return (time.monotonic() - start, [m.rule for m in fast], [len(m.timeouts) for m in fast],
                explained.evaluated[0].reason())

    # three searches: once per message on the milter's path, once more to explain
    elapsed, matched, timeouts, reason = in_child(timed, limit=3 * BOUND + MARGIN + 3)
    assert elapsed < 3 * BOUND + MARGIN, f"{elapsed:.2f} s"
    assert matched == [None, None] and timeouts == [1, 1]
    assert "timed out (counts as no match)" in reason


FUZZY = r"(?:abcdefghijklmnopqrstuv){e<=12}$"  # minutes on 2,000 characters unbounded


def test_fuzzy_matching_is_bounded_also_inside_a_prefilter(monkeypatch):
    # Whatever the advice says about a pattern (here: nothing), the alternation that tests
    # all patterns of one header at once is bounded too.
    monkeypatch.setattr(rules, "is_catastrophic_risk", lambda pattern: False)
    rs = RuleSet([rule("fuzzy", conditions=(f"Subject~{FUZZY}",)),
                  rule("fuzzy2", conditions=(f"Subject~{FUZZY[:-1]}x",))], regex_timeout=BOUND)
    assert rs._prefilters["subject"][2] == {("subject", FUZZY), ("subject", FUZZY[:-1] + "x")}
    headers = {"subject": ["x" * 2000]}

    def timed():
        start = time.monotonic()
        m = rs.match("in@ours.example", headers)
        return time.monotonic() - start, m.rule, len(m.timeouts)

    # the prefilter times out, then each pattern is searched (and times out) on its own
    elapsed, matched, timeouts = in_child(timed, limit=3 * BOUND + MARGIN + 3)
    assert elapsed < 3 * BOUND + MARGIN, f"{elapsed:.2f} s"
    assert matched is None and timeouts == 2


@pytest.mark.parametrize("pattern,shares", [
    (r"^ticket-1\b", True), (r"@ours\.example$", True), (r"(?:a|b)c", True), (r"(?<=x)y", True),
    (r"(?x)a b", False), (r"(?i)a", False), (r"(?-i)A", False), (r"a(*SKIP)(*FAIL)", False),
    (r"(a)\1", False), (r"(?P<n>a)", False), (r"\g<0>", False),
    # comments never let inline flags through: every (?, in a comment or a class too, counts
    (r"(?#)(?-i)ABC", False), (r"(?#(?i))a", False), (r"a(?#x)", False), (r"[(?i)]", False),
    (r"\(?#x\)(?i)a", False), ("a#(?x)", False), ("(?#\n(?s)).", False),
])
def test_shares_alternation_keeps_out_patterns_that_would_change_a_neighbour(pattern, shares):
    assert rules.shares_alternation(pattern) is shares


def test_hundred_subject_rules_are_settled_by_one_prefilter_search():
    many = [Rule(f"t{i}", Destination("https://h.example/"),
                 (parse_condition(f"Subject~^ticket-{i}\\b"), parse_condition(r"To~@ours\.example$")),
                 priority=i)
            for i in range(1, 100)]
    catch_all = Rule("all", Destination("https://h.example/"), (parse_condition(r"To~^bench@"),),
                     priority=100)
    spoiler = Rule("verbose", Destination("https://h.example/"),
                   (parse_condition("Subject~(?x) never here"),), priority=0)
    rs = RuleSet(many + [catch_all, spoiler])
    search, _, keys, needing = rs._prefilters["subject"]
    assert len(keys) == 99 and ("subject", "(?x) never here") not in keys  # searched on its own
    assert len(needing) == 99
    assert rs.match("bench@ours.example", {"subject": ["bench message"]}).rule is catch_all
    assert rs.match("bench@ours.example", {"subject": ["TICKET-42 help"]}).rule.name == "t42"
    assert rs.match("bench@ours.example", {"subject": ["ticket-420"]}).rule is catch_all
    assert rs.match("bench@ours.example", {}).rule is catch_all  # no Subject at all
    assert rs.match("bench@ours.example", {"subject": ["neverhere"]}).rule is spoiler  # (?x): spaces do not count


@pytest.mark.parametrize("pattern", ["(?R)", "(a(?1)?b)", "(?P<x>a(?&x)?)", "(?P<x>a)(?P>x)", "(a(?0)?)",
                                     r"\\(?R)", r"(a|\\\\(?1))",  # after an escaped backslash
                                     "(?x)(?R )", "(?x)(?P<x>a)(?P>x )", "(?x)(?R#c\n)"])
def test_recursive_patterns_are_refused(pattern):
    # no time bound stops a recursive pattern's memory use: `(?R)` ran out of memory
    with pytest.raises(RuleError, match="recursive"):
        validate(rule(conditions=(f"Subject~{pattern}",)))


def test_escaped_parenthesis_is_not_mistaken_for_recursion():
    validate(rule(conditions=(r"Subject~\(?R\)",)))
    validate(rule(conditions=(r"Subject~\\\(?R\)",)))  # an escaped backslash, then an escaped "("


def test_a_rule_with_a_broken_pattern_takes_out_only_itself():
    # rules.db written by other means than `mxhook rule`: the milter must still start and match
    bad = Rule(name="bad", destination=Destination("https://hooks.example.net/in"), priority=1,
               conditions=(rules.Condition("subject", "("),))
    loop = Rule(name="loop", destination=Destination("https://hooks.example.net/in"), priority=2,
                conditions=(rules.Condition("subject", "(?R)"),))
    good = rule("good", ("Subject~invoice",), priority=3)
    ruleset = RuleSet([bad, loop, good])
    assert [(r.name, "invalid regex" in why) for r, why in ruleset.broken] == [("bad", True), ("loop", True)]
    headers = {"subject": ["invoice ("]}
    assert ruleset.match("a@b.example", headers).rule.name == "good"
    explained = ruleset.match("a@b.example", headers, explain=True)
    assert explained.rule.name == "good"
    assert [rr.matched for rr in explained.evaluated] == [False, False, True]


@pytest.mark.parametrize("creds, message", [
    ({"bearer": "tok\r"}, "control character"),
    ({"bearer": "tok\n"}, "control character"),
    ({"bearer": "tök€n"}, "visible ASCII"),
    ({"bearer": "two words"}, "visible ASCII"),
    ({"basic_auth": "user:pa\nss"}, "control character"),
    ({"api_key": "key\x00"}, "control character"),
])
def test_credentials_with_control_characters_are_refused(creds, message):
    # requests would refuse the header and quote it (with the secret) in its error
    with pytest.raises(DestinationError, match=message):
        validate(rule(**creds))


def test_ordinary_credentials_pass():
    validate(rule(bearer="tok_AZaz09-._~+/=="))
    validate(rule(basic_auth="jürgen:pässwörd with spaces", api_key="k y"))


@pytest.mark.parametrize("url", ["https://h.example/a b", "https://h.example/\r\nX: y", "https://h.example/\t"])
def test_urls_with_spaces_or_control_characters_are_refused(url):
    with pytest.raises(DestinationError, match="space or control character"):
        validate(rule(url=url))
