"""`mxhook dialect`: the payload dialects `--dialect` takes on rules and endpoints."""
from __future__ import annotations

import click

from mxhook.cli.base import MxhookGroup
from mxhook.cli.output import emit_json, table
from mxhook.services import targets


@click.group(cls=MxhookGroup)
def dialect():
    """Payload dialects: whose request bodies a rule or endpoint posts."""


def batching(entry: dict) -> str:
    events = entry["events"]
    if events is None:
        return ""
    per_request = events["events_per_request"]
    return "batch (--max-events)" if per_request is None else f"{per_request} per request"


@dialect.command("list")
@click.option("--json", "as_json", is_flag=True, help="Output JSON.")
def dialect_list(as_json):
    """List the dialects: which side each serves (inbound: `rule --dialect`, events:
    `endpoint --dialect`), how it batches events, its content types."""
    entries = targets.dialect_list()
    if as_json:
        emit_json(entries)
        return
    table(["NAME", "SIDES", "BATCHING", "CONTENT TYPE", "DESCRIPTION"],
          [[e["name"], ",".join(e["sides"]), batching(e),
            ", ".join(dict.fromkeys(t for side in ("inbound", "events") if e[side]
                                    for t in e[side]["content_types"])),
            e["description"]] for e in entries], max_width=90)
