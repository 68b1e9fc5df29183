"""`mxhook domain`: the domains this server receives inbound mail for."""
from __future__ import annotations

import click

from mxhook.cli.base import MxhookGroup, pass_app
from mxhook.cli.output import emit_json, short_time, table
from mxhook.services import domains


@click.group(cls=MxhookGroup)
def domain():
    """Domains this server receives inbound mail for."""


@domain.command("add")
@click.argument("name", metavar="DOMAIN")
@click.option("--log-denied/--no-log-denied", default=True, show_default=True,
              help="Log mail to this domain that is denied by heuristics or rules.")
@pass_app
def domain_add(app, name, log_denied):
    """Permit inbound mail for DOMAIN (internationalized names are stored as A-labels)."""
    d = domains.add(app.cfg, name, log_denied=log_denied)
    given = name.strip().rstrip(".").lower()
    shown = d["name"] if d["name"] == given else f"{d['name']} (given as {name.strip()})"
    click.echo(f"Added domain {shown}; denied mail is {'logged' if log_denied else 'not logged'}")


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
        table(["DOMAIN", "LOG DENIED", "CREATED"],
              [[d["name"], d["log_denied"], short_time(d["created"])] for d in found])


@domain.command("set")
@click.argument("name", metavar="DOMAIN")
@click.option("--log-denied/--no-log-denied", default=None,
              help="Log (or stop logging) mail to this domain that is denied.  [required]")
@pass_app
def domain_set(app, name, log_denied):
    """Change the settings of a permitted DOMAIN."""
    # Checked here, not with required=True: click 8.3 turns an absent flag pair into False.
    if click.get_current_context().get_parameter_source("log_denied") is not click.core.ParameterSource.COMMANDLINE:
        raise click.UsageError("Missing option '--log-denied' / '--no-log-denied'.")
    d = domains.set_log_denied(app.cfg, name, log_denied)
    click.echo(f"Domain {d['name']}: denied mail is {'logged' if d['log_denied'] else 'not logged'}")


@domain.command("remove")
@click.argument("name", metavar="DOMAIN")
@pass_app
def domain_remove(app, name):
    """Stop receiving inbound mail for DOMAIN."""
    click.echo(f"Removed domain {domains.remove(app.cfg, name)}")
