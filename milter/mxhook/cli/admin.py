"""`mxhook postfix-config` and `mxhook check`: wiring Postfix to the milter, and a health check."""
from __future__ import annotations

import shlex
import sys

import click

from mxhook import config as configmod
from mxhook.cli.base import CONTEXT_SETTINGS, InputError, app_of
from mxhook.cli.output import emit_json
from mxhook.services import check as checksvc
from mxhook.services import postfix as postfixsvc
from mxhook.services.errors import Failed


def _interactive() -> bool:
    return sys.stdin.isatty()


def _shown_value(value: str) -> str:
    return value if value != "" else "(empty)"


@click.command("postfix-config", context_settings=CONTEXT_SETTINGS,
               short_help="Print (or apply) the main.cf settings that connect Postfix to mxhook.")
@click.option("--postfix-dir", metavar="DIR", type=click.Path(file_okay=False),
              help="Postfix configuration directory (postconf -c DIR; default: Postfix's own, "
                   "normally /etc/postfix).")
@click.option("--apply", "apply_", is_flag=True,
              help="Change main.cf: show the diff, ask, keep a backup, run the commands, check "
                   "that Postfix can reach the milter socket.")
@click.option("--yes", "-y", is_flag=True, help="With --apply: do not ask.")
@click.option("--reload", "reload_", is_flag=True,
              help="With --apply: `postfix reload` afterwards (only when the socket check passed).")
@click.option("--remove", is_flag=True,
              help="The other way: take mxhook's milter out of smtpd_milters and "
                   "non_smtpd_milters (before removing mxhook: a milter nobody answers makes "
                   "Postfix answer every message 4xx).")
@click.option("--json", "as_json", is_flag=True, help="Output JSON.")
@click.pass_context
def postfix_config(ctx, postfix_dir, apply_, yes, reload_, remove, as_json):
    """Print the postconf commands that connect Postfix to this mxhook installation.

    The milter socket comes from [milter] socket of the config; a socket under Postfix's
    queue_directory is named relative to it (unix:mxhook/milter.sock), as smtpd runs chrooted
    there. Milters already in smtpd_milters are kept. Nothing is changed without --apply, and
    Postfix is reloaded only with --reload.

    \b
    Examples:
      mxhook postfix-config                       # the commands, as a shell script
      mxhook postfix-config --apply               # diff, confirm, backup, apply, check
      mxhook postfix-config --apply --yes --reload
      mxhook postfix-config --remove --apply --yes --reload   # unwire (before removing mxhook)
    """
    if (yes or reload_) and not apply_:
        raise InputError("--yes and --reload go with --apply")
    try:
        cfg = app_of(ctx).cfg
    except configmod.ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    try:
        planned = postfixsvc.plan(cfg, postfix_dir, remove=remove)
    except Failed as exc:
        raise click.ClickException(exc.message) from None
    report, diff = planned.report, planned.diff
    main_cf = report["main_cf"]
    if not apply_:
        if as_json:
            emit_json(report)
        else:
            _print_commands(report, planned.postfix, diff, planned.commands, remove)
        return

    if not diff:
        report = postfixsvc.apply(planned)
        if as_json:
            emit_json(report)
        else:
            click.echo(f"{main_cf} does not name mxhook's milter ({report['postfix_socket']}); "
                       "nothing changed." if remove else
                       f"{main_cf} already has every setting mxhook needs (milter "
                       f"{report['postfix_socket']}); nothing changed. `mxhook check` tests the "
                       "whole setup.")
        return
    out = (lambda *a, **k: None) if as_json else click.echo
    out(f"Changes to {main_cf} (milter socket {planned.socket_spec}, named "
        f"{report['postfix_socket']} in main.cf):")
    for n, old, new in diff:
        out(f"  {n}: {_shown_value(old)} -> {new}")
    if not yes:
        if not _interactive():
            raise InputError(f"--apply changes {main_cf} and asks first, but there is no terminal "
                             "to ask on: add --yes to apply without asking")
        if as_json:  # the diff was not printed; show it where the question goes
            for n, old, new in diff:
                click.echo(f"  {n}: {_shown_value(old)} -> {new}", err=True)
        if not click.confirm(f"Apply these {len(diff)} changes to {main_cf}?", err=True):
            raise click.ClickException("nothing changed")
    try:
        report = postfixsvc.apply(planned, reload=reload_, out=out)
    except Failed as exc:
        if as_json and exc.detail is not None:
            emit_json(exc.detail)
        raise click.ClickException(exc.message) from None
    if as_json:
        emit_json(report)
    if report["problems"]:
        ctx.exit(1)


def _print_commands(report: dict, postfix: postfixsvc.Postfix, diff, commands, remove: bool) -> None:
    main_cf = report["main_cf"]
    click.echo(f"# mxhook: main.cf settings for {main_cf}" + (" without mxhook" if remove else ""))
    click.echo(f"# milter socket {report['socket']} (mxhook.conf) = {report['postfix_socket']} "
               f"for Postfix (queue_directory {report['queue_directory']})")
    if not diff:
        click.echo("# nothing to change: main.cf does not name mxhook's milter" if remove else
                   "# nothing to change: main.cf already has every setting mxhook needs")
        return
    for n, old, new in diff:
        click.echo(f"#   {n}: {_shown_value(old)} -> {new}")
    click.echo(f"cp -p {shlex.quote(main_cf)} {shlex.quote(main_cf)}.mxhook-$(date +%Y%m%d%H%M%S)")
    for cmd in commands:
        click.echo(shlex.join(cmd))
    click.echo(f"{postfix.command('check')} && {postfix.command('reload')}")
    click.echo("# or let mxhook apply them (diff, backup, socket check): "
               f"mxhook postfix-config{' --postfix-dir ' + shlex.quote(postfix.config_dir) if postfix.config_dir else ''}"
               f"{' --remove' if remove else ''} --apply")


@click.command("check", context_settings=CONTEXT_SETTINGS,
               short_help="Check config, databases, socket, spool and Postfix's milter settings.")
@click.option("--postfix-dir", metavar="DIR", type=click.Path(file_okay=False),
              help="Postfix configuration directory (postconf -c DIR; default: Postfix's own).")
@click.option("--json", "as_json", is_flag=True,
              help="Output JSON: a list of {check, ok, message}, and `code` on some problems.")
@click.pass_context
def check(ctx, postfix_dir, as_json):
    """Check that this mxhook installation can work: the config file (every setting the
    daemons read), rules.db and state.db (readable, known schema, integrity, permissions), the
    milter socket (mode, group, and a real connection as Postfix's user when run as root), the
    spool directories, and Postfix's smtpd_milters (names this socket, default_action=tempfail).

    Prints one line per check, and one line per problem saying what to do. Exit status: 0 when
    everything is fine, 1 when there is a problem.
    """
    results = checksvc.run_checks(app_of(ctx).config_path, postfix_dir)
    failed = [r for r in results if not r["ok"]]
    if as_json:
        emit_json(results)
    else:
        for r in results:
            click.echo(f"{'ok     ' if r['ok'] else 'PROBLEM'} {r['check']}: {r['message']}")
        if failed:
            click.echo(f"{len(failed)} problem{'s' if len(failed) != 1 else ''} found")
        else:
            click.echo(f"everything checked is fine ({len(results)} checks)")
    if failed:
        ctx.exit(1)
