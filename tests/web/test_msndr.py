"""msndr's webhook API (seed 003) with the seed's exact requests and bodies."""
from __future__ import annotations

URL = "https://example.com/some/path"
SEED_BODY = b'{\n"url":"https://example.com/some/path"\n}'  # as the seed writes it


def msndr(stack, method, data=None, token="admin"):
    # the seed's curl: -H 'Content-Type: application/json' -H 'Authorization: Bearer $API_TOKEN'
    return stack.client.request(method, "/v1/email/webhook", token=stack.tokens[token], data=data,
                                headers={"Content-Type": "application/json"})


def test_enable_get_disable_as_the_seed_shows(stack):
    before = stack("GET", "/v1/email/webhook")
    assert before.status == 404 and before.code == "webhook_not_set"

    enabled = msndr(stack, "POST", SEED_BODY)
    assert enabled.status == 200 and enabled.json() == {"url": URL}
    assert enabled.headers["Content-Type"] == "application/json"
    got = msndr(stack, "GET")
    assert got.status == 200 and got.json() == {"url": URL}

    # it is an event endpoint with the msndr dialect, every category
    eps = [e for e in stack("GET", "/v1/endpoints").json()["items"] if e["dialect"] == "msndr"]
    assert [(e["url"], sorted(e["events"])) for e in eps] == [(URL, ["blocks", "bounces", "deliveries"])]

    # setting it again changes that endpoint's URL, it adds no second one
    other = b'{"url":"https://example.com/other"}'
    assert msndr(stack, "POST", other).json() == {"url": "https://example.com/other"}
    eps2 = [e for e in stack("GET", "/v1/endpoints").json()["items"] if e["dialect"] == "msndr"]
    assert [e["id"] for e in eps2] == [eps[0]["id"]]

    # with another Content-Type (urllib's default form type): the body is read as JSON anyway
    disabled = stack.client.request("DELETE", "/v1/email/webhook", token=stack.tokens["admin"],
                                    data=b'{\n"url":"https://example.com/other"\n}')
    assert disabled.status == 200 and disabled.json() == {"url": "https://example.com/other"}
    assert msndr(stack, "GET").status == 404
    assert not [e for e in stack("GET", "/v1/endpoints").json()["items"] if e["dialect"] == "msndr"]
    assert msndr(stack, "DELETE", SEED_BODY).code == "webhook_not_set"

    actions = [(e["action"], e["actor"]) for e in stack.cli.json("audit", "--limit", "20")]
    assert ("msndr.set", "token:admin") in actions and ("msndr.remove", "token:admin") in actions


def test_refusals(stack):
    assert stack.client.request("GET", "/v1/email/webhook").code == "unauthorized"
    assert msndr(stack, "POST", SEED_BODY, token="reader").code == "read_only_token"
    assert msndr(stack, "POST", b'{}').code == "missing_field"
    assert msndr(stack, "POST", b'["https://example.com/x"]').code == "bad_json"
    assert msndr(stack, "POST", b'{"url": 5}').code == "invalid_field"
    bad = msndr(stack, "POST", b'{"url": "http://example.com/plain"}')
    assert bad.status == 400 and "http" in bad.json()["error"]["message"]
