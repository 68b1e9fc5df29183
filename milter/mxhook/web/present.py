"""What the API and the console show of the services' answers: secrets are write-only (the
services mask a secret for the CLI's eyes, `****` and its last four characters, the user name
of Basic auth; over HTTP only that one is set shows, `****`, so no part of a secret ever leaves
the host; signing keys: their public half, ed25519, only); logs as streamed CSV downloads."""
from __future__ import annotations

from typing import Iterable

from flask import Response

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


def csv_download(chunks: Iterable[str], filename: str) -> Response:
    """A streamed CSV download (services.logs.csv_chunks) named `filename`."""
    return Response(chunks, mimetype="text/csv",
                    headers={"Content-Disposition": f'attachment; filename="{filename}"'})
