"""`mxhook domain`: the domains this server receives inbound mail for."""
from __future__ import annotations

import click

from mxhook.cli.base import MxhookGroup, pass_app
from mxhook.cli.output import emit_json, short_time, table
from mxhook.services import domains
from mxhook.store.rulesdb import UNMATCHED

UNMATCHED_HELP = ("Recipients no rule takes: reject them (550 5.7.1 at RCPT) or pass them on to "
                  "Postfix's own delivery (mailboxes), so only some addresses of the domain go to "
                  "webhooks.")
REJECT_TEXT_HELP = ("Text of the 550 5.7.1 reply refusing a recipient no rule takes (printable "
                    "ASCII, at most 500 characters, no '%').")


def describe(d: dict) -> str:
    text = (f"denied mail is {'logged' if d['log_denied'] else 'not logged'}; recipients no rule "
            f"takes are {'passed to Postfix' if d['unmatched'] == 'pass' else 'rejected'}")
    if d["reject_text"]:
        text += (f" with '550 5.7.1 {d['reject_text']}'" if d["unmatched"] == "reject"
                 else "; its reject text applies with --unmatched reject")
    return text


@click.group(cls=MxhookGroup)
def domain():
    """Domains this server receives inbound mail for."""


@domain.command("add")
@click.argument("name", metavar="DOMAIN")
@click.option("--log-denied/--no-log-denied", default=True, show_default=True,
              help="Log mail to this domain that is denied by heuristics or rules.")
@click.option("--unmatched", type=click.Choice(UNMATCHED), default="reject", show_default=True,
              help=UNMATCHED_HELP)
@click.option("--reject-text", metavar="TEXT", help=REJECT_TEXT_HELP)
@pass_app
def domain_add(app, name, log_denied, unmatched, reject_text):
    """Permit inbound mail for DOMAIN (internationalized names are stored as A-labels)."""
    d = domains.add(app.cfg, name, log_denied=log_denied, unmatched=unmatched, reject_text=reject_text)
    given = name.strip().rstrip(".").lower()
    shown = d["name"] if d["name"] == given else f"{d['name']} (given as {name.strip()})"
    click.echo(f"Added domain {shown}; {describe(d)}")


@domain.command("list")
@click.option("--json", "as_json", is_flag=True, help="Output JSON.")
@pass_app
def domain_list(app, as_json):
    """List the permitted domains."""
    found = domains.list_all(app.cfg)
    if as_json:
        emit_json(found)
    elif not found:
        click.echo("No permitted domains (add one with: mxhook domain add example.com)")
    else:
        table(["DOMAIN", "LOG DENIED", "UNMATCHED", "REJECT TEXT", "CREATED"],
              [[d["name"], d["log_denied"], d["unmatched"], d["reject_text"] or "",
                short_time(d["created"])] for d in found], max_width=60)


@domain.command("set")
@click.argument("name", metavar="DOMAIN")
@click.option("--log-denied/--no-log-denied", default=None,
              help="Log (or stop logging) mail to this domain that is denied.")
@click.option("--unmatched", type=click.Choice(UNMATCHED), help=UNMATCHED_HELP)
@click.option("--reject-text", metavar="TEXT", help=REJECT_TEXT_HELP + " '' removes it.")
@pass_app
def domain_set(app, name, log_denied, unmatched, reject_text):
    """Change the settings of a permitted DOMAIN; options not given keep their value."""
    # click 8.3 turns an absent flag pair into False: only a flag given counts
    if click.get_current_context().get_parameter_source("log_denied") is not click.core.ParameterSource.COMMANDLINE:
        log_denied = None
    if log_denied is None and unmatched is None and reject_text is None:
        raise click.UsageError("give at least one of --log-denied/--no-log-denied, --unmatched, "
                               "--reject-text")
    d = domains.edit(app.cfg, name, log_denied=log_denied, unmatched=unmatched, reject_text=reject_text)
    click.echo(f"Domain {d['name']}: {describe(d)}")


@domain.command("remove")
@click.argument("name", metavar="DOMAIN")
@pass_app
def domain_remove(app, name):
    """Stop receiving inbound mail for DOMAIN."""
    click.echo(f"Removed domain {domains.remove(app.cfg, name)}")
