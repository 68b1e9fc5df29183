"""`rule test`: what the milter would answer for a message and its recipients, at which stage,
and why, with every rule explained also past the first match."""
from __future__ import annotations

from mxhook import config as configmod
from mxhook.model import bounces
from mxhook.model import decision as decisionmod
from mxhook.model import heuristics
from mxhook.model import message as messagemod
from mxhook.model.decision import decide
from mxhook.model.headers import address_domain, decode_value, first_address, normalize_address
from mxhook.services.errors import Invalid, translated
from mxhook.services.stores import rules_store
from mxhook.store import rulesdb as dbmod

HEURISTIC_KEYS = (
    (heuristics.FROM_PERMITTED_DOMAIN, "heuristic_from_permitted_domain"),
    (heuristics.FROM_EQUALS_TO, "heuristic_from_equals_to"),
)


def read_message(stream, limit: int) -> bytes:
    """The message, at most `limit` bytes of it read: a larger one (say /dev/zero) is refused
    naming the limit, as the milter answers such a message 552 5.3.4."""
    raw = stream.read(limit + 1)
    if len(raw) > limit:
        name = "stdin" if getattr(stream, "name", "-") in ("<stdin>", "-") else stream.name
        raise Invalid(f"{name} is larger than [milter] max_message_size ({limit} bytes): the "
                      "milter refuses such a message (552 5.3.4), so it is not tested",
                      "message_too_large")
    return raw


@translated()
def explain_message(cfg: configmod.Config, stream, recipients: list[str],
                    mail_from: str | None = None) -> dict:
    """Read the message from `stream` (binary) and explain it against rules.db."""
    for r in recipients:
        if "@" not in r:
            raise Invalid(f"{r!r} is not an address (local@domain)", "invalid_recipient")
    raw = read_message(stream, cfg.value("milter", "max_message_size"))
    with rules_store(cfg) as store:
        snapshot = store.snapshot(regex_timeout=cfg.value("milter", "regex_timeout"))
    return explain(snapshot, cfg, raw, list(recipients), mail_from)


def _rules_explained(m) -> list[dict]:
    return [{
        "name": rr.rule.name, "priority": rr.rule.priority, "enabled": rr.rule.enabled,
        "matched": rr.matched, "reason": rr.reason(),
        "conditions": [{"condition": str(c.condition), "held": c.held,
                        "value": c.matched_value, "timed_out": c.timed_out}
                       for c in rr.conditions],
    } for rr in m.evaluated]


def explain(snapshot: dbmod.Snapshot, cfg: configmod.Config, raw: bytes, recipients: list[str],
            mail_from: str | None) -> dict:
    """What the milter would answer for this message and these recipients (in RCPT order), at
    which stage, and why: the RCPT stage (decision.RcptStage) and end of headers
    (decision.decide) as the milter runs them, on the header section as Postfix splits it."""
    unknown_mode = cfg.value("milter", "unknown_domains")
    missing_from = cfg.value("milter", "missing_from")
    enabled = tuple(h for h, key in HEURISTIC_KEYS if cfg.value("milter", key))
    raw_headers, header_defects = messagemod.split_headers(raw)

    def header(name):
        return [v for n, v in raw_headers if n.lower() == name]

    sender = normalize_address(mail_from) if mail_from is not None else None
    # Refusals at RCPT are capped where Postfix has mxhook's routes (`mxhook check`); with
    # discard_via = milter the milter never relies on them, so it splits without a cap.
    routes = cfg.value("milter", "discard_via") != "milter"
    stage = decisionmod.RcptStage(snapshot.ruleset, snapshot.domains, unknown_domains=unknown_mode,
                                  null_sender=sender == "", enabled_heuristics=enabled,
                                  max_refusals=cfg.value("milter", "max_rcpt_refusals") if routes else None)
    rcpts = [normalize_address(r) for r in recipients]
    managed, passed, held, entries, candidates, overflow = [], [], [], {}, {}, set()
    for r in rcpts:
        if r in entries:  # the milter answers a repeated RCPT as the first
            continue
        outcome = stage.recipient(r)
        if outcome.overflow:
            overflow.add(r)
        if outcome.kind == decisionmod.MANAGED:
            managed.append(r)
            candidates[r] = outcome.candidates
        elif outcome.kind == decisionmod.PASS:
            passed.append(r)
            entries[r] = {"outcome": "passed", "stage": "rcpt", "smtp": "250",
                          "decided_by": "unknown_domains=pass", "rule": None,
                          "reason": f"domain {address_domain(r) or '(none)'} is not permitted; "
                                    "unknown_domains = pass leaves it to Postfix (no rules)"}
        elif outcome.kind == decisionmod.HOLD:
            held.append(r)
            entries[r] = {"outcome": "denied", "stage": "eoh", "smtp": "550 5.7.1",
                          "decided_by": outcome.filter, "rule": None,
                          "reason": outcome.reason + " (null sender: held until end of headers "
                                    "in case the message is a bounce report)"}
        elif outcome.kind == decisionmod.DENY:
            entries[r] = {"outcome": "rejected", "stage": "rcpt", "smtp": "550 5.7.1",
                          "decided_by": outcome.filter, "rule": None, "reason": outcome.reason}
        else:
            entries[r] = {"outcome": "deferred", "stage": "rcpt", "smtp": "452 4.5.3",
                          "decided_by": "outcome_class", "rule": None,
                          "reason": "its outcome may differ from the recipients accepted before "
                                    "it: the client sends it again in a separate transaction "
                                    "(test it alone to see that one)"}
    content_types = header("content-type")
    dsn = sender == "" and bool(content_types) and bounces.is_dsn_content_type(
        decode_value(content_types[0]))

    result = {
        "mail_from": sender,
        "header_from": first_address(header("from")[0]) if header("from") else "",
        "subject": decode_value(header("subject")[0]) if header("subject") else "",
        "header_defects": header_defects,
        "unknown_domains": unknown_mode,
        "missing_from": missing_from,
        "heuristics": {"enabled": list(enabled), "verdict": None},
        "rule_count": len(snapshot.ruleset),
    }
    # Every rule explained for each recipient in a permitted domain, also past the first match.
    ours = [r for r in entries.keys() | set(managed) if address_domain(r) in snapshot.domains]
    explained = decide(snapshot.ruleset, snapshot.domains, [r for r in rcpts if r in ours],
                       raw_headers, enabled_heuristics=enabled, explain=True,
                       missing_from=missing_from)
    for m in explained.matches:
        entries.setdefault(m.recipient, {})["rules"] = _rules_explained(m)
    if held:
        if dsn:
            for r in held:
                entries[r].update(outcome="consumed", smtp="250", decided_by="dsn",
                                  reason="a bounce report: its events are kept, the recipient "
                                         "is removed from Postfix's delivery")
            result.update(result="accept", smtp="250", decided_by="dsn",
                          reason="a bounce report for mail this server sent")
        else:
            result.update(result="reject", smtp="550 5.7.1", decided_by=entries[held[0]]["decided_by"],
                          reason=entries[held[0]]["reason"])
    elif managed:
        decision = decide(snapshot.ruleset, snapshot.domains, managed, raw_headers,
                          enabled_heuristics=enabled, missing_from=missing_from,
                          candidates=candidates)
        verdict = decision.verdict
        if verdict is not None:
            result["heuristics"]["verdict"] = {"heuristic": verdict.heuristic,
                                               "reason": verdict.reason}
        matched = {m.recipient: m.rule for m in decision.matches}  # none after a verdict
        for r in managed:
            entry, rule = entries.setdefault(r, {}), matched.get(r)
            entry.update(stage="eoh", rule=None)
            if verdict is not None:
                entry.update(outcome="denied", smtp="550 5.7.1",
                             decided_by="heuristic:" + verdict.heuristic, reason=verdict.reason)
            elif rule is not None:
                entry.update(outcome="accepted", smtp="250", decided_by="rule:" + rule.name,
                             rule=rule.name, action="discard" if rule.discard else "deliver",
                             endpoint=rule.endpoint, format=rule.format,
                             reason=f"rule {rule.name}: all conditions hold")
            elif dsn:
                entry.update(outcome="consumed", smtp="250", decided_by="dsn",
                             reason="no rule matches; a bounce report: its events are kept, "
                                    "the recipient is removed from Postfix's delivery")
            elif r in overflow and decision.accepted:
                entry.update(outcome="bounced", smtp="250, then a bounce from Postfix (5.7.1)",
                             decided_by="no_rule",
                             reason=f"no inbound rule matches <{r}>; accepted past the cap on "
                                    "refusals at RCPT (max_rcpt_refusals), so Postfix's error "
                                    "transport bounces it to the sender")
            else:
                entry.update(outcome="denied", smtp="550 5.7.1", decided_by="no_rule",
                             reason=f"no inbound rule matches <{r}>")
        if verdict is not None:
            result.update(result="reject", smtp="550 5.7.1",
                          decided_by="heuristic:" + verdict.heuristic, reason=verdict.reason)
        elif not decision.accepted and not dsn:
            result.update(result="reject", smtp="550 5.7.1", decided_by="no_rule",
                          reason=decision.reason())
        elif (not dsn and any(r not in overflow for r, _ in decision.accepted)
              and any(r not in overflow for r in decision.denied)):  # the milter's guard
            result.update(result="tempfail", smtp="451 4.3.0", decided_by="internal_error",
                          reason="recipients of one outcome class decided apart")
        else:
            names = [rule.name for rule, _ in decision.grouped()]
            result.update(result="accept", smtp="250", decided_by="rules" if names else "dsn",
                          reason=("accepted for " + ", ".join(names)) if names
                          else "a bounce report for mail this server sent")
    elif passed:
        result.update(result="pass", smtp="250", decided_by="unknown_domains=pass",
                      reason="no recipient in a permitted domain: the milter leaves the message "
                             "alone")
    else:
        result.update(result="reject", smtp="554 5.5.1", decided_by=entries[rcpts[0]]["decided_by"],
                      reason="every recipient was rejected at RCPT (no valid recipients)")
    result["recipients"] = [{"recipient": r, **entries[r]} for r in dict.fromkeys(rcpts)]
    return result

