"""Delivery targets (model.targets): one shape for inbound rules and event endpoints, and the
record form inbound deliveries keep in the spool and state.db."""
from __future__ import annotations

from mxhook.model import endpoints, rules
from mxhook.model.endpoints import Endpoint
from mxhook.model.retry import RetryPolicy
from mxhook.model.targets import Target
from mxhook.model.targets import Destination

URL = "https://hooks.example/in"


def test_a_rule_has_a_target_and_its_record_keeps_the_spool_format():
    rule = rules.Rule(name="r1",
                      destination=Destination(URL, bearer="tok", retry_interval=20, timeout=5),
                      id=3, discard=True)
    t = rule.target
    assert (t.kind, t.id, t.name, t.url, t.bearer, t.timeout) == ("rule", 3, "r1", URL, "tok", 5)
    assert t.retry == RetryPolicy(interval=20, period=3)
    record = t.to_record(discard=rule.discard)
    # the keys and their order are what spool records and state.db have always held
    assert list(record) == ["id", "name", "endpoint", "format", "basic_auth", "bearer", "api_key",
                            "retry_interval", "retry_period", "timeout", "allow_http", "discard"]
    assert record["endpoint"] == URL and record["discard"] is True
    assert Target.from_record(record) == t


def test_an_endpoint_target_has_the_same_shape():
    ep = endpoints.validate(Endpoint(Destination(URL, basic_auth="u:p", api_key="k"), id=4))
    t = ep.target
    assert (t.kind, t.id, t.name, t.basic_auth, t.api_key) == ("endpoint", 4, "endpoint-4", "u:p", "k")
    assert Target.from_record(t.to_record(), kind="endpoint") == t


def test_an_old_record_reads_with_what_it_has():
    t = Target.from_record({"name": "r1", "endpoint": URL})
    assert (t.id, t.format, t.timeout, t.allow_http) == (None, "json", None, False)
    assert t.retry == RetryPolicy(None, None)
