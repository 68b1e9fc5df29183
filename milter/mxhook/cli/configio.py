"""`mxhook config`: domains, rules, endpoints, the block list and tracking settings as one
JSON or YAML document (services/configio.py; docs/automation.md)."""
from __future__ import annotations

import os

import click

from mxhook.cli.base import InputError, MxhookGroup, pass_app, warn
from mxhook.cli.output import emit_json, print_new_keys
from mxhook.services import configio

SECRET_FILE_MODE = 0o600


@click.group("config", cls=MxhookGroup)
def config_group():
    """Export and import the configuration kept in rules.db (for several MX hosts with one
    rule set, or configuration management such as Ansible)."""


@config_group.command("export")
@click.option("--format", "fmt", type=click.Choice(configio.FORMATS), default="json",
              show_default=True, help="Document format.")
@click.option("--include-secrets", is_flag=True,
              help="Include Basic auth, Bearer tokens, API keys, dialect signing keys and the "
                   "signing secrets (with -o the file is written mode 0600).")
@click.option("-o", "--output", metavar="FILE", type=click.Path(dir_okay=False),
              help="Write to FILE instead of standard output.")
@pass_app
def config_export(app, fmt, include_secrets, output):
    """Print domains, rules, endpoints, block list and tracking settings as one document."""
    text = configio.dumps(configio.export(app.cfg, include_secrets=include_secrets), fmt)
    if output is None:
        click.echo(text, nl=False)
        return
    mode = SECRET_FILE_MODE if include_secrets else 0o644
    fd = os.open(output, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    os.fchmod(fd, mode)  # an existing file gets the mode too
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)


@config_group.command("import")
@click.argument("source", metavar="FILE|-", type=click.File("r", encoding="utf-8"))
@click.option("--format", "fmt", type=click.Choice(configio.FORMATS),
              help="Document format [default: JSON when it starts with '{', else YAML].")
@click.option("--dry-run", is_flag=True, help="Show what would change; write nothing.")
@click.option("--prune", is_flag=True,
              help="Remove the objects of each kind the document lists that it does not name "
                   "(default: keep them).")
@click.option("--json", "as_json", is_flag=True, help="Output the changes as JSON.")
@pass_app
def config_import(app, source, fmt, dry_run, prune, as_json):
    """Make rules.db hold what the document FILE (- for standard input) says, in one
    transaction; the whole document is checked first. Importing it again changes nothing."""
    try:
        text = source.read()
    except UnicodeDecodeError as exc:
        raise InputError(f"{source.name} is not UTF-8 text (byte {exc.start + 1})") from None
    done = configio.import_document(app.cfg, configio.loads(text, fmt), prune=prune,
                                    dry_run=dry_run, warn=warn)
    if as_json:
        emit_json({"dry_run": dry_run, "changed": done.plan.count, **done.plan.as_dict(),
                   "new_keys": [{"kind": kind, "name": name, "scheme": k.scheme,
                                 "secret": k.secret if k.scheme == "v1" else None,
                                 "public_key": k.public_key}
                                for kind, name, keys in done.new_keys for k in keys]})
        return
    verb = ({"added": "would add", "changed": "would change", "removed": "would remove"} if dry_run
            else {"added": "added", "changed": "changed", "removed": "removed"})
    for kind, actions in done.plan.as_dict().items():
        for action, labels in actions.items():
            for label in labels:
                click.echo(f"{verb[action]} {kind.removesuffix('s')} {label}")
    click.echo(f"{done.plan.count} {'would change' if dry_run else 'changed'}"
               + (" (dry run: nothing written)" if dry_run else ""))
    for kind, name, keys in done.new_keys:
        click.echo(f"{kind} {name}:")
        print_new_keys(keys)
