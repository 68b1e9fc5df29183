"""What message authentication costs the milter per message, without the network: `verify()`
(SPF, DKIM, DMARC, ARC) against an in-memory resolver, beside `model.message.normalize` (the
payload's MIME parse) of the same message in the same run, so the ratio carries over between
machines. DNS round trips are not in it: with a real resolver each message adds its lookups'
latency (3 for the signed message below: the SPF record, the DKIM key, _dmarc), bounded by
`[authentication] dns_budget`.

    python3 bench/authn.py [--messages 300] [--repeat 5] [--bits 2048] [--json out.json]

Scenarios (each a message of about 3 KB, From sender.example, MAIL FROM of the same domain):

  signed      one rsa-sha256 DKIM signature (--bits), SPF pass, DMARC p=reject pass
  two-sigs    the same plus an ed25519-sha256 signature
  arc         the signed message ARC-sealed by one earlier hop (arc=pass)
  unsigned    no signature: SPF pass, DMARC pass by SPF alignment
  budget      SPF, the key and _dmarc time out (each lookup fails at once): the temperror path

Prints µs per message (best of --repeat runs of --messages messages) and the ratio to the
parse; the PSL is read before timing (the milter reads it once, at its first message).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(ROOT, "milter"))
sys.path.insert(0, ROOT)

from mxhook.mailauth import resolvers  # noqa: E402
from mxhook.mailauth.verify import organizational_domain, verify  # noqa: E402
from mxhook.model.message import normalize  # noqa: E402
from tests.support.dns_server import Key, arc_seal, publish, sign  # noqa: E402

BODY = ("Hello,\r\n\r\nThe order 4711 has shipped. " + "Tracking and details follow. " * 80
        + "\r\n\r\n-- \r\nAlice\r\n")


def message() -> bytes:
    return ("From: Alice Example <alice@sender.example>\r\nTo: support@ours.example\r\n"
            "Subject: Your order 4711 has shipped\r\nDate: Thu, 03 Dec 2026 19:00:00 +0000\r\n"
            "Message-ID: <4711.1@sender.example>\r\nMIME-Version: 1.0\r\n"
            "Content-Type: text/plain; charset=utf-8\r\n\r\n" + BODY).encode()


class Failing:
    def lookup(self, name, rdtype, timeout):
        raise resolvers.DnsTempError(f"{name}: timed out")


def scenarios(bits: int) -> dict[str, tuple[bytes, object]]:
    rsa, ed = Key("rsa", bits), Key("ed25519")
    zone = {("sender.example", "TXT"): ["v=spf1 ip4:192.0.2.10 -all"],
            ("_dmarc.sender.example", "TXT"): ["v=DMARC1; p=reject"]}
    publish(zone, rsa, "s1", "sender.example")
    publish(zone, ed, "e1", "sender.example")
    static = resolvers.StaticResolver(zone)
    signed = sign(message(), rsa, "s1", "sender.example")
    return {
        "signed": (signed, static),
        "two-sigs": (sign(signed, ed, "e1", "sender.example"), static),
        "arc": (arc_seal(signed, rsa, "s1", "sender.example", "mx.sender.example",
                         "spf=pass smtp.mailfrom=sender.example"), static),
        "unsigned": (message(), static),
        "budget": (signed, Failing()),
    }


def per_message(fn, n: int, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        for _ in range(n):
            fn()
        best = min(best, (time.perf_counter() - start) / n)
    return best * 1e6


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--messages", type=int, default=300)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--bits", type=int, default=2048)
    ap.add_argument("--json")
    args = ap.parse_args(argv)

    organizational_domain("sender.example")  # the PSL, read once
    cases = scenarios(args.bits)
    check = verify(cases["signed"][0], client_ip="192.0.2.10", helo="mx.sender.example",
                   mail_from="alice@sender.example", dns=cases["signed"][1]).conditions()
    assert check["dkim"] == check["spf"] == check["dmarc"] == "pass", check

    parse_us = per_message(lambda: normalize(cases["signed"][0]), args.messages, args.repeat)
    results = {"parse_us": round(parse_us, 1), "python": platform.python_version(),
               "bits": args.bits, "scenarios": {}}
    print(f"message parse (model.message.normalize, {len(cases['signed'][0])} bytes): "
          f"{parse_us:8.1f} µs/message")
    for name, (msg, resolver) in cases.items():
        us = per_message(lambda: verify(msg, client_ip="192.0.2.10", helo="mx.sender.example",
                                        mail_from="alice@sender.example", dns=resolver),
                         args.messages, args.repeat)
        results["scenarios"][name] = {"verify_us": round(us, 1), "ratio": round(us / parse_us, 2)}
        print(f"verify {name:<9}: {us:8.1f} µs/message  = {us / parse_us:5.2f} x the parse")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(results, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
