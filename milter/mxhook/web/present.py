"""What the API shows of the services' answers: secrets are write-only. The services mask a
secret for the CLI's eyes (`****` and its last four characters, the user name of Basic auth);
the API shows only that one is set (`****`), so no part of a secret ever leaves the host over
HTTP. Signing keys: their public half (ed25519) only."""
from __future__ import annotations

SECRET_KEYS = frozenset({"bearer", "api_key", "signing_key", "secret", "password", "token"})
SET = "****"


def _basic(value: str) -> str:
    user, _, _ = value.partition(":")
    return f"{user}:{SET}"


def redacted(data):
    """`data` (JSON-able) with every secret's value replaced by "****" (None stays None)."""
    if isinstance(data, dict):
        out = {}
        for key, value in data.items():
            if value is not None and key in SECRET_KEYS:
                out[key] = SET
            elif value is not None and key == "basic_auth" and isinstance(value, str):
                out[key] = _basic(value)
            else:
                out[key] = redacted(value)
        return out
    if isinstance(data, (list, tuple)):
        return [redacted(v) for v in data]
    return data
