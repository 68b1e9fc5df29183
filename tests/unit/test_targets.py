"""Delivery targets (model.targets): one shape for inbound rules and event endpoints, and the
record form inbound deliveries keep in the spool and state.db."""
from __future__ import annotations

import pytest

from mxhook.model import endpoints, rules
from mxhook.model.endpoints import Endpoint
from mxhook.model.retry import RetryPolicy
from mxhook.model.targets import (Destination, DestinationError, Target, TargetRecordError,
                                  check_destination)

URL = "https://hooks.example/in"


def test_a_rule_has_a_target_and_its_record_keeps_the_spool_format():
    rule = rules.Rule(name="r1",
                      destination=Destination(URL, bearer="tok", retry_interval=20, timeout=5),
                      id=3, discard=True)
    t = rule.target
    assert (t.kind, t.id, t.name, t.url, t.bearer, t.timeout) == ("rule", 3, "r1", URL, "tok", 5)
    assert t.retry == RetryPolicy(interval=20, period=3, backoff="fixed", cap=3600)
    record = t.to_record(discard=rule.discard)
    # the keys and their order are what spool records and state.db have always held, then the
    # backoff's (absent from older records)
    assert list(record) == ["id", "name", "endpoint", "format", "basic_auth", "bearer", "api_key",
                            "retry_interval", "retry_period", "timeout", "allow_http", "dialect",
                            "signing_key", "template", "retry_backoff", "retry_cap", "discard"]
    assert record["endpoint"] == URL and record["discard"] is True
    assert Target.from_record(record) == t


def test_an_endpoint_target_has_the_same_shape():
    ep = endpoints.validate(Endpoint(Destination(URL, basic_auth="u:p", api_key="k"), id=4))
    t = ep.target
    assert (t.kind, t.id, t.name, t.basic_auth, t.api_key) == ("endpoint", 4, "endpoint-4", "u:p", "k")
    assert Target.from_record(t.to_record(), kind="endpoint") == t


def test_a_record_of_an_older_mxhook_still_loads():
    # as spool files and state.db rows hold it: `endpoint` is the URL, with the rule's `discard`
    old = {"id": 2, "name": "sales", "endpoint": URL, "format": "multipart", "basic_auth": None,
           "bearer": "tok", "api_key": None, "retry_interval": 30, "retry_period": 2,
           "timeout": 10, "allow_http": 0, "discard": True}
    t = Target.from_record(old)
    assert (t.kind, t.id, t.name, t.url, t.format, t.bearer, t.timeout) == (
        "rule", 2, "sales", URL, "multipart", "tok", 10)
    assert t.retry == RetryPolicy(30, 2, "fixed", None) and t.allow_http is False
    assert t.to_record(discard=True) == {**old, "allow_http": False, "dialect": "native",
                                         "signing_key": None, "template": None,
                                         "retry_backoff": "fixed", "retry_cap": None}


@pytest.mark.parametrize("record, message", [
    ({"endpoint": URL}, "name is missing"),
    ({"name": "r1"}, "url is missing"),
    ({"name": ["r1"], "endpoint": URL}, "name is not a string: list"),
    ({"name": "r1", "endpoint": URL, "id": "7"}, "id is not an integer: str"),
])
def test_a_record_without_a_name_or_url_does_not_load(record, message):
    with pytest.raises(TargetRecordError, match=message):
        Target.from_record(record)


def test_rules_and_endpoints_check_their_destination_with_the_one_function():
    for dest, message in ((Destination("http://h.example/"), "not HTTPS"),
                          (Destination(URL, bearer="a b"), "visible ASCII"),
                          (Destination(URL, timeout=0), "timeout must be between 1 and 999")):
        errors = []
        for check in (lambda: rules.validate(rules.Rule("r", dest, (rules.parse_condition("To~."),))),
                      lambda: endpoints.validate(Endpoint(dest)),
                      lambda: check_destination(dest, rules.FORMATS)):
            with pytest.raises(DestinationError, match=message) as exc:
                check()
            errors.append(str(exc.value))
        assert len(set(errors)) == 1, errors
    # only the payload formats differ
    check_destination(Destination(URL, format="raw"), rules.FORMATS)
    with pytest.raises(DestinationError, match="format must be one of json, form, got 'raw'"):
        endpoints.validate(Endpoint(Destination(URL, format="raw")))


def test_a_target_is_its_owners_destination():
    dest = Destination(URL, format="raw", api_key="k", retry_interval=20, timeout=5)
    t = Target.of("rule", 3, "r1", dest)
    assert t == rules.Rule("r1", dest, id=3).target
    assert {f: getattr(t, f) for f in ("url", "format", "api_key", "retry_interval", "timeout")} == {
        "url": URL, "format": "raw", "api_key": "k", "retry_interval": 20, "timeout": 5}


def test_an_old_record_reads_with_what_it_has():
    t = Target.from_record({"name": "r1", "endpoint": URL})
    assert (t.id, t.format, t.timeout, t.allow_http) == (None, "json", None, False)
    assert t.retry == RetryPolicy(None, None, "fixed", None)


def test_a_target_carries_its_backoff_in_its_record():
    dest = Destination(URL, retry_interval=30, retry_backoff="exponential", retry_cap=7200)
    t = Target.of("endpoint", 4, "endpoint-4", check_destination(dest, rules.FORMATS))
    assert t.retry == RetryPolicy(30, 3, "exponential", 7200)
    record = t.to_record()
    assert (record["retry_backoff"], record["retry_cap"]) == ("exponential", 7200)
    assert Target.from_record(record, kind="endpoint") == t


@pytest.mark.parametrize("values, message", [
    ({"retry_backoff": "linear"}, "retry backoff must be one of fixed, exponential, got 'linear'"),
    ({"retry_cap": 5}, "retry cap must be between 10 and 86400 seconds, got 5"),
    ({"retry_cap": 86401}, "retry cap must be between 10 and 86400 seconds, got 86401"),
    ({"retry_interval": 600, "retry_cap": 300},
     r"retry cap \(300 s\) must not be shorter than the retry interval \(600 s\)"),
])
def test_a_backoff_is_checked(values, message):
    with pytest.raises(DestinationError, match=message):
        check_destination(Destination(URL, **values), rules.FORMATS)


def test_no_secret_shows_in_the_repr_of_a_destination_or_target():
    dest = Destination(URL, basic_auth="u:s3cret-basic", api_key="s3cret-key")
    target = Target.of("rule", 1, "r", Destination(URL, bearer="s3cret-bearer", signing_key="s3cret-sign"))
    assert "s3cret" not in repr(dest) + repr(target) and URL in repr(target)
