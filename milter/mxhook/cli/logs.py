"""`mxhook log`: the inbound log and the event log, read from state.db."""
from __future__ import annotations

import io
import sys

import click

from mxhook.cli.base import InputError, MxhookGroup, TimeType, pass_app
from mxhook.cli.output import emit_json, printable, short_time, table
from mxhook.services import logs
from mxhook.services.csvexport import write_csv
from mxhook.store.statedb import DELIVERY_STATUSES, LOG_STATUSES


@click.group(cls=MxhookGroup)
def log():
    """The inbound and event logs (in state.db), and their retention."""


def log_listing(statuses: tuple[str, ...], status_help: str):
    """The options every `mxhook log` listing takes (status filter, time window, limit, output)."""

    def decorate(fn):
        for option in reversed((
            click.option("--status", type=click.Choice(statuses), help=status_help),
            click.option("--since", type=TimeType(), help="From this time on (ISO, or an age: 30m, 2h, 7d)."),
            click.option("--until", type=TimeType(), help="Up to this time (ISO, or an age)."),
            click.option("--limit", type=click.IntRange(min=1), default=100, show_default=True,
                         help="At most this many entries, newest first."),
            click.option("--csv", "as_csv", is_flag=True, help="Output CSV."),
            click.option("--json", "as_json", is_flag=True, help="Output JSON."),
        )):
            fn = option(fn)
        return fn

    return decorate


def emit_listing(rows: list[dict], *, as_csv: bool, as_json: bool, columns: list[str],
                 what: str, filtered: bool, header: list[str], cells) -> None:
    """JSON, formula-safe CSV with exactly `columns`, or a table for humans."""
    if as_csv and as_json:
        raise InputError("choose either --csv or --json, not both")
    if as_json:
        emit_json(rows)
    elif as_csv:
        # UTF-8 whatever the locale (the CSV is a file for other programs), LF line ends
        out = io.TextIOWrapper(sys.stdout.buffer, encoding="utf-8", newline="",
                               write_through=True)
        try:
            write_csv(rows, columns, out)
            out.flush()
        finally:
            out.detach()
    elif not rows:
        click.echo(f"No {what} entries" + (" match" if filtered else ""))
    else:
        table(header, [cells(r) for r in rows], max_width=48)


@log.command("inbound")
@log_listing(LOG_STATUSES, "Only this status.")
@pass_app
def log_inbound(app, status, since, until, limit, as_csv, as_json):
    """List inbound mail: accepted (queued, succeeded, deferred, failed) and denied."""
    rows = logs.inbound(app.cfg, status=status, since=since, until=until, limit=limit)
    emit_listing(rows, as_csv=as_csv, as_json=as_json, columns=logs.INBOUND_COLUMNS, what="inbound log",
                 filtered=bool(status or since or until),
                 header=["RECEIVED", "STATUS", "FROM", "TO", "FILTER", "REASON", "ID"],
                 cells=lambda r: [short_time(r.get("received")), r.get("status"), r.get("from"),
                                  r.get("to"), r.get("filterName"), r.get("reason"), r.get("id")])


@log.command("show")
@click.argument("entry_id", metavar="ID")
@click.option("--json", "as_json", is_flag=True, help="Output JSON.")
@pass_app
def log_show(app, entry_id, as_json):
    """Details of one inbound log entry, with its delivery attempts."""
    d = logs.inbound_detail(app.cfg, entry_id)
    if as_json:
        emit_json(d)
        return
    for key, label in (("id", "id"), ("received", "date"), ("status", "status"),
                       ("hostName", "host name"), ("client_addr", "client address"),
                       ("mail_from", "mail from"), ("from", "from"), ("to", "destination"),
                       ("subject", "subject"), ("messageId", "message-id"),
                       ("queue_id", "queue id"), ("filterName", "filter name"),
                       ("reason", "reason"), ("next_attempt_at", "next attempt")):
        if d.get(key) not in (None, ""):
            click.echo(f"{label + ':':16}{printable(str(d[key]))}")
    attempts = d.get("attempts") or []
    if d.get("kind") != "denied":
        click.echo(f"{'attempts:':16}{len(attempts)}")
    if attempts:
        attempts_table(attempts)


@log.command("events")
@log_listing(DELIVERY_STATUSES, "Only this delivery status.")
@pass_app
def log_events(app, status, since, until, limit, as_csv, as_json):
    """List event deliveries: one entry per (event, endpoint), with the webhook status."""
    rows = logs.events(app.cfg, status=status, since=since, until=until, limit=limit)
    emit_listing(rows, as_csv=as_csv, as_json=as_json, columns=logs.EVENT_COLUMNS, what="event log",
                 filtered=bool(status or since or until),
                 header=["RECEIVED", "STATUS", "TYPE", "RECIPIENT", "HOST", "ENDPOINT", "REASON", "ID"],
                 cells=lambda r: [short_time(r["received"]), r["status"], r["type"], r["recipient"],
                                  r["hostName"], r["endpointUrl"] or f"(endpoint {r['endpointId']})",
                                  r["reason"], r["id"]])


@log.command("event")
@click.argument("event_id", metavar="ID")
@click.option("--json", "as_json", is_flag=True, help="Output JSON.")
@pass_app
def log_event(app, event_id, as_json):
    """Details of one event: its fields, and its delivery to each endpoint with attempts."""
    d = logs.event_detail(app.cfg, event_id)
    if as_json:
        emit_json(d)
        return
    event = d["event"]
    click.echo(f"{'id:':16}{d['id']}")
    for key in ("type", "at", "recipient", "sender", "header_from", "message_id", "subject",
                "queue_id", "bounce_type", "dsn", "remote_host", "relay", "reply", "reason",
                "client_addr", "auth_user", "source"):
        if event.get(key) not in (None, ""):
            click.echo(f"{key.replace('_', ' ') + ':':16}{event[key]}")
    for name, value in (event.get("custom_headers") or {}).items():
        click.echo(f"{'header:':16}{name}: {value}")
    if not d["deliveries"]:
        click.echo("deliveries:     none (no endpoint takes this event type)")
    for entry in d["deliveries"]:
        click.echo("")
        where = entry["endpointUrl"] or f"(removed endpoint {entry['endpointId']})"
        click.echo(f"endpoint {entry['endpointId']}: {where}")
        click.echo(f"  status:       {entry['status']}")
        if entry["batchId"]:
            click.echo(f"  batch:        {entry['batchId']} ({entry['batchSize']} event(s))")
        if entry["reason"]:
            click.echo(f"  reason:       {entry['reason']}")
        if entry.get("nextAttemptAt"):
            click.echo(f"  next attempt: {entry['nextAttemptAt']}")
        if entry["attempts"]:
            attempts_table(entry["attempts"])


@log.command("prune")
@click.option("--dry-run", is_flag=True, help="Count what would be deleted; delete nothing.")
@click.option("--json", "as_json", is_flag=True, help="Output JSON.")
@pass_app
def log_prune(app, dry_run, as_json):
    """Delete what is older than [spooler] inbound_log_days and event_log_days now, as
    mxhook-spooler does in the background; never a message or event still to be posted."""
    result = logs.prune(app.cfg, dry_run=dry_run)
    if as_json:
        emit_json(result)
        return
    for name, before, key in (("inbound log", result["inbound_before"], "inbound_log_days"),
                              ("event log", result["events_before"], "event_log_days")):
        click.echo(f"{name + ':':14}" + (f"older than {short_time(before)}" if before
                                          else f"kept forever ([spooler] {key} = 0)"))
    rows = {k: n for k, n in result["rows"].items() if n}
    verb = "would delete" if dry_run else "deleted"
    click.echo(f"{verb + ':':14}" + (", ".join(f"{n} {k.replace('_', ' ')}" for k, n in rows.items())
                                     if rows else "nothing"))


def attempts_table(attempts: list[dict]) -> None:
    """The delivery attempts of a log entry, oldest first."""
    table(["AT", "OUTCOME", "HTTP", "DURATION MS", "ERROR"],
          [[a.get("at"), a.get("outcome"), a.get("status_code"), a.get("duration_ms"), a.get("error")]
           for a in attempts], max_width=70)
