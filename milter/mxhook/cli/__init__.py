"""`mxhook`: the admin's command line for permitted domains, inbound rules, dry runs, event
endpoints, the block list, and the inbound and event logs.

One module per command group; each command parses its arguments, calls an operation of
mxhook.services (which the HTTP API and the console call too) and prints the result. Writes go
to rules.db (the running milter and spooler pick them up within about a second); `rule test`
runs the very decision the milter runs. An error is one line on stderr and writes nothing;
exit status 2 for a wrong command line, 1 for any other error (cli.base.MxhookGroup).
"""
from __future__ import annotations

import click

from mxhook import config as configmod
from mxhook.cli import (access, admin, attachments, blocks, configio, dialects, domains, endpoints,
                        logs, ops, rules, tracking)
from mxhook.cli.base import CONTEXT_SETTINGS, App, InputError, MxhookGroup


@click.group(cls=MxhookGroup, context_settings=CONTEXT_SETTINGS)
@click.option("--config", "config_path", metavar="PATH", type=click.Path(dir_okay=False),
              help=f"Config file (default: $MXHOOK_CONFIG, else {configmod.DEFAULT_PATH}).")
@click.version_option(package_name="mxhook", message="%(prog)s %(version)s")
@click.pass_context
def cli(ctx, config_path):
    """mxhook: permitted domains, inbound webhook rules, event endpoints, the block list, and
    the logs.

    Changes to domains, rules, endpoints and the block list reach the running daemons within
    about a second.
    """
    if config_path == "":
        raise InputError("--config needs a path (an empty one would mean the default config)")
    ctx.obj = App(config_path)


for command in (domains.domain, rules.rule, logs.log, endpoints.endpoint, dialects.dialect,
                blocks.block, admin.postfix_config, admin.check, ops.replay, ops.status,
                access.token, access.user, access.audit, tracking.tracking_group,
                attachments.attachments, configio.config_group):
    cli.add_command(command)


def main(argv: list[str] | None = None) -> None:
    cli.main(args=argv, prog_name="mxhook")


if __name__ == "__main__":
    main()
