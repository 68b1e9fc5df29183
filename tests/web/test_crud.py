"""Domains, rules, endpoints and the block list through the API: round trips, secrets never
shown, every change in the audit log."""
from __future__ import annotations

import json

SECRETS = ["tok_rule_bearer_9f8e7d6c5b4a", "pw-basic-3a2b1c0d9e8f", "key_api_1122334455667788",
           "tok_endpoint_bearer_abcdef123456", "mg-signing-key-0011223344556677"]


def audit_has(stack, action, target, actor="token:admin"):
    return any(e["action"] == action and e["target"] == target and e["actor"] == actor
               for e in stack.cli.json("audit", "--limit", "1000"))


def test_domains_round_trip(stack):
    reply = stack("POST", "/v1/domains", json_body={"name": "Bücher.example", "log_denied": True})
    assert reply.status == 201 and reply.json()["name"] == "xn--bcher-kva.example"
    assert stack("GET", "/v1/domains/b%C3%BCcher.example").json()["log_denied"] is True
    assert stack("PATCH", "/v1/domains/xn--bcher-kva.example", json_body={"log_denied": False}).status == 200
    assert stack("GET", "/v1/domains/xn--bcher-kva.example").json()["log_denied"] is False
    changed = stack("PATCH", "/v1/domains/xn--bcher-kva.example",
                    json_body={"unmatched": "pass", "reject_text": "No such mailbox here"})
    assert changed.status == 200
    assert (changed.json()["unmatched"], changed.json()["reject_text"]) == ("pass", "No such mailbox here")
    bad = stack("PATCH", "/v1/domains/xn--bcher-kva.example", json_body={"reject_text": "50%\r\nX"})
    assert bad.status == 400
    assert stack("PATCH", "/v1/domains/xn--bcher-kva.example", json_body={}).code == "nothing_to_change"
    assert "xn--bcher-kva.example" in [d["name"] for d in stack("GET", "/v1/domains").json()["items"]]
    again = stack("POST", "/v1/domains", json_body={"name": "xn--bcher-kva.example"})
    assert again.status == 409 and again.code == "conflict"
    assert stack("DELETE", "/v1/domains/xn--bcher-kva.example").json() == {"deleted": "xn--bcher-kva.example"}
    gone = stack("GET", "/v1/domains/xn--bcher-kva.example")
    assert gone.status == 404 and gone.code == "not_found"
    for action in ("domain.add", "domain.edit", "domain.remove"):
        assert audit_has(stack, action, "xn--bcher-kva.example"), action
    edits = [e for e in stack.cli.json("audit") if e["action"] == "domain.edit"]
    assert [e["detail"] for e in edits] == [
        {"unmatched": "pass", "reject_text": "No such mailbox here"}, {"log_denied": False}]
    assert {e["remote_addr"] for e in edits} == {"127.0.0.1"}


def test_rules_round_trip(stack):
    body = {"name": "invoices", "url": "https://127.0.0.1:9/in", "when": ["To~^invoices@"],
            "unless": ["Subject~spam"], "priority": 5, "bearer": SECRETS[0], "dialect": "native",
            "format": "multipart", "retry_interval": 30, "retry_period": 2, "timeout": 10,
            "retry_backoff": "exponential", "retry_cap": 900}
    reply = stack("POST", "/v1/rules", json_body=body)
    assert reply.status == 201, reply.text
    rule = reply.json()
    assert rule["name"] == "invoices" and rule["priority"] == 5 and rule["format"] == "multipart"
    assert (rule["retry_backoff"], rule["retry_cap"]) == ("exponential", 900)
    bad = stack("POST", "/v1/rules", json_body=dict(body, name="bad", retry_backoff="linear"))
    assert bad.status == 400 and "retry backoff must be one of fixed, exponential" in bad.text
    assert rule["bearer"] == "****" and rule["signing"][0]["secret"] == "****"
    assert [c["negate"] for c in rule["conditions"]] == [False, True]
    assert stack("POST", "/v1/rules", json_body=body).code == "conflict"
    bad = stack("POST", "/v1/rules", json_body=dict(body, name="bad", when=["no tilde"]))
    assert bad.status == 400 and bad.code == "invalid"

    edited = stack("PATCH", "/v1/rules/invoices", json_body={
        "enabled": False, "basic_auth": "user:" + SECRETS[1], "priority": 7})
    assert edited.status == 200, edited.text
    got = stack("GET", "/v1/rules/invoices").json()
    assert got["enabled"] is False and got["priority"] == 7
    assert (got["retry_backoff"], got["retry_cap"]) == ("exponential", 900)  # not given: kept
    assert stack("PATCH", "/v1/rules/invoices", json_body={"retry_backoff": "fixed"}).json()["retry_backoff"] == "fixed"
    assert (got["continue"], got["include_raw"], got["reject_text"]) == (False, False, None)
    routed = stack("PATCH", "/v1/rules/invoices", json_body={
        "continue": True, "include_raw": True, "reject_text": "Invoices only", "when": ["Recipient~^invoices@"]})
    assert routed.status == 200, routed.text
    got = stack("GET", "/v1/rules/invoices").json()
    assert (got["continue"], got["include_raw"], got["reject_text"]) == (True, True, "Invoices only")
    assert got["basic_auth"] == "user:****" and got["bearer"] is None  # Basic replaced Bearer
    assert stack("PATCH", "/v1/rules/invoices", json_body={}).code == "nothing_to_change"
    assert stack("PATCH", "/v1/rules/invoices", json_body={"name": "bills"}).json()["name"] == "bills"
    assert [r["name"] for r in stack("GET", "/v1/rules").json()["items"]] == ["bills"]
    assert stack("DELETE", "/v1/rules/bills").json() == {"deleted": "bills"}
    assert stack("GET", "/v1/rules/bills").code == "not_found"
    for action, target in (("rule.add", "invoices"), ("rule.edit", "invoices"), ("rule.remove", "bills")):
        assert audit_has(stack, action, target), action
    detail = next(e for e in stack.cli.json("audit", "--limit", "1000") if e["action"] == "rule.add")["detail"]
    assert detail["bearer"] == "****" and detail["url"] == body["url"]


def test_endpoints_round_trip(stack):
    body = {"url": "https://127.0.0.1:9/events", "events": ["bounces", "blocks"], "interval": 30,
            "max_events": 200, "timezone": "Europe/Berlin", "bearer": SECRETS[3],
            "api_key": SECRETS[2], "retry_interval": 20, "custom_headers": ["X-Campaign"]}
    reply = stack("POST", "/v1/endpoints", json_body=body)
    assert reply.status == 201, reply.text
    ep = reply.json()
    assert ep["events"] == ["bounces", "blocks"] and ep["timezone"] == "Europe/Berlin"
    assert ep["custom_headers"] == ["X-Campaign"]
    assert ep["bearer"] == "****" and ep["api_key"] == "****"
    path = f"/v1/endpoints/{ep['id']}"
    assert stack("PATCH", path, json_body={"enabled": False, "version": ep["version"],
                                           "interval": 60, "clear_auth": True}).status == 200
    got = stack("GET", path).json()
    assert got["enabled"] is False and got["interval"] == 60 and got["bearer"] is None
    assert got["custom_headers"] == ["X-Campaign"]  # not given: kept
    assert (got["retry_backoff"], got["retry_cap"]) == ("fixed", 3600)
    backoff = stack("PATCH", path, json_body={"retry_backoff": "exponential", "retry_cap": 7200}).json()
    assert (backoff["retry_backoff"], backoff["retry_cap"], backoff["retry_interval"]) == ("exponential", 7200, 20)
    assert stack("PATCH", path, json_body={"retry_cap": "1h"}).status == 400
    assert stack("PATCH", path, json_body={"custom_headers": []}).json()["custom_headers"] == []
    assert stack("PATCH", path, json_body={"custom_headers": ["a b"]}).code == "invalid"
    mg = stack("PATCH", path, json_body={"dialect": "mailgun", "signing_key": SECRETS[4]})
    assert mg.status == 200, mg.text
    assert mg.json()["dialect"] == "mailgun" and mg.json()["signing_key"] == "****"
    assert stack("GET", "/v1/endpoints/999").code == "not_found"
    assert stack("DELETE", path).json()["deleted"] == ep["id"]
    for action in ("endpoint.add", "endpoint.edit", "endpoint.remove"):
        assert audit_has(stack, action, str(ep["id"])), action


def spooled_events(stack, address):
    return [r.meta for r in stack.cfg.spooled_records()
            if r.kind == "event" and r.meta.get("recipient") == address]


def test_block_list_add_search_delete_cancel(stack):
    add = stack("POST", "/v1/blocks", json_body={"address": "Bob@Else.example", "reason": "asked"})
    assert add.status == 201 and add.json()["event"] == "registered"
    address = add.json()["address"]
    assert stack("POST", "/v1/blocks", json_body={"address": address}).code == "conflict"
    assert stack("GET", f"/v1/blocks/{address}").json()["source"] == "api"
    assert [e["address"] for e in stack("GET", f"/v1/blocks?address={address}").json()["items"]] == [address]
    assert stack("GET", "/v1/blocks?address=nobody@else.example").json() == {"items": []}
    assert address in [e["address"] for e in stack("GET", "/v1/blocks").json()["items"]]
    deleted = stack("DELETE", f"/v1/blocks/{address}")
    assert deleted.json()["event"] == "deleted"
    assert stack("DELETE", f"/v1/blocks/{address}").code == "not_found"
    stack("POST", "/v1/blocks", json_body={"address": address})
    cancelled = stack("POST", f"/v1/blocks/{address}/cancel", json_body={})
    assert cancelled.status == 200 and cancelled.json()["event"] == "deleted"
    events = spooled_events(stack, address)
    assert [(e["type"], e["source"], e["reason"]) for e in events] == [
        ("registered", "api", "asked"), ("deleted", "api", "deleted through the API"),
        ("registered", "api", None), ("deleted", "api", "cancelled through the API")]
    for action in ("block.add", "block.delete", "block.cancel"):
        assert audit_has(stack, action, address), action


def test_block_delete_with_scope_removes_one_suppression(stack):
    address = "carol@else.example"
    for scope in ("news.example", "shop.example", "*"):
        assert stack("POST", "/v1/blocks", json_body={"address": address, "scope": scope}).status == 201
    listed = [e for e in stack("GET", "/v1/blocks").json()["items"] if e["address"] == address]
    assert {(e["scope"], e["source"]) for e in listed} == {
        ("news.example", "api"), ("shop.example", "api"), ("*", "api")}
    one = stack("DELETE", f"/v1/blocks/{address}?scope=News.Example")
    assert one.status == 200 and one.json()["event"] == "deleted"
    assert stack("DELETE", f"/v1/blocks/{address}?scope=news.example").code == "not_found"
    assert stack("DELETE", f"/v1/blocks/{address}?scope=shop.example", token="reader").code == "read_only_token"
    assert stack("DELETE", f"/v1/blocks/{address}?scpe=x").code == "unknown_parameter"
    left = [e["scope"] for e in stack("GET", "/v1/blocks").json()["items"] if e["address"] == address]
    assert sorted(left) == ["*", "shop.example"]
    deletes = [e for e in stack.cli.json("audit", "--limit", "1000")
               if e["action"] == "block.delete" and e["target"] == address]
    assert [e["detail"].get("scope") for e in deletes] == ["News.Example"]
    assert stack("DELETE", f"/v1/blocks/{address}").status == 200  # without scope: every entry
    assert [e for e in stack("GET", "/v1/blocks").json()["items"] if e["address"] == address] == []


MESSAGE = ("From: Alice <alice@sender.example>\r\nTo: invoices@ours.example\r\n"
           "Subject: invoice 42\r\n\r\nbody\r\n")


def test_rule_test_is_a_dry_run_a_read_only_token_may_do(stack):
    stack("POST", "/v1/domains", json_body={"name": "ours.example"})
    stack("POST", "/v1/rules", json_body={"name": "inv", "url": "https://127.0.0.1:9/i",
                                          "when": ["To~^invoices@"]})
    before = stack.cli.json("audit")
    reply = stack("POST", "/v1/rules/test", token="reader", json_body={
        "message": MESSAGE, "rcpt": ["invoices@ours.example"], "mail_from": "alice@sender.example"})
    assert reply.status == 200, reply.text
    assert reply.json() == json.loads(stack.cli(
        "rule", "test", "-", "--rcpt", "invoices@ours.example", "--mail-from",
        "alice@sender.example", "--json", input=MESSAGE).stdout)
    assert stack.cli.json("audit") == before
    assert stack("POST", "/v1/rules/test", json_body={"message": MESSAGE}).code == "missing_field"
    assert stack("GET", "/v1/rules/inv").status == 200
    stack("DELETE", "/v1/rules/inv")


def test_endpoint_test_posts_a_sample(stack):
    ep = stack("POST", "/v1/endpoints", json_body={"url": "https://127.0.0.1:9/t"}).json()
    assert stack("POST", f"/v1/endpoints/{ep['id']}/test", token="reader",
                 json_body={}).code == "read_only_token"
    reply = stack("POST", f"/v1/endpoints/{ep['id']}/test", json_body={"type": "bounced"})
    assert reply.status == 200, reply.text
    sent = reply.json()
    assert sent["status"] in ("deferred", "failed") and sent["status_code"] is None and sent["error"]
    assert sent["webhook_id"].startswith("evb_test_")
    assert stack("POST", f"/v1/endpoints/{ep['id']}/test", json_body={"type": "nope"}).code == "invalid"
    stack("DELETE", f"/v1/endpoints/{ep['id']}")


def test_status_and_dialects(stack):
    status = stack("GET", "/v1/status").json()
    assert {"spool", "pending", "last_hour", "rules", "endpoints", "problems"} <= set(status)
    names = [d["name"] for d in stack("GET", "/v1/dialects").json()["items"]]
    assert "msndr" in names and "native" in names


def test_no_secret_in_any_response(stack):
    """After the tests above (same server), read every listing once more; no response body of
    the whole module holds any secret given, nor its last four characters' context."""
    added = stack("POST", "/v1/rules", json_body={"name": "s", "url": "https://127.0.0.1:9/s", "when": ["To~s@"],
                                                  "bearer": SECRETS[0]})
    assert added.status == 201, added.text
    for path in ("/v1/rules", "/v1/rules/s", "/v1/endpoints", "/v1/status", "/v1/openapi.json"):
        assert stack("GET", path).status == 200
    text = b"\n".join(stack.client.bodies).decode("utf-8", "replace")
    for secret in SECRETS:
        assert secret not in text and secret[-6:] not in text, secret
    signing = json.loads(stack.cli("rule", "show", "s", "--json").stdout)["signing"][0]["secret"]
    assert signing[-4:] not in json.dumps(stack("GET", "/v1/rules/s").json()["signing"])
