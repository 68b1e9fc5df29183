"""`mxhook block`: the block list; adding and removing hand their `registered` / `deleted`
events to the spooler through the spool, like every other event."""
from __future__ import annotations

import click

from mxhook.cli.base import MxhookGroup, pass_app
from mxhook.cli.output import emit_json, short_time, table
from mxhook.services import blocks


@click.group(cls=MxhookGroup)
def block():
    """The block list: outbound mail to these addresses is refused (event `blocked`), from
    every sending domain or, for suppressions (unsubscribes, complaints), from one."""


@block.command("list")
@click.option("--json", "as_json", is_flag=True, help="Output JSON.")
@pass_app
def block_list(app, as_json):
    """List blocked addresses, oldest first, with their source (bounce, cli, api,
    unsubscribe, complaint) and scope (the sending domain, or all)."""
    rows = blocks.list_all(app.cfg)
    if as_json:
        emit_json(rows)
    elif not rows:
        click.echo("The block list is empty")
    else:
        table(["ADDRESS", "SCOPE", "SOURCE", "DSN", "CREATED", "REASON"],
              [[r["address"], "all" if r["scope"] == "*" else r["scope"], r["source"], r["dsn"],
                short_time(r["created"]), r["reason"]] for r in rows], max_width=60)


@block.command("add")
@click.argument("address")
@click.option("--reason", metavar="TEXT", help="Why (shown in the list and the event).")
@click.option("--scope", metavar="DOMAIN", default="*", show_default=True,
              help="Refuse only mail from this sending domain (envelope sender's); * = all.")
@pass_app
def block_add(app, address, reason, scope):
    """Put ADDRESS on the block list (emits a `registered` event)."""
    done = blocks.add(app.cfg, address, reason=reason, scope=scope)
    click.echo(f"Blocked {done.address} (event registered {done.event_id})")


@block.command("remove")
@click.argument("address")
@click.option("--scope", metavar="DOMAIN",
              help="Only the entry of this sending domain (a suppression); default: every entry.")
@pass_app
def block_remove(app, address, scope):
    """Take ADDRESS off the block list, suppressions included (emits a `deleted` event)."""
    done = blocks.remove(app.cfg, address, scope=scope)
    click.echo(f"Unblocked {done.address} (event deleted {done.event_id})")
