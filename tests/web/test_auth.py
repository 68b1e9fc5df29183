"""Every way the API refuses a caller, over HTTP against the real server."""
from __future__ import annotations

import re
import socket

import pytest

PATHS = ["/v1/status", "/v1/domains", "/v1/openapi.json", "/v1/logs/inbound", "/v1/email/webhook",
         "/v1/no-such-route"]


@pytest.mark.parametrize("path", PATHS)
def test_no_token_is_refused_everywhere(stack, path):
    reply = stack("GET", path, token=None)
    assert reply.status == 401 and reply.code == "unauthorized"
    assert reply.headers["WWW-Authenticate"].startswith("Bearer")
    assert reply.headers["Content-Type"] == "application/json"


@pytest.mark.parametrize("header", ["Basic YWRtaW46eA==", "Bearer", "Bearer ", "mxh_abc", "Token x"])
def test_other_schemes_and_empty_tokens_are_no_token(stack, header):
    reply = stack.client.request("GET", "/v1/status", headers={"Authorization": header})
    assert reply.status == 401 and reply.code == "unauthorized"


@pytest.mark.parametrize("token", ["mxh_not-a-token", "x" * 5000, "admin-but-wrong"])
def test_a_bad_token_is_refused(stack, token):
    reply = stack("GET", "/v1/status", token=token)
    assert reply.status == 401 and reply.code == "invalid_token"
    assert 'error="invalid_token"' in reply.headers["WWW-Authenticate"]


def test_a_removed_token_is_refused_from_then_on(stack):
    token = stack.token("short-lived")
    assert stack("GET", "/v1/status", token=token).status == 200
    stack.cli("token", "remove", "short-lived")
    reply = stack("GET", "/v1/status", token=token)
    assert reply.status == 401 and reply.code == "invalid_token"


@pytest.mark.parametrize("method, path, body", [
    ("POST", "/v1/domains", {"name": "ro.example"}),
    ("PATCH", "/v1/domains/ro.example", {"log_denied": False}),
    ("DELETE", "/v1/domains/ro.example", None),
    ("POST", "/v1/rules", {"name": "ro", "url": "https://127.0.0.1/x"}),
    ("DELETE", "/v1/rules/ro", None),
    ("POST", "/v1/endpoints", {"url": "https://127.0.0.1/x"}),
    ("POST", "/v1/blocks", {"address": "ro@else.example"}),
    ("POST", "/v1/blocks/ro@else.example/cancel", {}),
    ("DELETE", "/v1/blocks/ro@else.example", None),
    ("POST", "/v1/replay", {"ids": ["x"]}),
    ("POST", "/v1/email/webhook", {"url": "https://127.0.0.1/x"}),
    ("DELETE", "/v1/email/webhook", {"url": "https://127.0.0.1/x"}),
])
def test_a_read_only_token_reads_but_writes_nothing(stack, method, path, body):
    before = stack.cli.json("audit")
    reply = stack(method, path, token="reader", json_body=body)
    assert reply.status == 403 and reply.code == "read_only_token"
    assert stack.cli.json("audit") == before
    assert stack("GET", "/v1/status", token="reader").status == 200


def _write_routes():
    from mxhook.web import api
    for spec in api.ROUTES:
        if spec.write:
            path = re.sub(r"<int:[^>]+>", "1", spec.path)
            yield pytest.param(spec.method, re.sub(r"<[^>]+>", "ro", path), id=spec.name)


@pytest.mark.parametrize("method, path", list(_write_routes()))
def test_every_route_that_changes_something_refuses_a_read_only_token(stack, method, path):
    """Every write the route table declares, not a list kept by hand: a route added later
    without the refusal fails here."""
    reply = stack(method, path, token="reader", json_body={})
    assert reply.status == 403 and reply.code == "read_only_token", (method, path)


def test_errors_are_json_with_stable_codes(stack):
    assert stack("GET", "/v1/nothing-here").code == "not_found"
    reply = stack("PUT", "/v1/status")
    assert reply.status == 405 and reply.code == "method_not_allowed"
    reply = stack("POST", "/v1/domains", data=b"{not json", headers={"Content-Type": "application/json"})
    assert reply.status == 400 and reply.code == "bad_json"
    reply = stack("POST", "/v1/domains", json_body={"name": "a.example", "colour": "red"})
    assert reply.status == 400 and reply.code == "unknown_field"
    reply = stack("POST", "/v1/domains", json_body={"name": 5})
    assert reply.status == 400 and reply.code == "invalid_field"
    reply = stack("POST", "/v1/domains", json_body={})
    assert reply.status == 400 and reply.code == "missing_field"
    reply = stack("GET", "/v1/logs/inbound?colour=red")
    assert reply.status == 400 and reply.code == "unknown_parameter"



def test_a_body_over_max_request_size_is_refused(stack):
    # announced, not sent: the server answers 413 before reading it (and may close at once,
    # so a client still writing the body would see a broken pipe instead of the answer)
    with socket.create_connection(("127.0.0.1", stack.port), timeout=10) as conn:
        conn.sendall(b"POST /v1/domains HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Authorization: Bearer " + stack.tokens["admin"].encode() +
                     b"\r\nContent-Length: 2097152\r\n\r\n")
        assert conn.recv(100).startswith(b"HTTP/1.1 413 ")
