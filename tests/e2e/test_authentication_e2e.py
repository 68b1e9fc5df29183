"""Authentication verdicts end to end (issue 17): the private Postfix, the real milter daemon
with `[authentication] mode = verify` asking tests/support/dns_server.py (`nameservers`), the
spooler and the receiver. Messages are DKIM-signed here with keys published in that server:
pass, fail (altered after signing), none (unsigned, no records), temperror (the key's name
answered with SERVFAIL, or not at all within the budget); a rule on `dmarc` routing; and
`dmarc_reject` refusing at the SMTP client."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from tests.support.dns_server import DnsServer, Key, publish, sign

pytestmark = pytest.mark.e2e

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
OTHER_CLIENT = "127.0.0.2"  # not in the SPF records below: SPF fails from here
DNS_TIMEOUT, DNS_BUDGET = 0.5, 1.5


@pytest.fixture(scope="module")
def key():
    return Key("rsa")


@pytest.fixture(scope="module")
def dns_server(key):
    zone = {
        ("sender.example", "TXT"): ["v=spf1 ip4:127.0.0.1 -all"],
        ("_dmarc.sender.example", "TXT"): ["v=DMARC1; p=reject"],
        ("slow.example", "TXT"): ["v=spf1 ip4:127.0.0.1 -all"],
        ("broken.example", "TXT"): ["v=spf1 ip4:127.0.0.1 -all"],
    }
    publish(zone, key, "s1", "sender.example")
    with DnsServer(zone, servfail=["s1._domainkey.broken.example"],
                   silent=["s1._domainkey.slow.example"]) as server:
        yield server


def auth_config(server: DnsServer, **extra) -> dict:
    return {"authentication": {"mode": "verify", "authserv_id": "mx.ours.example",
                               "nameservers": server.nameserver, "dns_timeout": str(DNS_TIMEOUT),
                               "dns_budget": str(DNS_BUDGET), **extra}}


def message(sender: str, to: str = "support@ours.example", subject: str = "hello") -> bytes:
    return (f"From: Alice <{sender}>\r\nTo: {to}\r\nSubject: {subject}\r\n"
            f"Date: Thu, 03 Dec 2026 19:00:00 +0000\r\nMessage-ID: <{subject}@e2e.example>\r\n"
            f"\r\nHello from {sender}\r\n").encode()


def signed(key: Key, domain: str, subject: str) -> bytes:
    return sign(message(f"alice@{domain}", subject=subject), key, "s1", domain)


def test_verdicts_pass_fail_none_temperror_and_a_dmarc_rule(make_stack, dns_server, key):
    st = make_stack(config=auth_config(dns_server))
    st.add_rule("suspect", "/suspect", "--when", r"To~^support@", "--when", "dmarc~^fail$",
                "--priority", "1")
    st.add_rule("support", "/hook", "--when", r"To~^support@", "--priority", "2")
    st.wait_milter_snapshot()
    rcpt = ["support@ours.example"]

    res = st.send("alice@sender.example", rcpt, signed(key, "sender.example", "pass"))
    assert res.accepted, res
    altered = signed(key, "sender.example", "fail").replace(b"Hello from", b"Hello, changed, from")
    res = st.send("alice@sender.example", rcpt, altered, source_address=OTHER_CLIENT)
    assert res.accepted, res
    res = st.send("bob@unsigned.example", rcpt, message("bob@unsigned.example", subject="none"))
    assert res.accepted, res
    res = st.send("alice@broken.example", rcpt, signed(key, "broken.example", "servfail"))
    assert res.accepted, res
    started = time.monotonic()
    res = st.send("alice@slow.example", rcpt, signed(key, "slow.example", "silent"))
    waited = time.monotonic() - started
    assert res.accepted, res
    assert waited < DNS_BUDGET + 3, waited  # the session waits at most the budget (+ the rest)

    hooked = {r.json()["message"]["subject"]: r.json() for r in st.receiver.wait_for(4, timeout=20, path="/hook")}
    (suspect,) = st.receiver.wait_for(1, timeout=20, path="/suspect")
    suspect = suspect.json()

    auth = hooked["pass"]["authentication"]
    assert (auth["source"], auth["authserv_id"]) == ("mxhook", "mx.ours.example")
    assert (auth["spf"]["result"], auth["spf"]["client_ip"]) == ("pass", "127.0.0.1")
    assert [(d["result"], d["domain"], d["selector"]) for d in auth["dkim"]] == [("pass", "sender.example", "s1")]
    assert (auth["dmarc"]["result"], auth["dmarc"]["policy"]) == ("pass", "reject")

    assert suspect["message"]["subject"] == "fail" and suspect["rule"] == "suspect"
    auth = suspect["authentication"]
    assert (auth["spf"]["result"], auth["dkim"][0]["result"], auth["dmarc"]["result"]) == ("fail", "fail", "fail")

    auth = hooked["none"]["authentication"]
    assert (auth["spf"]["result"], auth["dkim"], auth["dmarc"]["result"]) == ("none", [], "none")

    for subject in ("servfail", "silent"):
        auth = hooked[subject]["authentication"]
        assert auth["dkim"][0]["result"] == "temperror", (subject, auth)
        assert auth["spf"]["result"] == "pass"


def test_dmarc_reject_refuses_at_the_smtp_client(make_stack, dns_server, key):
    st = make_stack(config=auth_config(dns_server, dmarc_reject="yes"))
    st.add_rule("sales", "/hook", "--when", r"To~^sales@")
    st.wait_milter_snapshot()
    forged = message("alice@sender.example", to="sales@ours.example", subject="forged")
    res = st.send("alice@sender.example", ["sales@ours.example"], forged, source_address=OTHER_CLIENT)
    assert not res.accepted and res.stage == "DATA", res
    assert res.final.code == 550 and "5.7.1" in res.final.message
    assert "DMARC policy of sender.example rejects this message" in res.final.message
    # the same message from the address SPF names passes DMARC and is posted
    ok = message("alice@sender.example", to="sales@ours.example", subject="genuine")
    res = st.send("alice@sender.example", ["sales@ours.example"], ok)
    assert res.accepted, res
    (req,) = st.receiver.wait_for(1, timeout=20, path="/hook")
    assert req.json()["message"]["subject"] == "genuine"
    rows = st.wait_status(lambda rows: any(r.get("filterName") == "dmarc_reject" for r in rows))
    (denied,) = [r for r in rows if r.get("filterName") == "dmarc_reject"]
    assert denied["status"] == "denied" and "DMARC policy of sender.example" in denied["reason"]


def test_the_bench_runs(tmp_path):
    """bench/milter_authentication.py stays usable (a few messages, both parts)."""
    out = tmp_path / "auth.json"
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "bench", "milter_authentication.py"),
                           "--messages", "5", "--rounds", "1", "--postfix", "3", "--json", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    figures = json.loads(out.read_text())
    assert figures["spooled"] == 15 and figures["dmarc_results"] == ["pass"]
    assert figures["udp_queries_per_message"] == 3.0
    assert set(figures["postfix"]) == {"off", "verify"}
