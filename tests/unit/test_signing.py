"""Standard Webhooks signing, checked against an independent implementation of the spec.

`spec_sign` / `spec_verify` below are written from the spec text (standardwebhooks.com, 1.0.0,
"Signature scheme" and "Verifying signatures") with nothing but hmac/hashlib/base64; they never
call mxhook.signing. ed25519 signatures are checked with cryptography's public-key API directly.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
from datetime import datetime, timedelta, timezone

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives import serialization
from hypothesis import given, settings, strategies as st

from mxhook.delivery import signing
from mxhook.delivery.signing import SigningError, VerificationError

# The test vector published with the spec's reference libraries.
VECTOR_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
VECTOR_ID = "msg_p5jXN8AQM9LWM0D4loKWxJek"
VECTOR_TS = 1614265330
VECTOR_BODY = b'{"test": 2432232314}'
VECTOR_SIG = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="

NOW = 1_760_000_000


# --- independent implementation of the spec ---------------------------------------------------

def spec_key(secret: str) -> bytes:
    # "base64 encoded, prefixed with whsec_"
    assert secret.startswith("whsec_")
    return base64.b64decode(secret[len("whsec_"):])


def spec_sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    # content = "{msg_id}.{timestamp}.{payload}", HMAC-SHA256, base64, prefixed "v1,"
    content = msg_id.encode() + b"." + str(timestamp).encode() + b"." + body
    return "v1," + base64.b64encode(hmac.new(spec_key(secret), content, hashlib.sha256).digest()).decode()


def spec_verify(secret: str, hdrs: dict, body: bytes, now: int, tolerance: int = 300) -> bool:
    msg_id, ts, sigs = hdrs["webhook-id"], hdrs["webhook-timestamp"], hdrs["webhook-signature"]
    if abs(now - int(ts)) > tolerance:
        return False
    expected = spec_sign(secret, msg_id, int(ts), body).encode()
    # "a space delimited list of signatures ... try to verify each signature until one matches"
    return any(hmac.compare_digest(s.encode(), expected) for s in sigs.split(" ") if s.startswith("v1,"))


def spec_verify_ed25519(public_key_text: str, hdrs: dict, body: bytes) -> bool:
    raw = base64.b64decode(public_key_text[len("whpk_"):])
    pk = Ed25519PublicKey.from_public_bytes(raw)
    content = f"{hdrs['webhook-id']}.{hdrs['webhook-timestamp']}.".encode() + body
    for s in hdrs["webhook-signature"].split(" "):
        if s.startswith("v1a,"):
            try:
                pk.verify(base64.b64decode(s[4:]), content)
                return True
            except InvalidSignature:
                pass
    return False


def test_independent_implementation_reproduces_the_vector():
    assert spec_sign(VECTOR_SECRET, VECTOR_ID, VECTOR_TS, VECTOR_BODY) == VECTOR_SIG


# --- the published vector ---------------------------------------------------------------------

def test_sign_matches_the_published_vector():
    assert signing.sign([VECTOR_SECRET], VECTOR_ID, VECTOR_TS, VECTOR_BODY) == VECTOR_SIG


def test_headers_match_the_published_vector():
    h = signing.headers(VECTOR_ID, VECTOR_BODY, [VECTOR_SECRET], now=VECTOR_TS)
    assert h == {"webhook-id": VECTOR_ID, "webhook-timestamp": str(VECTOR_TS), "webhook-signature": VECTOR_SIG}


def test_reference_verifier_accepts_the_published_vector():
    hdrs = {"webhook-id": VECTOR_ID, "webhook-timestamp": str(VECTOR_TS), "webhook-signature": VECTOR_SIG}
    assert signing.verify(VECTOR_SECRET, hdrs, VECTOR_BODY, now=VECTOR_TS + 10) == VECTOR_ID


# --- our signatures verify with the independent implementation --------------------------------

def test_generated_secret_signs_verifiably():
    secret = signing.generate_secret()
    body = '{"subject":"Grüße","n":1}'.encode()
    h = signing.headers("0001a2b3c4d5e6f7-abcdef012345-orders", body, [secret], now=NOW)
    assert spec_verify(secret, h, body, now=NOW)
    assert spec_verify(secret, h, body, now=NOW + 299)


@settings(max_examples=200, deadline=None)
@given(
    body=st.binary(max_size=2048),
    msg_id=st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=80),
    timestamp=st.integers(min_value=0, max_value=2**40),
    nbytes=st.integers(min_value=24, max_value=64),
)
def test_sign_equals_independent_implementation(body, msg_id, timestamp, nbytes):
    secret = signing.generate_secret(nbytes)
    assert signing.sign([secret], msg_id, timestamp, body) == spec_sign(secret, msg_id, timestamp, body)


def test_rotation_two_signatures_both_verify():
    old, new = signing.generate_secret(), signing.generate_secret()
    body = b'{"a":1}'
    h = signing.headers("id-1", body, [new, old], now=NOW)
    parts = h["webhook-signature"].split(" ")
    assert len(parts) == 2 and all(p.startswith("v1,") for p in parts)
    assert parts == [spec_sign(new, "id-1", NOW, body), spec_sign(old, "id-1", NOW, body)]
    # a receiver holding either secret accepts the request
    assert spec_verify(old, h, body, now=NOW)
    assert spec_verify(new, h, body, now=NOW)
    assert signing.verify(old, h, body, now=NOW) == "id-1"
    assert signing.verify(new, h, body, now=NOW) == "id-1"
    # a receiver with an unrelated secret does not
    other = signing.generate_secret()
    assert not spec_verify(other, h, body, now=NOW)
    with pytest.raises(VerificationError, match="no signature"):
        signing.verify(other, h, body, now=NOW)


@pytest.mark.parametrize("change", ["body", "timestamp", "id", "signature"])
def test_tampering_fails(change):
    secret = signing.generate_secret()
    body = b'{"amount":100}'
    h = signing.headers("id-7", body, [secret], now=NOW)
    if change == "body":
        body = b'{"amount":900}'
    elif change == "timestamp":
        h["webhook-timestamp"] = str(NOW + 1)
    elif change == "id":
        h["webhook-id"] = "id-8"
    else:
        sig = h["webhook-signature"]
        h["webhook-signature"] = sig[:-3] + ("A" if sig[-3] != "A" else "B") + sig[-2:]
    assert not spec_verify(secret, h, body, now=NOW)
    with pytest.raises(VerificationError, match="no signature"):
        signing.verify(secret, h, body, now=NOW)


def test_moving_a_dot_between_id_and_body_does_not_verify():
    secret = signing.generate_secret()
    h = signing.headers("a", b"b.c", [secret], now=NOW)
    forged = dict(h, **{"webhook-id": "a.b"})
    assert not spec_verify(secret, forged, b"c", now=NOW)


def test_stale_and_future_timestamps_fail():
    secret = signing.generate_secret()
    h = signing.headers("id", b"x", [secret], now=NOW)
    assert signing.verify(secret, h, b"x", now=NOW + 300) == "id"
    assert signing.verify(secret, h, b"x", now=NOW - 300) == "id"
    with pytest.raises(VerificationError, match="too old"):
        signing.verify(secret, h, b"x", now=NOW + 301)
    with pytest.raises(VerificationError, match="future"):
        signing.verify(secret, h, b"x", now=NOW - 301)
    with pytest.raises(VerificationError, match="too old"):
        signing.verify(secret, h, b"x", now=NOW + 61, tolerance=60)


def test_verify_headers_any_case_and_missing_or_malformed():
    secret = signing.generate_secret()
    h = signing.headers("id", b"x", [secret], now=NOW)
    upper = {k.upper(): v for k, v in h.items()}
    assert signing.verify(secret, upper, b"x", now=NOW) == "id"
    for name in h:
        partial = {k: v for k, v in h.items() if k != name}
        with pytest.raises(VerificationError, match=f"missing {name}"):
            signing.verify(secret, partial, b"x", now=NOW)
    with pytest.raises(VerificationError, match="invalid webhook-timestamp"):
        signing.verify(secret, dict(h, **{"webhook-timestamp": "17e8"}), b"x", now=NOW)
    # garbage entries and unknown versions are skipped, a valid one still matches
    noisy = dict(h, **{"webhook-signature": "v2,abc garbage v1a,@@@ " + h["webhook-signature"]})
    assert signing.verify(secret, noisy, b"x", now=NOW) == "id"


def test_headers_without_keys_carry_no_signature():
    h = signing.headers("id", b"x", [], now=NOW + 0.9)
    assert h == {"webhook-id": "id", "webhook-timestamp": str(NOW)}


@pytest.mark.parametrize("bad", ["", "has space", "tab\tid", "ümlaut"])
def test_ids_must_be_header_safe(bad):
    with pytest.raises(SigningError):
        signing.headers(bad, b"x", [signing.generate_secret()], now=NOW)


def test_body_must_be_bytes():
    with pytest.raises(SigningError, match="bytes"):
        signing.sign([signing.generate_secret()], "id", NOW, "text")


# --- secrets ----------------------------------------------------------------------------------

def test_generate_secret_format():
    a, b = signing.generate_secret(), signing.generate_secret()
    assert a != b
    assert a.startswith("whsec_")
    assert len(base64.b64decode(a[6:], validate=True)) == 32
    assert len(signing.decode_secret(signing.generate_secret(24))) == 24
    with pytest.raises(SigningError):
        signing.generate_secret(16)


@pytest.mark.parametrize(
    "bad, message",
    [
        ("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "starts with 'whsec_'"),
        ("whsec_not*base64!", "not valid base64"),
        ("whsec_" + base64.b64encode(b"k" * 23).decode(), "23 bytes"),
        ("whsec_" + base64.b64encode(b"k" * 65).decode(), "65 bytes"),
        ("whsk_" + base64.b64encode(b"k" * 32).decode(), "ed25519"),
        (None, "string"),
    ],
)
def test_decode_secret_errors_are_clear(bad, message):
    with pytest.raises(SigningError, match=message) as info:
        signing.decode_secret(bad)
    if isinstance(bad, str) and len(bad) > 10:
        assert bad[6:] not in str(info.value)  # the secret is never echoed


def test_decode_secret_returns_the_key():
    assert signing.decode_secret(VECTOR_SECRET) == spec_key(VECTOR_SECRET)


# --- rotation helper --------------------------------------------------------------------------

def test_active_secrets():
    entries = [("new", None), ("old", NOW + 3600), ("retired", NOW - 1), ("edge", NOW)]
    assert signing.active_secrets(entries, NOW) == ["new", "old"]
    assert signing.active_secrets(entries, NOW + 3600) == ["new"]
    assert signing.active_secrets([("only", NOW - 5)], NOW) == []
    t = datetime(2026, 1, 1, tzinfo=timezone.utc)
    dt_entries = [("a", t + timedelta(days=1)), ("b", None), ("c", t - timedelta(seconds=1))]
    assert signing.active_secrets(dt_entries, t) == ["a", "b"]
    assert signing.active_secrets(dt_entries, t.timestamp()) == ["a", "b"]
    with pytest.raises(SigningError, match="timezone"):
        signing.active_secrets([("a", datetime(2026, 1, 1))], NOW)


# --- ed25519 (v1a) ----------------------------------------------------------------------------

def test_ed25519_keypair_format():
    private, public = signing.generate_ed25519_keypair()
    assert private.startswith("whsk_") and public.startswith("whpk_")
    assert len(base64.b64decode(private[5:])) == 32
    raw_public = base64.b64decode(public[5:])
    assert len(raw_public) == 32
    derived = Ed25519PrivateKey.from_private_bytes(base64.b64decode(private[5:])).public_key()
    assert derived.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw) == raw_public
    assert signing.public_key_for(private) == public


def test_ed25519_signature_verifies_with_cryptography_directly():
    private, public = signing.generate_ed25519_keypair()
    body = b'{"event":"bounced"}'
    h = signing.headers("evt-1", body, ed25519_keys=[private], now=NOW)
    entries = h["webhook-signature"].split(" ")
    assert len(entries) == 1 and entries[0].startswith("v1a,")
    pk = Ed25519PublicKey.from_public_bytes(base64.b64decode(public[5:]))
    pk.verify(base64.b64decode(entries[0][4:]), b"evt-1." + str(NOW).encode() + b"." + body)  # no raise
    with pytest.raises(InvalidSignature):
        pk.verify(base64.b64decode(entries[0][4:]), b"evt-1." + str(NOW).encode() + b".tampered")
    assert spec_verify_ed25519(public, h, body)
    assert not spec_verify_ed25519(public, h, body + b" ")
    # our reference verifier with the public key
    assert signing.verify(public, h, body, now=NOW) == "evt-1"
    with pytest.raises(VerificationError):
        signing.verify(signing.generate_ed25519_keypair()[1], h, body, now=NOW)


def test_hmac_and_ed25519_together():
    secret = signing.generate_secret()
    private, public = signing.generate_ed25519_keypair()
    h = signing.headers("id", b"x", [secret], ed25519_keys=[private], now=NOW)
    v1, v1a = h["webhook-signature"].split(" ")
    assert v1.startswith("v1,") and v1a.startswith("v1a,")
    assert spec_verify(secret, h, b"x", now=NOW)
    assert spec_verify_ed25519(public, h, b"x")
    assert signing.verify([public], h, b"x", now=NOW) == "id"


def test_ed25519_64_byte_private_form_accepted_and_checked():
    key = Ed25519PrivateKey.generate()
    seed = key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption())
    pub = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    long_form = "whsk_" + base64.b64encode(seed + pub).decode()
    sig = signing.sign_ed25519([long_form], "id", NOW, b"x")
    key.public_key().verify(base64.b64decode(sig[4:]), f"id.{NOW}.x".encode())
    wrong = "whsk_" + base64.b64encode(seed + bytes(32)).decode()
    with pytest.raises(SigningError, match="does not belong"):
        signing.sign_ed25519([wrong], "id", NOW, b"x")


@pytest.mark.parametrize(
    "bad, loader, message",
    [
        ("whpk_" + base64.b64encode(b"a" * 31).decode(), signing.load_ed25519_public_key, "31 bytes"),
        ("whsk_" + base64.b64encode(b"a" * 33).decode(), signing.load_ed25519_private_key, "33 bytes"),
        ("whsec_" + base64.b64encode(b"a" * 32).decode(), signing.load_ed25519_private_key, "whsk_"),
        ("whpk_!!", signing.load_ed25519_public_key, "base64"),
    ],
)
def test_ed25519_key_errors(bad, loader, message):
    with pytest.raises(SigningError, match=message):
        loader(bad)


# --- KeySet: what one attempt signs with -----------------------------------------------------

def test_keyset_never_shows_a_key():
    secret = signing.generate_secret()
    private, _ = signing.generate_ed25519_keypair()
    ks = signing.KeySet((secret,), (private,))
    assert bool(ks) and not signing.KeySet()
    for text in (repr(ks), str(ks), f"{ks}", repr([ks])):
        assert secret not in text and private not in text
        assert secret[len("whsec_"):] not in text and private[len("whsk_"):] not in text
    assert repr(ks) == "KeySet(<1 secret(s)>, <1 ed25519 key(s)>)"


def test_rotation_overlap_then_expiry_with_an_independent_verifier():
    """The spooler's path: active_secrets at attempt time -> headers. During the overlap two v1
    signatures (each verifies with its own secret), after the overlap one."""
    old, new = signing.generate_secret(), signing.generate_secret()
    entries = [(old, NOW + 3600), (new, None)]
    body = b'{"rotation": true}'
    during = signing.headers("d-9", body, signing.active_secrets(entries, NOW), now=NOW)
    assert len(during["webhook-signature"].split(" ")) == 2
    assert spec_verify(old, during, body, now=NOW) and spec_verify(new, during, body, now=NOW)
    after_t = NOW + 3601
    after = signing.headers("d-9", body, signing.active_secrets(entries, after_t), now=after_t)
    assert after["webhook-signature"] == spec_sign(new, "d-9", after_t, body)
    assert not spec_verify(old, after, body, now=after_t)
    assert after["webhook-id"] == during["webhook-id"] == "d-9"  # stable across attempts
