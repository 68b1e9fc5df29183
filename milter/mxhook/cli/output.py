"""How the commands print: JSON, tables, times, and the pieces of rules and endpoints that
`show` and `add` print alike."""
from __future__ import annotations

import json
import re

import click

from mxhook.model.retry import EXPONENTIAL
from mxhook.services.targets import mask_basic, mask_secret


def emit_json(data) -> None:
    click.echo(json.dumps(data, indent=2, ensure_ascii=False))


def table(headers: list[str], rows: list[list], *, max_width: int = 60) -> None:
    def cell(v) -> str:
        if v is None:
            return ""
        if isinstance(v, bool):
            return "yes" if v else "no"
        s = printable(" ".join(str(v).split()))  # one line per row
        return s if len(s) <= max_width else s[: max_width - 1] + "…"

    cells = [[cell(v) for v in row] for row in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]
    line = lambda vals: "  ".join(v.ljust(w) for v, w in zip(vals, widths)).rstrip()  # noqa: E731
    click.echo(line(headers))
    click.echo(line(["-" * w for w in widths]))
    for r in cells:
        click.echo(line(r))


_CONTROL_CHARS = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def printable(text: str) -> str:
    """Text from mail (subjects, reasons) without control characters: an escape sequence in a
    Subject must not drive the admin's terminal."""
    return _CONTROL_CHARS.sub("\ufffd", text)


def short_time(value: str | None) -> str | None:
    """'2026-11-22T12:00:00.123456Z' -> '2026-11-22 12:00:00Z' for tables."""
    if value and len(value) >= 19 and value[10] == "T":
        return value[:10] + " " + value[11:19] + "Z"
    return value


def yes_no(v: bool) -> str:
    return "yes" if v else "no"


def fields(rows) -> None:
    """'key:            value' lines, as `show` prints them."""
    for key, value in rows:
        click.echo(f"{key + ':':16}{value}")


def destination_rows(dest) -> list[tuple[str, str]]:
    """How `show` lists a rule's or endpoint's destination: secrets masked."""
    return [("url", dest.url), ("dialect", dest.dialect), ("format", dest.format),
            ("auth", auth_summary(dest)),
            ("retry interval", f"{dest.retry_interval} s"),
            ("retry period", f"{dest.retry_period} days"), ("retry backoff", backoff_summary(dest)),
            ("timeout", f"{dest.timeout} s"),
            ("allow http", yes_no(dest.allow_http))]


def backoff_summary(dest) -> str:
    """'fixed', or 'exponential up to 3600 s'."""
    if dest.retry_backoff == EXPONENTIAL:
        return f"exponential up to {dest.retry_cap} s"
    return dest.retry_backoff


def body_summary(dest) -> str:
    """What an added rule's or endpoint's bodies are: the native format, the dialect, or the
    template version."""
    if dest.template is not None:
        return f"template version {dest.template}"
    return dest.format if dest.dialect == "native" else f"{dest.dialect} dialect"


def auth_summary(target) -> str:
    parts = []
    if target.basic_auth is not None:
        parts.append(f"basic {mask_basic(target.basic_auth)}")
    if target.bearer is not None:
        parts.append(f"bearer {mask_secret(target.bearer)}")
    if target.api_key is not None:
        parts.append(f"api key {mask_secret(target.api_key)}")
    if target.signing_key is not None:
        parts.append(f"signing key {mask_secret(target.signing_key)}")
    return ", ".join(parts) or "none"


def print_template(view: dict | None, *, source: bool = False) -> None:
    """How `show` describes the owner's template (services.targets.template_view): the
    current version, the stored ones, and the current source with `source`."""
    current = view["current"] if view else None
    if current is None:
        click.echo(f"{'template:':16}none")
    else:
        click.echo(f"{'template:':16}version {current.version} ({current.content_type}, "
                   f"digest {current.digest}, since {current.created})")
    if view:
        click.echo(f"{'':16}stored versions: {', '.join(str(t.version) for t in view['versions'])}")
    if source and current is not None:
        click.echo("template source:")
        click.echo(current.source.rstrip("\n"))



def signing_lines(keys: list) -> list[str]:
    """How `show` lists signing keys: masked secrets, public keys in full, expiry."""
    out = []
    for k in keys:
        what = f"v1  {k.masked_secret}" if k.scheme == "v1" else f"v1a ed25519 public key {k.public_key}"
        when = f"rotated out, signs until {k.expires}" if k.expires else f"since {k.created}"
        out.append(f"{what} ({when})")
    return out or ["none (requests are not signed)"]


def print_signing(keys: list | None) -> None:
    if keys is None:
        return
    for i, line in enumerate(signing_lines(keys)):
        click.echo(f"{'signing:' if i == 0 else '':16}{line}")


def print_new_keys(keys: list, *, rotated: bool = False) -> None:
    """The one time a new secret is shown in full."""
    for k in keys:
        if k.scheme == "v1":
            label = "New signing secret" if rotated else "Signing secret"
            click.echo(f"{label} (shown once, store it now): {k.secret}")
        else:
            label = "New ed25519 public key" if rotated else "Ed25519 public key"
            click.echo(f"{label} (for v1a signatures; `show` prints it again): {k.public_key}")


def new_keys_dict(keys: list) -> dict:
    """The one time a new secret is shown in full, for `--json`: `signing_secret` (v1) and
    `ed25519_public_key` (v1a; its private key is never printed)."""
    out = {}
    for k in keys:
        if k.scheme == "v1":
            out["signing_secret"] = k.secret
        else:
            out["ed25519_public_key"] = k.public_key
    return out


def rotation_dict(rotation, kind: str, view) -> dict:
    """What `rotate-secret --json` prints: the owner (secrets masked, `view.as_dict()`) under
    `kind`, what was done, and the new key in full."""
    return {kind: view.as_dict(), "scheme": rotation.key.scheme, "first": rotation.first,
            "previous_signs_until": rotation.until, **new_keys_dict([rotation.key])}


def describe_overlap(seconds: float) -> str:
    for unit, size in (("w", 604800), ("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"


def print_rotation(rotation, label: str, ed25519: bool) -> None:
    """What `rotate-secret` says (services.targets.Rotation), then the new key."""
    what = "ed25519 key pair" if ed25519 else "signing secret"
    if rotation.first:
        click.echo(f"Added an ed25519 key pair to {label}" if ed25519 else f"Added a signing secret to {label}")
    elif rotation.until is not None:
        click.echo(f"Rotated the {what} of {label}: the previous one keeps signing until {rotation.until} "
                   f"({describe_overlap(rotation.overlap)} overlap), so requests carry both signatures until then")
    else:
        click.echo(f"Rotated the {what} of {label}: the previous one no longer signs")
    print_new_keys([rotation.key], rotated=not rotation.first)


def echo_rotated_key(done: dict, signs: str) -> None:
    """What `attachments rotate-key` and `tracking rotate-key` did (services/keyfiles.py
    `rotate`'s answer); `signs`: what the new key signs."""
    click.echo(f"Added key {done['key_id']} to {done['path']}: it signs {signs} from now on")
    if done["kept"]:
        click.echo(f"Still verifying: {', '.join(done['kept'])}")
    if done["dropped"]:
        click.echo(f"Dropped (what they signed no longer verifies): {', '.join(done['dropped'])}")
