"""`mxhook attachments`: the keys that sign the fetch URLs of attachment contents a payload
omitted ([web] attachment_key_file, docs/api.md)."""
from __future__ import annotations

import click

from mxhook.cli.base import MxhookGroup, pass_app
from mxhook.cli.output import echo_rotated_key, emit_json
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
    echo_rotated_key(done, "fetch URLs")
