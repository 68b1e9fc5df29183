"""Who is asking: every request under /v1 needs `Authorization: Bearer TOKEN` (an API token,
`mxhook token add`). The actor and whether the token is read-only are kept in `flask.g`: the
route refuses a read-only token on a change (`refuse_read_only`, web/api.py `route`), and the
audit log names the actor (`audit`)."""
from __future__ import annotations

from flask import Flask, current_app, g, request

from mxhook.services import access
from mxhook.web.errors import ApiError

API_PREFIX = "/v1"
# the endpoints of routes whose URL is their credential (web/api.py `route(public=True)`)
PUBLIC_ENDPOINTS: set[str] = set()
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
    g.read_only = found["read_only"]


def refuse_read_only() -> None:
    """For a route that changes something."""
    if g.get("read_only", True):
        raise ApiError(403, "read_only_token",
                       f"{g.get('actor', 'this caller')} is read-only: it cannot change anything")


def register(app: Flask) -> None:
    @app.before_request
    def authenticate():
        if request.endpoint in PUBLIC_ENDPOINTS:
            g.actor = "signed-url"
            return
        if request.path == API_PREFIX or request.path.startswith(API_PREFIX + "/"):
            require_token()


def audit(action: str, target: str | None, detail: dict | None = None) -> None:
    """Record a change made by this request's actor (services/access.py)."""
    access.record(cfg(), g.actor, action, target, detail, request.remote_addr)
