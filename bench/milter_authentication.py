"""What `[authentication] mode = verify` adds to the milter's time per message, against mode
off in the same run.

In-process: the milter adapter (daemons/milter.py `MxhookMilter`) driven through its callbacks
by tests/milter/driver.py, as libmilter drives it, with a real rules.db (one catch-all rule) and
spool (group fdatasync). Per message: MAIL FROM .. end of message, the message spooled. Three
configurations, interleaved for several rounds:

  off     [authentication] mode = off
  static  mode = verify, lookups answered from memory (resolvers.StaticResolver): the
          libraries' own cost (pyspf, dkimpy, authheaders, the PSL)
  udp     mode = verify, lookups over UDP to tests/support/dns_server.py on 127.0.0.1 through
          dnspython (as `nameservers = 127.0.0.1:PORT`): the libraries plus real DNS round
          trips to a resolver on the same host (a local unbound with a warm cache is this case)

The message: ~3 KB, DKIM-signed with a 2048-bit RSA key, SPF (ip4) and DMARC (p=reject) pass:
3 lookups. Prints the median per-message time of each and the ratios to `off`.

With `--postfix N`, also through the private Postfix (tests/support/postfix.py) and the real
milter and spooler daemons: two stacks, mode off and mode verify over UDP to the test DNS
server, N messages each sent one at a time (smtplib, connect .. 250 after the dot),
interleaved; the median and 90th percentile of the whole SMTP transaction each.

    python3 bench/milter_authentication.py [--messages 300] [--rounds 5] [--postfix 200] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "milter"))

from mxhook import config, spool  # noqa: E402
from mxhook.daemons.milter import MilterSettings, Wiring  # noqa: E402
from mxhook.mailauth import verify  # noqa: E402
from mxhook.mailauth.authenticate import AuthSettings  # noqa: E402
from mxhook.mailauth.resolvers import StaticResolver  # noqa: E402
from mxhook.model.message import header_section  # noqa: E402
from mxhook.model.rules import Rule, parse_condition  # noqa: E402
from mxhook.model.targets import Destination  # noqa: E402
from mxhook.store.rulesdb import BlocklistReader, RulesStore, SnapshotWatcher  # noqa: E402
from tests.milter.driver import Connection  # noqa: E402
from tests.support.dns_server import DnsServer, Key, publish, sign  # noqa: E402

CLIENT = ("192.0.2.10", "mail.sender.example")
CONFIGS = ("off", "static", "udp")


def the_message(key: Key) -> tuple[list, bytes]:
    body = "".join(f"Line {i} of a message of about three kilobytes, as a reply would be.\r\n"
                   for i in range(40))
    raw = ("From: Alice <alice@sender.example>\r\nTo: support@ours.example\r\nSubject: bench\r\n"
           "Date: Thu, 03 Dec 2026 19:00:00 +0000\r\nMessage-ID: <b@sender.example>\r\n"
           f"Content-Type: text/plain; charset=utf-8\r\n\r\n{body}").encode()
    raw = sign(raw, key, "s1", "sender.example")
    fields, body_at, _ = header_section(raw)
    return fields, raw[body_at:]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=300, help="per configuration and round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--postfix", type=int, default=0, metavar="N",
                        help="also N messages per mode through the private Postfix")
    parser.add_argument("--json", help="write the figures here")
    args = parser.parse_args()

    key = Key("rsa", bits=2048)
    zone = {("sender.example", "TXT"): ["v=spf1 ip4:192.0.2.10 -all"],
            ("_dmarc.sender.example", "TXT"): ["v=DMARC1; p=reject"]}
    publish(zone, key, "s1", "sender.example")
    fields, body = the_message(key)
    work = tempfile.mkdtemp(prefix="mxhook-bench-auth-")
    db = os.path.join(work, "rules.db")
    store = RulesStore(db)
    store.add_domain("ours.example")
    store.add_rule(Rule(name="all", destination=Destination("http://127.0.0.1:9/", allow_http=True),
                        conditions=(parse_condition("To~@ours\\.example$"),)))
    spool_dir = os.path.join(work, "spool")
    spool.ensure_dirs(spool_dir)
    watcher = SnapshotWatcher(db, interval=60)
    segments = spool.SegmentWriter(spool_dir)
    verify.organizational_domain("mxhook.invalid")  # the milter reads the PSL at start-up

    with DnsServer(zone) as server:
        wirings = {}
        for name in CONFIGS:
            cfg = config.from_dict({"paths": {"spool_dir": spool_dir},
                                    "milter": {"discard_via": "transport"},
                                    "authentication": {
                                        "mode": "off" if name == "off" else "verify",
                                        "authserv_id": "mx.ours.example",
                                        "nameservers": server.nameserver}})
            auth = AuthSettings.from_config(cfg)
            if name == "static":
                auth._resolver = StaticResolver(zone)
            wirings[name] = Wiring(MilterSettings.from_config(cfg), snapshot=lambda: watcher.current,
                                   blocklist=BlocklistReader(db), segments=segments, auth=auth)
        per_message: dict[str, list[float]] = {name: [] for name in CONFIGS}
        lookups_before = server.queries
        for _round in range(args.rounds):
            for name in CONFIGS:
                conn = Connection(wirings[name], client=CLIENT, helo="mail.sender.example")
                started = time.perf_counter()
                for i in range(args.messages):
                    stage, _rc = conn.send(["<support@ours.example>"], fields, body=body,
                                           queue_id=f"Q{i}")
                    assert stage == "eom", stage
                per_message[name].append((time.perf_counter() - started) / args.messages)
        udp_lookups = (server.queries - lookups_before) / (args.rounds * args.messages)
    watcher.stop()
    segments.close()
    records = [r for p in spool.pending(spool_dir) for r in spool.read_all(p)]
    verdicts = {r.meta["authentication"]["dmarc"]["result"] for r in records if "authentication" in r.meta}

    medians = {name: statistics.median(values) for name, values in per_message.items()}
    figures = {"messages_per_round": args.messages, "rounds": args.rounds,
               "median_ms": {n: round(v * 1000, 3) for n, v in medians.items()},
               "ratio_to_off": {n: round(v / medians["off"], 2) for n, v in medians.items()},
               "added_ms": {n: round((v - medians["off"]) * 1000, 3) for n, v in medians.items()},
               "udp_queries_per_message": round(udp_lookups, 2),
               "spooled": len(records), "dmarc_results": sorted(verdicts),
               "cpus": os.cpu_count(), "load": os.getloadavg()[0]}
    for name in CONFIGS:
        print(f"{name:7} {figures['median_ms'][name]:8.3f} ms/message  x{figures['ratio_to_off'][name]:.2f}"
              f"  (+{figures['added_ms'][name]:.3f} ms)")
    print(f"udp: {figures['udp_queries_per_message']} DNS queries per message; spooled "
          f"{len(records)}, DMARC results {figures['dmarc_results']}; load {figures['load']:.1f}")
    if args.postfix:
        figures["postfix"] = through_postfix(args.postfix, key, zone)
        for name, f in figures["postfix"].items():
            print(f"postfix {name:7} p50 {f['p50_ms']:7.2f} ms  p90 {f['p90_ms']:7.2f} ms per SMTP transaction")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(figures, f, indent=2)
    return 0


def through_postfix(count: int, key: Key, zone: dict) -> dict:
    """Median and p90 SMTP transaction time, mode off and verify, interleaved (one stack each)."""
    from tests.support.daemons import MxhookStack
    from tests.support.postfix import make_message

    zone = {**zone, ("sender.example", "TXT"): ["v=spf1 ip4:127.0.0.1 -all"]}
    times: dict[str, list[float]] = {"off": [], "verify": []}
    with DnsServer(zone) as server:
        stacks = {}
        try:
            for name in times:
                auth = {"mode": name, "authserv_id": "mx.ours.example", "nameservers": server.nameserver}
                stacks[name] = st = MxhookStack(permit=("ours.example",),
                                                config={"authentication": auth}).start()
                st.add_rule("all", "/hook", "--when", r"To~@ours\.example$")
                st.wait_milter_snapshot()
            raw = sign(make_message(from_="Alice <alice@sender.example>", to="support@ours.example",
                                    subject="bench", size=3000), key, "s1", "sender.example")
            for i in range(count):
                for name, st in stacks.items():
                    started = time.perf_counter()
                    res = st.send("alice@sender.example", ["support@ours.example"], raw)
                    times[name].append(time.perf_counter() - started)
                    assert res.accepted, res
        finally:
            for st in stacks.values():
                st.stop()
    out = {}
    for name, values in times.items():
        values.sort()
        out[name] = {"p50_ms": round(statistics.median(values) * 1000, 2),
                     "p90_ms": round(values[int(len(values) * 0.9) - 1] * 1000, 2)}
    return out


if __name__ == "__main__":
    sys.exit(main())
