"""Event dialects: events/s of each dialect's `event_request` against the native version-1
renderer (`payloads/registry.py` render_events), same events, same run (issue 16: the native
format is at >= 20,000 events/s; no dialect below 10,000).

    python3 bench/dialects.py [--events 20000] [--rounds 5] [--json out.json] [--engagement]

The events are event dicts as the spooler hands them to a renderer (Event.to_dict(), log events
enriched with their message's fields): per message a `queued` event, then `succeeded`, or
`deferred` and `bounced` (hard or soft), or `failed`; with --engagement, what tracked mail adds
to that: per message also an `opened` (every fourth judged a machine: Apple MPP), and for some a
`clicked`, an `unsubscribed`, a `resubscribed` or a `complained`. Every dialect module in
mxhook/payloads/dialects/ with an `event_request` is measured on the events of its
EVENT_TYPES, one per call where it posts one per request (EVENTS_PER_REQUEST = 1), else in
batches of --batch. Native is measured both ways: batches of --batch (what an endpoint gets)
and one event per call (what a one-per-request dialect is compared with). Rendering only: no
HTTP, no spool, no database. Best of --rounds, the renderers taking turns in each round; on a
shared machine only the ratios within one run count.

Prints figures and ratios; it does not pass or fail.
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import pkgutil
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "milter"))

from mxhook.model import events  # noqa: E402
from mxhook.payloads import dialects  # noqa: E402
from mxhook.payloads.dialects import EventContext  # noqa: E402
from mxhook.payloads.registry import render_events  # noqa: E402

TARGET = 10_000  # events/s no dialect may fall below


READER = {"sending_domain": "ours.example", "user_agent": "Mozilla/5.0 (iPhone; CPU iPhone OS 17_1 like Mac OS X) "
          "AppleWebKit/605.1.15 (KHTML, like Gecko) Mobile/15E148", "client": "Mobile Safari",
          "client_device": "mobile", "client_os": "iOS", "continent": "EU", "country": "FR", "city": "Lyon"}


def make_events(n: int, engagement: bool = False) -> list[dict]:
    """n event dicts as stored and enriched, a realistic mix of outcomes (and of engagement)."""
    t0 = 1_795_348_800_000_000
    out: list[dict] = []
    msg = 0
    while len(out) < n:
        qid, rcpt = f"4Xb{msg:09X}", f"user{msg % 50000}@customer{msg % 97}.example"
        message = {"queue_id": qid, "sender": "app@ours.example", "header_from": "app@ours.example",
                   "message_id": f"<{msg}.bench@ours.example>", "subject": f"Your order {msg} has shipped",
                   "client_addr": "10.0.0.5", "auth_user": "app", "custom_headers": {"x-campaign": f"c-{msg % 10}"}}
        remote = {"relay": f"mx{msg % 3}.customer{msg % 97}.example[192.0.2.{msg % 250}]:25",
                  "remote_host": f"mx{msg % 3}.customer{msg % 97}.example[192.0.2.{msg % 250}]"}
        at = t0 + msg * 1000

        def event(etype, dt, source="log", **fields):
            e = events.Event(type=etype, at=events.iso_from_us(at + dt), id=events.event_id(at + dt, msg, etype),
                             source=source, recipient=rcpt, **message, **fields).to_dict()
            out.append(e)

        event("queued", 0, source="milter")
        kind = msg % 10
        if kind < 7:
            event("succeeded", 1_230_000, dsn="2.0.0", delay=1.23, **remote,
                  reply="250 2.0.0 OK 1732280000 a640c23a62f3a-a9a3f.513 - gsmtp")
        elif kind < 9:
            event("deferred", 2_000_000, dsn="4.2.2", delay=2.0, **remote, reply="452 4.2.2 Mailbox full")
            event("bounced", 9_000_000, dsn="5.1.1" if kind == 7 else "5.2.2", delay=9.0, **remote,
                  bounce_type="hard" if kind == 7 else "soft", reply="550 5.1.1 User unknown")
        else:
            event("failed", 432_000_000_000, dsn="4.4.1", delay=432000.0, reason="expired",
                  diagnostic="connect to mx.customer.example[192.0.2.25]:25: Connection timed out")
        if engagement and kind < 7:
            machine = msg % 4 == 0
            event("opened", 60_000_000, source="track", engagement={
                **READER, "ip": f"203.0.113.{msg % 250}", "machine": machine,
                "machine_reason": "Apple Mail Privacy Protection" if machine else None})
            extra = ("clicked", "clicked", "unsubscribed", "resubscribed", "complained", None, None)[kind]
            if extra == "clicked":
                event("clicked", 90_000_000, source="track", engagement={
                    **READER, "ip": f"203.0.113.{msg % 250}", "machine": False, "link": msg % 5,
                    "url": f"https://shop.ours.example/orders/{msg}?utm_source=mail"})
            elif extra == "complained":
                event("complained", 86_400_000_000, source="feedback",
                      engagement={"sending_domain": "ours.example", "feedback_type": "abuse"})
            elif extra:
                event(extra, 120_000_000, source="track", engagement={**READER, "ip": "203.0.113.7"})
        msg += 1
    return out[:n]


def event_dialects() -> list:
    """Every dialect module with an event_request."""
    found = []
    for info in pkgutil.iter_modules(dialects.__path__):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{dialects.__name__}.{info.name}")
        if hasattr(module, "event_request"):
            found.append(module)
    return found


def measure(evs: list[dict], *, batch: int, rounds: int) -> dict[str, tuple[float, int]]:
    """{renderer: (events/s, events rendered)}, the fastest of `rounds` runs; the renderers take
    turns within a round, so a change in the machine's load hits all of them alike. Keys:
    "native" (batches of `batch`), "native-one" (one event per call), then each dialect's NAME."""
    ctx = EventContext(request_id="evr_bench", now=1_800_000_000.0, nonce="bench-nonce", endpoint_id=1,
                       signing_key="bench-signing-key")
    batches = [evs[i:i + batch] for i in range(0, len(evs), batch)]
    runs = [  # (name, work, events it renders)
        ("native", lambda: [render_events(1, b, batch_id="evb_bench", endpoint_id=1) for b in batches],
         len(evs)),
        ("native-one", lambda: [render_events(1, [e], batch_id="evb_bench", endpoint_id=1) for e in evs],
         len(evs)),
    ]
    for module in event_dialects():
        types = getattr(module, "EVENT_TYPES", None)
        mine = [e for e in evs if types is None or e["type"] in types]
        if getattr(module, "EVENTS_PER_REQUEST", 1) == 1:
            work = lambda m=module, es=mine: [m.event_request([e], ctx) for e in es]  # noqa: E731
        else:
            groups = [mine[i:i + batch] for i in range(0, len(mine), batch)]
            work = lambda m=module, gs=groups: [m.event_request(g, ctx) for g in gs]  # noqa: E731
        runs.append((module.NAME, work, len(mine)))
    best = {name: float("inf") for name, _, _ in runs}
    for _ in range(rounds):
        for name, work, _ in runs:
            t = time.perf_counter()
            work()
            best[name] = min(best[name], time.perf_counter() - t)
    return {name: (count / best[name], count) for name, _, count in runs}


def label(name: str, count: int, total: int, batch: int) -> str:
    if name == "native":
        return f"native v1, batches of {batch}"
    if name == "native-one":
        return "native v1, one per request"
    return f"{name} ({count} of {total} events)"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--events", type=int, default=20_000)
    ap.add_argument("--batch", type=int, default=1000)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--json", help="write the figures to this file too")
    ap.add_argument("--engagement", action="store_true", help="add tracked mail's engagement events")
    args = ap.parse_args()
    measured = measure(make_events(args.events, args.engagement), batch=args.batch, rounds=args.rounds)
    rates = {name: rate for name, (rate, _) in measured.items()}
    native_batch, native_one = rates["native"], rates["native-one"]
    print(f"{'renderer':48} {'events/s':>10} {'/ native batch':>14} {'/ native one':>12}")
    for name, (rate, count) in measured.items():
        flag = "" if rate >= TARGET else f"  below {TARGET:,}"
        print(f"{label(name, count, args.events, args.batch):48} {rate:>10,.0f} {rate / native_batch:>14.3f} "
              f"{rate / native_one:>12.3f}{flag}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"events": args.events, "batch": args.batch, "rounds": args.rounds, "rates": rates}, fh,
                      indent=1)


if __name__ == "__main__":
    main()
