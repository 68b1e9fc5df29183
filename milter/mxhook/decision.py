"""The inbound decision at end of headers, as one pure function.

The milter and `mxhook rule test` both call `decide`, so the dry run cannot drift from what the
milter really does.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from . import heuristics
from .headers import decode_value
from .rules import MatchResult, Rule, RuleSet


def header_index(raw_headers: list[tuple[str, bytes | str]],
                 only: frozenset[str] | None = None) -> dict[str, list[str]]:
    """lower-case field name -> decoded values, in message order; with `only`, just those
    fields (decoding a long Received chain no rule looks at is most of the work)."""
    index: dict[str, list[str]] = {}
    for name, value in raw_headers:
        key = name.lower()
        if only is None or key in only:
            index.setdefault(key, []).append(decode_value(value))
    return index


@dataclass
class Decision:
    verdict: heuristics.Verdict | None = None  # a heuristic rejected the whole message
    matches: list[MatchResult] = field(default_factory=list)  # one per recipient, in order

    @property
    def accepted(self) -> list[tuple[str, Rule]]:
        return [(m.recipient, m.rule) for m in self.matches if m.rule is not None]

    @property
    def denied(self) -> list[str]:
        return [m.recipient for m in self.matches if m.rule is None]

    @property
    def rejects_message(self) -> bool:
        return self.verdict is not None or not self.accepted

    def grouped(self) -> list[tuple[Rule, list[str]]]:
        """(rule, recipients) pairs in first-match order: one delivery per rule."""
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


def decide(
    ruleset: RuleSet,
    permitted_domains: frozenset[str],
    recipients: list[str],
    raw_headers: list[tuple[str, bytes | str]],
    *,
    enabled_heuristics: tuple[str, ...] = heuristics.ALL,
    explain: bool = False,
) -> Decision:
    """Heuristics first (they reject the whole message), then rules per recipient."""
    from_values = [v for n, v in raw_headers if n.lower() == "from"]
    to_values = [v for n, v in raw_headers if n.lower() == "to"]
    verdict = heuristics.check(from_values, to_values, recipients, permitted_domains, enabled_heuristics)
    decision = Decision(verdict=verdict)
    if verdict is not None and not explain:
        return decision
    index = header_index(raw_headers, None if explain else ruleset.header_names)
    decision.matches = ruleset.match_many(recipients, index, explain=explain)
    return decision
