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


DEFAULT_LIMIT = 100  # rows of a table or --json listing; a CSV export has every row


def log_listing(statuses: tuple[str, ...], status_help: str):
    """The options every `mxhook log` listing takes (status filter, time window, paging, output)."""

    def decorate(fn):
        for option in reversed((
            click.option("--status", type=click.Choice(statuses), help=status_help),
            click.option("--since", type=TimeType(), help="From this time on (ISO, or an age: 30m, 2h, 7d)."),
            click.option("--until", type=TimeType(), help="Up to this time (ISO, or an age)."),
            click.option("--limit", type=click.IntRange(min=1), metavar="N",
                         help=f"At most N rows, newest first [default: {DEFAULT_LIMIT}; with --csv: "
                              "every row]."),
            click.option("--page", type=click.IntRange(min=1), metavar="K",
                         help="Page K of --limit rows each (1: the newest)."),
            click.option("--cursor", metavar="C",
                         help="The rows after those a listing showed (the cursor it gave for more)."),
            click.option("--csv", "as_csv", is_flag=True, help="Output CSV."),
            click.option("--json", "as_json", is_flag=True,
                         help="Output JSON: {items, next_cursor}."),
        )):
            fn = option(fn)
        return fn

    return decorate


def emit_listing(cfg, log: str, *, filters: dict, limit: int | None, page: int | None,
                 cursor: str | None, as_csv: bool, as_json: bool, what: str, header: list[str],
                 cells) -> None:
    """A listing as JSON ({items, next_cursor}), formula-safe CSV streamed a page at a time, or
    a table for humans; a table or CSV cut short says so on stderr, with how to get more."""
    if as_csv and as_json:
        raise InputError("choose either --csv or --json, not both")
    if page is not None and cursor is not None:
        raise InputError("choose either --page or --cursor, not both")
    if limit is None and (page is not None or not as_csv):
        limit = DEFAULT_LIMIT
    offset = (page - 1) * limit if page else 0
    pages = logs.pages(cfg, log, limit=limit, cursor=cursor, offset=offset, **filters)
    last: dict = {"items": [], "next_cursor": None}
    if as_csv:
        def rows():
            for current in pages:
                last.update(current)
                yield from current["items"]

        # UTF-8 whatever the locale (the CSV is a file for other programs), LF line ends
        out = io.TextIOWrapper(sys.stdout.buffer, encoding="utf-8", newline="",
                               write_through=True)
        try:
            shown = write_csv(rows(), logs.log_of(log).columns, out)
            out.flush()
        finally:
            out.detach()
    else:
        items = []
        for current in pages:
            items += current["items"]
            last.update(current)
        shown = len(items)
        if as_json:
            emit_json({"items": items, "next_cursor": last["next_cursor"]})
            return
        if not items:
            click.echo(f"No {what} entries" + (" match" if any(filters.values()) else "")
                       + (f" on page {page}" if page and page > 1 else " after the cursor" if cursor else ""))
        else:
            table(header, [cells(r) for r in items], max_width=48)
    if last["next_cursor"] is not None:
        total = logs.count(cfg, log, cursor=cursor, **filters)
        click.echo(cut_notice(shown, total, offset=offset, page=page, cursor=cursor,
                              next_cursor=last["next_cursor"]), err=True)


def cut_notice(shown: int, total: int | None, *, offset: int, page: int | None,
               cursor: str | None, next_cursor: str) -> str:
    """'100 of 2,345 rows shown; --limit N, --page 2 or --cursor C for more' (`total` None:
    counting was too slow, so 'more match')."""
    if cursor is not None:
        what = (f"{shown:,} of the {total:,} rows after the cursor shown" if total is not None
                else f"{shown:,} rows after the cursor shown, more match")
        return f"{what}; --cursor {next_cursor} for more"
    if offset:
        rows = f"rows {offset + 1:,}-{offset + shown:,}"
        what = f"{rows} of {total:,} shown" if total is not None else f"{rows} shown, more match"
    else:
        what = f"{shown:,} of {total:,} rows shown" if total is not None else f"{shown:,} rows shown, more match"
    return f"{what}; --limit N, --page {(page or 1) + 1} or --cursor {next_cursor} for more"


@log.command("inbound")
@log_listing(LOG_STATUSES, "Only this status.")
@pass_app
def log_inbound(app, status, since, until, limit, page, cursor, as_csv, as_json):
    """List inbound mail: accepted (queued, succeeded, deferred, failed) and denied."""
    emit_listing(app.cfg, "inbound", filters={"status": status, "since": since, "until": until},
                 limit=limit, page=page, cursor=cursor, as_csv=as_csv, as_json=as_json,
                 what="inbound log",
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
def log_events(app, status, since, until, limit, page, cursor, as_csv, as_json):
    """List event deliveries: one entry per (event, endpoint), with the webhook status."""
    emit_listing(app.cfg, "events", filters={"status": status, "since": since, "until": until},
                 limit=limit, page=page, cursor=cursor, as_csv=as_csv, as_json=as_json,
                 what="event log",
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
            click.echo(f"  webhook-id:   {entry['webhookId']}")
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
