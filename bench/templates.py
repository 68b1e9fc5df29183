"""Custom payload templates against the native renderer: events/s of rendering one batch of
1,000 events, the body the native version-1 format gives, through a jinja2 template
(payloads/templates.py) and through payloads/registry.render_events.

    python3 bench/templates.py [--events 1000] [--rounds 20] [--json out.json]

Templates (each checked first to give the native body, parsed):
  fields   field by field, as an admin writes one: the always-present strings inside quotes
           ("{{ e.id }}", escaped by the engine), every other field with |tojson
  tojson   the whole events list with one |tojson
Inputs: event dicts (a backlog read back from state.db) and events.V1Text (fresh events, kept
pre-rendered at ingest); the template's figure includes building its context
(templates.events_context) and the JSON check of its output. Per round the best of 3 runs;
the median over the rounds is printed, with template / native as a ratio. Pure CPU, one thread.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "milter"))

from mxhook.payloads import events, registry, templates  # noqa: E402

STRINGS = ("id", "type", "at", "source")
FIELDS = ", ".join(f'"{k}": "{{{{ e.{k} }}}}"' if k in STRINGS else f'"{k}": {{{{ e.{k}|tojson }}}}'
                   for k in events.V1_FIELDS)
TEMPLATES = {
    "fields": ('{"type": "{{ type }}", "version": {{ version }}, "batch_id": "{{ batch_id }}", '
               '"endpoint_id": {{ endpoint_id|tojson }}, "count": {{ count }}, "events": ['
               '{% for e in events %}{' + FIELDS + '}{% if not loop.last %},{% endif %}{% endfor %}]'
               '{% if api_key %}, "api_key": "{{ api_key }}"{% endif %}}'),
    "tojson": ('{"type": "{{ type }}", "version": {{ version }}, "batch_id": "{{ batch_id }}", '
               '"endpoint_id": {{ endpoint_id|tojson }}, "count": {{ count }}, '
               '"events": {{ events|tojson }}{% if api_key %}, "api_key": "{{ api_key }}"{% endif %}}'),
}


def make_events(n: int) -> list[dict]:
    """Enriched delivery events as the log follower and the milter make them."""
    out = []
    for i in range(n):
        kind = ("succeeded", "deferred", "bounced")[i % 3]
        e = {"id": f"{kind}-rcpt{i}@customer.example-18ea5ff0c60bc1c886ebec6dac{i:04d}",
             "type": kind, "at": "2026-11-22T12:00:00.123456Z", "source": "log",
             "recipient": f"rcpt{i}@customer.example", "orig_recipient": None,
             "sender": "bounces@app.example", "header_from": "Shop <shop@app.example>",
             "message_id": f"<order-{i}@app.example>", "subject": f'Your order "#{i}" – confirmed',
             "queue_id": f"4Xb{i:07d}", "relay": "mx.customer.example[192.0.2.25]:25",
             "remote_host": "mx.customer.example", "dsn": "2.0.0", "delay": 0.42,
             "reply": "250 2.0.0 Ok: queued as 4XbRemote01", "client_addr": "198.51.100.7",
             "auth_user": "app", "custom_headers": {"X-Order": str(i)}}
        if kind == "bounced":
            e.update(dsn="5.1.1", bounce_type="hard",
                     reply="550 5.1.1 <rcpt@customer.example>: Recipient address rejected")
        out.append(e)
    return out


def best_of(fn, runs: int = 3) -> float:
    best = float("inf")
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=1000)
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--json", help="write the figures here")
    args = ap.parse_args()

    dicts = make_events(args.events)
    inputs = {"dicts": dicts, "v1text": [events.v1_text(e) for e in dicts]}
    compiled = {name: templates.compile_template(src, templates.JSON, "events")
                for name, src in TEMPLATES.items()}
    kw = {"batch_id": "evb_bench", "endpoint_id": 3}

    def native(batch):
        return registry.render_events(1, batch, **kw)

    def templated(t, batch):
        return templates.render(t, templates.events_context(batch, **kw))

    for name, t in compiled.items():  # the same body, parsed
        for batch in inputs.values():
            assert json.loads(templated(t, batch).body) == json.loads(native(batch).body), name

    figures = {}
    print(f"{args.events} events a batch, {args.rounds} rounds, Python {platform.python_version()}, "
          f"jinja2 {templates.jinja2.__version__}")
    print(f"{'input':8} {'renderer':16} {'events/s':>12} {'vs native':>10}")
    for input_name, batch in inputs.items():
        times = {"native": []}
        times.update({f"template {n}": [] for n in compiled})
        for _ in range(args.rounds):
            times["native"].append(best_of(lambda: native(batch)))
            for name, t in compiled.items():
                times[f"template {name}"].append(best_of(lambda: templated(t, batch)))
        base = args.events / statistics.median(times["native"])
        for renderer, seconds in times.items():
            rate = args.events / statistics.median(seconds)
            figures[f"{input_name} {renderer}"] = rate
            print(f"{input_name:8} {renderer:16} {rate:12,.0f} {rate / base:10.3f}")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(figures, f, indent=2)


if __name__ == "__main__":
    main()
