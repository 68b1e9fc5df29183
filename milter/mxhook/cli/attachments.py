"""`mxhook attachments`: the keys that sign the fetch URLs of attachment contents a payload
omitted ([web] attachment_key_file, docs/api.md)."""
from __future__ import annotations

import click

from mxhook.cli.base import MxhookGroup, pass_app
from mxhook.cli.output import emit_json
from mxhook.services import attachments as attachment_service


@click.group(cls=MxhookGroup)
def attachments():
    """Fetch URLs of omitted attachments: their signing keys."""


@attachments.command("rotate-key")
@click.option("--drop-old", is_flag=True,
              help="Keep only the new key: every URL signed before stops working now (after a leak).")
@click.option("--json", "as_json", is_flag=True, help="Output JSON.")
@pass_app
def rotate_key(app, drop_old, as_json):
    """Add a new signing key; the older keys keep verifying the URLs they signed until
    [web] attachment_url_ttl after the key that followed them was added."""
    done = attachment_service.rotate_key(app.cfg, drop_old=drop_old)
    if as_json:
        emit_json(done)
        return
    click.echo(f"Added key {done['key_id']} to {done['path']}: it signs fetch URLs from now on")
    if done["kept"]:
        click.echo(f"Still verifying: {', '.join(done['kept'])}")
    if done["dropped"]:
        click.echo(f"Dropped (URLs signed with them no longer work): {', '.join(done['dropped'])}")
