"""Log lines per second parsed and correlated by postfix/maillog.py (target >= 50,000/s), against
baselines in the same run, plus the follower end to end (file -> durable spool).

    python3 bench/logfollow.py [--lines 200000] [--rounds 3] [--spool-lines 20000] [--json out.json]

The synthetic log is what a busy outbound relay writes: per message an smtpd connect/client/
disconnect, cleanup message-id, qmgr from=, one to three delivery lines (85% sent, 8% deferred
with a connection error or a 4xx, 5% bounced with a multi-line Gmail-style reply, 2% to a local
mailbox), qmgr removed; a few TLS and warning lines; traditional and RFC 3339 time stamps,
short and long queue ids.

Measured (best of --rounds, lines/s over the whole log):
  split      `line.split()` per line           - the cost of touching every line in Python
  head-re    the header regex alone            - the floor of any regex-based parser
  parse      maillog.parse_line
  parse+corr parse_line + Correlator.feed (events built, ids hashed) - the figure for the target
And once, with --spool-lines lines: the follower reading a file and writing every event to a
spool with fsync (durable=True), lines/s and events/s; this is disk-bound, not CPU-bound.

Prints figures and ratios; it does not pass or fail.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(ROOT, "milter"))

from mxhook import config  # noqa: E402
from mxhook.daemons import logfollow
from mxhook.postfix import maillog

LONG_ALPHABET = "0123456789BCDFGHJKLMNPQRSTVWXYZbcdfghjklmnpqrstvwxy"
GMAIL_550 = ("host gmail-smtp-in.l.google.com[142.250.102.27] said: 550-5.1.1 The email account that "
             "you tried to reach does not exist. Please try 550-5.1.1 double-checking the recipient's "
             "email address for typos or 550-5.1.1 unnecessary spaces. For more information, go to "
             "550 5.1.1  https://support.google.com/mail/?p=NoSuchUser a640c23a62f3a-a9a3f.513 - gsmtp "
             "(in reply to RCPT TO command)")


def synthetic_log(n_lines: int, seed: int = 42) -> list[str]:
    rnd = random.Random(seed)
    out: list[str] = []
    t0 = 1_795_348_800  # 2026-11-22T12:00:00Z
    i = 0
    while len(out) < n_lines:
        i += 1
        t = t0 + i // 20
        if i % 2:
            ts = time.strftime("%b %d %H:%M:%S", time.gmtime(t)).replace(" 0", "  ", 1)
            qid = f"{rnd.getrandbits(40):010X}"
        else:
            ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{rnd.randrange(10**6):06d}+00:00"
            qid = "".join(rnd.choice(LONG_ALPHABET) for _ in range(10)) + "z" + "".join(
                rnd.choice(LONG_ALPHABET) for _ in range(4))
        h = f"{ts} mail.example.org"
        pid = 1000 + i % 500
        out.append(f"{h} postfix/submission/smtpd[{pid}]: connect from app{i % 7}.example.org[198.51.100.{i % 250}]")
        out.append(f"{h} postfix/submission/smtpd[{pid}]: {qid}: client=app{i % 7}.example.org[198.51.100.{i % 250}], "
                   f"sasl_method=PLAIN, sasl_username=app{i % 7}@example.org")
        out.append(f"{h} postfix/cleanup[{pid + 1}]: {qid}: message-id=<{i}.{rnd.getrandbits(32):x}@example.org>")
        out.append(f"{h} postfix/submission/smtpd[{pid}]: disconnect from app{i % 7}.example.org[198.51.100.{i % 250}] "
                   f"ehlo=2 starttls=1 auth=1 mail=1 rcpt=1 data=1 quit=1 commands=8")
        nrcpt = rnd.choice((1, 1, 1, 2, 3))
        out.append(f"{h} postfix/qmgr[900]: {qid}: from=<app{i % 7}@example.org>, size={rnd.randrange(900, 90000)}, "
                   f"nrcpt={nrcpt} (queue active)")
        if rnd.random() < 0.3:
            out.append(f"{h} postfix/smtp[{pid + 2}]: Trusted TLS connection established to mx.dest{i % 50}.example"
                       f"[192.0.2.{i % 250}]:25: TLSv1.3 with cipher TLS_AES_256_GCM_SHA384 (256/256 bits)")
        all_final = True
        for r in range(nrcpt):
            rcpt = f"user{i}.{r}@dest{i % 50}.example"
            relay = f"mx.dest{i % 50}.example[192.0.2.{i % 250}]:25"
            x = rnd.random()
            if x < 0.85:
                tail = f"dsn=2.0.0, status=sent (250 2.0.0 Ok: queued as {rnd.getrandbits(40):010X})"
            elif x < 0.89:
                tail = (f"dsn=4.4.1, status=deferred (connect to mx.dest{i % 50}.example[192.0.2.{i % 250}]:25: "
                        f"Connection timed out)")
                relay, all_final = "none", False
            elif x < 0.93:
                tail = (f"dsn=4.2.0, status=deferred (host {relay[:-3]} said: 450 4.2.0 <{rcpt}>: Recipient "
                        f"address rejected: Greylisted (in reply to RCPT TO command))")
                all_final = False
            elif x < 0.98:
                tail = f"dsn=5.1.1, status=bounced ({GMAIL_550})"
            else:
                relay, tail = "local", "dsn=2.0.0, status=sent (delivered to mailbox)"
            out.append(f"{h} postfix/smtp[{pid + 2}]: {qid}: to=<{rcpt}>, relay={relay}, delay=0.{rnd.randrange(99)}, "
                       f"delays=0.01/0/0.1/0.2, {tail}")
        if all_final:
            out.append(f"{h} postfix/qmgr[900]: {qid}: removed")
        if rnd.random() < 0.05:
            out.append(f"{h} postfix/smtpd[{pid}]: warning: hostname x{i}.example does not resolve to address 203.0.113.{i % 250}")
    return out[:n_lines]


def best_rate(fn, lines, rounds: int) -> tuple[float, object]:
    best = 0.0
    result = None
    for _ in range(rounds):
        t = time.perf_counter()
        result = fn(lines)
        dt = time.perf_counter() - t
        best = max(best, len(lines) / dt)
    return best, result


def run_split(lines):
    n = 0
    for line in lines:
        n += len(line.split())
    return n


def run_head(lines):
    m = maillog._HEAD.match
    return sum(1 for line in lines if m(line))


def run_parse(lines):
    parse = maillog.parse_line
    return sum(1 for line in lines if parse(line) is not None)


def run_parse_correlate(lines):
    parse = maillog.parse_line
    c = maillog.Correlator()
    feed = c.feed
    n = 0
    for i, line in enumerate(lines):
        p = parse(line)
        if p is not None:
            n += len(feed(p, f"f:1:{i}"))
    return n


def run_follower(lines: list[str]) -> dict:
    tmp = tempfile.mkdtemp(prefix="mxhook-bench-logfollow-")
    try:
        log_path = os.path.join(tmp, "mail.log")
        with open(log_path, "w") as fh:
            fh.write("\n".join(lines) + "\n")
        cfg = config.from_dict({"paths": {"spool_dir": os.path.join(tmp, "spool")},
                                "logfollow": {"path": log_path, "state_file": os.path.join(tmp, "pos"),
                                              "start_at": "beginning", "batch_lines": "1000"}})
        follower = logfollow.Follower(logfollow.LogfollowSettings.from_config(cfg), follow=False)
        t = time.perf_counter()
        follower.run()
        dt = time.perf_counter() - t
        return {"lines": len(lines), "events": follower.stats["events"], "seconds": dt,
                "lines_per_s": len(lines) / dt, "events_per_s": follower.stats["events"] / dt}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--lines", type=int, default=200_000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--spool-lines", type=int, default=20_000, help="0 skips the end-to-end run")
    ap.add_argument("--json", help="also write the figures here")
    args = ap.parse_args()

    import logging
    logging.basicConfig(level=logging.WARNING)
    t = time.perf_counter()
    lines = synthetic_log(args.lines)
    gen = time.perf_counter() - t
    deliveries = sum(1 for line in lines if ": to=<" in line)
    print(f"mxhook bench/logfollow  python {platform.python_version()}  {platform.machine()}  "
          f"load {os.getloadavg()[0]:.2f}")
    print(f"synthetic log: {len(lines):,} lines ({deliveries:,} delivery lines), generated in {gen:.1f}s")

    figures = {}
    for name, fn in (("split", run_split), ("head-re", run_head), ("parse", run_parse),
                     ("parse+corr", run_parse_correlate)):
        rate, result = best_rate(fn, lines, args.rounds)
        figures[name] = rate
        extra = f"  ({result:,} events)" if name == "parse+corr" else ""
        print(f"  {name:<11} {rate:>12,.0f} lines/s{extra}")
    pc = figures["parse+corr"]
    print(f"ratios: parse+corr / split = {pc / figures['split']:.2f}, "
          f"parse+corr / head-re = {pc / figures['head-re']:.2f}, "
          f"parse+corr / target 50,000 = {pc / 50_000:.2f}")
    out = {"lines": len(lines), "rates": figures}
    if args.spool_lines:
        r = run_follower(lines[: args.spool_lines])
        out["follower"] = r
        print(f"follower, file -> spool (fsync per event file, one dir fsync per chunk): {r['lines']:,} lines, {r['events']:,} events "
              f"in {r['seconds']:.2f}s = {r['lines_per_s']:,.0f} lines/s, {r['events_per_s']:,.0f} events/s")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(out, fh, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
