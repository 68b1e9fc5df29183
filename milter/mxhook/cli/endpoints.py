"""`mxhook endpoint`: event webhook endpoints, where delivery events are posted in batches."""
from __future__ import annotations

import click

from mxhook.cli.base import (
    ED25519_OPTION,
    JSON_ADDED,
    MxhookGroup,
    destination_options,
    pass_app,
    rotate_options,
    warn,
)
from mxhook.cli.output import (
    body_summary,
    destination_rows,
    emit_json,
    fields,
    new_keys_dict,
    print_new_keys,
    print_rotation,
    print_signing,
    print_template,
    rotation_dict,
    table,
    yes_no,
)
from mxhook.model import endpoints as endpointsmod
from mxhook.payloads.dialects import catalogue
from mxhook.services import endpoints as endpointsvc


def print_endpoint(view: endpointsvc.EndpointView, *, template_source: bool = False) -> None:
    ep = view.endpoint
    rows = [
        ("id", ep.id), ("enabled", yes_no(ep.enabled)), ("events", ", ".join(ep.categories)),
        ("batching", f"after {ep.interval} s or at {ep.max_events} events, whichever comes first"),
        ("version", f"{ep.version} (pinned)"), ("time zone", ep.timezone),
        ("custom headers", ", ".join(ep.custom_headers) or "(none)"),
        *destination_rows(ep.destination), ("created", ep.created), ("updated", ep.updated),
    ]
    fields(rows)
    print_signing(view.keys)
    print_template(view.template, source=template_source)


def endpoint_options(edit: bool):
    """Options of `endpoint add` and `endpoint edit` (for edit all default to None = keep)."""

    def dflt(key, unit=""):
        return "." if edit else f" [default: {endpointsmod.DEFAULTS[key]}{unit}]."

    opts = [
        click.option("--events", "categories", metavar="CATEGORIES",
                     help="Comma-separated: " + ",".join(endpointsmod.CATEGORIES) + " or all" +
                          ("." if edit else " [default: bounces,deliveries,blocks].")),
        click.option("--interval", type=int, metavar="1..600",
                     help="Send when the oldest pending event is this many seconds old" + dflt("interval")),
        click.option("--max-events", type=int, metavar="100..10000",
                     help="Send when this many events are pending; never more per POST" + dflt("max_events")),
        click.option("--version", "version", type=int, metavar="N",
                     help="Payload version" + ("." if edit else " [default: the latest; then pinned].")),
        click.option("--timezone", metavar="AREA/CITY",
                     help="Time zone of timestamps in payloads" + dflt("timezone")),
        click.option("--custom-header", "custom_headers", metavar="NAME", multiple=True,
                     help="A message header whose value the bodies carry (SMTP2GO: an extra field) "
                          "besides [milter] event_headers; repeat for more"
                          + (", the whole selection." if edit else ".")),
    ]
    if edit:
        opts += [
            click.option("--disabled/--enabled", "disabled", default=None,
                         help="Disable (events are kept pending) or enable the endpoint."),
            click.option("--no-custom-headers", is_flag=True,
                         help="Carry no custom headers besides [milter] event_headers."),
        ]
    else:
        opts += [
            click.option("--disabled", is_flag=True,
                         help="Add the endpoint disabled (no events are queued for it)."),
            ED25519_OPTION,
        ]

    def deco(f):
        for opt in reversed(opts):
            f = opt(f)
        # endpoint add takes the URL as its argument
        return destination_options(edit, endpointsmod.FORMATS, catalogue.EVENTS, url_option=edit,
                                   unencrypted="events")(f)

    return deco


@click.group(cls=MxhookGroup)
def endpoint():
    """Event webhook endpoints: where delivery events are posted, in batches."""


@endpoint.command("add", short_help="Add an event endpoint.")
@click.argument("url")
@endpoint_options(edit=False)
@JSON_ADDED
@pass_app
def endpoint_add(app, destination, template, categories, interval, max_events, version, timezone,
                 custom_headers, disabled, ed25519, as_json):
    """Add an endpoint at URL for delivery events (bounces, deliveries, blocks).

    \b
    Example:
      mxhook endpoint add https://app.example.net/hooks/events --events bounces,blocks \\
          --interval 30 --timezone Europe/Berlin --bearer tok_...

    The endpoint's signing secret is printed once: give it to the receiver (docs/verifying.md).
    """
    view = endpointsvc.add(
        app.cfg, destination=destination, categories=categories, interval=interval,
        max_events=max_events, version=version, timezone=timezone, enabled=not disabled,
        ed25519=ed25519, template=template, custom_headers=custom_headers, warn=warn)
    added = view.endpoint
    if as_json:
        emit_json({"endpoint": view.as_dict(), **new_keys_dict(view.keys)})
        return
    click.echo(f"Added endpoint {added.id}{' (disabled)' if not added.enabled else ''}: "
               f"{', '.join(added.categories)} events to {added.destination.url} "
               f"(version {added.version}, {body_summary(added.destination)})")
    print_new_keys(view.keys)


@endpoint.command("list")
@click.option("--json", "as_json", is_flag=True, help="Output JSON (secrets masked).")
@pass_app
def endpoint_list(app, as_json):
    """List event endpoints."""
    views = endpointsvc.list_all(app.cfg, with_keys=as_json)
    found = [v.endpoint for v in views]
    if as_json:
        emit_json([v.as_dict() for v in views])
    elif not found:
        click.echo("No event endpoints (add one with: mxhook endpoint add URL)")
    else:
        table(["ID", "ENABLED", "EVENTS", "INTERVAL", "MAX", "VERSION", "DIALECT", "FORMAT",
               "TIME ZONE", "URL"],
              [[ep.id, ep.enabled, ",".join(ep.categories), f"{ep.interval}s", ep.max_events,
                ep.version, ep.destination.dialect, ep.destination.format, ep.timezone,
                ep.destination.url] for ep in found],
              max_width=70)


@endpoint.command("show")
@click.argument("key", metavar="ID|URL")
@click.option("--json", "as_json", is_flag=True, help="Output JSON (secrets masked).")
@click.option("--template-source", is_flag=True, help="Show the current template's source too.")
@pass_app
def endpoint_show(app, key, as_json, template_source):
    """Show one endpoint (secrets masked)."""
    view = endpointsvc.show(app.cfg, key)
    if as_json:
        emit_json(view.as_dict(template_source=template_source))
    else:
        print_endpoint(view, template_source=template_source)


@endpoint.command("edit", short_help="Change an endpoint.")
@click.argument("key", metavar="ID|URL")
@endpoint_options(edit=True)
@pass_app
def endpoint_edit(app, key, destination, clear_auth, no_template, template, categories, interval,
                  max_events, version, timezone, custom_headers, disabled, no_custom_headers):
    """Change endpoint ID|URL; options not given keep their value.

    Every request made from now on, retries included, is in the new settings (--dialect,
    --version, --format, --template, --custom-header); a batch already made keeps its events
    (and its id), split into one-event requests for a dialect that posts one per request.
    Giving --version moves the endpoint to that payload version.
    """
    if custom_headers and no_custom_headers:
        raise click.UsageError("give either --custom-header or --no-custom-headers")
    new = endpointsvc.edit(
        app.cfg, key, destination=destination, clear_auth=clear_auth, categories=categories,
        interval=interval, max_events=max_events, version=version, timezone=timezone,
        enabled=None if disabled is None else not disabled, template=template,
        no_template=no_template, warn=warn,
        custom_headers=() if no_custom_headers else (custom_headers or None))
    click.echo(f"Updated endpoint {new.id} ({new.destination.url})")


@endpoint.command("remove")
@click.argument("key", metavar="ID|URL")
@pass_app
def endpoint_remove(app, key):
    """Remove an endpoint. Events still pending for it are marked failed."""
    ep = endpointsvc.remove(app.cfg, key)
    click.echo(f"Removed endpoint {ep.id} ({ep.destination.url})")


@endpoint.command("rotate-secret", short_help="Issue a new signing secret (old one overlaps).")
@click.argument("key", metavar="ID|URL")
@rotate_options
@JSON_ADDED
@pass_app
def endpoint_rotate_secret(app, key, overlap, ed25519, as_json):
    """Give endpoint ID|URL a new signing secret, printed once. During the overlap every
    request carries a signature with the previous secret and one with the new one."""
    ep, rotation = endpointsvc.rotate_secret(app.cfg, key, overlap=overlap, ed25519=ed25519)
    if as_json:
        emit_json(rotation_dict(rotation, "endpoint", endpointsvc.show(app.cfg, str(ep.id))))
        return
    print_rotation(rotation, f"endpoint {ep.id} ({ep.destination.url})", ed25519)


@endpoint.command("test", short_help="Send one sample event now and show the reply.")
@click.argument("key", metavar="ID|URL")
@click.option("--type", "event_type", default="bounced", show_default=True,
              type=click.Choice(endpointsvc.SAMPLE_TYPES),
              help="Type of the sample event.")
@pass_app
def endpoint_test(app, key, event_type):
    """Post one sample event to endpoint ID|URL now, through the spooler's delivery client
    (same payload version, format, time zone, auth and timeout), and show the reply. The
    sample's id starts with `test-` and its batch id with `evb_test_`. Exit status 1 when the
    endpoint did not answer 2xx."""
    sent = endpointsvc.send_test(app.cfg, key, event_type)
    ep, batch_id, outcome = sent.endpoint, sent.batch_id, sent.outcome
    code = f"HTTP {outcome.status_code}" if outcome.status_code is not None else "no HTTP answer"
    click.echo(f"POST {ep.destination.url} ({ep.destination.format}, version {ep.version}, "
               f"webhook-id {batch_id})")
    click.echo(f"{code} in {outcome.duration_ms} ms: {outcome.status}"
               + (f" ({outcome.error})" if outcome.error else ""))
    if outcome.response_excerpt:
        click.echo("reply:")
        click.echo(outcome.response_excerpt.rstrip("\n"))
    if outcome.status != "succeeded":
        raise SystemExit(1)


