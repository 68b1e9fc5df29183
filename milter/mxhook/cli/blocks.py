"""`mxhook block`: the block list; adding and removing hand their `registered` / `deleted`
events to the spooler through the spool, like every other event."""
from __future__ import annotations

import click

from mxhook.cli.base import MxhookGroup, pass_app
from mxhook.cli.output import emit_json, short_time, table
from mxhook.services import blocks


@click.group(cls=MxhookGroup)
def block():
    """The block list: outbound mail to these addresses is refused (event `blocked`)."""


@block.command("list")
@click.option("--json", "as_json", is_flag=True, help="Output JSON.")
@pass_app
def block_list(app, as_json):
    """List blocked addresses, oldest first."""
    rows = blocks.list_all(app.cfg)
    if as_json:
        emit_json(rows)
    elif not rows:
        click.echo("The block list is empty")
    else:
        table(["ADDRESS", "SOURCE", "DSN", "CREATED", "REASON"],
              [[r["address"], r["source"], r["dsn"], short_time(r["created"]), r["reason"]]
               for r in rows], max_width=60)


@block.command("add")
@click.argument("address")
@click.option("--reason", metavar="TEXT", help="Why (shown in the list and the event).")
@pass_app
def block_add(app, address, reason):
    """Put ADDRESS on the block list (emits a `registered` event)."""
    done = blocks.add(app.cfg, address, reason=reason)
    click.echo(f"Blocked {done.address} (event registered {done.event_id})")


@block.command("remove")
@click.argument("address")
@pass_app
def block_remove(app, address):
    """Take ADDRESS off the block list (emits a `deleted` event)."""
    done = blocks.remove(app.cfg, address)
    click.echo(f"Unblocked {done.address} (event deleted {done.event_id})")
