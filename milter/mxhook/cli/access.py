"""`mxhook token`, `mxhook user` and `mxhook audit`: who may use the HTTP API (mxhook-web) and
the console, and what was changed through them."""
from __future__ import annotations

import click

from mxhook.cli.base import CONTEXT_SETTINGS, MxhookGroup, pass_app
from mxhook.cli.output import emit_json, printable, short_time, table
from mxhook.services import access


@click.group(cls=MxhookGroup)
def token():
    """API tokens for mxhook-web (`Authorization: Bearer TOKEN`)."""


@token.command("add")
@click.argument("name")
@click.option("--read-only", is_flag=True, help="The token may read but change nothing (403 on writes).")
@pass_app
def token_add(app, name, read_only):
    """Make an API token called NAME and print it, this once (only its hash is stored)."""
    secret, entry = access.add_token(app.cfg, name, read_only=read_only)
    click.echo(f"Added {'read-only ' if read_only else ''}token {entry['name']}; it is shown only now:",
               err=True)
    click.echo(secret)


@token.command("list")
@click.option("--json", "as_json", is_flag=True, help="Output JSON.")
@pass_app
def token_list(app, as_json):
    """List API tokens (names, never the tokens)."""
    rows = access.list_tokens(app.cfg)
    if as_json:
        emit_json(rows)
    elif not rows:
        click.echo("No API tokens (add one with: mxhook token add NAME)")
    else:
        table(["NAME", "READ-ONLY", "CREATED", "LAST USED"],
              [[r["name"], r["read_only"], short_time(r["created"]), short_time(r["last_used"])]
               for r in rows])


@token.command("remove")
@click.argument("name")
@pass_app
def token_remove(app, name):
    """Remove token NAME: requests with it are refused from now on."""
    access.remove_token(app.cfg, name)
    click.echo(f"Removed token {name}")


@click.group(cls=MxhookGroup)
def user():
    """Console users (name and password)."""


def _new_password(password_file) -> str:
    """The first line of `password_file` (its line end dropped), or asked for twice."""
    if password_file is None:
        return click.prompt("Password", hide_input=True, confirmation_prompt=True)
    return password_file.readline().rstrip("\r\n")


PASSWORD_FILE = click.option(
    "--password-file", type=click.File("r", encoding="utf-8"), metavar="FILE|-",
    help="Read the password from the first line of FILE (`-`: standard input) instead of asking.")


@user.command("add")
@click.argument("name")
@click.option("--read-only", is_flag=True,
              help="The user sees the logs and the settings but changes nothing.")
@PASSWORD_FILE
@pass_app
def user_add(app, name, read_only, password_file):
    """Add console user NAME; asks for the password (stored as an scrypt hash)."""
    access.add_user(app.cfg, name, _new_password(password_file), read_only=read_only)
    click.echo(f"Added {'read-only ' if read_only else ''}user {name}")


@user.command("passwd")
@click.argument("name")
@PASSWORD_FILE
@pass_app
def user_passwd(app, name, password_file):
    """Set a new password for user NAME."""
    access.set_password(app.cfg, name, _new_password(password_file))
    click.echo(f"Changed the password of user {name}")


@user.command("list")
@click.option("--json", "as_json", is_flag=True, help="Output JSON.")
@pass_app
def user_list(app, as_json):
    """List console users."""
    rows = access.list_users(app.cfg)
    if as_json:
        emit_json(rows)
    elif not rows:
        click.echo("No console users (add one with: mxhook user add NAME)")
    else:
        table(["NAME", "READ-ONLY", "CREATED", "PASSWORD CHANGED"],
              [[r["name"], r["read_only"], short_time(r["created"]), short_time(r["updated"])]
               for r in rows])


@user.command("remove")
@click.argument("name")
@pass_app
def user_remove(app, name):
    """Remove console user NAME."""
    access.remove_user(app.cfg, name)
    click.echo(f"Removed user {name}")


@click.command("audit", context_settings=CONTEXT_SETTINGS)
@click.option("--limit", type=click.IntRange(min=1), default=100, show_default=True,
              help="At most this many entries, newest first.")
@click.option("--json", "as_json", is_flag=True, help="Output JSON.")
@pass_app
def audit(app, limit, as_json):
    """Changes made through the HTTP API and the console (and to tokens and users): who,
    when, what, on what."""
    rows = access.audit(app.cfg, limit=limit)
    if as_json:
        emit_json(rows)
    elif not rows:
        click.echo("The audit log is empty")
    else:
        table(["AT", "WHO", "ACTION", "TARGET", "FROM"],
              [[short_time(r["at"]), r["actor"], r["action"], printable(r["target"] or ""),
                r["remote_addr"]] for r in rows])
