#!/usr/bin/python3
"""package-e2e.py: step 6 of scripts/package-test.sh — the installed package, end to end
through a private Postfix instance, wired by the packaged `mxhook postfix-config`.

Runs as root on Debian's /usr/bin/python3 (`-I`), after package-test.sh installed the .deb and
started mxhook-milter and mxhook-spooler as their units would (user mxhook, the packaged
/etc/mxhook/mxhook.conf with `[http] allow_networks = 127.0.0.1/32` for the loopback
receiver). Uses only the standard library and the repository's test harness
(tests/support/postfix.py, tests/support/receiver.py: stdlib only); every mxhook command is
the packaged /usr/bin/mxhook.

The private instance (config, queue, log under $MXHOOK_PACKAGE_TEST_WORK/postfix, 127.0.0.1 on
a free port, relaying to an smtp-sink) starts WITHOUT the milter in main.cf. Its queue
directory is not /var/spool/postfix, so `postfix-config` names the packaged socket by its
absolute path, unix:/var/spool/postfix/mxhook/milter.sock; that works because the harness
runs the instance's smtpd unchrooted (chroot n in its master.cf) — a chrooted smtpd would
need the socket under its own queue directory, and `mxhook check` says so. The system Postfix
is only read (postconf -h), never changed or started.

Steps: `check` and `postfix-config` on the system Postfix (configured or not) report only
that it is not wired or not configured; postfix-config prints the commands; --apply --yes --reload writes them (backup kept)
and reloads the private instance; `mxhook check --postfix-dir` passes; a rule pointing at a
loopback receiver is added; a message sent over SMTP is accepted and its webhook arrives,
and the inbound log says succeeded. Prints one `ok ...` line per step; exits non-zero with the
reason on the first failure.

Environment: MXHOOK_SRC (the source tree), MXHOOK_PACKAGE_TEST_WORK (work directory),
MXHOOK_SOCKET (the packaged socket path), MXHOOK_DOMAIN (a domain already permitted).
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time

SRC = os.environ["MXHOOK_SRC"]
WORK = os.environ["MXHOOK_PACKAGE_TEST_WORK"]
SOCKET = os.environ.get("MXHOOK_SOCKET", "/var/spool/postfix/mxhook/milter.sock")
DOMAIN = os.environ.get("MXHOOK_DOMAIN", "package-test.example")
MXHOOK = "/usr/bin/mxhook"
sys.path.insert(0, SRC)

from tests.support.postfix import POSTCONF, PrivatePostfix, make_message  # noqa: E402
from tests.support.receiver import Receiver  # noqa: E402

ADDRESS = f"hook@{DOMAIN}"
SENDER = "alice@sender.example"


class Failed(Exception):
    pass


def ok(what: str) -> None:
    print(f"ok   {what}", flush=True)


def mxhook(*args: str, status: int = 0) -> subprocess.CompletedProcess:
    proc = subprocess.run([MXHOOK, *args], capture_output=True, text=True, timeout=60,
                          stdin=subprocess.DEVNULL)
    print(f"$ mxhook {' '.join(args)}  -> exit {proc.returncode}\n{proc.stdout}{proc.stderr}",
          file=sys.stderr, flush=True)
    if proc.returncode != status:
        raise Failed(f"mxhook {' '.join(args)} exited {proc.returncode}, expected {status}:\n"
                     f"{proc.stdout}{proc.stderr}")
    return proc


def postconf(etc: str, name: str) -> str:
    return subprocess.run([POSTCONF, "-c", etc, "-h", name], capture_output=True, text=True,
                          check=True).stdout.strip()


def check_system_postfix() -> None:
    """The system instance is only read. It is not wired to mxhook; on a fresh machine (Postfix
    installed with "No configuration") it has no main.cf at all. `check` says which, and only
    that, in its --json `code`; `postfix-config` without --apply agrees."""
    system_etc = subprocess.run([POSTCONF, "-d", "-h", "config_directory"], capture_output=True,
                                text=True, check=True).stdout.strip()
    main_cf = os.path.join(system_etc, "main.cf")
    configured = os.path.exists(main_cf)
    expected = "postfix_not_wired" if configured else "postfix_not_configured"
    proc = mxhook("check", "--json", status=1)
    bad = [r for r in json.loads(proc.stdout) if not r["ok"]]
    if not bad or any(r["check"] != "postfix" or r.get("code") != expected for r in bad):
        raise Failed(f"mxhook check (system Postfix, {'not wired' if configured else 'no main.cf'}) "
                     f"should report only Postfix problems with code {expected}:\n{proc.stdout}")
    if not configured and (len(bad) != 1 or "dpkg-reconfigure postfix" not in bad[0]["message"]):
        raise Failed(f"mxhook check without {main_cf} should say to run dpkg-reconfigure postfix, "
                     f"once:\n{proc.stdout}")
    ok(f"mxhook check on the system Postfix ({main_cf} {'exists' if configured else 'missing'}): "
       f"exit 1, {len(bad)} problem(s), all {expected}")
    if configured:
        mxhook("postfix-config")
        ok("mxhook postfix-config on the configured system Postfix prints its commands")
    else:
        proc = mxhook("postfix-config", status=1)
        if proc.stderr.strip() != f"Error: {bad[0]['message']}":
            raise Failed(f"postfix-config without {main_cf} should say what check says: {proc.stderr}")
        ok("mxhook postfix-config without main.cf: exit 1, the same message as check")


def run() -> None:
    root = os.path.join(WORK, "postfix")
    with Receiver() as rx, PrivatePostfix(relay_domains=[DOMAIN], milters="", base_dir=root) as pf:
        # For package-test.sh's cleanup, should this process die without stopping them.
        with open(os.path.join(WORK, "e2e.pids"), "w") as fh:
            fh.write(f"{pf._sink.pid}\n")
        etc = pf.config_dir
        ok(f"private Postfix on 127.0.0.1:{pf.port} ({etc}), smtpd_milters empty")

        proc = mxhook("postfix-config", "--postfix-dir", etc)
        ours = f"unix:{SOCKET}"
        if f"'smtpd_milters = {{ {ours}, default_action=tempfail" not in proc.stdout:
            raise Failed(f"postfix-config does not print smtpd_milters with {ours}")
        if postconf(etc, "smtpd_milters"):
            raise Failed("postfix-config without --apply changed main.cf")
        ok(f"mxhook postfix-config prints the commands ({ours}: the private queue directory "
           "is elsewhere) and changes nothing")

        check_system_postfix()

        proc = mxhook("postfix-config", "--postfix-dir", etc, "--apply", "--yes", "--reload")
        backups = [f for f in os.listdir(etc) if f.startswith("main.cf.mxhook-")]
        if len(backups) != 1:
            raise Failed(f"expected one main.cf backup in {etc}: {os.listdir(etc)}")
        milters = postconf(etc, "smtpd_milters")
        if not milters.startswith(f"{{ {ours}, default_action=tempfail"):
            raise Failed(f"smtpd_milters after --apply: {milters!r}")
        if "user postfix connects and the milter answers" not in proc.stdout:
            raise Failed("postfix-config --apply did not confirm that postfix reaches the socket")
        if "Reloaded Postfix" not in proc.stdout:
            raise Failed("postfix-config --apply --reload did not reload the private Postfix")
        ok(f"mxhook postfix-config --apply --yes --reload: main.cf wired (backup {backups[0]}), "
           "user postfix reaches the packaged socket, private Postfix reloaded")

        proc = mxhook("check", "--postfix-dir", etc)
        ok("mxhook check --postfix-dir: " + proc.stdout.strip().splitlines()[-1])

        mxhook("rule", "add", "package-test", "--url", f"{rx.url}/hook", "--allow-http",
               "--when", f"To~^{re.escape(ADDRESS)}$")
        time.sleep(2.5)  # the milter looks for rule changes every second (rules_reload_interval)
        ok(f"mxhook rule add package-test (url {rx.url}/hook)")

        res = None
        for attempt in range(3):  # smtpd processes from before the reload may still answer once
            res = pf.send(SENDER, [ADDRESS], make_message(to=ADDRESS, subject="package test"))
            if res.accepted:
                break
            time.sleep(1)
        if not res.accepted:
            raise Failed(f"mail to {ADDRESS} not accepted: {res}\n{pf.log_text()[-3000:]}")
        ok(f"SMTP: mail to {ADDRESS} accepted ({res.final})")

        (req,) = rx.wait_for(1, timeout=30, path="/hook")
        doc = req.json()
        if doc.get("rule") != "package-test" or doc["envelope"]["recipients"] != [ADDRESS]:
            raise Failed(f"unexpected webhook: {json.dumps(doc)[:2000]}")
        if doc["envelope"]["queue_id"] != res.queue_id or doc["message"]["subject"] != "package test":
            raise Failed(f"webhook does not describe the message sent: {json.dumps(doc)[:2000]}")
        if not req.headers.get("webhook-id"):
            raise Failed("webhook without a webhook-id header")
        ok(f"webhook arrived: POST /hook, rule package-test, queue id {res.queue_id}")

        deadline = time.monotonic() + 15
        while True:
            rows = json.loads(mxhook("log", "inbound", "--json").stdout)["items"]
            if any(r["status"] == "succeeded" and r["to"] == ADDRESS for r in rows):
                break
            if time.monotonic() > deadline:
                raise Failed(f"mxhook log inbound never showed succeeded: {rows}")
            time.sleep(0.5)
        ok("mxhook log inbound: succeeded")
        os.unlink(os.path.join(WORK, "e2e.pids"))


if __name__ == "__main__":
    try:
        run()
    except Failed as exc:
        print(f"FAIL {exc}", flush=True)
        sys.exit(1)
