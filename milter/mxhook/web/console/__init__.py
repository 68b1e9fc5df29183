"""The web console: server-rendered pages (jinja2, autoescaped) over the same services as the
CLI and the API, for admins who are not on the mail host. Seed 000's screens: the inbound
and event logs (search by period and status, 10 rows a page, details, Download CSV) and the
settings (domains, rules, endpoints, block list), plus the audit log.

Who: console users (`mxhook user add`), logged in with a password (services/access.py
`authenticate_user`). The session is a random id in a signed cookie (`Secure`, `HttpOnly`,
`SameSite=Strict`) naming an entry of `SESSIONS`, kept in this process's memory: logging out
ends it for good, and a restart of mxhook-web logs everyone out (the cookie's signing key is
made at start too). Every form carries a CSRF token (Flask-WTF, python3-flaskext.wtf in
Debian 12 and 13), checked before any POST view runs. Failed logins (and wrong passwords when
deleting) are counted per client address and per user name (`LIMITER`, in memory as well:
one process serves every request). docs/console.md.
"""
from __future__ import annotations

import secrets
from datetime import timedelta

from flask import Flask, request
from werkzeug.exceptions import HTTPException

from mxhook.web import errors
from mxhook.web.auth import API_PREFIX
from mxhook.web.console import logs, settings
from mxhook.web.console.core import SESSION_HOURS, Limiter, Sessions, blueprint, error_page


def register(app: Flask) -> None:
    """The console's blueprint, its session cookie and its in-memory state."""
    app.config.update(
        SECRET_KEY=secrets.token_bytes(32),
        SESSION_COOKIE_NAME="mxhook_session",
        SESSION_COOKIE_SECURE=True,
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Strict",
        PERMANENT_SESSION_LIFETIME=timedelta(hours=SESSION_HOURS),
        WTF_CSRF_TIME_LIMIT=None,  # as long as the session: tokens live in it
    )
    app.extensions["mxhook_console"] = {"sessions": Sessions(), "limiter": Limiter()}
    app.register_blueprint(blueprint)  # with the views of logs and settings

    @app.errorhandler(HTTPException)
    def page_or_json(exc: HTTPException):
        """A path no route has (or a method it does not take): a page, unless under /v1."""
        if request.path == API_PREFIX or request.path.startswith(API_PREFIX + "/"):
            return errors.http_error(exc)
        return error_page(exc)


__all__ = ["register", "logs", "settings"]  # logs and settings: imported for their views
