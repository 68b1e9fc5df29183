"""The OpenAPI 3 document of the API, made from the route table (`api.ROUTES`), so every
route is in it and nothing else is (tests/web checks both ways against Flask's URL map)."""
from __future__ import annotations

import re


_PARAM = re.compile(r"<(?:(int):)?([a-z_]+)>")
_TIME = {"type": "string", "description": "ISO 8601, or an age: 30m, 2h, 7d"}
ERROR = {"type": "object", "required": ["error"], "properties": {"error": {
    "type": "object", "required": ["code", "message"],
    "properties": {"code": {"type": "string"}, "message": {"type": "string"}}}}}


def openapi_path(path: str) -> str:
    """Flask's `/v1/rules/<name>` as OpenAPI's `/v1/rules/{name}`."""
    return _PARAM.sub(lambda m: "{" + m.group(2) + "}", path)


def _schema(kind: str) -> dict:
    if kind == "time":
        return dict(_TIME)
    if kind == "array":
        return {"type": "array", "items": {"type": "string"}}
    return {"type": kind}


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("mxhook")
    except Exception:  # an un-installed checkout
        return "0"


def operation(route) -> dict:
    params = [{"name": name, "in": "path", "required": True,
               "schema": {"type": "integer" if conv else "string"}}
              for conv, name in _PARAM.findall(route.path)]
    params += [{"name": name, "in": "query", "required": False, "schema": _schema(kind),
                "description": doc} for name, kind, doc in route.query]
    op = {"operationId": route.name, "summary": route.summary, "tags": [route.path.split("/")[2]],
          "responses": {
              str(route.status): {"description": "OK", "content": {
                  route.content: {"schema": {"type": "string"} if route.content != "application/json"
                                  else {"type": "object"}}}},
              "default": {"description": "An error", "content": {
                  "application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}}}
    if route.public:
        op["security"] = []
    if params:
        op["parameters"] = params
    if route.body is not None:
        op["requestBody"] = {"required": False, "content": {"application/json": {"schema": {
            "type": "object", "additionalProperties": False,
            "properties": {name: dict(_schema(kind), description=doc)
                           for name, (kind, doc) in route.body.items()}}}}}
    return op


def document(routes) -> dict:
    paths: dict = {}
    for route in routes:
        paths.setdefault(openapi_path(route.path), {})[route.method.lower()] = operation(route)
    return {
        "openapi": "3.0.3",
        "info": {"title": "mxhook API", "version": _version(),
                 "description": "mxhook's HTTP API (docs/api.md). Every route but the "
                                "signed fetch URLs of omitted attachments needs "
                                "`Authorization: Bearer TOKEN` (`mxhook token add`); read-only "
                                "tokens are refused on writes (403 read_only_token). Errors: "
                                "{\"error\": {\"code\", \"message\"}}. Secrets are write-only."},
        "servers": [{"url": "/"}],
        "security": [{"bearer": []}],
        "components": {"securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
                       "schemas": {"Error": ERROR}},
        "paths": paths,
    }
