"""Tracking settings per sending domain through the API (`mxhook tracking` over HTTP): round
trip, refusals, every change in the audit log."""
from __future__ import annotations

from tests.web.test_crud import audit_has

FEATURES = ("opens", "clicks", "text_links", "unsubscribe", "honeypot")


def flags(settings: dict) -> dict:
    return {f: settings[f] for f in FEATURES}


def test_tracking_round_trip(stack):
    created = stack("PUT", "/v1/tracking/News.Example", json_body={"unsubscribe": True})
    assert created.status == 200, created.text
    assert created.json()["domain"] == "news.example"
    assert flags(created.json()) == {"opens": True, "clicks": True, "text_links": False,
                                     "unsubscribe": True, "honeypot": False}
    changed = stack("PUT", "/v1/tracking/news.example", json_body={"opens": False, "honeypot": True})
    assert changed.status == 200, changed.text
    assert flags(changed.json()) == {"opens": False, "clicks": True, "text_links": False,
                                     "unsubscribe": True, "honeypot": True}
    assert stack("GET", "/v1/tracking/news.example").json() == changed.json()
    assert stack("PUT", "/v1/tracking/b%C3%BCcher.example", json_body={}).json()["domain"] == \
        "xn--bcher-kva.example"
    listed = stack("GET", "/v1/tracking").json()["items"]
    assert [t["domain"] for t in listed] == ["news.example", "xn--bcher-kva.example"]
    assert stack.cli.json("tracking", "list") == listed

    assert stack("DELETE", "/v1/tracking/news.example").json() == {"deleted": "news.example"}
    assert stack("GET", "/v1/tracking/news.example").code == "not_found"
    assert stack("DELETE", "/v1/tracking/news.example").code == "not_found"
    stack("DELETE", "/v1/tracking/xn--bcher-kva.example")
    assert stack("GET", "/v1/tracking").json() == {"items": []}

    assert audit_has(stack, "tracking.set", "news.example")
    assert audit_has(stack, "tracking.remove", "news.example")
    sets = [e["detail"] for e in stack.cli.json("audit", "--limit", "1000")
            if e["action"] == "tracking.set" and e["target"] == "news.example"]
    assert sets == [{"opens": False, "honeypot": True}, {"unsubscribe": True}]


def test_tracking_refusals(stack):
    stack("PUT", "/v1/tracking/shop.example", json_body={"clicks": False})
    for method, body in (("PUT", {"opens": False}), ("DELETE", None)):
        refused = stack(method, "/v1/tracking/shop.example", token="reader", json_body=body)
        assert (refused.status, refused.code) == (403, "read_only_token"), method
        anonymous = stack(method, "/v1/tracking/shop.example", token=None, json_body=body)
        assert (anonymous.status, anonymous.code) == (401, "unauthorized"), method
    assert stack("GET", "/v1/tracking", token=None).status == 401
    assert stack("GET", "/v1/tracking/shop.example", token="reader").json()["opens"] is True

    typo = stack("PUT", "/v1/tracking/shop.example", json_body={"open": False})
    assert (typo.status, typo.code) == (400, "unknown_field")
    rotate = stack("PUT", "/v1/tracking/shop.example", json_body={"key": "x"})
    assert rotate.code == "unknown_field"
    wrong = stack("PUT", "/v1/tracking/shop.example", json_body={"clicks": "yes"})
    assert (wrong.status, wrong.code) == (400, "invalid_field")
    bad = stack("PUT", "/v1/tracking/bad..example", json_body={})
    assert bad.status == 400, bad.text
    assert flags(stack("GET", "/v1/tracking/shop.example").json())["clicks"] is False
    assert [e for e in stack.cli.json("audit", "--limit", "1000")
            if e["target"] == "shop.example" and e["actor"] == "token:reader"] == []
    stack("DELETE", "/v1/tracking/shop.example")
