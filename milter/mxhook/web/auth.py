"""Who is asking: every request under /v1 needs `Authorization: Bearer TOKEN` (an API token,
`mxhook token add`); a read-only token is refused on anything but GET. The actor is kept in
`flask.g` for the audit log (`audit`)."""
from __future__ import annotations

from flask import Flask, current_app, g, request

from mxhook.services import access
from mxhook.web.errors import ApiError

READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
API_PREFIX = "/v1"
CHALLENGE = {"WWW-Authenticate": 'Bearer realm="mxhook"'}


def cfg():
    return current_app.config["MXHOOK_CONFIG"]


def bearer_token() -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def require_token() -> None:
    token = bearer_token()
    if token is None:
        raise ApiError(401, "unauthorized", "give an API token: Authorization: Bearer TOKEN "
                       "(`mxhook token add NAME` makes one)", CHALLENGE)
    found = access.authenticate_token(cfg(), token)
    if found is None:
        raise ApiError(401, "invalid_token", "the API token is not valid (unknown or removed)",
                       {"WWW-Authenticate": 'Bearer realm="mxhook", error="invalid_token"'})
    g.actor = f"token:{found['name']}"
    if found["read_only"] and request.method not in READ_METHODS:
        raise ApiError(403, "read_only_token",
                       f"token {found['name']} is read-only: it cannot change anything")


def register(app: Flask) -> None:
    @app.before_request
    def authenticate():
        if request.path == API_PREFIX or request.path.startswith(API_PREFIX + "/"):
            require_token()


def audit(action: str, target: str | None, detail: dict | None = None) -> None:
    """Record a change made by this request's actor (services/access.py)."""
    access.record(cfg(), g.actor, action, target, detail, request.remote_addr)
