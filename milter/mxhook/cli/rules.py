"""`mxhook rule`: inbound rules, which mail is posted to which webhook, and `rule test`, the
dry run of the milter's decision."""
from __future__ import annotations

import click

from mxhook.cli.base import (
    ED25519_OPTION,
    JSON_ADDED,
    MxhookGroup,
    destination_options,
    pass_app,
    rotate_options,
    warn,
)
from mxhook.cli.output import (
    body_summary,
    destination_rows,
    emit_json,
    fields,
    new_keys_dict,
    print_new_keys,
    print_rotation,
    print_signing,
    print_template,
    rotation_dict,
    table,
    yes_no,
)
from mxhook.model import rules
from mxhook.payloads.dialects import catalogue
from mxhook.services import explain
from mxhook.services import rules as rulesvc
from mxhook.services.errors import ServiceError


def condition_option(cond: rules.Condition) -> str:
    """How the condition is given on the command line."""
    return f"{'--unless' if cond.negate else '--when'} '{cond.header}~{cond.pattern}'"


def rule_options(edit: bool):
    """The options `rule add` and `rule edit` share; for edit every option defaults to None
    (= leave as it is)."""
    opts = [
        click.option("--when", "when", multiple=True, metavar="'HEADER~REGEX'",
                     help="Condition that must hold; repeatable (all must hold). 'To' means "
                          "the envelope recipient." +
                          (" Replaces all conditions when given." if edit else "")),
        click.option("--unless", "unless", multiple=True, metavar="'HEADER~REGEX'",
                     help="Condition that must NOT hold; repeatable." +
                          (" Without --when, replaces only the --unless conditions." if edit else "")),
        click.option("--priority", type=int, metavar="N",
                     help="Evaluation order, lower first" + ("." if edit else " [default: 0].")),
        click.option("--reject-text", metavar="TEXT",
                     help="Text of the 550 5.7.1 reply to a recipient this rule could take by its "
                          "envelope but whose headers it refuses (printable ASCII, at most 500 "
                          "characters, no '%')." + (" '' removes it." if edit else "")),
    ]
    if edit:
        opts += [
            click.option("--name", "new_name", metavar="NEW", help="Rename the rule."),
            click.option("--discard/--no-discard", default=None,
                         help="Discard the mail after the webhook is queued (or deliver it)."),
            click.option("--disabled/--enabled", "disabled", default=None,
                         help="Disable or enable the rule."),
            click.option("--continue/--no-continue", "continue_matching", default=None,
                         help="Offer mail this rule takes to the rules after it too (fan-out), "
                              "or stop at this rule."),
            click.option("--include-raw/--no-include-raw", default=None,
                         help="Add the raw message (base64) to the native json/multipart body."),
        ]
    else:
        opts += [
            click.option("--discard", is_flag=True,
                         help="Discard the mail after the webhook is queued (default: "
                              "deliver it as usual)."),
            click.option("--disabled", is_flag=True, help="Add the rule disabled."),
            click.option("--continue", "continue_matching", is_flag=True,
                         help="Offer mail this rule takes to the rules after it too (fan-out: "
                              "each rule that takes it gets its own delivery and webhook-id)."),
            click.option("--include-raw", is_flag=True,
                         help="Add the raw message (base64, `raw`) to the native json/multipart "
                              "body; left out first when the body would exceed max_payload_size."),
            ED25519_OPTION,
        ]

    def deco(f):
        for opt in reversed(opts):
            f = opt(f)
        return destination_options(edit, rules.FORMATS, catalogue.INBOUND, endpoint_alias=True,
                                   unencrypted="mail")(f)

    return deco


def print_rule(view: rulesvc.RuleView, *, template_source: bool = False) -> None:
    rule, times = view.rule, view.times
    rows = [
        ("name", rule.name),
        ("enabled", yes_no(rule.enabled)),
        ("priority", f"{rule.priority} (lower runs first)"),
        *destination_rows(rule.destination),
        ("after accept", "discard (webhook only)" if rule.discard else "deliver as usual"),
        ("after a match", "offered to the rules after it too (--continue)" if rule.continue_matching
         else "stop: no later rule takes it"),
        ("raw message", "in the payload (--include-raw)" if rule.include_raw else "not included"),
        ("reject text", f"550 5.7.1 {rule.reject_text}" if rule.reject_text else "(mxhook's)"),
    ]
    if times:
        rows += [("created", times.get("created")), ("updated", times.get("updated"))]
    fields(rows)
    print_signing(view.keys)
    click.echo("conditions:      (all must hold; 'to' is the envelope recipient)")
    for cond in rule.conditions:
        click.echo(f"  {condition_option(cond)}")
    print_template(view.template, source=template_source)


@click.group(cls=MxhookGroup)
def rule():
    """Inbound rules: which mail is posted to which webhook."""


@rule.command("add", short_help="Add a rule.")
@click.argument("name")
@rule_options(edit=False)
@JSON_ADDED
@pass_app
def rule_add(app, name, destination, template, when, unless, priority, reject_text, discard, disabled,
             continue_matching, include_raw, ed25519, as_json):
    """Add rule NAME: mail whose headers match all conditions is posted to the URL.

    \b
    Example:
      mxhook rule add invoices --url https://app.example.net/hooks/mail \\
          --when 'To~^invoices@' --when 'Subject~invoice|bill' --unless 'From~@spam\\.example$'

    The rule's signing secret is printed once: give it to the receiver (docs/verifying.md).
    """
    added = rulesvc.add(
        app.cfg, name=name, destination=destination, when=when, unless=unless, priority=priority,
        discard=discard, enabled=not disabled, continue_matching=continue_matching,
        include_raw=include_raw, reject_text=reject_text, ed25519=ed25519, template=template, warn=warn)
    new = added.rule
    if as_json:
        emit_json({"rule": rulesvc.show(app.cfg, new.name).as_dict(), **new_keys_dict(added.keys),
                   "no_domains": added.no_domains})
        return
    click.echo(f"Added rule {new.name} (priority {new.priority}"
               f"{', disabled' if not new.enabled else ''}): "
               f"{body_summary(new.destination)} to {new.destination.url}")
    print_new_keys(added.keys)
    if added.no_domains:
        warn("note: no permitted domains yet; rules apply only to mail for permitted "
             "domains (mxhook domain add DOMAIN)")


@rule.command("list")
@click.option("--json", "as_json", is_flag=True, help="Output JSON (secrets masked).")
@pass_app
def rule_list(app, as_json):
    """List rules in evaluation order."""
    views = rulesvc.list_all(app.cfg, with_keys=as_json)
    if as_json:
        emit_json([v.as_dict() for v in views])
        return
    all_rules = [v.rule for v in views]
    if not all_rules:
        click.echo("No rules (add one with: mxhook rule add NAME --url URL --when 'HEADER~REGEX')")
        return
    table(
        ["PRIO", "NAME", "ENABLED", "DIALECT", "FORMAT", "URL", "CONDITIONS"],
        [[r.priority, r.name, r.enabled, r.destination.dialect,
          r.destination.format + (" +discard" if r.discard else "")
          + (" +continue" if r.continue_matching else "") + (" +raw" if r.include_raw else ""),
          r.destination.url, " AND ".join(str(c) for c in r.conditions)] for r in all_rules],
        max_width=70,
    )


@rule.command("show")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="Output JSON (secrets masked).")
@click.option("--template-source", is_flag=True, help="Show the current template's source too.")
@pass_app
def rule_show(app, name, as_json, template_source):
    """Show one rule (secrets masked)."""
    view = rulesvc.show(app.cfg, name)
    if as_json:
        emit_json(view.as_dict(template_source=template_source))
    else:
        print_rule(view, template_source=template_source)


@rule.command("edit", short_help="Change a rule.")
@click.argument("name")
@rule_options(edit=True)
@pass_app
def rule_edit(app, name, destination, clear_auth, no_template, template, when, unless, priority,
              reject_text, new_name, discard, disabled, continue_matching, include_raw):
    """Change rule NAME; options not given keep their value.

    --when replaces all conditions (with the --unless ones given alongside); --unless alone
    replaces only the negated conditions. --basic-auth and --bearer exclude each other, so
    giving one removes the other.
    """
    new = rulesvc.edit(
        app.cfg, name, destination=destination, clear_auth=clear_auth, when=when, unless=unless,
        priority=priority, new_name=new_name, discard=discard,
        enabled=None if disabled is None else not disabled, continue_matching=continue_matching,
        include_raw=include_raw, reject_text=reject_text, template=template,
        no_template=no_template, warn=warn)
    renamed = f" (renamed from {name})" if new.name != name else ""
    click.echo(f"Updated rule {new.name}{renamed}")


def _set_enabled(app, name: str, enabled: bool) -> None:
    rulesvc.set_enabled(app.cfg, name, enabled)
    click.echo(f"{'Enabled' if enabled else 'Disabled'} rule {name}")


@rule.command("enable")
@click.argument("name")
@pass_app
def rule_enable(app, name):
    """Enable rule NAME."""
    _set_enabled(app, name, True)


@rule.command("disable")
@click.argument("name")
@pass_app
def rule_disable(app, name):
    """Disable rule NAME (kept, but never matches)."""
    _set_enabled(app, name, False)


@rule.command("remove")
@click.argument("name")
@pass_app
def rule_remove(app, name):
    """Remove rule NAME."""
    rulesvc.remove(app.cfg, name)
    click.echo(f"Removed rule {name}")


@rule.command("rotate-secret", short_help="Issue a new signing secret (old one overlaps).")
@click.argument("name")
@rotate_options
@JSON_ADDED
@pass_app
def rule_rotate_secret(app, name, overlap, ed25519, as_json):
    """Give rule NAME a new signing secret, printed once. During the overlap every request
    carries a signature with the previous secret and one with the new one, so the receiver
    can switch at any time in between."""
    found, rotation = rulesvc.rotate_secret(app.cfg, name, overlap=overlap, ed25519=ed25519)
    if as_json:
        emit_json(rotation_dict(rotation, "rule", rulesvc.show(app.cfg, found.name)))
        return
    print_rotation(rotation, f"rule {found.name}", ed25519)


def print_explanation(res: dict) -> None:
    click.echo(f"From:       {res['header_from'] or '(none)'}"
               + (f"   MAIL FROM: <{res['mail_from']}>" if res["mail_from"] is not None else ""))
    click.echo(f"Subject:    {res['subject']}")
    h = res["heuristics"]
    click.echo(f"Heuristics: {', '.join(h['enabled']) or 'none'} enabled; "
               f"unknown_domains = {res['unknown_domains']}")
    auth = res.get("authentication")
    if auth is not None:
        dkim = ", ".join(f"{d['result']} (d={d['domain']} s={d['selector']})" for d in auth["dkim"]) or "none"
        policy = f", policy {auth['dmarc']['policy']}" if auth["dmarc"]["policy"] else ""
        untrusted = sum(1 for u in auth["upstream"] if not u["trusted"])
        click.echo(f"Auth:       spf={auth['spf']['result']} dkim={dkim} "
                   f"dmarc={auth['dmarc']['result']}{policy} arc={auth['arc']['result']} "
                   f"({'verified here' if auth['source'] == 'mxhook' else 'upstream ' + auth['authserv_id']})"
                   + (f"; {untrusted} untrusted Authentication-Results field(s)" if untrusted else ""))
    verdict = res["result"].upper()
    click.echo(f"Result:     {verdict} ({res['smtp']}) by {res['decided_by']}: {res['reason']}")
    if res["reply"]:
        click.echo(f"Reply:      {res['smtp']} {res['reply']}")
    for d in res["header_defects"]:
        click.echo(f"Header:     {d}")
    for e in res["recipients"]:
        click.echo("")
        what = e["outcome"]
        if e["outcome"] == "accepted":
            what += " by " + "; ".join(f"rule {t['rule']} → {t['format'] if t['dialect'] == 'native' else t['dialect']} "
                                       f"to {t['url']}" for t in e["taken_by"])
            if e["action"] == "discard":
                what += " (then discarded)"
        else:
            what += f" by {e['decided_by']}"
        stage = {"rcpt": "RCPT", "eoh": "end of headers", "eom": "end of message"}[e["stage"]]
        click.echo(f"<{e['recipient']}>: {e['smtp']} at {stage}: {what}")
        if e["outcome"] != "accepted":
            click.echo(f"  {e['reason']}")
        if e.get("reply"):
            click.echo(f"  reply: {e['smtp']} {e['reply']}")
        if e["decided_by"].startswith("heuristic:") and e.get("rules"):
            click.echo("  rules, for information (the milter stops at the heuristic):")
        taking = [t["rule"] for t in e.get("taken_by", ())]
        for rr in e.get("rules", []):
            mark = "✓" if rr["matched"] else "✗"
            note = ""
            if rr["name"] in taking:
                note = "  ← first match" if rr["name"] == taking[0] else "  ← takes it too (after --continue)"
            click.echo(f"  {mark} {rr['name']} (priority {rr['priority']}): {rr['reason']}{note}")


@rule.command("test", short_help="Dry run: which heuristic or rule decides a message.")
@click.argument("message", metavar="MESSAGE.eml", type=click.File("rb"))
@click.option("--rcpt", "recipients", multiple=True, required=True, metavar="ADDR",
              help="Envelope recipient (RCPT TO); repeatable.")
@click.option("--mail-from", metavar="ADDR", help="Envelope sender (MAIL FROM), for display.")
@click.option("--payload", is_flag=True,
              help="Also print the body each delivery would post (its template, dialect or format).")
@click.option("--client-ip", default="", metavar="ADDR",
              help="SMTP client address the SPF verdict is checked for (none without it).")
@click.option("--helo", default="", metavar="NAME", help="HELO name of that client.")
@click.option("--dns/--no-dns", default=True, show_default=True,
              help="With [authentication] mode = verify: look the verdicts up in DNS as the "
                   "milter does, or not at all (every lookup finds nothing).")
@click.option("--json", "as_json", is_flag=True, help="Output JSON.")
@click.option("--exit-code", is_flag=True,
              help="Exit status 1 when the milter refuses the message (Result: REJECT, or "
                   "TEMPFAIL on an internal error), 0 when it passes or accepts it.")
@pass_app
def rule_test(app, message, recipients, mail_from, payload, client_ip, helo, dns, as_json, exit_code):
    """Dry run: what the milter would answer for MESSAGE.eml ('-' reads stdin), and why.

    Each recipient, in --rcpt order, gets the milter's answer and its stage: 550 at RCPT (its
    domain is not permitted, or no rule can match its envelope), 452 4.5.3 at RCPT (its
    outcome may differ from the recipients accepted before it: sent again alone), or the
    end-of-headers outcome. Uses the rules and domains in rules.db and the heuristics,
    unknown_domains and missing_from settings of the config; every rule is evaluated and
    explained, also past the first match. A message larger than [milter] max_message_size is
    refused, as the milter refuses it. With [authentication] mode verify or upstream, the
    message's SPF, DKIM, DMARC and ARC verdicts are shown and rules on them decided
    (--client-ip, --helo, --no-dns).
    """
    try:
        res = explain.explain_message(app.cfg, message, list(recipients), mail_from, payload=payload,
                                      client_ip=client_ip, helo=helo, dns=dns)
    except ServiceError as exc:
        if exc.code == "invalid_recipient":
            raise click.BadParameter(exc.message, param_hint="--rcpt") from None
        if exc.code == "invalid_client_ip":
            raise click.BadParameter(exc.message, param_hint="--client-ip") from None
        raise
    if as_json:
        emit_json(res)
    else:
        print_explanation(res)
        print_payloads(res)
    if exit_code and res["result"] in REFUSED:
        raise SystemExit(1)


REFUSED = ("reject", "tempfail")  # the results `rule test --exit-code` exits 1 for


def print_payloads(res: dict) -> None:
    for p in res.get("payloads", ()):
        how = f"template v{p['template']}" if p["template"] else (
            p["dialect"] if p["dialect"] != "native" else f"native {p['format']}")
        click.echo(f"\nPayload for rule {p['rule']} ({how}"
                   + (f", {p['content_type']}):" if "body" in p else f"): cannot render: {p['error']}"))
        if "body" in p:
            click.echo(p["body"])
