"""mxhook.mailauth: SPF, DKIM, DMARC and ARC verdicts against messages signed here with keys
published in a test zone (offline: StaticResolver, and a real UDP server on 127.0.0.1 for the
dnspython resolver); upstream Authentication-Results and their trust; the DNS budget."""
from __future__ import annotations

import time

import authres
import pytest

from mxhook import config
from mxhook.mailauth import resolvers
from mxhook.mailauth import verify as verify_module
from mxhook.mailauth.authenticate import AuthSettings, authenticate, dmarc_rejection
from mxhook.mailauth.upstream import upstream_results, verdicts_from_upstream
from mxhook.mailauth.verdicts import Verdicts
from mxhook.mailauth.verify import organizational_domain, verify
from tests.support.dns_server import DnsServer, Key, arc_seal, publish, sign

GOOD_IP = "192.0.2.10"
OTHER_IP = "198.51.100.7"


def message(sender: str = "alice@sender.example", body: str = "Hello there") -> bytes:
    return (f"From: Alice <{sender}>\r\nTo: support@ours.example\r\nSubject: hello\r\n"
            f"Date: Thu, 03 Dec 2026 19:00:00 +0000\r\nMessage-ID: <1@sender.example>\r\n\r\n"
            f"{body}\r\n").encode()


@pytest.fixture(scope="module")
def keys():
    return {"rsa": Key("rsa"), "ed25519": Key("ed25519"), "other": Key("rsa")}


@pytest.fixture(scope="module")
def zone(keys):
    z = {
        ("sender.example", "TXT"): ["v=spf1 ip4:192.0.2.10 -all"],
        ("bounce.sender.example", "TXT"): ["v=spf1 ip4:192.0.2.10 -all"],
        ("soft.example", "TXT"): ["v=spf1 ip4:192.0.2.10 ~all"],
        ("mx.sender.example", "TXT"): ["v=spf1 a -all"],
        ("mx.sender.example", "A"): [GOOD_IP],
        ("mxrec.example", "TXT"): ["v=spf1 mx -all"],
        ("mxrec.example", "MX"): [(10, "mx.sender.example")],
        ("_dmarc.sender.example", "TXT"): ["v=DMARC1; p=reject; sp=quarantine; pct=100"],
        ("strict.example", "TXT"): ["v=spf1 ip4:192.0.2.10 -all"],
        ("mail.strict.example", "TXT"): ["v=spf1 ip4:192.0.2.10 -all"],
        ("_dmarc.strict.example", "TXT"): ["v=DMARC1; p=reject; aspf=s; adkim=s"],
        ("_dmarc.half.example", "TXT"): ["v=DMARC1; p=reject; pct=50"],
        ("half.example", "TXT"): ["v=spf1 -all"],
        ("nodmarc.example", "TXT"): ["v=spf1 ip4:192.0.2.10 -all"],
        ("_dmarc.twice.example", "TXT"): ["v=DMARC1; p=reject", "v=DMARC1; p=none"],
    }
    publish(z, keys["rsa"], "s1", "sender.example")
    publish(z, keys["ed25519"], "e1", "sender.example")
    publish(z, keys["other"], "o1", "other.example")
    publish(z, keys["rsa"], "s1", "strict.example")
    publish(z, keys["rsa"], "s1", "mail.strict.example")
    return z


class FailingResolver(resolvers.StaticResolver):
    """The zone, except that names in `failing` time out."""

    def __init__(self, records, failing=()):
        super().__init__(records)
        self.failing = set(failing)

    def lookup(self, name, rdtype, timeout):
        if name.rstrip(".").lower() in self.failing:
            raise resolvers.DnsTempError(f"{name}: timed out")
        return super().lookup(name, rdtype, timeout)


def run(msg, zone, *, ip=GOOD_IP, mail_from="alice@sender.example", helo="mx.sender.example",
        failing=(), **kw):
    return verify(msg, client_ip=ip, helo=helo, mail_from=mail_from,
                  dns=FailingResolver(zone, failing), authserv_id="mx.ours.example", **kw)


# ---------------------------------------------------------------------------------------------
# SPF

@pytest.mark.parametrize("ip, mail_from, expected", [
    (GOOD_IP, "alice@sender.example", "pass"),
    (OTHER_IP, "alice@sender.example", "fail"),
    (OTHER_IP, "bob@soft.example", "softfail"),
    (GOOD_IP, "bob@nospf.example", "none"),
    (GOOD_IP, "bob@mxrec.example", "pass"),
    (OTHER_IP, "bob@mxrec.example", "fail"),
])
def test_spf_results(zone, ip, mail_from, expected):
    v = run(message(), zone, ip=ip, mail_from=mail_from)
    assert (v.spf.result, v.spf.identity, v.spf.client_ip) == (expected, "mailfrom", ip)
    assert v.spf.domain == mail_from.partition("@")[2]


def test_spf_temperror_when_the_record_cannot_be_looked_up(zone):
    v = run(message(), zone, failing={"sender.example"})
    assert v.spf.result == "temperror" and "timed out" in v.spf.reason


def test_spf_checks_helo_when_mail_from_is_null(zone):
    v = run(message(), zone, mail_from="<>", helo="mx.sender.example")
    assert (v.spf.result, v.spf.identity, v.spf.domain) == ("pass", "helo", "mx.sender.example")
    assert run(message(), zone, mail_from="", ip=OTHER_IP).spf.result == "fail"


def test_spf_of_a_mail_from_without_at_is_that_domain(zone):
    v = run(message(), zone, mail_from="mx.sender.example", helo="other.example")
    assert (v.spf.result, v.spf.identity, v.spf.domain) == ("pass", "mailfrom", "mx.sender.example")


def test_check_spf_alone_gives_the_verdict_verify_takes(zone):
    early = verify_module.check_spf(client_ip=OTHER_IP, helo="h", mail_from="a@sender.example",
                                    lookups=resolvers.Budget(resolvers.StaticResolver(zone)))
    assert early.result == "fail"
    v = run(message(), zone, ip=OTHER_IP, helo="h", mail_from="a@sender.example")
    assert v.spf == early and v.dmarc.result == "fail"


def test_spf_none_without_client_address(zone):
    assert run(message(), zone, ip="").spf.result == "none"


def test_the_spf_hook_asks_the_budget_only_inside_verify():
    seen = []
    hook = verify_module._spf_dns_lookup(lambda *a: seen.append(a) or [])
    budget = resolvers.Budget(resolvers.StaticResolver({("a.example", "TXT"): ["v=spf1 -all"]}))
    assert hook("a.example", "TXT", True, 5) == [] and seen == [("a.example", "TXT", True, 5)]
    with verify_module._spf_lookups(budget):
        assert hook("a.example", "TXT", True, 5) == [(("a.example", "TXT"), [b"v=spf1 -all"])]
    assert len(seen) == 1 and budget.lookups == 1


# ---------------------------------------------------------------------------------------------
# DKIM

def test_dkim_pass_rsa_and_ed25519(zone, keys):
    msg = sign(sign(message(), keys["rsa"], "s1", "sender.example"),
               keys["ed25519"], "e1", "sender.example")
    v = run(msg, zone)
    assert [(d.result, d.domain, d.selector, d.algorithm) for d in v.dkim] == [
        ("pass", "sender.example", "e1", "ed25519-sha256"),
        ("pass", "sender.example", "s1", "rsa-sha256"),
    ]


def test_dkim_pass_with_a_2048_bit_key():
    key = Key("rsa", 2048)
    z = {}
    publish(z, key, "big", "sender.example")
    v = run(sign(message(), key, "big", "sender.example"), z)
    assert [d.result for d in v.dkim] == ["pass"]


def test_dkim_fail_when_the_body_was_altered(zone, keys):
    msg = sign(message(), keys["rsa"], "s1", "sender.example").replace(b"Hello there", b"Hello thera")
    (d,) = run(msg, zone).dkim
    assert (d.result, d.domain, d.selector) == ("fail", "sender.example", "s1")
    assert "body hash mismatch" in d.reason


def test_dkim_fail_when_a_signed_header_was_altered(zone, keys):
    msg = sign(message(), keys["rsa"], "s1", "sender.example").replace(b"Subject: hello",
                                                                       b"Subject: hellO")
    assert [d.result for d in run(msg, zone).dkim] == ["fail"]


def test_dkim_none_without_a_signature(zone):
    v = run(message(), zone)
    assert v.dkim == () and v.conditions()["dkim"] == "none"


def test_dkim_temperror_and_permerror_for_the_key(zone, keys):
    msg = sign(message(), keys["rsa"], "s1", "sender.example")
    (d,) = run(msg, zone, failing={"s1._domainkey.sender.example"}).dkim
    assert d.result == "temperror"
    (d,) = run(sign(message(), keys["rsa"], "gone", "sender.example"), zone).dkim
    assert (d.result, d.selector) == ("permerror", "gone") and "no key" in d.reason


def test_dkim_a_signature_by_the_wrong_key_fails(zone, keys):
    # signed with "other"'s key but claiming sender.example's selector s1
    (d,) = run(sign(message(), keys["other"], "s1", "sender.example"), zone).dkim
    assert d.result == "fail"


def test_the_dkim_condition_is_the_best_signature(zone, keys):
    good = sign(message(), keys["rsa"], "s1", "sender.example")
    v = run(sign(good, keys["other"], "nokey", "sender.example"), zone)
    assert [d.result for d in v.dkim] == ["permerror", "pass"]  # topmost first
    assert v.conditions()["dkim"] == "pass"
    v = run(sign(good, keys["other"], "nokey", "sender.example").replace(b"Hello there", b"Hi"),
            zone)
    assert [d.result for d in v.dkim] == ["permerror", "fail"]
    assert v.conditions()["dkim"] == "fail"
    v = run(sign(good, keys["other"], "o1", "other.example"), zone)
    assert [d.result for d in v.dkim] == ["pass", "pass"]


def test_a_signature_that_cannot_be_processed_is_neutral(zone):
    msg = b"DKIM-Signature: v=1; a=rsa-sha256; d=sender.example\r\n" + message()
    (d,) = run(msg, zone).dkim
    assert (d.result, d.domain) == ("neutral", "sender.example") and "missing" in d.reason
    (d,) = run(b"DKIM-Signature: v=1; junk\r\n" + message(), zone).dkim
    assert d.result == "neutral"


# ---------------------------------------------------------------------------------------------
# DMARC

def test_dmarc_pass_by_aligned_dkim_although_spf_fails(zone, keys):
    v = run(sign(message(), keys["rsa"], "s1", "sender.example"), zone, ip=OTHER_IP)
    assert (v.spf.result, v.dmarc.result, v.dmarc.policy) == ("fail", "pass", "reject")
    assert (v.dmarc.alignment.spf, v.dmarc.alignment.dkim) == (False, True)
    assert dmarc_rejection(v) is None


def test_dmarc_pass_by_relaxed_spf_alignment_of_a_subdomain(zone):
    v = run(message(), zone, mail_from="bounces@bounce.sender.example")
    assert (v.spf.result, v.dmarc.result) == ("pass", "pass")
    assert v.dmarc.alignment.as_dict() == {"spf": True, "dkim": False, "spf_mode": "relaxed",
                                           "dkim_mode": "relaxed"}


def test_dmarc_fail_with_p_reject_and_the_rejection_text(zone, keys):
    v = run(sign(message(), keys["other"], "o1", "other.example"), zone, ip=OTHER_IP)
    assert [d.result for d in v.dkim] == ["pass"]  # a valid signature, of another domain
    assert (v.dmarc.result, v.dmarc.domain, v.dmarc.policy, v.dmarc.pct) == (
        "fail", "sender.example", "reject", 100)
    assert v.conditions()["dmarc"] == "fail" and v.conditions()["dmarc_policy"] == "reject"
    assert "DMARC policy of sender.example rejects" in dmarc_rejection(v)


def test_dmarc_strict_alignment_refuses_a_subdomain(zone, keys):
    msg = message("bob@strict.example")
    relaxed_only = run(sign(msg, keys["rsa"], "s1", "mail.strict.example"), zone,
                       mail_from="b@mail.strict.example")
    assert (relaxed_only.spf.result, [d.result for d in relaxed_only.dkim]) == ("pass", ["pass"])
    assert relaxed_only.dmarc.result == "fail"
    assert (relaxed_only.dmarc.alignment.spf_mode, relaxed_only.dmarc.alignment.dkim_mode) == (
        "strict", "strict")
    exact = run(sign(msg, keys["rsa"], "s1", "strict.example"), zone, mail_from="b@strict.example")
    assert exact.dmarc.result == "pass" and exact.dmarc.alignment.spf and exact.dmarc.alignment.dkim


def test_dmarc_of_a_subdomain_uses_the_org_record_and_its_sp(zone):
    v = run(message("news@mail.sender.example"), zone, ip=OTHER_IP)
    assert (v.dmarc.result, v.dmarc.domain, v.dmarc.record_domain) == (
        "fail", "mail.sender.example", "sender.example")
    assert (v.dmarc.p, v.dmarc.sp, v.dmarc.policy) == ("reject", "quarantine", "quarantine")
    assert dmarc_rejection(v) is None


def test_dmarc_none_without_a_record_or_with_two(zone):
    v = run(message("bob@nodmarc.example"), zone, mail_from="bob@nodmarc.example")
    assert (v.dmarc.result, v.dmarc.policy) == ("none", "")
    assert run(message("bob@twice.example"), zone).dmarc.result == "none"
    assert run(b"To: x@ours.example\r\n\r\nno from\r\n", zone).dmarc.result == "none"


def test_dmarc_temperror_when_the_record_or_an_aligned_check_cannot_be_had(zone, keys):
    v = run(message(), zone, failing={"_dmarc.sender.example"})
    assert v.dmarc.result == "temperror"
    msg = sign(message(), keys["rsa"], "s1", "sender.example")
    v = run(msg, zone, ip=OTHER_IP, failing={"s1._domainkey.sender.example"})
    assert (v.spf.result, v.dmarc.result) == ("fail", "temperror")
    assert dmarc_rejection(v) is None  # never refuse on a DNS failure


def test_dmarc_pct_samples_the_rejection(zone):
    v = run(message("a@half.example"), zone, mail_from="a@half.example")
    assert (v.dmarc.result, v.dmarc.pct) == ("fail", 50)
    assert dmarc_rejection(v, sample=lambda: 0.2) is not None
    assert dmarc_rejection(v, sample=lambda: 0.7) is None


def test_dmarc_reads_hyphenated_domains_whole(keys):
    z = {("_dmarc.my-shop.example", "TXT"): ["v=DMARC1; p=reject"]}
    publish(z, keys["rsa"], "s1", "my-shop.example")
    v = run(sign(message("a@my-shop.example"), keys["rsa"], "s1", "my-shop.example"), z,
            mail_from="a@my-shop.example")
    assert (v.dmarc.domain, v.dmarc.result) == ("my-shop.example", "pass")


def test_dmarc_with_several_from_domains_reports_the_worst(zone, keys):
    # a valid aligned signature for the first domain does not cover the second
    two = message().replace(b"From: Alice <alice@sender.example>",
                            b"From: alice@sender.example, mallory@strict.example")
    v = run(sign(two, keys["rsa"], "s1", "sender.example"), zone, ip=OTHER_IP)
    assert (v.dmarc.result, v.dmarc.domain) == ("fail", "strict.example")


def test_organizational_domain_from_the_public_suffix_list():
    assert organizational_domain("a.b.example.co.uk") == "example.co.uk"
    assert organizational_domain("mail.sender.example") == "sender.example"


# ---------------------------------------------------------------------------------------------
# ARC

def test_arc_none_pass_and_fail(zone, keys):
    assert run(message(), zone).arc.result == "none"
    signed = sign(message(), keys["rsa"], "s1", "sender.example")
    sealed = arc_seal(signed, keys["rsa"], "s1", "sender.example", "mx.sender.example",
                      "spf=pass smtp.mailfrom=sender.example; dkim=pass header.d=sender.example")
    assert run(sealed, zone).arc.result == "pass"
    broken = sealed.replace(b"Hello there", b"Hello thera")
    assert run(broken, zone).arc.result == "fail"
    assert run(sealed, zone, failing={"s1._domainkey.sender.example"}).arc.result == "temperror"


# ---------------------------------------------------------------------------------------------
# Budget and robustness

class SlowResolver:
    """Every lookup waits for its whole timeout, as an unreachable server would."""

    def __init__(self):
        self.calls = 0

    def lookup(self, name, rdtype, timeout):
        self.calls += 1
        time.sleep(timeout)
        raise resolvers.DnsTempError(f"{name}: timed out after {timeout:.2f} s")


def test_the_dns_budget_bounds_a_message_and_makes_temperror(keys):
    slow = SlowResolver()
    msg = sign(message(), keys["rsa"], "s1", "sender.example")
    start = time.monotonic()
    v = verify(msg, client_ip=GOOD_IP, helo="mx.sender.example", mail_from="a@sender.example",
               dns=slow, budget=0.3, timeout=0.2)
    elapsed = time.monotonic() - start
    assert elapsed < 1.0, elapsed
    assert (v.spf.result, [d.result for d in v.dkim], v.dmarc.result) == (
        "temperror", ["temperror"], "temperror")
    assert slow.calls <= 3


def test_budget_on_an_injected_clock():
    now = [0.0]
    static = resolvers.StaticResolver({("a.example", "TXT"): ["x"]})

    class Ticking:
        def lookup(self, name, rdtype, timeout):
            now[0] += 3.0
            return static.lookup(name, rdtype, timeout)

    budget = resolvers.Budget(Ticking(), seconds=5.0, timeout=2.0, clock=lambda: now[0])
    assert budget.txt("a.example") == [b"x"]
    assert budget.txt("A.example.") == [b"x"]  # cached: no time spent
    budget.txt("b.example")  # 6 s now: spent
    with pytest.raises(resolvers.DnsTempError, match="budget"):
        budget.txt("c.example")
    assert budget.lookups == 2


def test_a_resolver_that_crashes_is_a_temperror(keys):
    class Broken:
        def lookup(self, name, rdtype, timeout):
            raise RuntimeError("boom")

    v = verify(sign(message(), keys["rsa"], "s1", "sender.example"), client_ip=GOOD_IP,
               helo="x", mail_from="a@sender.example", dns=Broken())
    assert (v.spf.result, v.dkim[0].result, v.dmarc.result) == ("temperror", "temperror",
                                                                "temperror")


@pytest.mark.parametrize("junk", [b"", b"\x00\xff garbage", b"DKIM-Signature: \r\n\r\n",
                                  b"From: <>\r\nARC-Seal: i=1; cv=none\r\n\r\nx",
                                  b"From: a@\xff\xfe.example\r\n\r\n"])
def test_verify_never_raises(zone, junk):
    v = run(junk, zone, ip="not an ip")
    assert isinstance(v, Verdicts)


# ---------------------------------------------------------------------------------------------
# The views: payload, rule conditions, Authentication-Results

def test_payload_conditions_and_header(zone, keys):
    msg = sign(message(), keys["rsa"], "s1", "sender.example")
    v = run(msg, zone)
    d = v.as_dict()
    assert d["source"] == "mxhook" and d["authserv_id"] == "mx.ours.example"
    assert d["spf"] == {"result": "pass", "domain": "sender.example", "identity": "mailfrom",
                        "client_ip": GOOD_IP, "reason": "sender SPF authorized"}
    assert d["dkim"] == [{"result": "pass", "domain": "sender.example", "selector": "s1",
                          "algorithm": "rsa-sha256", "reason": ""}]
    assert d["dmarc"]["result"] == "pass" and d["dmarc"]["alignment"]["dkim"] is True
    assert d["arc"] == {"result": "none", "reason": ""} and d["upstream"] == []
    assert v.conditions() == {"spf": "pass", "dkim": "pass", "dmarc": "pass",
                              "dmarc_policy": "reject", "arc": "none"}
    value = v.header_value()
    assert value == ("mx.ours.example; spf=pass smtp.mailfrom=sender.example; "
                     "dkim=pass header.d=sender.example header.a=rsa-sha256 header.s=s1; "
                     "dmarc=pass header.from=sender.example policy.dmarc=reject")
    parsed = authres.AuthenticationResultsHeader.parse_value(value)
    assert [(r.method, r.result) for r in parsed.results] == [
        ("spf", "pass"), ("dkim", "pass"), ("dmarc", "pass")]
    assert Verdicts().header_value("mx.ours.example") == "mx.ours.example; none"


# ---------------------------------------------------------------------------------------------
# Upstream Authentication-Results

UPSTREAM = ("border.ours.example; spf=pass smtp.mailfrom=alice@sender.example; "
            "dkim=pass header.d=sender.example header.s=s1; dmarc=pass header.from=sender.example "
            "policy.dmarc=reject; arc=none")
FORGED = "mx.ours.example; spf=pass smtp.mailfrom=paypal.example; dmarc=pass header.from=paypal.example"


def test_upstream_results_mark_what_is_trusted():
    headers = [("Received", "from x"), ("Authentication-Results", FORGED),
               ("authentication-results", UPSTREAM),
               ("Authentication-Results", "this is not (an A-R")]
    found = upstream_results(headers, ["Border.Ours.Example"])
    assert [(u.authserv_id, u.trusted) for u in found] == [
        ("mx.ours.example", False), ("border.ours.example", True), ("this", False)]
    assert found[2].error
    assert found[1].results[0] == ("spf", "pass", (("smtp.mailfrom", "alice@sender.example"),))
    v = verdicts_from_upstream(found)
    assert (v.source, v.authserv_id) == ("upstream", "border.ours.example")
    assert v.conditions() == {"spf": "pass", "dkim": "pass", "dmarc": "pass",
                              "dmarc_policy": "reject", "arc": "none"}
    assert v.spf.domain == "sender.example" and v.dkim[0].selector == "s1"
    assert [u["trusted"] for u in v.as_dict()["upstream"]] == [False, True, False]


def test_an_untrusted_header_never_gives_a_verdict():
    found = upstream_results([("Authentication-Results", FORGED)], ["border.ours.example"])
    v = verdicts_from_upstream(found)
    assert v.conditions()["dmarc"] == "none" and v.conditions()["spf"] == "none"
    assert v.upstream[0].trusted is False


def settings(**values) -> AuthSettings:
    return AuthSettings.from_config(config.from_dict({"authentication": values}))


def test_authenticate_by_mode(zone, keys):
    msg = (f"Authentication-Results: {FORGED}\r\n").encode() + sign(
        message(), keys["rsa"], "s1", "sender.example")
    common = dict(client_ip=OTHER_IP, helo="x", mail_from="a@sender.example",
                  dns=resolvers.StaticResolver(zone))
    assert authenticate(msg, settings(), **common) is None  # off by default
    v = authenticate(msg, settings(mode="verify", authserv_id="mx.ours.example"), **common)
    assert (v.source, v.spf.result, v.dmarc.result) == ("mxhook", "fail", "pass")
    # the sender's header claiming our own authserv-id is reported, untrusted
    assert [(u.authserv_id, u.trusted) for u in v.upstream] == [("mx.ours.example", False)]
    up = authenticate(b"Authentication-Results: " + UPSTREAM.encode() + b"\r\n" + msg,
                      settings(mode="upstream", trusted_authserv_ids="border.ours.example"),
                      **common)
    assert (up.source, up.spf.result, len(up.upstream)) == ("upstream", "pass", 2)


def test_settings_and_their_checks():
    s = settings(mode="verify", nameservers="127.0.0.1:5353, 2001:db8::53, [::1]:53",
                 trusted_authserv_ids="Border.Example")
    assert s.authserv_id  # this host's name when empty
    assert s.trusted_authserv_ids == ("border.example",)
    assert s.nameservers == ("127.0.0.1:5353", "2001:db8::53", "[::1]:53")
    assert (s.dns_timeout, s.dns_budget, s.dmarc_reject) == (2.0, 5.0, False)
    with pytest.raises(config.ConfigError, match="nameservers"):
        settings(nameservers="dns.example")
    with pytest.raises(config.ConfigError, match="mode"):
        settings(mode="on")


# ---------------------------------------------------------------------------------------------
# The dnspython resolver against a real server

def test_dnspython_resolver_against_the_test_server_gives_the_same_verdicts(zone, keys):
    msgs = [sign(sign(message(), keys["rsa"], "s1", "sender.example"),
                 keys["ed25519"], "e1", "sender.example"),
            sign(message(), keys["other"], "o1", "other.example"),
            message("news@mail.sender.example"),
            arc_seal(sign(message(), keys["rsa"], "s1", "sender.example"), keys["rsa"], "s1",
                     "sender.example", "mx.sender.example", "spf=pass smtp.mailfrom=sender.example")]
    with DnsServer(zone, servfail={"s1._domainkey.strict.example"}) as server:
        resolver = resolvers.DnsPythonResolver((server.nameserver,))
        for msg in msgs:
            for ip, mail_from in ((GOOD_IP, "a@sender.example"), (OTHER_IP, "b@mxrec.example")):
                static = verify(msg, client_ip=ip, helo="h", mail_from=mail_from,
                                dns=resolvers.StaticResolver(zone))
                real = verify(msg, client_ip=ip, helo="h", mail_from=mail_from, dns=resolver)
                assert real == static
        with pytest.raises(resolvers.DnsTempError):
            resolver.lookup("s1._domainkey.strict.example", "TXT", 1.0)
        assert resolver.lookup("nothing.example", "TXT", 1.0) == []
        assert resolver.lookup("mxrec.example", "MX", 1.0) == [(10, "mx.sender.example")]
        assert resolver.lookup("mx.sender.example", "A", 1.0) == [GOOD_IP]
        assert server.queries > 0


def test_dnspython_resolver_times_out_on_a_silent_server(keys):
    with DnsServer({}, silent={"sender.example", "s1._domainkey.sender.example",
                               "_dmarc.sender.example"}) as server:
        resolver = resolvers.DnsPythonResolver((server.nameserver,))
        start = time.monotonic()
        v = verify(sign(message(), keys["rsa"], "s1", "sender.example"), client_ip=GOOD_IP,
                   helo="h", mail_from="a@sender.example", dns=resolver, budget=0.6, timeout=0.25)
        assert time.monotonic() - start < 1.5
        assert (v.spf.result, v.dkim[0].result, v.dmarc.result) == (
            "temperror", "temperror", "temperror")


def test_no_system_resolver_is_a_temperror_not_a_crash(monkeypatch, keys):
    import dns.resolver

    real = dns.resolver.Resolver

    def no_conf(configure=True):
        if configure:
            raise dns.resolver.NoResolverConfiguration("no nameservers")
        return real(configure=False)

    monkeypatch.setattr(dns.resolver, "Resolver", no_conf)
    v = authenticate(sign(message(), keys["rsa"], "s1", "sender.example"), settings(mode="verify"),
                     client_ip=GOOD_IP, helo="h", mail_from="a@sender.example")
    assert (v.spf.result, v.dkim[0].result, v.dmarc.result) == ("temperror", "temperror",
                                                                "temperror")
    assert "no system resolver" in v.spf.reason


def test_concurrent_messages_each_ask_their_own_resolver():
    """The milter verifies on several threads at once: pyspf's one module-level hook must hand
    each message's lookups to that message's resolver."""
    from concurrent.futures import ThreadPoolExecutor

    class Slowish(resolvers.StaticResolver):
        def lookup(self, name, rdtype, timeout):
            time.sleep(0.002)
            return super().lookup(name, rdtype, timeout)

    allow = Slowish({("sender.example", "TXT"): ["v=spf1 ip4:192.0.2.10 -all"]})
    deny = Slowish({("sender.example", "TXT"): ["v=spf1 -all"]})

    def spf_of(resolver):
        return verify(message(), client_ip=GOOD_IP, helo="h", mail_from="a@sender.example",
                      dns=resolver).spf.result

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(spf_of, [allow, deny] * 40))
    assert results == ["pass", "fail"] * 40
