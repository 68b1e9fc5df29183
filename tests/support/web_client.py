"""An HTTP client for mxhook-web's API as the tests, the demo and the end-to-end tests use it:
every answer (errors too) as a `Reply`, each body kept."""
from __future__ import annotations

import json
import urllib.error
import urllib.request


class Reply:
    def __init__(self, status: int, headers, body: bytes):
        self.status, self.headers, self.body = status, headers, body

    @property
    def text(self) -> str:
        return self.body.decode("utf-8")

    def json(self):
        return json.loads(self.body)

    @property
    def code(self) -> str | None:
        """The error code of an error answer."""
        return self.json()["error"]["code"]


class Client:
    """HTTP requests to the server; every answer's body is kept (`bodies`) so a test can look
    through all of them (no secret in any)."""

    def __init__(self, base: str):
        self.base = base
        self.bodies: list[bytes] = []

    def request(self, method: str, path: str, *, token: str | None = None, json_body=None,
                data: bytes | None = None, headers: dict | None = None) -> Reply:
        hdrs = dict(headers or {})
        if token is not None:
            hdrs["Authorization"] = f"Bearer {token}"
        if json_body is not None:
            data = json.dumps(json_body).encode()
            hdrs.setdefault("Content-Type", "application/json")
        req = urllib.request.Request(self.base + path, data=data, method=method, headers=hdrs)
        try:
            with urllib.request.urlopen(req, timeout=60) as resp:
                reply = Reply(resp.status, resp.headers, resp.read())
        except urllib.error.HTTPError as exc:
            reply = Reply(exc.code, exc.headers, exc.read())
        self.bodies.append(reply.body)
        return reply
