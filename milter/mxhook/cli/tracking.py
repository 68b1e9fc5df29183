"""`mxhook tracking`: open and click tracking and one-click unsubscribe of outbound mail, per
sending domain (the envelope sender's), and the key tracking tokens are signed with."""
from __future__ import annotations

import click

from mxhook.cli.base import MxhookGroup, pass_app, warn
from mxhook.cli.output import echo_rotated_key, emit_json, short_time, table
from mxhook.services import tracking
from mxhook.store.rulesdb import TRACKING_FEATURES

FLAGS = {  # setting -> (option, help)
    "opens": ("opens", "Add an open-tracking pixel to the HTML part."),
    "clicks": ("clicks", "Rewrite the HTML part's http(s) links to go through mxhook-track."),
    "text_links": ("text-links", "Rewrite the text part's links too."),
    "unsubscribe": ("unsubscribe", "Add List-Unsubscribe and List-Unsubscribe-Post "
                                   "(one-click, RFC 8058) unless the message has its own."),
    "honeypot": ("honeypot", "Add a link no person sees: a click on it marks a machine."),
}


def describe(t: dict) -> str:
    on = [FLAGS[f][0] for f in TRACKING_FEATURES if t[f]]
    return ", ".join(on) if on else "nothing (settings kept)"


def _feature_options(command):
    for name, (option, text) in reversed(FLAGS.items()):
        command = click.option(f"--{option}/--no-{option}", name, default=None, help=text)(command)
    return command


@click.group("tracking", cls=MxhookGroup)
def tracking_group():
    """Tracking of outbound mail per sending domain (docs/tracking.md)."""


@tracking_group.command("set")
@click.argument("domain")
@_feature_options
@pass_app
def tracking_set(app, domain, **features):
    """Set what outbound mail from DOMAIN (its envelope sender's domain) gets; options not
    given keep their value (a new domain: opens and clicks)."""
    ctx = click.get_current_context()
    # click 8.3 turns an absent flag pair into False: only a flag given counts
    given = {k: v for k, v in features.items()
             if ctx.get_parameter_source(k) is click.core.ParameterSource.COMMANDLINE}
    t = tracking.set_domain(app.cfg, domain, **given)
    click.echo(f"Tracking for mail from {t['domain']}: {describe(t)}")
    if not app.cfg.value("tracking", "public_url"):
        warn("[tracking] public_url is empty: nothing is tracked until it is set")


@tracking_group.command("list")
@click.option("--json", "as_json", is_flag=True, help="Output JSON.")
@pass_app
def tracking_list(app, as_json):
    """List the sending domains with tracking settings."""
    found = tracking.list_all(app.cfg)
    if as_json:
        emit_json(found)
    elif not found:
        click.echo("No sending domain is tracked (mxhook tracking set DOMAIN)")
    else:
        table(["DOMAIN", *(FLAGS[f][0].upper() for f in TRACKING_FEATURES), "UPDATED"],
              [[t["domain"], *(t[f] for f in TRACKING_FEATURES), short_time(t["updated"])]
               for t in found])


@tracking_group.command("show")
@click.argument("domain")
@click.option("--json", "as_json", is_flag=True, help="Output JSON.")
@pass_app
def tracking_show(app, domain, as_json):
    """Show the tracking settings of DOMAIN."""
    t = tracking.get(app.cfg, domain)
    if as_json:
        emit_json(t)
        return
    click.echo(f"domain: {t['domain']}")
    for f in TRACKING_FEATURES:
        click.echo(f"{FLAGS[f][0]}: {'yes' if t[f] else 'no'}")
    click.echo(f"updated: {t['updated']}")


@tracking_group.command("remove")
@click.argument("domain")
@pass_app
def tracking_remove(app, domain):
    """Stop tracking mail from DOMAIN (an X-Mxhook-Track header field still asks per message)."""
    click.echo(f"Removed the tracking settings of {tracking.remove(app.cfg, domain)}")


@tracking_group.command("rotate-key")
@click.option("--drop-old", is_flag=True,
              help="Keep only the new key: links and pixels of mail sent before stop working.")
@click.option("--json", "as_json", is_flag=True, help="Output JSON.")
@pass_app
def tracking_rotate_key(app, drop_old, as_json):
    """Add a new signing key to [tracking] key_file (made when missing); the new one signs,
    the older ones still verify until they are dropped."""
    done = tracking.rotate_key(app.cfg, drop_old=drop_old)
    if as_json:
        emit_json(done)
        return
    echo_rotated_key(done, "tracking links, pixels and unsubscribe URLs")
