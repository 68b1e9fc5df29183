"""The console over plain HTTP against the real mxhook-web process: the security properties a
browser test cannot see (CSRF refusals, cookie flags, headers, the rate limit, no secret in
any page), the pages and forms of each settings tab, and the audit trail they leave."""
from __future__ import annotations

import re

import pytest

from tests.web.console_support import PASSWORD, USER, ConsoleClient, console_stack, fill_logs

CSP = ("default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; "
       "frame-ancestors 'none'; base-uri 'none'")
SECRETS = ("s3cret-bearer-Xq81", "k3y-of-the-api-Zr20", "pa55word-of-basic-Lm37")


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    s = console_stack(str(tmp_path_factory.mktemp("console")))
    s.logs = fill_logs(s)
    s.web.start()
    try:
        yield s
    finally:
        s.web.stop()


@pytest.fixture
def client(stack):
    c = ConsoleClient(stack)
    assert c.login().status == 302
    return c


def test_every_answer_has_the_security_headers(stack):
    c = ConsoleClient(stack)
    for reply in (c.get("/login"), c.get("/static/console.css"), stack("GET", "/v1/status")):
        assert reply.headers["Content-Security-Policy"] == CSP
        assert reply.headers["X-Frame-Options"] == "DENY"
        assert reply.headers["X-Content-Type-Options"] == "nosniff"
    assert "<script" not in c.get("/login").text


def test_the_session_cookie_is_secure_httponly_and_strict(stack):
    c = ConsoleClient(stack)
    c.login()
    assert c.set_cookies
    for header in c.set_cookies:
        flags = [part.strip().lower() for part in header.split(";")]
        assert "secure" in flags and "httponly" in flags and "samesite=strict" in flags, header


def test_pages_need_a_login_and_login_checks_the_password(stack):
    c = ConsoleClient(stack)
    first = c.get("/logs/inbound?status=denied")
    assert first.status == 302 and first.headers["Location"].startswith("/login?next=")
    c.get("/login")
    wrong = c.post("/login", {"user": USER, "password": "not it", "next": "/logs/events"})
    assert wrong.status == 401 and "Wrong user name or password" in wrong.text
    assert c.get("/logs/inbound").status == 302
    right = c.post("/login", {"user": USER, "password": PASSWORD, "next": "/logs/events"})
    assert right.status == 302 and right.headers["Location"] == "/logs/events"
    assert c.get("/logs/inbound").status == 200


def test_login_goes_on_only_to_a_page_of_this_site(stack):
    c = ConsoleClient(stack)
    c.get("/login")
    reply = c.post("/login", {"user": USER, "password": PASSWORD, "next": "//evil.example/x"})
    assert reply.headers["Location"] == "/logs/inbound"


@pytest.mark.parametrize("csrf", [None, "forged-token"])
def test_a_form_without_its_csrf_token_is_refused(stack, client, csrf):
    reply = client.post("/settings/domains", {"name": "csrf.example", "log_denied": "on"}, csrf=csrf)
    assert reply.status == 400 and "CSRF" in reply.text and "<html" in reply.text
    assert "csrf.example" not in client.get("/settings/domains").text
    fresh = ConsoleClient(stack)
    fresh.get("/login")
    refused = fresh.post("/login", {"user": USER, "password": PASSWORD}, csrf=csrf)
    assert refused.status == 400 and "mxhook_session" not in str(fresh.set_cookies[1:])


def test_a_csrf_token_of_another_session_is_refused(stack, client):
    other = ConsoleClient(stack)
    other.login()
    other.get("/settings/domains")
    reply = client.post("/settings/domains", {"name": "other.example"}, csrf=other.csrf())
    assert reply.status == 400


def test_the_api_stays_json_and_needs_no_csrf(stack):
    assert stack("GET", "/v1/nope").json()["error"]["code"] == "not_found"
    assert stack("PUT", "/v1/rules").json()["error"]["code"] == "method_not_allowed"
    assert stack("GET", "/v1/nope", token=None).json()["error"]["code"] == "unauthorized"
    page = ConsoleClient(stack).get("/no/such/page")
    assert page.status == 404 and "<h1>Error 404</h1>" in page.text
    assert stack("POST", "/v1/domains", json_body={"name": "api.example"}).status == 201


def test_logout_ends_the_session_even_for_a_copied_cookie(stack):
    c = ConsoleClient(stack)
    c.login()
    copied = dict(c.cookies)
    c.get("/logs/inbound")
    assert c.post("/logout").status == 302
    thief = ConsoleClient(stack)
    thief.cookies = copied
    assert thief.get("/logs/inbound").status == 302


def test_a_new_password_or_a_new_user_of_the_name_ends_the_old_sessions(stack):
    stack.cli("user", "add", "bob", input="first-pass-1\nfirst-pass-1\n")
    c = ConsoleClient(stack)
    assert c.login("bob", "first-pass-1").status == 302
    assert c.get("/logs/inbound").status == 200
    stack.cli("user", "passwd", "bob", input="second-pass-2\nsecond-pass-2\n")
    assert c.get("/logs/inbound").status == 302  # the stolen cookie dies with the old password
    assert c.login("bob", "second-pass-2").status == 302 and c.get("/logs/inbound").status == 200
    stack.cli("user", "remove", "bob")
    stack.cli("user", "add", "bob", input="third-pass-3\nthird-pass-3\n")
    assert c.get("/logs/inbound").status == 302  # another bob, not this session's


def test_paging_forward_and_back_keeps_the_search(stack, client):
    pages, path = [], "/logs/inbound?status=denied"
    while path:
        reply = client.get(path)
        assert reply.status == 200
        pages.append(re.findall(r'class="detail" href="/logs/inbound/([0-9a-f]+)"', reply.text))
        found = re.search(r'id="next" href="([^"]+)"', reply.text)
        path = found.group(1).replace("&amp;", "&") if found else None
    assert [len(p) for p in pages] == [10, 10, 5]
    back = re.search(r'id="previous" href="([^"]+)"', reply.text).group(1).replace("&amp;", "&")
    again = client.get(back)
    assert "status=denied" in back and re.findall(
        r'class="detail" href="/logs/inbound/([0-9a-f]+)"', again.text) == pages[1]


def test_a_bad_search_is_an_error_page(stack, client):
    reply = client.get("/logs/inbound?since=yesterday-ish")
    assert reply.status == 400 and "not a time" in reply.text and "<html" in reply.text
    assert client.get("/logs/events/nope").status == 404


def test_the_detail_page_shows_seed_000s_fields_and_the_attempts(stack, client):
    text = client.get(f"/logs/inbound/{stack.logs['delivery']}").text
    for label in ("Date", "Status", "Host name", "From address", "Destination address",
                  "Message ID", "Filter name", "Error reason"):
        assert f"<th>{label}</th>" in text
    assert "invoices@ours.example" in text and "&lt;in@else&gt;" in text and "HTTP 503" in text


def test_csv_download_is_the_clis(stack, client):
    reply = client.get("/logs/inbound.csv?status=denied&since=2026-09-21T14:20")
    assert reply.status == 200 and reply.headers["Content-Disposition"].startswith("attachment")
    cli = stack.cli("log", "inbound", "--csv", "--status", "denied", "--since", "2026-09-21T14:20",
                    "--limit", "1000000").stdout
    assert reply.text == cli and cli.count("\n") == 1 + 25 - 7


def add_rule(client, name: str, **fields):
    client.get("/settings/rules/new")
    form = {"name": name, "url": "https://127.0.0.1:9/hook", "when": "To~@ours\\.example$",
            "enabled": "on", **fields}
    return client.post("/settings/rules/new", form)


def test_no_secret_is_ever_rendered_back(stack, client):
    bearer, api_key, password = SECRETS
    reply = add_rule(client, "secretive", bearer=bearer, api_key=api_key)
    assert reply.status == 302, reply.text
    client.get("/settings/endpoints/new")
    assert client.post("/settings/endpoints/new", {
        "url": "https://127.0.0.1:9/ev", "events_bounces": "on", "enabled": "on",
        "basic_auth": f"user:{password}"}).status == 302
    pages = [client.get(p) for p in ("/settings/rules", "/settings/rules/secretive/edit",
                                     "/settings/endpoints", "/audit")]
    endpoint_id = re.search(r'id="endpoint-(\d+)"', pages[2].text).group(1)
    pages.append(client.get(f"/settings/endpoints/{endpoint_id}/edit"))
    client.get("/settings/rules/secretive/edit")
    refused = client.post("/settings/rules/secretive/edit", {"name": "secretive", "url": "ftp://x",
                                                             "bearer": bearer})
    assert refused.status == 400
    assert "****" in pages[0].text and "user:****" in pages[2].text
    for body in stack.client.bodies:
        for secret in SECRETS:
            assert secret.encode() not in body


def test_the_services_warnings_reach_the_console_user(stack, client):
    assert add_rule(client, "unresolved", url="https://nowhere.invalid/hook").status == 302
    page = client.get("/settings/rules").text
    assert "warning:" in page and "stored anyway" in page
    client.get("/settings/rules/unresolved/delete")
    assert client.post("/settings/rules/unresolved/delete", {"password": PASSWORD}).status == 302


def test_rule_add_edit_disable_and_delete_with_the_password(stack, client):
    assert add_rule(client, "lifecycle").status == 302
    client.get("/settings/rules/lifecycle/edit")
    edited = client.post("/settings/rules/lifecycle/edit", {
        "name": "lifecycle", "url": "https://127.0.0.1:9/other", "when": "Subject~invoice",
        "enabled": "on", "priority": "7", "retry_backoff": "exponential", "retry_cap": "900"})
    assert edited.status == 302
    page = client.get("/settings/rules").text
    assert "https://127.0.0.1:9/other" in page and "subject~invoice" in page
    rule = stack("GET", "/v1/rules/lifecycle").json()
    assert (rule["retry_backoff"], rule["retry_cap"]) == ("exponential", 900)
    form = client.get("/settings/rules/lifecycle/edit").text
    assert '<option value="exponential" selected>' in form and 'name="retry_cap" value="900"' in form
    client.post("/settings/rules/lifecycle/enabled", {"enabled": "false"})
    row = re.search(r'id="rule-lifecycle">.*?</tr>', client.get("/settings/rules").text, re.S).group(0)
    assert "disabled" in row
    client.get("/settings/rules/lifecycle/delete")
    wrong = client.post("/settings/rules/lifecycle/delete", {"password": "guess"})
    assert wrong.status == 403 and "lifecycle" in client.get("/settings/rules").text
    client.get("/settings/rules/lifecycle/delete")
    assert client.post("/settings/rules/lifecycle/delete", {"password": PASSWORD}).status == 302
    assert 'id="rule-lifecycle"' not in client.get("/settings/rules").text
    actions = [(e["actor"], e["action"], e["target"]) for e in
               __import__("json").loads(stack.cli("audit", "--json").stdout)]
    for action in ("rule.add", "rule.edit", "rule.remove"):
        assert ("user:alice", action, "lifecycle") in actions


def test_domains_endpoints_and_the_block_list(stack, client):
    client.get("/settings/domains")
    assert client.post("/settings/domains", {"name": "Ours.Example", "log_denied": "on",
                                             "unmatched": "reject"}).status == 302
    client.get("/settings/domains")
    assert client.post("/settings/domains/ours.example", {"unmatched": "pass",
                                                          "reject_text": "go away"}).status == 302
    domains = stack("GET", "/v1/domains/ours.example").json()
    assert domains["unmatched"] == "pass" and domains["log_denied"] is False
    assert domains["reject_text"] == "go away"
    client.get("/settings/domains/ours.example/delete")
    assert client.post("/settings/domains/ours.example/delete", {"password": PASSWORD}).status == 302
    assert stack("GET", "/v1/domains/ours.example").status == 404

    client.get("/settings/endpoints/new")
    assert client.post("/settings/endpoints/new", {"url": "https://127.0.0.1:9/blocks",
                                                   "events_blocks": "on", "enabled": "on"}).status == 302
    endpoint = [e for e in stack("GET", "/v1/endpoints").json()["items"]
                if e["url"] == "https://127.0.0.1:9/blocks"][0]
    assert endpoint["events"] == ["blocks"]
    client.get("/settings/endpoints")
    client.post(f"/settings/endpoints/{endpoint['id']}/enabled", {"enabled": "false"})
    assert stack("GET", f"/v1/endpoints/{endpoint['id']}").json()["enabled"] is False

    client.get("/settings/blocks")
    assert client.post("/settings/blocks", {"address": "Spam@Far.example", "reason": "abuse"}).status == 302
    assert "spam@far.example" in client.get("/settings/blocks?address=SPAM@far.example").text
    assert "Not on the block list" in client.get("/settings/blocks?address=x@y.example").text
    client.get("/settings/blocks")
    assert client.post("/settings/blocks/spam@far.example/cancel").status == 302
    assert stack("GET", "/v1/blocks/spam@far.example").status == 404

    audit = client.get("/audit").text
    for action in ("domain.add", "domain.edit", "domain.remove", "endpoint.add", "endpoint.edit",
                   "block.add", "block.cancel"):
        assert f"<td>{action}</td>" in audit
    assert "user:alice" in audit


def test_login_is_rate_limited_per_address_and_user(tmp_path):
    s = console_stack(str(tmp_path))
    s.web.start()
    try:
        c = ConsoleClient(s)
        for _ in range(5):
            c.get("/login")
            assert c.post("/login", {"user": USER, "password": "wrong guess"}).status == 401
        c.get("/login")
        limited = c.post("/login", {"user": USER, "password": PASSWORD})
        assert limited.status == 429 and "too many wrong passwords" in limited.text
    finally:
        s.web.stop()


def test_the_event_log_and_an_event_with_its_attempts(stack, client):
    page = client.get(f"/logs/events?endpoint={stack.logs['endpoint']}&status=failed")
    assert page.status == 200 and page.text.count('class="detail"') == 1
    text = client.get(f"/logs/events/{stack.logs['event']}").text
    for label in ("Date", "Status", "Host name", "Endpoint URL", "Error reason"):
        assert f"<th>{label}</th>" in text
    # Host name: the MX that recorded the event (seed 000), not the remote server
    assert "HTTP 500" in text and "https://127.0.0.1:9/events" in text and "mx1.ours.example" in text
    assert "<th>Remote server</th><td>mx0.far.example</td>" in text
    csv = client.get("/logs/events.csv?status=queued").text
    assert csv == stack.cli("log", "events", "--csv", "--status", "queued", "--limit", "1000").stdout
    assert csv.count("\n") == 1 + 11


def test_the_limiter_counts_addresses_and_users_apart_in_a_sliding_window():
    from mxhook.web.console.core import Limiter, Sessions
    now = [1000.0]
    limiter = Limiter(max_failures=3, window=60, clock=lambda: now[0])
    for _ in range(3):
        limiter.failed("addr:192.0.2.1", "user:alice")
        now[0] += 10
    assert limiter.wait("addr:192.0.2.1", "user:bob") == 31  # the address: 60 - 30 + 1
    assert limiter.wait("addr:192.0.2.9", "user:alice") == 31  # the user, from elsewhere
    assert limiter.wait("addr:192.0.2.9", "user:bob") == 0
    now[0] += 31
    assert limiter.wait("addr:192.0.2.1", "user:alice") == 0  # the oldest failure aged out
    limiter.failed("addr:192.0.2.1", "user:alice")
    limiter.succeeded("addr:192.0.2.1", "user:alice")
    assert limiter.wait("addr:192.0.2.1", "user:alice") == 0
    clock = [0.0]
    sessions = Sessions(hours=1, clock=lambda: clock[0])
    sid = sessions.start("alice")
    assert sessions.user(sid) == "alice" and sessions.user("forged") is None
    marked = sessions.start("bob", "v1")
    assert sessions.user(marked, {"bob": "v1"}) == "bob"
    assert sessions.user(marked, {"bob": "v2"}) is None and sessions.user(marked) is None  # ended
    clock[0] = 3601
    assert sessions.user(sid) is None


def test_a_failed_event_batch_is_replayed_from_its_detail_page(stack, client):
    page = client.get(f"/logs/events/{stack.logs['event']}")
    assert 'id="replay"' in page.text
    assert client.post(f"/logs/events/{stack.logs['event']}/replay").status == 302
    after = client.get(f"/logs/events/{stack.logs['event']}").text
    assert "replayed: 1" in after and 'id="replay"' not in after
    assert 'id="replay"' not in client.get(f"/logs/inbound/{stack.logs['delivery']}").text  # deferred
    assert "<td>log.events.replay</td>" in client.get("/audit").text


def console_routes(stack) -> list:
    """The console's routes (werkzeug Rule objects), from the application's own table."""
    from mxhook import config as configmod
    from mxhook.web import create_app

    return [rule for rule in create_app(configmod.load(stack.cfg.path)).url_map.iter_rules()
            if rule.endpoint.startswith("console.")]


def fill(rule, values: dict) -> str:
    return re.sub(r"<(?:\w+:)?(\w+)>", lambda m: str(values[m.group(1)]), rule.rule)


def test_every_form_route_refuses_a_post_without_the_csrf_token(stack, client):
    values = {"name": "x", "endpoint_id": 1, "kind": "rules", "key": "x", "address": "a@b.example",
              "how": "delete", "entry_id": "x", "event_id": "x"}
    posts = [rule for rule in console_routes(stack) if "POST" in rule.methods]
    assert len(posts) == 15, [r.rule for r in posts]  # the 13 changes, login and logout
    for rule in posts:
        reply = client.post(fill(rule, values), {"password": PASSWORD, "user": USER}, csrf=None)
        assert reply.status == 400 and "CSRF" in reply.text, rule.rule
    assert client.get("/logs/inbound").status == 200  # still logged in: logout was refused too


def test_a_read_only_user_sees_everything_and_every_write_route_answers_403(stack):

    stack.cli("user", "add", "rita", "--read-only", "--password-file", "-", input="only looking 1\n")
    stack.cli("block", "add", "seen@far.example")
    stack.cli("rule", "add", "visible", "--url", "https://127.0.0.1:9/v", "--when", "To~@seen")
    stack.cli("domain", "add", "seen.example")
    c = ConsoleClient(stack)
    assert c.login("rita", "only looking 1").status == 302
    d = stack.logs["delivery"]
    for path, shown in (("/logs/inbound", "invoices@ours.example"), (f"/logs/inbound/{d}", "HTTP 503"),
                        ("/logs/events", "rcpt0@far.example"), ("/logs/events/ev0000", "HTTP 500"),
                        ("/settings/domains", "seen.example"), ("/settings/rules", "visible"),
                        ("/settings/endpoints", "https://127.0.0.1:9/events"),
                        ("/settings/blocks", "seen@far.example"), ("/audit", "user.add")):
        page = c.get(path)
        assert page.status == 200 and shown in page.text, path
        # no write form or link: the only form that posts is Log out
        assert re.findall(r'method="post" action="([^"]+)"', page.text) == ["/logout"], path
        assert "/edit" not in page.text and "/delete" not in page.text and "/new" not in page.text, path
        assert "(read-only)" in page.text
    assert c.get("/logs/inbound.csv").text == stack.cli("log", "inbound", "--csv").stdout
    # every route that changes something, from the application's own route table
    values = {"name": "visible", "endpoint_id": stack.logs["endpoint"], "kind": "rules", "key": "visible",
              "address": "seen@far.example", "how": "delete", "entry_id": d, "event_id": "ev0000"}
    routes = [(rule, method) for rule in console_routes(stack)
              if rule.endpoint not in ("console.login", "console.logout")
              for method in ("GET", "POST") if method in rule.methods
              and (method == "POST" or rule.endpoint in ("console.rule_add", "console.rule_edit",
                                                         "console.endpoint_add", "console.endpoint_edit",
                                                         "console.delete"))]
    assert len([r for r in routes if r[1] == "POST"]) == 13, routes
    for rule, method in routes:
        path = fill(rule, values)
        c.get("/logs/inbound")  # a page with a CSRF token: the refusal is for being read-only
        reply = c.post(path, {"password": "only looking 1", "enabled": "false", "address": "x@y.example",
                              "name": "new.example", "url": "https://127.0.0.1:9/n"}) \
            if method == "POST" else c.get(path)
        assert reply.status == 403 and "read-only" in reply.text, (method, path, reply.status)
    assert stack("GET", "/v1/rules/visible").json()["enabled"] is True
    assert stack("GET", "/v1/blocks/seen@far.example").status == 200
    assert stack("GET", "/v1/domains/new.example").status == 404
    assert c.post("/logout").status == 302
