#!/usr/bin/env python3
"""Screenshots of the console for docs/console.md (docs/img/console-*.png): a throw-away
mxhook-web with a console user, a rule, an endpoint, a domain, a block and a filled log (the
browser tests' data, tests/web/console_support.py), photographed by headless chromium.

    .venv/bin/python scripts/console_screenshots.py [--out docs/img]
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
for _p in (ROOT, os.path.join(ROOT, "milter")):
    if _p not in sys.path:
        sys.path.insert(0, _p)

from selenium.webdriver.common.by import By  # noqa: E402

from tests.web.console_support import PASSWORD, console_stack, fill_logs  # noqa: E402
from tests.web.test_console_browser import chrome, click, log_in  # noqa: E402

SHOTS = [  # (file, path, what to do on the page first)
    ("console-login.png", "/login", None),
    ("console-inbound-log.png", "/logs/inbound?status=denied&since=2026-09-21T14:14", None),
    ("console-inbound-detail.png", "/logs/inbound?status=deferred", "detail"),
    ("console-event-log.png", "/logs/events", None),
    ("console-rules.png", "/settings/rules", None),
    ("console-rule-edit.png", "/settings/rules/invoices/edit", None),
    ("console-rule-delete.png", "/settings/rules/invoices/delete", None),
    ("console-endpoints.png", "/settings/endpoints", None),
    ("console-domains.png", "/settings/domains", None),
    ("console-blocks.png", "/settings/blocks", None),
    ("console-audit.png", "/audit", None),
]


def setup(stack) -> None:
    stack("POST", "/v1/domains", json_body={"name": "ours.example"})
    stack("POST", "/v1/rules", json_body={"name": "invoices", "url": "https://app.example/hooks/invoices",
                                          "when": ["To~^invoices@ours\\.example$"],
                                          "bearer": "not-shown-anywhere", "allow_http": False})
    stack("POST", "/v1/rules", json_body={"name": "support", "url": "https://help.example/inbound",
                                          "when": ["To~^support@"], "unless": ["Subject~(?i)auto-reply"],
                                          "enabled": False})
    stack("POST", "/v1/endpoints", json_body={"url": "https://app.example/hooks/events",
                                              "events": ["bounces", "deliveries"],
                                              "basic_auth": "hooks:not-shown-either"})
    stack("POST", "/v1/blocks", json_body={"address": "complainer@far.example", "reason": "spam complaint"})


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=os.path.join(ROOT, "docs", "img"))
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    with tempfile.TemporaryDirectory() as workdir:
        stack = console_stack(workdir)
        fill_logs(stack)
        stack.web.start()
        driver = chrome(workdir)
        try:
            setup(stack)
            url = lambda path: stack.client.base + path  # noqa: E731
            driver.get(url("/login"))
            driver.save_screenshot(os.path.join(args.out, SHOTS[0][0]))
            log_in(driver, url, PASSWORD)
            for name, path, action in SHOTS[1:]:
                driver.get(url(path))
                if action == "detail":
                    click(driver, driver.find_element(By.CSS_SELECTOR, "a.detail"))
                driver.save_screenshot(os.path.join(args.out, name))
                print(os.path.join(args.out, name))
        finally:
            driver.quit()
            stack.web.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
