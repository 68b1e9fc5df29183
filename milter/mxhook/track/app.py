"""The tracking endpoint as a WSGI application (docs/tracking-endpoint.md):

    GET|HEAD /o/<token>                 1x1 GIF                          -> opened
    GET|HEAD /c/<token>                 302 to the token's http(s) URL   -> clicked
    GET|HEAD /u/<token>                 confirmation page (changes nothing)
    POST     /u/<token>                 RFC 8058 one-click, or the page's button -> unsubscribed
    GET|HEAD /u/<token>/resubscribe     page with a button (changes nothing)
    POST     /u/<token>/resubscribe     -> resubscribed
    GET|HEAD /healthz

Every hit becomes an Event (source `track`) appended to the spool and on disk (the segment
writer's group fdatasync) before the answer; a spool that cannot take it answers 503, so the
client tries again and nothing is lost. A token that does not verify (forged, unknown key, other
kind) gets a bare 404.
"""
from __future__ import annotations

import logging
import re
import threading
import time
from dataclasses import dataclass
from typing import Callable
from urllib.parse import quote, urlsplit, urlunsplit

import idna
import jinja2

from mxhook import spool
from mxhook.model import machine, tracktokens
from mxhook.model.events import ENGAGEMENT_KEYS, Event, event_id, iso_from_us
from mxhook.model.machine import CLICKS, OPENS
from mxhook.track.clients import client_of

log = logging.getLogger("mxhook-track")

GIF = bytes.fromhex("47494638396101000100800000000000ffffff21f90401000000002c00000000010001000002024401003b")
NO_CACHE = [("Cache-Control", "no-store, no-cache, must-revalidate, max-age=0"),
            ("Pragma", "no-cache"), ("Expires", "0")]
PAGE_HEADERS = NO_CACHE + [
    ("Content-Security-Policy", "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; "
                                "frame-ancestors 'none'; base-uri 'none'"),
    ("X-Content-Type-Options", "nosniff"), ("Referrer-Policy", "no-referrer")]
_PATH = re.compile(r"/([ocu])/([A-Za-z0-9_.-]{1,%d})(/resubscribe)?" % tracktokens.MAX_TOKEN)
_KIND = {"o": tracktokens.OPEN, "c": tracktokens.CLICK, "u": tracktokens.UNSUBSCRIBE}
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")  # header injection; spaces are escaped
MAX_FORM = 4096  # bytes of a POST body read (RFC 8058's is 26)


@dataclass(frozen=True)
class Options:
    """What the app reads of `[tracking]` besides the files it watches."""

    privacy: str = "full"  # "full" or "aggregate": drop ip and user_agent after scoring
    machine_click_seconds: float = 5.0
    machine_burst_links: int = 3
    machine_burst_seconds: float = 1.0
    machine_rules_off: tuple[str, ...] = ()


class Sources:
    """The app's changing inputs: keys, bot rules and GeoIP database, each a callable giving
    the current value (daemons/track.py passes Watched files' `get`)."""

    def __init__(self, keys: Callable[[], tuple[bytes, ...]],
                 rules: Callable[[], tuple[machine.Rule, ...]] = lambda: (),
                 geoip: Callable[[], object] = lambda: None):
        self.keys, self.rules, self.geoip = keys, rules, geoip


_PAGES = jinja2.Environment(autoescape=True, loader=jinja2.DictLoader({
    "page.html": """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width">
<meta name="robots" content="noindex"><title>{{ title }}</title>
<style>body{font:16px/1.5 sans-serif;max-width:36em;margin:3em auto;padding:0 1em}
button{font:inherit;padding:.4em 1.2em}</style></head>
<body><h1>{{ title }}</h1>
<p>{{ text }}</p>
{% if button %}<form method="post" action="">
<input type="hidden" name="List-Unsubscribe" value="One-Click">
<button type="submit">{{ button }}</button></form>{% endif %}
{% if link %}<p><a href="{{ link }}">{{ link_text }}</a></p>{% endif %}
</body></html>
"""}))
_PAGE = _PAGES.get_template("page.html")


def _whom(track: tracktokens.Track) -> str:
    who = track.recipient or "this address"
    return f"{who} from {track.sending_domain}" if track.sending_domain else who


class TrackApp:
    """The WSGI application. `writer` has `append(record)`, durable when it returns (a
    spool.SegmentWriter); `clock` gives Unix time."""

    def __init__(self, writer, sources: Sources, options: Options = Options(), *,
                 clock: Callable[[], float] = time.time):
        self.writer = writer
        self.sources = sources
        self.options = options
        self.clock = clock
        self._clicks = machine.ClickWindow(options.machine_burst_seconds)
        self._clicks_lock = threading.Lock()

    def __call__(self, environ, start_response):
        method = environ.get("REQUEST_METHOD", "GET")
        path = environ.get("PATH_INFO", "")
        if path == "/healthz":
            return self._answer(start_response, "200 OK", [("Content-Type", "text/plain")],
                                b"ok\n", method)
        found = _PATH.fullmatch(path)
        if found is None:
            return self._not_found(start_response)
        letter, token, resubscribe = found.groups()
        if letter != "u" and resubscribe:
            return self._not_found(start_response)
        allowed = ("GET", "HEAD") if letter in "oc" else ("GET", "HEAD", "POST")
        if method not in allowed:
            return self._answer(start_response, "405 Method Not Allowed",
                                [("Allow", ", ".join(allowed)), ("Content-Type", "text/plain")],
                                b"method not allowed\n", method)
        track = tracktokens.verify(self.sources.keys(), token, kind=_KIND[letter])
        if track is None:
            return self._not_found(start_response)
        if letter == "o":
            return self._open(environ, start_response, method, track, token)
        if letter == "c":
            return self._click(environ, start_response, method, track, token)
        if method == "POST":
            environ["wsgi.input"].read(min(_content_length(environ), MAX_FORM))
        return self._unsubscribe(environ, start_response, method, track, token, bool(resubscribe))

    # ---- the routes

    def _open(self, environ, start_response, method, track, token):
        if not self._record(environ, "opened", OPENS, method, track, token):
            return self._unavailable(start_response)
        return self._answer(start_response, "200 OK", [("Content-Type", "image/gif")] + NO_CACHE,
                            GIF, method)

    def _click(self, environ, start_response, method, track, token):
        location = _location(track.url)
        if location is None:
            return self._not_found(start_response)
        if not self._record(environ, "clicked", CLICKS, method, track, token):
            return self._unavailable(start_response)
        return self._answer(start_response, "302 Found",
                            [("Location", location), ("Content-Type", "text/plain"),
                             ("Referrer-Policy", "no-referrer")] + NO_CACHE, b"", method)

    def _unsubscribe(self, environ, start_response, method, track, token, resubscribe):
        if resubscribe:
            if method == "POST":
                if not self._record(environ, "resubscribed", None, method, track, token):
                    return self._unavailable(start_response)
                page = dict(title="Subscribed again",
                            text=f"Mail to {_whom(track)} is no longer suppressed.")
            else:
                page = dict(title="Subscribe again?",
                            text=f"Receive mail to {_whom(track)} again.",
                            button="Subscribe again")
        elif method == "POST":
            if not self._record(environ, "unsubscribed", None, method, track, token):
                return self._unavailable(start_response)
            page = dict(title="Unsubscribed",
                        text=f"You will no longer receive this mail at {_whom(track)}.",
                        link=f"{token}/resubscribe", link_text="Unsubscribed by mistake? Subscribe again")
        else:
            page = dict(title="Unsubscribe?",
                        text=f"Stop mail to {_whom(track)}. Nothing changes until you press the "
                             "button.",
                        button="Unsubscribe",
                        link=f"{token}/resubscribe", link_text="Subscribe again instead")
        body = _PAGE.render(**page).encode("utf-8")
        return self._answer(start_response, "200 OK",
                            [("Content-Type", "text/html; charset=utf-8")] + PAGE_HEADERS, body, method)

    # ---- the event

    def _record(self, environ, etype, kind, method, track, token) -> bool:
        """Append the hit's event to the spool, durably; False when the spool refused it."""
        now = self.clock()
        now_us = int(now * 1_000_000)
        ip = environ.get("REMOTE_ADDR") or ""
        user_agent = environ.get("HTTP_USER_AGENT", "")
        engagement = dict.fromkeys(ENGAGEMENT_KEYS)
        client, device, os_family = client_of(user_agent)
        geoip = self.sources.geoip()
        continent, country, city = geoip.place(ip) if geoip is not None else (None, None, None)
        engagement.update(url=track.url, link=track.link, sending_domain=track.sending_domain or None,
                          ip=ip or None, user_agent=user_agent or None, client=client,
                          client_device=device, client_os=os_family, continent=continent,
                          country=country, city=city)
        if kind is not None:
            engagement["machine"], engagement["machine_reason"] = self._verdict(
                kind, method, user_agent, ip, now, track)
        if self.options.privacy == "aggregate":
            engagement.update(ip=None, user_agent=None)
        event = Event(etype, iso_from_us(now_us), event_id(now_us, token, method, ip, user_agent),
                      source="track", queue_id=track.queue_id or None,
                      recipient=track.recipient or None, engagement=engagement)
        try:
            self.writer.append(spool.event_record(event))
        except OSError as exc:
            log.error("cannot spool the %s event of %s: %s (answered 503)", etype, track.queue_id, exc)
            return False
        return True

    def _verdict(self, kind, method, user_agent, ip, now, track):
        recent = ()
        if kind == CLICKS:
            with self._clicks_lock:
                recent = self._clicks.add(track.queue_id, now, track.link)
        o = self.options
        settings = machine.Settings(o.machine_click_seconds, o.machine_burst_links,
                                    o.machine_burst_seconds,
                                    self.sources.rules() + machine.BUILTIN,
                                    frozenset(o.machine_rules_off))
        hit = machine.Hit(kind, method, user_agent, ip, track.sent, now, track.link, recent)
        return machine.verdict(hit, settings)

    # ---- answers

    @staticmethod
    def _answer(start_response, status, headers, body, method):
        start_response(status, headers + [("Content-Length", str(len(body)))])
        return [b"" if method == "HEAD" else body]

    def _not_found(self, start_response):
        start_response("404 Not Found", [("Content-Type", "text/plain"), ("Content-Length", "10")]
                       + NO_CACHE)
        return [b"not found\n"]

    def _unavailable(self, start_response):
        body = b"temporarily unavailable, try again\n"
        start_response("503 Service Unavailable",
                       [("Content-Type", "text/plain"), ("Retry-After", "5"),
                        ("Content-Length", str(len(body)))] + NO_CACHE)
        return [body]


def _location(url: str) -> str | None:
    """The Location header of a redirect to `url`: an http(s) URL with a host, spaces and
    non-ASCII characters percent-encoded (UTF-8) and an international host name in A-labels
    (a header is ASCII); None for anything else (then 404: never a redirect elsewhere)."""
    if _CONTROL.search(url):
        return None
    try:
        parts = urlsplit(url)
        host, port = parts.hostname, parts.port
    except ValueError:  # a bad port or IPv6 literal
        return None
    if parts.scheme.lower() not in ("http", "https") or not host or " " in parts.netloc:
        return None
    netloc = parts.netloc
    if not netloc.isascii():
        try:
            netloc = idna.encode(host, uts46=True).decode("ascii")
        except idna.IDNAError:
            return None
        userinfo = parts.netloc.rpartition("@")[0]
        netloc = (quote(userinfo, safe=_SAFE) + "@" if userinfo else "") + netloc \
            + (f":{port}" if port is not None else "")
    rest = urlunsplit(("", "", parts.path, parts.query, parts.fragment))
    return f"{parts.scheme}://{netloc}{quote(rest, safe=_SAFE)}"


_SAFE = "/?#[]@!$&'()*+,;=:%~"  # reserved characters and existing escapes stay as they are


def _content_length(environ) -> int:
    try:
        return max(0, int(environ.get("CONTENT_LENGTH") or 0))
    except ValueError:
        return 0
