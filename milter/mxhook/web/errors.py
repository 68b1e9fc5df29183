"""Errors as the API answers them: `{"error": {"code": "stable_code", "message": "..."}}`
with an HTTP status; the services' refusals (ServiceError) mapped by their class, their `code`
kept, so a client tells them apart without reading messages."""
from __future__ import annotations

import logging

from flask import Flask, jsonify, request
from werkzeug.exceptions import HTTPException

from mxhook import config as configmod
from mxhook.services import errors as svc

log = logging.getLogger("mxhook-web")

STATUS = {svc.Invalid: 400, svc.NotFound: 404, svc.Conflict: 409, svc.Unavailable: 503,
          svc.Failed: 500}

# werkzeug's own refusals (no route, wrong method, body too large, ...) with stable codes
HTTP_CODES = {400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found",
              405: "method_not_allowed", 413: "request_too_large", 415: "unsupported_media_type"}


class ApiError(Exception):
    """A refusal of the web layer itself (no token, a read-only token, a malformed body)."""

    def __init__(self, status: int, code: str, message: str, headers: dict | None = None):
        super().__init__(message)
        self.status, self.code, self.headers = status, code, headers or {}


def error_response(status: int, code: str, message: str, headers: dict | None = None):
    response = jsonify({"error": {"code": code, "message": message}})
    response.status_code = status
    response.headers.update(headers or {})
    return response


def status_of(exc: svc.ServiceError) -> int:
    for cls, status in STATUS.items():
        if isinstance(exc, cls):
            return status
    return 400


def http_error(exc: HTTPException):
    """werkzeug's refusals (404, 405, 413, ...) as JSON errors."""
    code = HTTP_CODES.get(exc.code, "http_error")
    return error_response(exc.code, code, exc.description or exc.name,
                          {"Allow": exc.response.headers["Allow"]}
                          if exc.response is not None and "Allow" in exc.response.headers
                          else None)


def register(app: Flask) -> None:
    @app.errorhandler(ApiError)
    def api_error(exc: ApiError):
        return error_response(exc.status, exc.code, str(exc), exc.headers)

    @app.errorhandler(svc.ServiceError)
    def service_error(exc: svc.ServiceError):
        return error_response(status_of(exc), exc.code, exc.message)

    @app.errorhandler(configmod.ConfigError)
    def config_error(exc: configmod.ConfigError):
        return error_response(500, "config_invalid", str(exc))

    app.register_error_handler(HTTPException, http_error)

    @app.errorhandler(Exception)
    def internal_error(exc: Exception):
        log.exception("error on %s %s", request.method, request.path)
        return error_response(500, "internal_error", "internal error (logged by mxhook-web)")
