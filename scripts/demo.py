"""`make demo`: mxhook end to end on this machine, without touching the system Postfix.

Starts a private Postfix on 127.0.0.1 (free port, own config and queue in a temp dir),
mxhook-milter on a unix socket, mxhook-spooler, mxhook-web (the HTTP API and console) and a small
HTTP receiver on loopback; configures a permitted domain and two rules with the real `mxhook`
CLI; sends mail that is accepted, denied by the rules, spoofed (From in our own domain), From ==
To, and to a domain we do not serve; prints the SMTP answers, the webhook bodies the receiver
got, and `mxhook log inbound`; makes a read-only API token and checks that the API answers with
it; ends with the console's URL and that API call. Stops everything it started, also on Ctrl-C
or an error; with --keep it leaves the stack running (and its files) until Ctrl-C or SIGTERM.

    python3 scripts/demo.py [--keep]     (as root; `make demo` sets up the venv first)
"""
from __future__ import annotations

import argparse
import json
import os
import secrets
import shlex
import signal
import sys
import textwrap
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
for _p in (ROOT, os.path.join(ROOT, "milter")):
    if _p not in sys.path:
        sys.path.insert(0, _p)

from tests.support.daemons import MxhookStack, WebProcess  # noqa: E402
from tests.support.ports import free_port  # noqa: E402
from tests.support.postfix import PostfixError, make_message  # noqa: E402
from tests.support.web_client import Client  # noqa: E402

DOMAIN = "ours.example"
BOLD = "\033[1m" if sys.stdout.isatty() else ""
DIM = "\033[2m" if sys.stdout.isatty() else ""
RESET = "\033[0m" if sys.stdout.isatty() else ""


def heading(text: str) -> None:
    print(f"\n{BOLD}== {text} =={RESET}", flush=True)


def shorten(value, *, max_str: int = 160, max_items: int = 12):
    """A copy of a JSON document fit for a terminal: long strings (base64 content, bodies) cut
    with a note of their length, long lists cut with a count."""
    if isinstance(value, str):
        if len(value) > max_str:
            return value[:max_str] + f"... ({len(value)} chars)"
        return value
    if isinstance(value, list):
        items = [shorten(v, max_str=max_str, max_items=max_items) for v in value[:max_items]]
        if len(value) > max_items:
            items.append(f"... ({len(value) - max_items} more)")
        return items
    if isinstance(value, dict):  # empty fields (null, "", []) are left out of the display
        return {k: shorten(v, max_str=max_str, max_items=max_items) for k, v in value.items()
                if v not in (None, "", [], {})}
    return value


def run_cli(stack: MxhookStack, *args: str, show: bool = True) -> str:
    if show:
        print(f"{DIM}$ mxhook {shlex.join(args)}{RESET}")
    proc = stack.cli(*args)
    out = proc.stdout.rstrip()
    if show and out:
        print(textwrap.indent(out, "  "))
    return out


def scenarios():
    """(title, mail from, recipients, message bytes, what we expect)."""
    return [
        ("accepted by rule 'support'", "alice@sender.example", [f"support@{DOMAIN}"],
         make_message(from_="Alice <alice@sender.example>", to=f"support@{DOMAIN}",
                      subject="Printer on fire", text="Hi, the printer on floor 3 is on fire.\n",
                      attachments=[("photo.png", "image/png", b"\x89PNG\r\n\x1a\n" + bytes(300))]),
         "250: spooled, then posted to /support"),
        ("accepted by rule 'invoices'", "billing@vendor.example", [f"billing@{DOMAIN}"],
         make_message(from_="Vendor Billing <billing@vendor.example>", to=f"billing@{DOMAIN}",
                      subject="Invoice 2026-113", text="Please find our invoice attached.\n",
                      attachments=[("invoice.pdf", "application/pdf", b"%PDF-1.4\n% demo\n")]),
         "250: spooled, then posted to /invoices"),
        ("no rule matches", "bob@sender.example", [f"sales@{DOMAIN}"],
         make_message(from_="Bob <bob@sender.example>", to=f"sales@{DOMAIN}", subject="Offer"),
         "550 after DATA: no rule for sales@"),
        ("spoofed: From in our own domain", "ceo@sender.example", [f"support@{DOMAIN}"],
         make_message(from_=f"The CEO <ceo@{DOMAIN}>", to=f"support@{DOMAIN}", subject="Urgent wire"),
         "550 after DATA: heuristic"),
        ("From == To", "mallory@spam.example", [f"support@{DOMAIN}"],
         make_message(from_="victim@mailbox.example", to="victim@mailbox.example",
                      subject="You sent this to yourself"),
         "550 after DATA: heuristic"),
        ("recipient domain not served here", "alice@sender.example", ["someone@elsewhere.example"],
         make_message(to="someone@elsewhere.example"),
         "550 at RCPT (unknown_domains = reject)"),
    ]


def demo(stack: MxhookStack, web: WebProcess) -> int:
    pf = stack.postfix
    heading("Private stack")
    print(f"Postfix      127.0.0.1:{pf.port} (config {pf.config_dir}, queue {pf.queue_dir})")
    print(f"             relaying to smtp-sink on 127.0.0.1:{pf.sink_port}; maillog {pf.log_path}")
    print(f"milter       {stack.cfg.socket} (pid {stack.milter.pid})")
    print(f"spooler      pid {stack.spooler.pid}, spool {stack.cfg.spool_dir}")
    print(f"web          http://127.0.0.1:{web.port}/ (pid {web.pid})")
    print(f"receiver     {stack.receiver.url}")
    print(f"config       {stack.cfg.path}")

    heading("Configure with the mxhook CLI")
    run_cli(stack, "domain", "add", DOMAIN)
    run_cli(stack, "rule", "add", "support", "--url", stack.endpoint("/support"), "--allow-http",
            "--when", r"To~^support@ours\.example$", "--priority", "10")
    run_cli(stack, "rule", "add", "invoices", "--url", stack.endpoint("/invoices"), "--allow-http",
            "--when", r"Subject~\binvoice\b", "--when", r"To~^billing@", "--priority", "20",
            "--bearer", "demo-token")
    run_cli(stack, "rule", "list")
    stack.wait_milter_snapshot()

    heading("Send mail through Postfix (SMTP answers)")
    accepted = 0
    for title, mail_from, rcpts, data, expect in scenarios():
        res = stack.send(mail_from, rcpts, data)
        verdict = "ACCEPTED" if res.accepted else f"REFUSED at {res.stage}"
        print(f"\n{BOLD}{title}{RESET}  ({DIM}expected: {expect}{RESET})  -> {verdict}")
        print(textwrap.indent("\n".join(res.lines()), "  "))
        accepted += res.accepted

    heading(f"Webhooks the receiver got (waiting for {accepted})")
    try:
        requests = stack.receiver.wait_for(accepted, timeout=20)
    except Exception as exc:
        print(f"  not all webhooks arrived: {exc}")
        requests = stack.receiver.requests
    for req in requests:
        print(f"\n{BOLD}POST {req.path}{RESET}  {DIM}(long strings cut, empty fields left out){RESET}")
        for h in ("Content-Type", "webhook-id", "webhook-timestamp", "webhook-signature", "Authorization"):
            if h in req.headers:
                print(f"  {h}: {req.headers[h]}")
        try:
            doc = shorten(req.json())
            if isinstance(doc.get("message"), dict) and isinstance(doc["message"].get("headers"), list):
                doc["message"]["headers"] = shorten(doc["message"]["headers"], max_items=3)
            body = json.dumps(doc, indent=2, ensure_ascii=False)
        except ValueError:
            body = req.text()[:1500]
        print(textwrap.indent(body, "  "))

    heading("mxhook log inbound")
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:  # let the spooler record the outcomes
        rows = stack.inbound_log()
        if sum(r["status"] == "succeeded" for r in rows) >= accepted:
            break
        time.sleep(0.3)
    run_cli(stack, "log", "inbound")
    print(f"\n{DIM}(also: mxhook log inbound --json | --csv, mxhook log show ID){RESET}")

    heading("The HTTP API and console (mxhook-web)")
    token = run_cli(stack, "token", "add", "demo", "--read-only")
    status = Client(f"http://127.0.0.1:{web.port}").request("GET", "/v1/status", token=token).status
    print(f"GET /v1/status with the token: HTTP {status}")
    if status != 200:
        print(web.stderr_text()[-3000:], file=sys.stderr)
        return 1
    password = secrets.token_urlsafe(12)
    print(f"{DIM}$ mxhook user add demo --password-file -{RESET}  (the password on stdin)")
    print(textwrap.indent(stack.cli("user", "add", "demo", "--password-file", "-",
                                    input=f"{password}\n").stdout.rstrip(), "  "))
    print(f"\n{BOLD}Console:{RESET}  http://127.0.0.1:{web.port}/  (user demo, password {password})")
    print(f"{BOLD}API call:{RESET} curl -H 'Authorization: Bearer {token}' "
          f"http://127.0.0.1:{web.port}/v1/status")
    return 0


def wait_until_stopped(stack: MxhookStack, web: WebProcess) -> None:
    """--keep: the stack runs (the receiver is a thread of this process) until Ctrl-C or
    SIGTERM."""
    heading("Running")
    print(f"The stack keeps running. Stop it with Ctrl-C here, or: kill {os.getpid()}")
    print(f"{DIM}(mxhook --config {stack.cfg.path} ... works on it meanwhile){RESET}", flush=True)
    while web.running and stack.milter.running:
        time.sleep(1)
    print("a daemon stopped: stopping the rest", file=sys.stderr)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--keep", action="store_true",
                    help="leave the stack running (until Ctrl-C) and keep its work dir")
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("make demo runs a private Postfix instance and needs root", file=sys.stderr)
        return 2

    def on_term(signum, frame):
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, on_term)
    stack = MxhookStack([DOMAIN], config={"spooler": {"retry_time_scale": "0.05"},
                                          "web": {"listen": f"127.0.0.1:{free_port()}", "log": "stderr"}},
                        keep=args.keep)
    web = None
    try:
        stack.start()
        web = WebProcess(stack.cfg).start()
        status = demo(stack, web)
        if args.keep and status == 0:
            wait_until_stopped(stack, web)
        return status
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
    except PostfixError as exc:
        print(f"demo: Postfix did not start: {exc}", file=sys.stderr)
        return 1
    except Exception:
        if stack.postfix is not None:
            print(stack.diagnostics(), file=sys.stderr)
        raise
    finally:
        heading("Stopping")
        if web is not None:
            web.stop()
        stack.stop()
        print("stopped Postfix, smtp-sink, mxhook-milter, mxhook-spooler, mxhook-web and the receiver"
              + (f"; files kept in {stack.workdir}" if args.keep else
                 " (`python3 scripts/demo.py --keep` leaves them running to click through the console)"))


if __name__ == "__main__":
    sys.exit(main())
