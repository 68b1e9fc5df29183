"""The console's log pages: seed 000's searches (period, status; rule or endpoint and
recipient too), 10 rows a page over all results, detail pages with every attempt, and the
Download CSV of the whole search (services/logs.py `csv_chunks`: the bytes of `mxhook log
inbound --csv`).

A failed delivery (or event batch) can be replayed from its detail page, as `mxhook replay`
does: the same webhook-id goes back in the queue.

Paging: a page is fetched with the cursor of the page before it (services/logs.py); the
query string keeps the cursors of the pages already passed (`back`, repeated), so "Previous"
is a plain link too and no state is kept on the server."""
from __future__ import annotations

from urllib.parse import urlencode

from flask import Response, flash, redirect, render_template, request, url_for

from mxhook.services import logs, replay
from mxhook.services.errors import Invalid
from mxhook.services.times import parse_time
from mxhook.web.console.core import audit, blueprint, cfg
from mxhook.web.present import csv_download

PAGE_ROWS = 10
INBOUND_FILTERS = ("status", "since", "until", "rule", "recipient")
EVENT_FILTERS = ("status", "since", "until", "endpoint", "recipient")


def search_of(names: tuple) -> dict:
    """The search form's values as given (empty ones left out)."""
    return {name: request.args[name].strip() for name in names if request.args.get(name, "").strip()}


def filters_of(search: dict) -> dict:
    """The search as the services take it: times parsed, the endpoint a number."""
    out = dict(search)
    for key in ("since", "until"):
        if key in out:
            try:
                out[key] = parse_time(out[key])
            except ValueError as exc:
                raise Invalid(f"{key}: {exc}", "invalid_time") from None
    if "endpoint" in out:
        if not out["endpoint"].isdigit():
            raise Invalid("endpoint: give the endpoint's id (a number)")
        out["endpoint"] = int(out["endpoint"])
    return out


def link(view: str, search: dict, **more) -> str:
    """The page `view` with the search and `more` in its query string (built here, not by
    url_for, whose own `endpoint` argument would take the event search's)."""
    query = urlencode({**search, **{k: v for k, v in more.items() if v is not None}}, doseq=True)
    return url_for(view) + ("?" + query if query else "")


def listing(page_of, names: tuple, template: str, view: str, statuses, **extra):
    search = search_of(names)
    cursor = request.args.get("cursor") or None
    back = request.args.getlist("back")
    page = page_of(cfg(), limit=PAGE_ROWS, cursor=cursor, **filters_of(search))
    links = {}
    if page["next_cursor"]:
        links["next"] = link(view, search, cursor=page["next_cursor"], back=back + [cursor or ""])
    if back:
        links["previous"] = link(view, search, cursor=back[-1] or None, back=back[:-1] or None)
    return render_template(template, rows=page["items"], search=search, statuses=statuses,
                           links=links, page_number=len(back) + 1,
                           csv_url=link(view + "_csv", search), **extra)


def download(log: str, names: tuple, filename: str) -> Response:
    return csv_download(logs.csv_chunks(cfg(), log, **filters_of(search_of(names))), filename)


@blueprint.route("/logs/inbound")
def inbound_log():
    return listing(logs.inbound_page, INBOUND_FILTERS, "log_inbound.html", "console.inbound_log",
                   logs.LOG_STATUSES)


@blueprint.route("/logs/inbound.csv")
def inbound_log_csv():
    return download("inbound", INBOUND_FILTERS, "inbound-log.csv")


@blueprint.route("/logs/inbound/<entry_id>")
def inbound_entry(entry_id):
    return render_template("inbound_detail.html", entry=logs.inbound_detail(cfg(), entry_id))


@blueprint.route("/logs/events")
def event_log():
    return listing(logs.events_page, EVENT_FILTERS, "log_events.html", "console.event_log",
                   logs.DELIVERY_STATUSES)


@blueprint.route("/logs/events.csv")
def event_log_csv():
    return download("events", EVENT_FILTERS, "event-log.csv")


@blueprint.route("/logs/events/<event_id>")
def event_entry(event_id):
    return render_template("event_detail.html", entry=logs.event_detail(cfg(), event_id))


def replayed(done: replay.Replay, action: str, target: str, view: str, **values):
    answer = done.as_dict()
    audit(action, target, {"counts": answer["counts"]})
    flash(f"replayed: {answer['counts']['replayed']}" + "".join(
        f"; {item['id']} not replayed: {item['reason']}" for item in answer["skipped"]))
    return redirect(url_for(view, **values))


@blueprint.route("/logs/inbound/<entry_id>/replay", methods=["POST"])
def inbound_replay(entry_id):
    return replayed(replay.replay(cfg(), ids=[entry_id]), "log.inbound.replay", entry_id,
                    "console.inbound_entry", entry_id=entry_id)


@blueprint.route("/logs/events/<event_id>/replay", methods=["POST"])
def event_replay(event_id):
    return replayed(replay.replay_event(cfg(), event_id), "log.events.replay", event_id,
                    "console.event_entry", event_id=event_id)
