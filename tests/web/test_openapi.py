"""/v1/openapi.json describes exactly the routes the server has."""
from __future__ import annotations

import re

from tests.support.services import make_config

from mxhook.web import create_app
from mxhook.web.api import ROUTES


def flask_routes(app) -> set[tuple[str, str]]:
    out = set()
    for rule in app.url_map.iter_rules():
        if not rule.rule.startswith("/v1/"):
            continue
        path = re.sub(r"<(?:[a-z]+:)?([a-z_]+)>", r"{\1}", rule.rule)
        out |= {(m.lower(), path) for m in rule.methods - {"HEAD", "OPTIONS"}}
    return out


def test_every_route_is_documented_and_nothing_else(stack, tmp_path):
    doc = stack("GET", "/v1/openapi.json").json()
    assert doc["openapi"].startswith("3.") and doc["components"]["securitySchemes"]["bearer"]
    documented = {(m, p) for p, ops in doc["paths"].items() for m in ops}
    app = create_app(make_config(tmp_path))
    assert documented == flask_routes(app)
    assert len(documented) == len(ROUTES)
    for path, ops in doc["paths"].items():
        for op in ops.values():
            names = {p["name"] for p in op.get("parameters", []) if p["in"] == "path"}
            assert names == set(re.findall(r"{([a-z_]+)}", path)), path
            assert "default" in op["responses"]
