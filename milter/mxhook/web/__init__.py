"""mxhook-web: the HTTP front-end over the same services as the CLI (`mxhook.services`).

One Flask application (`create_app`), one blueprint per face: `api` (the REST API under /v1,
JSON, Bearer tokens) and `console` (web/console/: the pages under /, a login session). Views
parse a request, call a service and present its answer; they hold no logic of their own and open no database (tests/unit/
test_layers.py checks that nothing here imports sqlite3 or the store). daemons/web.py serves
the application with waitress.
"""
from __future__ import annotations

import logging
import re

from flask import Flask, g, request

from mxhook import config as configmod
from mxhook.web import api, auth, console, errors, metrics


def create_app(cfg: configmod.Config) -> Flask:
    """The WSGI application for `cfg` (the config every request's services get)."""
    app = Flask("mxhook.web")
    app.config["MXHOOK_CONFIG"] = cfg
    app.config["MAX_CONTENT_LENGTH"] = cfg.value("web", "max_request_size")
    app.json.sort_keys = False  # documents keep the order the services give
    app.json.ensure_ascii = False
    errors.register(app)
    auth.register(app)
    app.register_blueprint(api.blueprint)
    app.register_blueprint(metrics.blueprint)
    console.register(app)

    @app.after_request
    def security_headers(response):
        response.headers.update(SECURITY_HEADERS)
        if request.blueprint == "console":  # pages with mail data: kept by no cache
            response.headers["Cache-Control"] = "no-store"
        return response

    @app.after_request
    def access_log(response):
        # the path without its query (which may name addresses), who asked, and the answer;
        # control characters (a %0a in the path) cannot forge a log line
        # a signed URL's path is its credential: its route is logged instead
        path = request.url_rule.rule if request.endpoint in auth.PUBLIC_ENDPOINTS else request.path
        log.info("%s %s %s %s", getattr(g, "actor", "-"), request.method,
                 _CONTROL.sub("?", path), response.status_code)
        return response

    return app


# on every answer (the API's too): no script, frame, plugin or foreign resource on a page
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'self'; img-src 'self'; "
                               "form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
}
log = logging.getLogger("mxhook-web")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
