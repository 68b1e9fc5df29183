"""What the console tests share: a stack (tests/web/conftest.py's WebStack: the real
mxhook-web process) with a console user and a filled log, and an HTTP client that keeps the
session cookie and sends the forms' CSRF token, as a browser does."""
from __future__ import annotations

import http.cookies
import re
import urllib.error
import urllib.parse
import urllib.request

from mxhook import spool
from mxhook.model.endpoints import Endpoint
from mxhook.model.targets import Destination
from mxhook.model.records import iso
from mxhook.store import ingest
from mxhook.store.statedb import AttemptRecord, StateStore
from tests.support.web_client import Reply
from tests.web.conftest import WebStack

USER, PASSWORD = "alice", "correct horse battery"
BASE = 1_790_000_000.0  # 2026-09-21T14:13:20Z
DENIED = 25  # rows: three pages of 10 and one of 5 with the accepted one
EVENTS = 12


def console_stack(workdir: str) -> WebStack:
    """A stack with console user alice (not started)."""
    stack = WebStack(workdir)
    stack.cli("user", "add", USER, input=f"{PASSWORD}\n{PASSWORD}\n")
    return stack


def fill_logs(stack: WebStack) -> dict:
    """DENIED denied rows (one a minute from BASE; every third a `from_equals_to` denial), one
    accepted message whose delivery to rule `hook` failed once, and EVENTS events for an
    endpoint, the oldest posted once without success."""
    rid = spool.new_id()
    records = [spool.Record(id=f"{i:016x}" + "0" * 12, kind="denied", meta={
        "received": iso(BASE + 60 * i), "queue_id": f"Q{i}", "mail_from": f"s{i}@else.example",
        "header_from": f"s{i}@else.example", "client_addr": "192.0.2.1",
        "client_name": "mx.else.example", "subject": f"=cmd|{i}", "message_id": f"<{i}@else>",
        "recipients": [f"user{i}@ours.example"],
        "filter": "heuristic:from_equals_to" if i % 3 == 0 else "no_rule",
        "reason": "no rule takes it"}) for i in range(DENIED)]
    records.append(spool.Record(id=rid, kind="inbound", payload=b"Subject: s\r\n\r\nbody\r\n", meta={
        "received": iso(BASE + 60 * DENIED), "queue_id": "QI", "mail_from": "a@else.example",
        "header_from": "a@else.example", "subject": "s", "message_id": "<in@else>",
        "client_name": "mx.else.example",
        "deliveries": [{"recipients": ["invoices@ours.example"], "rule": {
            "id": 1, "name": "hook", "endpoint": "https://127.0.0.1:9/h", "format": "json"}}]}))
    url = "https://127.0.0.1:9/events"
    stack.cli("endpoint", "add", url)
    endpoint_id = next(e["id"] for e in stack.cli.json("endpoint", "list") if e["url"] == url)
    events = [spool.Record(id=f"ev{i:04d}", kind="event", meta={
        "id": f"ev{i:04d}", "type": "bounced" if i % 2 else "succeeded", "at": iso(BASE + 30 * i),
        "received": iso(BASE + 30 * i), "source": "log", "queue_id": f"Q{i}",
        "recipient": f"rcpt{i % 3}@far.example", "bounce_type": "hard" if i % 2 else None,
        "remote_host": f"mx{i % 3}.far.example", "host_name": "mx1.ours.example",
        "custom_headers": {}}) for i in range(EVENTS)]
    with StateStore(stack.cfg.state_db) as st:
        ingest.records(st, records)
        endpoint = Endpoint(Destination(url), id=endpoint_id)
        st.sync_endpoints([endpoint])  # as the spooler does: the event log shows its URL
        ingest.records(st, events, endpoints=[endpoint])
        did = ingest.delivery_id(rid, "hook")
        batch = st.create_batch(endpoint_id, 1)
        st.record_attempts([
            AttemptRecord(did, iso(BASE + 60 * DENIED + 1), "failed", "deferred", status_code=503,
                          error="HTTP 503", next_attempt_at=None),
            AttemptRecord(batch.id, iso(BASE + 60 * DENIED + 1), "failed", "failed",
                          status_code=500, error="HTTP 500", next_attempt_at=None)])
    return {"delivery": did, "endpoint": endpoint_id, "event": "ev0000"}


class ConsoleClient:
    """A browser's part over plain HTTP: the cookie it was given (Secure cookies included: the
    server is on loopback), no redirect followed (tests look at them), the last page's CSRF
    token sent with each form unless told otherwise."""

    def __init__(self, stack: WebStack):
        self.stack = stack
        self.cookies: dict[str, str] = {}
        self.set_cookies: list[str] = []
        self.last: Reply | None = None
        self.opener = urllib.request.build_opener(_NoRedirect)

    def request(self, method: str, path: str, form: dict | None = None) -> Reply:
        headers = {}
        if self.cookies:
            headers["Cookie"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
        data = None
        if form is not None:
            data = urllib.parse.urlencode(form, doseq=True).encode()
            headers["Content-Type"] = "application/x-www-form-urlencoded"
        req = urllib.request.Request(self.stack.client.base + path, data=data, method=method,
                                     headers=headers)
        try:
            with self.opener.open(req, timeout=60) as resp:
                reply = Reply(resp.status, resp.headers, resp.read())
        except urllib.error.HTTPError as exc:
            reply = Reply(exc.code, exc.headers, exc.read())
        for header in reply.headers.get_all("Set-Cookie") or ():
            self.set_cookies.append(header)
            for name, morsel in http.cookies.SimpleCookie(header).items():
                if morsel.value:
                    self.cookies[name] = morsel.value
                else:
                    self.cookies.pop(name, None)
        self.stack.client.bodies.append(reply.body)
        if reply.headers.get_content_type() == "text/html" and not 300 <= reply.status < 400:
            self.last = reply
        return reply

    def get(self, path: str) -> Reply:
        return self.request("GET", path)

    def csrf(self) -> str:
        found = re.search(r'name="csrf_token" value="([^"]+)"', self.last.text)
        assert found, "no form on the last page"
        return found.group(1)

    def post(self, path: str, form: dict | None = None, *, csrf: str | None | bool = True) -> Reply:
        """POST `form` with the CSRF token of the last page (csrf=None: none; a text: that)."""
        form = dict(form or {})
        if csrf is True:
            form["csrf_token"] = self.csrf()
        elif csrf:
            form["csrf_token"] = csrf
        return self.request("POST", path, form)

    def login(self, user: str = USER, password: str = PASSWORD) -> Reply:
        self.get("/login")
        return self.post("/login", {"user": user, "password": password, "next": ""})


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None
