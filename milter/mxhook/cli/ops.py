"""`mxhook replay` and `mxhook status`: the dead letter and the state of delivery."""
from __future__ import annotations

import sys

import click

from mxhook.cli.base import CONTEXT_SETTINGS, app_of
from mxhook.cli.output import emit_json, short_time, table
from mxhook.services import replay as replaysvc
from mxhook.services import status as statussvc


def _isatty() -> bool:
    return sys.stdout.isatty()


def _age(seconds: float | None) -> str:
    """3725 -> '1h 2m'."""
    if seconds is None:
        return "-"
    s = max(0, int(seconds))
    for unit, size, sub, subsize in (("d", 86400, "h", 3600), ("h", 3600, "m", 60), ("m", 60, "s", 1)):
        if s >= size:
            return f"{s // size}{unit} {(s % size) // subsize}{sub}"
    return f"{s}s"


# ---------------------------------------------------------------------------------------------
# replay

def _name(item: dict) -> str:
    """An item's id; an event's with the endpoint (it has a delivery to each)."""
    return f"{item['id']} (endpoint {item['endpoint_id']})" if item["kind"] == "event" else item["id"]


def _label(item: dict) -> str:
    """What goes where: the URL it would be posted to now (query and user:password left out)."""
    if item["kind"] == "delivery":
        return f"{item['id']}  rule {item['rule']} -> {item['url']}"
    if item["kind"] == "event":
        return f"{item['id']}  event to endpoint {item['endpoint_id']} -> {item['url']}"
    return f"{item['id']}  endpoint {item['endpoint_id']} ({item['size']} event(s)) -> {item['url']}"


class _Progress:
    """A progress bar on a terminal, plain counts on stderr otherwise (for more than one
    chunk); nothing with --json."""

    def __init__(self, quiet: bool):
        self.quiet = quiet
        self.bar = None
        self.shown = 0

    def __call__(self, done: int, total: int) -> None:
        if self.quiet:
            return
        if _isatty():
            if self.bar is None:
                self.bar = click.progressbar(length=total, label="Replaying", show_pos=True)
                self.bar.__enter__()
            self.bar.update(done - self.shown)
            self.shown = done
        elif done and total > replaysvc.REQUEUE_CHUNK:
            click.echo(f"replaying: {done} of {total}", err=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.__exit__(None, None, None)


@click.command("replay", context_settings=CONTEXT_SETTINGS,
               short_help="Send failed deliveries, event batches or events again.")
@click.argument("ids", nargs=-1, metavar="[ID]...")
@click.option("--rule", "rule_name", metavar="NAME",
              help="Every failed delivery of this inbound rule (in --since/--until).")
@click.option("--endpoint", "endpoint_key", metavar="URL|ID",
              help="Every failed event batch of this endpoint (in --since/--until).")
@click.option("--since", metavar="TIME",
              help="With --rule/--endpoint: received (batch: made) at or after TIME (ISO, or an age: 2h, 7d).")
@click.option("--until", metavar="TIME", help="With --rule/--endpoint: before TIME.")
@click.option("--force", is_flag=True,
              help="Queue items of a disabled rule/endpoint too (they wait until it is enabled).")
@click.option("--dry-run", is_flag=True,
              help="List what would be replayed and the URL each would go to; change nothing.")
@click.option("--json", "as_json", is_flag=True, help="Output JSON.")
@click.pass_context
def replay(ctx, ids, rule_name, endpoint_key, since, until, force, dry_run, as_json):
    """Put failed inbound deliveries, event batches or events back in the queue.

    Give IDs (delivery ids as in `log inbound`, event batch ids `evb_...` as in `log events
    --json`, an inbound message id for all its deliveries, or an event id as in `log events`
    for just that event to each endpoint its delivery to failed), or --rule NAME or --endpoint
    URL|ID for all failed ones, optionally in --since/--until. Each keeps its webhook-id (an
    event from a batch of several goes alone, as a new batch with a new webhook-id) and gets
    a fresh retry period; the running spooler sends it within a second or so. --dry-run shows
    what would go where (the URL without its query or user:password). Exit status 0 when
    everything asked for was queued (or would be, with --dry-run), 1 when something was
    refused (listed with the reason).
    """
    progress = _Progress(quiet=as_json)
    try:
        done = replaysvc.replay(app_of(ctx).cfg, ids=ids, rule=rule_name, endpoint=endpoint_key,
                                since=since, until=until, force=force, dry_run=dry_run,
                                progress=progress)
    finally:
        progress.close()
    if as_json:
        emit_json(done.as_dict())
    else:
        if not done.replayed and not done.skipped:
            click.echo(f"Nothing to replay: no failed deliveries, batches or events for {done.scope}"
                       + (" in that time range" if done.ranged else ""))
        elif dry_run:
            click.echo(f"Would replay {len(done.replayed)} item(s) for {done.scope}:")
            for item, note in done.replayed:
                click.echo(f"  {_label(item)}  (received {short_time(item['received'])}; "
                           f"last error: {item['last_error'] or '-'})")
                if note:
                    click.echo(f"    {note}")
        elif done.replayed:
            kinds = [item["kind"] for item, _ in done.replayed]
            events = (f", {kinds.count('event')} event(s) (to an endpoint each)"
                      if "event" in kinds else "")
            renamed = any(item["kind"] == "event" and item["webhook_id"] != item["batch_id"]
                          for item, _ in done.replayed)
            click.echo(f"Replayed {len(done.replayed)} item(s) for {done.scope}: {kinds.count('delivery')} "
                       f"inbound delivery(ies), {kinds.count('batch')} event batch(es){events}; "
                       + ("webhook-ids as below" if renamed else "same webhook-id")
                       + ", fresh retry period")
            for item, note in done.replayed:
                if note:
                    click.echo(f"  {_name(item)}: {note}")
        for item, reason in done.skipped:
            click.echo(f"Not replayed: {_name(item)}: {reason}", err=True)
    ctx.exit(1 if done.skipped else 0)


# ---------------------------------------------------------------------------------------------
# status

def _counts(by_status: dict) -> str:
    parts = [f"{n} {status}" for status, n in by_status.items() if n]
    return ", ".join(parts) or "none"


@click.command("status", context_settings=CONTEXT_SETTINGS,
               short_help="Spool backlog, pending deliveries, rule and endpoint states.")
@click.option("--json", "as_json", is_flag=True, help="Output JSON.")
@click.pass_context
def status(ctx, as_json):
    """Show the spool backlog, what is pending and since when, deliveries and events by status
    in the last hour, and each rule and endpoint: ok, retrying (its last attempt failed and
    deliveries are waiting for a retry), failing (its last attempt failed, nothing pending) or
    disabled (by the admin, or by the spooler after a 410 Gone or [spooler]
    disable_after_days of failures).

    Always exits 0 (it reports; `mxhook check` is the pass/fail tool).
    """
    report = statussvc.collect(app_of(ctx).cfg)
    if as_json:
        emit_json(report)
        return
    sp, pending, hour = report["spool"], report["pending"], report["last_hour"]
    sdb = report["state_db"]
    if sdb["fault"] or sdb["error"]:
        click.echo(f"{'state db:':12}DAMAGED: {sdb['fault'] or sdb['error']} "
                   "(mxhook-spooler does not ingest or deliver; restore state.db from a backup)")
    if sp["error"]:
        click.echo(f"{'spool:':12}{sp['error']}")
    else:
        click.echo(f"{'spool:':12}{sp['backlog']} record(s) waiting to be ingested"
                   + (f", oldest {short_time(sp['oldest'])}" if sp["oldest"] else ""))
    line = (f"{pending['inbound']} inbound deliver{'y' if pending['inbound'] == 1 else 'ies'}, "
            f"{pending['events']} event deliver{'y' if pending['events'] == 1 else 'ies'} "
            f"({pending['open_batches']} open batch{'es' if pending['open_batches'] != 1 else ''})")
    if pending["oldest"]:
        line += f"; oldest waits {_age(pending['oldest_age_seconds'])} (since {short_time(pending['oldest'])})"
    click.echo(f"{'pending:':12}{line}")
    click.echo(f"{'last hour:':12}inbound: {_counts(hour['inbound'])}; events: {_counts(hour['events'])}")
    unlogged = report["unlogged_denials"]
    if unlogged["total"]:
        click.echo(f"{'not logged:':12}{unlogged['last_hour']} denial(s) of unknown domains in the "
                   f"last hour, {unlogged['total']} since {short_time(unlogged['first'] + ':00Z')} "
                   "(counted only: [spooler] log_unknown_domains = no)")
    if report["rules"]:
        click.echo("")
        table(["RULE", "STATE", "SINCE", "PENDING", "FAILED", "LAST ERROR"],
              [[r["name"], r["state"], short_time(r["since"]), r["pending"], r["failed"],
                r["disabled_reason"] if r["state"] == "disabled" else
                (r["last_error"] if r["state"] != "ok" else None)] for r in report["rules"]],
              max_width=70)
    if report["endpoints"]:
        click.echo("")
        table(["ENDPOINT", "STATE", "SINCE", "PENDING", "FAILED", "LAST ERROR", "URL"],
              [[e["id"], e["state"], short_time(e["since"]), e["pending"], e["failed"],
                e["disabled_reason"] if e["state"] == "disabled" else
                (e["last_error"] if e["state"] != "ok" else None), e["url"]]
               for e in report["endpoints"]], max_width=60)
    for problem in report["problems"]:
        if problem != sp["error"] and not (
                (sdb["fault"] or sdb["error"]) and problem.startswith(f"state database {sdb['path']} ")):
            click.echo(f"note: {problem}")
