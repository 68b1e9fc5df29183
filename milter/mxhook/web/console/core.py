"""The console's blueprint and who is asking: sessions, the password check (rate limited),
CSRF on every POST, login and logout, the audit record, error pages (mxhook/web/console/__init__.py
says why each is so)."""
from __future__ import annotations

import secrets
import threading
import time

from flask import (Blueprint, abort, current_app, g, redirect, render_template, request,
                   session, url_for)
from flask_wtf.csrf import CSRFError, generate_csrf, validate_csrf
from werkzeug.exceptions import HTTPException
from wtforms import ValidationError

from mxhook.services import access
from mxhook.services.errors import ServiceError
from mxhook.web import errors

blueprint = Blueprint("console", __name__)

SESSION_HOURS = 8
MAX_FAILURES = 5  # failed passwords per address, and per user, in WINDOW
WINDOW = 15 * 60.0
MAX_KEYS = 10_000  # addresses and user names counted before the aged ones are dropped


def cfg():
    return current_app.config["MXHOOK_CONFIG"]


class Limiter:
    """Failed password checks per key (`addr:...`, `user:...`) in a sliding window: at
    MAX_FAILURES within WINDOW seconds the key is refused until the oldest failure ages out."""

    def __init__(self, max_failures: int = MAX_FAILURES, window: float = WINDOW, clock=time.monotonic):
        self.max_failures, self.window, self.clock = max_failures, window, clock
        self._failures: dict[str, list[float]] = {}
        self._lock = threading.Lock()

    def _recent(self, key: str, now: float) -> list[float]:
        kept = [t for t in self._failures.get(key, ()) if now - t < self.window]
        if kept:
            self._failures[key] = kept
        else:
            self._failures.pop(key, None)
        return kept

    def wait(self, *keys: str) -> int:
        """Seconds until the keys may try again (0: now)."""
        now = self.clock()
        with self._lock:
            waits = [self.window - (now - recent[0]) for recent in map(lambda k: self._recent(k, now), keys)
                     if len(recent) >= self.max_failures]
        return int(max(waits)) + 1 if waits else 0

    def failed(self, *keys: str) -> None:
        now = self.clock()
        with self._lock:
            if len(self._failures) > MAX_KEYS:  # many names or addresses tried: forget the old
                for key in list(self._failures):
                    self._recent(key, now)
            for key in keys:
                self._failures[key] = self._recent(key, now) + [now]

    def succeeded(self, *keys: str) -> None:
        with self._lock:
            for key in keys:
                self._failures.pop(key, None)


class Sessions:
    """Live console sessions: id -> (user, account, expiry). The cookie holds only the id.
    `account` is the user's record version (`updated`, which a new password or a new user of
    that name changes): a session outlives neither."""

    def __init__(self, hours: float = SESSION_HOURS, clock=time.time):
        self.seconds, self.clock = hours * 3600, clock
        self._live: dict[str, tuple[str, str, float]] = {}
        self._lock = threading.Lock()

    def start(self, user: str, account: str = "") -> str:
        sid = secrets.token_urlsafe(32)
        now = self.clock()
        with self._lock:
            for old in [k for k, (_, _, expiry) in self._live.items() if expiry < now]:
                del self._live[old]
            self._live[sid] = (user, account, now + self.seconds)
        return sid

    def user(self, sid: str | None, accounts: dict[str, str] | None = None) -> str | None:
        """The session's user; None (and the session ended) once it expired or, given the
        users' current `accounts` (name -> version), its user was removed or changed."""
        with self._lock:
            found = self._live.get(sid) if sid else None
            if found is None:
                return None
            user, account, expiry = found
            if expiry < self.clock() or (accounts is not None and accounts.get(user) != account):
                del self._live[sid]
                return None
            return user

    def end(self, sid: str | None) -> None:
        with self._lock:
            self._live.pop(sid, None)


def accounts() -> dict[str, dict]:
    """Console users' names -> their entries (`updated`: the record version Sessions keep)."""
    return {u["name"]: u for u in access.list_users(cfg())}


def keys_of(user: str) -> tuple[str, str]:
    return f"addr:{request.remote_addr}", f"user:{user}"


def check_password(user: str, password: str) -> bool:
    """The password check of login and of a deletion, rate limited alike: 429 while the
    address or the user has too many recent failures (the KDF does not even run)."""
    limiter = current_app.extensions["mxhook_console"]["limiter"]
    keys = keys_of(user)
    wait = limiter.wait(*keys)
    if wait:
        abort(429, f"too many wrong passwords: try again in {wait} s")
    if access.authenticate_user(cfg(), user, password):
        limiter.succeeded(*keys)
        return True
    limiter.failed(*keys)
    return False


def login_session(user: str) -> None:
    state = current_app.extensions["mxhook_console"]
    state["sessions"].end(session.get("sid"))
    session.clear()  # a new session (and CSRF token) at every login: no fixation
    session.permanent = True
    session["sid"] = state["sessions"].start(user, accounts().get(user, {}).get("updated", ""))


def logout_session() -> None:
    current_app.extensions["mxhook_console"]["sessions"].end(session.get("sid"))
    session.clear()


def audit(action: str, target: str | None, detail: dict | None = None) -> None:
    access.record(cfg(), f"user:{g.user}", action, target, detail, request.remote_addr)


PUBLIC = {"console.login", "static"}
# pages that are forms for a change (besides every POST): not for read-only users
WRITE_PAGES = {"console.rule_add", "console.rule_edit", "console.endpoint_add",
               "console.endpoint_edit", "console.delete"}


@blueprint.before_request
def guard():
    if request.method == "POST":
        try:
            validate_csrf(request.form.get("csrf_token"))
        except ValidationError as exc:
            raise CSRFError(str(exc)) from None
    sid = session.get("sid")
    users = accounts() if sid else {}
    # a user removed (`mxhook user remove`) or given a new password meanwhile is logged out
    g.user = current_app.extensions["mxhook_console"]["sessions"].user(
        sid, {name: u["updated"] for name, u in users.items()}) if sid else None
    if sid and g.user is None:
        logout_session()
    if g.user is None and request.endpoint not in PUBLIC:
        return redirect(url_for("console.login", next=request.full_path if request.method == "GET" else None))
    g.read_only = g.user is not None and users[g.user]["read_only"]
    if g.read_only and request.endpoint not in PUBLIC and request.endpoint != "console.logout" and (
            request.method == "POST" or request.endpoint in WRITE_PAGES):
        abort(403, f"user {g.user} is read-only: the console shows everything to them and changes nothing")
    return None


@blueprint.app_context_processor
def template_globals():
    return {"csrf_token": generate_csrf, "user": g.get("user"), "read_only": g.get("read_only", False)}


@blueprint.errorhandler(Exception)
def error_page(exc: Exception):
    """Console errors as pages (the API's stay JSON: web/errors.py)."""
    if isinstance(exc, HTTPException):
        status, message = exc.code, exc.description or exc.name
    elif isinstance(exc, ServiceError):
        status, message = errors.status_of(exc), exc.message
    else:
        errors.log.exception("error on %s %s", request.method, request.path)
        status, message = 500, "internal error (logged by mxhook-web)"
    return render_template("error.html", status=status, message=message), status


@blueprint.route("/")
def index():
    return redirect(url_for("console.inbound_log"))


def safe_next(target: str | None) -> str:
    """Where to go after login: a path of this site only (no //host, no scheme)."""
    if target and target.startswith("/") and not target.startswith("//") and "\\" not in target:
        return target
    return url_for("console.inbound_log")


@blueprint.route("/login", methods=["GET", "POST"])
def login():
    if request.method == "GET":
        return render_template("login.html", next=request.args.get("next", ""))
    name, password = request.form.get("user", ""), request.form.get("password", "")
    if not check_password(name, password):
        return render_template("login.html", next=request.form.get("next", ""), name=name,
                               failed=True), 401
    login_session(name)
    g.user = name
    audit("console.login", name)
    return redirect(safe_next(request.form.get("next")))


@blueprint.route("/logout", methods=["POST"])
def logout():
    logout_session()
    return redirect(url_for("console.login"))
