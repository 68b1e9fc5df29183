"""Signed webhooks end to end: real mail through a private Postfix, the real milter and spooler,
and a receiver that verifies `webhook-signature` with the secret `mxhook rule add` printed once.

The verifier here is written from the Standard Webhooks spec (standardwebhooks.com, 1.0.0)
with hmac/hashlib/base64 and cryptography's ed25519 public-key API only; it never imports
mxhook.signing, so a bug shared by signer and verifier cannot hide.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import time

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from tests.support.postfix import make_message
from tests.support.receiver import Response

pytestmark = pytest.mark.e2e

SENDER = "alice@sender.example"
RCPT = "support@ours.example"
TOLERANCE = 300  # the spec's replay window


# --- an independent verifier -----------------------------------------------------------------

def spec_signature(secret: str, msg_id: str, timestamp: str, body: bytes) -> str:
    """'v1,' + base64(HMAC-SHA256(base64decode(secret without 'whsec_'), id.timestamp.body))."""
    assert secret.startswith("whsec_")
    key = base64.b64decode(secret[len("whsec_"):])
    content = msg_id.encode() + b"." + timestamp.encode() + b"." + body
    return "v1," + base64.b64encode(hmac.new(key, content, hashlib.sha256).digest()).decode()


def signatures(req) -> list[str]:
    return req.headers["webhook-signature"].split(" ")


def v1_verifies(secret: str, req) -> bool:
    msg_id, ts = req.headers["webhook-id"], req.headers["webhook-timestamp"]
    assert ts.isdigit() and abs(time.time() - int(ts)) <= TOLERANCE, ts
    expected = spec_signature(secret, msg_id, ts, req.body).encode()
    return any(hmac.compare_digest(s.encode(), expected) for s in signatures(req) if s.startswith("v1,"))


def v1a_verifies(public_key: str, req) -> bool:
    assert public_key.startswith("whpk_")
    pk = Ed25519PublicKey.from_public_bytes(base64.b64decode(public_key[len("whpk_"):]))
    content = f"{req.headers['webhook-id']}.{req.headers['webhook-timestamp']}.".encode() + req.body
    for s in signatures(req):
        if s.startswith("v1a,"):
            try:
                pk.verify(base64.b64decode(s[len("v1a,"):]), content)
                return True
            except InvalidSignature:
                pass
    return False


def printed(out: str, label: str) -> str:
    (line,) = [line for line in out.splitlines() if line.startswith(label)]
    return line[len(label):].strip()


SECRET = "Signing secret (shown once, store it now): "
NEW_SECRET = "New signing secret (shown once, store it now): "
PUBLIC = "Ed25519 public key (for v1a signatures; `show` prints it again): "


def send(st, n: int):
    res = st.send(SENDER, [RCPT], make_message(to=RCPT, subject=f"signed {n}", text=f"message {n}\n"))
    assert res.accepted, res
    return res


# --- the test ----------------------------------------------------------------------------------

def test_signatures_verify_and_rotation_overlaps_through_real_mail(mxhook_stack):
    st = mxhook_stack
    # mail 1: 200; mail 2: 503 (Retry-After 3 s, time to rotate) then 200; then 200
    st.receiver.script("/signed", [(200, {}, b"ok"), Response(503, {"Retry-After": "3"}, b"busy"),
                                   (200, {}, b"ok")])
    shown_once = []  # the outputs that are meant to print a secret
    res = st.cli("rule", "add", "signed", "--url", st.endpoint("/signed"), "--allow-http",
                 "--when", r"To~^support@ours\.example$", "--ed25519")
    shown_once.append(res.stdout)
    old = printed(res.stdout, SECRET)
    public = printed(res.stdout, PUBLIC)
    assert old.startswith("whsec_") and public.startswith("whpk_")
    st.wait_milter_snapshot()

    # 1. one v1 and one v1a signature; each verifies, a wrong secret does not
    send(st, 1)
    (first,) = st.receiver.wait_for(1, timeout=20, path="/signed")
    assert first.headers["webhook-id"] == first.json()["id"]
    assert [s.split(",")[0] for s in signatures(first)] == ["v1", "v1a"]
    assert v1_verifies(old, first) and v1a_verifies(public, first)
    assert not v1_verifies("whsec_" + base64.b64encode(b"x" * 32).decode(), first)

    # 2. the first attempt of mail 2 is refused; the secret is rotated before the retry
    send(st, 2)
    attempt1 = st.receiver.wait_for(2, timeout=20, path="/signed")[1]
    assert len(signatures(attempt1)) == 2 and v1_verifies(old, attempt1)
    res = st.cli("rule", "rotate-secret", "signed", "--overlap", "1h")
    shown_once.append(res.stdout)
    new = printed(res.stdout, NEW_SECRET)
    assert new != old
    attempt2 = st.receiver.wait_for(3, timeout=20, path="/signed")[2]
    assert attempt2.headers["webhook-id"] == attempt1.headers["webhook-id"]  # the same delivery
    v1 = [s for s in signatures(attempt2) if s.startswith("v1,")]
    msg_id, ts = attempt2.headers["webhook-id"], attempt2.headers["webhook-timestamp"]
    assert sorted(v1) == sorted([spec_signature(old, msg_id, ts, attempt2.body),
                                 spec_signature(new, msg_id, ts, attempt2.body)])
    assert v1_verifies(old, attempt2) and v1_verifies(new, attempt2) and v1a_verifies(public, attempt2)

    # 3. a new delivery during the overlap: both secrets verify too
    send(st, 3)
    third = st.receiver.wait_for(4, timeout=20, path="/signed")[3]
    assert len([s for s in signatures(third) if s.startswith("v1,")]) == 2
    assert v1_verifies(old, third) and v1_verifies(new, third)

    # 4. ending the overlap (rotate with --overlap 0): only the newest secret signs
    res = st.cli("rule", "rotate-secret", "signed", "--overlap", "0")
    shown_once.append(res.stdout)
    newest = printed(res.stdout, NEW_SECRET)
    send(st, 4)
    fourth = st.receiver.wait_for(5, timeout=20, path="/signed")[4]
    assert [s.split(",")[0] for s in signatures(fourth)] == ["v1", "v1a"]
    assert v1_verifies(newest, fourth) and not v1_verifies(new, fourth) and not v1_verifies(old, fourth)
    st.wait_status(lambda rows: len([r for r in rows if r["status"] == "succeeded"]) == 4)

    # 5. the secrets never show up anywhere else: CLI outputs (tables, --json, CSV) and the
    #    daemons' logs
    private = _private_keys(st)
    leaks = []
    for args in (("rule", "show", "signed"), ("rule", "show", "signed", "--json"), ("rule", "list"),
                 ("rule", "list", "--json"), ("log", "inbound"), ("log", "inbound", "--json"),
                 ("log", "inbound", "--csv"), ("log", "events", "--csv")):
        out = st.cli(*args)
        leaks.append(out.stdout + out.stderr)
    leaks += [st.spooler.stderr_text(), st.milter.stderr_text()]
    assert public in leaks[0]  # the public key may be shown
    for secret in (old, new, newest, *private):
        body = secret.split("_", 1)[1]
        for text in leaks:
            assert body not in text
        assert sum(body in out for out in shown_once) <= 1  # printed once, when it was made
    for key in private:
        assert all(key.split("_", 1)[1] not in out for out in shown_once)


def _private_keys(st) -> list[str]:
    import sqlite3

    conn = sqlite3.connect(st.cfg.rules_db)
    try:
        return [k for (k,) in conn.execute("SELECT secret FROM signing_keys WHERE scheme = 'v1a'")]
    finally:
        conn.close()
