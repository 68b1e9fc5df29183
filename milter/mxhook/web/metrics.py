"""GET /metrics: Prometheus' text exposition format (python3-prometheus-client: Debian 12's
0.16 and 13's newer write the same text through `generate_latest`). A custom collector reads
`services.metrics.collect` on each scrape; nothing is kept between scrapes. It takes an API
token like /v1 (a read-only one does: Prometheus' `authorization` setting, docs/api.md).
Every metric is listed in docs/api.md "Metrics"."""
from __future__ import annotations

import time

from flask import Blueprint, Response, current_app
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily

from mxhook.services import metrics as metricssvc
from mxhook.web import auth

blueprint = Blueprint("metrics", __name__)


def _gauge(name: str, doc: str, labels: list[str] | None = None, value: float | None = None):
    g = GaugeMetricFamily(name, doc, labels=labels)
    if value is not None:
        g.add_metric([], value)
    return g


def families(doc: dict, took: float):
    """The metric families of a `services.metrics.collect` document."""
    g = _gauge("mxhook_milter_decisions_last_hour",
               "Messages the milter decided on in the last hour, by outcome (accepted: spooled; "
               "denied: refused and logged; denied_unlogged: unknown-domain refusals only counted).",
               ["outcome"])
    for outcome, n in doc["decisions"].items():
        g.add_metric([outcome], n)
    yield g
    for kind, what in (("inbound", "Inbound deliveries (one per message and rule)"),
                       ("event", "Event deliveries (one per event and endpoint)")):
        g = _gauge(f"mxhook_{kind}_deliveries_last_hour",
                   f"{what} of the last hour's mail or events, by their status now.", ["status"])
        for status, n in doc["inbound" if kind == "inbound" else "events"].items():
            g.add_metric([status], n)
        yield g
    sp = doc["spool"]
    g = _gauge("mxhook_spool_files", "Spool files: new (waiting for the spooler), bad (quarantined).",
               ["directory"])
    g.add_metric(["new"], sp["new_files"])
    g.add_metric(["bad"], sp["bad_files"])
    yield g
    g = _gauge("mxhook_spool_records", "Records waiting in the spool's new/ directory, by kind.", ["kind"])
    for kind, n in sp["records"].items():
        g.add_metric([kind], n)
    yield g
    yield _gauge("mxhook_spool_oldest_age_seconds",
                 "Age of the oldest file waiting in new/ (0 when none waits).", value=sp["oldest_age"])

    targets = [("rule", e["name"], e) for e in doc["rules"]] + \
              [("endpoint", str(e["id"]), e) for e in doc["endpoints"]]
    per_target = (
        ("mxhook_undelivered", "Deliveries (rules) or events (endpoints) not delivered yet.",
         lambda e: e["pending"]),
        ("mxhook_oldest_undelivered_age_seconds",
         "Age of the oldest undelivered message (rules) or event (endpoints); 0 when none.",
         lambda e: e["oldest_pending_age"] or 0.0),
        ("mxhook_failed_deliveries",
         "Failed deliveries (rules) or batches (endpoints) kept for `mxhook replay`.", lambda e: e["failed"]),
        ("mxhook_target_enabled", "1 when the rule or endpoint is enabled, 0 when disabled.",
         lambda e: 1 if e["enabled"] else 0),
        ("mxhook_target_failing_seconds",
         "Seconds since the rule's or endpoint's attempts started failing (0: not failing).",
         lambda e: e["failing_seconds"]),
        ("mxhook_target_consecutive_failures",
         "Failed attempts since the last success of the rule or endpoint.",
         lambda e: e["consecutive_failures"] if "consecutive_failures" in e else 0),
    )
    for name, help_text, value in per_target:
        g = _gauge(name, help_text, ["kind", "name"])
        for kind, label, e in targets:
            g.add_metric([kind, label], value(e))
        yield g

    lf = doc["logfollow"]
    for key, name, help_text in (
            ("lag_bytes", "mxhook_logfollow_lag_bytes",
             "Bytes of the mail log after the log follower's saved position (source = file)."),
            ("lag_seconds", "mxhook_logfollow_lag_seconds",
             "Seconds the log was written after the follower's saved position, while bytes are left."),
            ("position_age", "mxhook_logfollow_position_age_seconds",
             "Seconds since the log follower last saved its position.")):
        if lf[key] is not None:
            yield _gauge(name, help_text, value=lf[key])
    up = _gauge("mxhook_daemon_up",
                "1 when the daemon's heartbeat file is fresh and its process exists.", ["daemon"])
    age = _gauge("mxhook_daemon_heartbeat_age_seconds",
                 "Seconds since the daemon's loop last touched its heartbeat file.", ["daemon"])
    for daemon, beat in doc["daemons"].items():
        up.add_metric([daemon], 1 if beat["state"] == "alive" else 0)
        if beat["age"] is not None:
            age.add_metric([daemon], beat["age"])
    yield up
    yield age
    yield _gauge("mxhook_state_db_up", "1 when state.db is there, readable and not marked damaged.",
                 value=1 if doc["state_db_up"] else 0)
    yield _gauge("mxhook_metrics_collect_seconds", "Seconds this scrape took to collect.", value=took)


class Collector:
    """prometheus_client's custom-collector protocol: `collect` yields metric families."""

    def __init__(self, cfg):
        self.cfg = cfg

    def collect(self):
        started = time.perf_counter()
        doc = metricssvc.collect(self.cfg)
        yield from families(doc, round(time.perf_counter() - started, 6))


@blueprint.get("/metrics")
def scrape():
    auth.require_token()
    registry = current_app.extensions.get("mxhook_metrics")
    if registry is None:
        registry = CollectorRegistry(auto_describe=False)
        registry.register(Collector(auth.cfg()))
        current_app.extensions["mxhook_metrics"] = registry
    return Response(generate_latest(registry), mimetype=None, content_type=CONTENT_TYPE_LATEST)
