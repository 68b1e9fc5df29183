"""The dialect catalogue: every name `--dialect` takes, what each dialect serves and what it asks
of a destination. Pure: data and the checks `add` / `edit` run; rendering is the registry's
(payloads/registry.py, which takes its names from here).

A dialect serves inbound mail (a rule's body), events (an endpoint's body), or both (`SIDES`).
`native` is mxhook's own bodies, shaped by `--format`; every other dialect is a fixed format of
the system it is named after, so it takes the default `--format` only, and no `--api-key`
where its body has no place for one. A jinja2 template is the body of a `native` destination:
a template and another dialect exclude each other.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable
from urllib.parse import unquote, urlsplit, urlunsplit

from mxhook.model.targets import Destination, DestinationError, Target, default
from mxhook.payloads.dialects import (actionmailbox, mailgun, msndr, paubox, postmark, sendgrid,
                                      smtp2go)

INBOUND, EVENTS = "inbound", "events"
SIDES = (INBOUND, EVENTS)
NATIVE = "native"
# The owner of a destination on each side, as the CLI names it
OWNERS = {INBOUND: "rule", EVENTS: "endpoint"}
_POSTS = {INBOUND: "inbound mail", EVENTS: "events"}
_DEFAULT_FORMAT = default("format")

JSON, FORM = "application/json", "application/x-www-form-urlencoded"
MULTIPART, RFC822 = "multipart/form-data", "message/rfc822"


@dataclass(frozen=True)
class Side:
    """What a dialect posts on one side."""

    content_types: tuple[str, ...]  # of its requests (more than one: chosen per request or --format)
    api_key: bool = False  # its body has a place for the destination's --api-key


@dataclass(frozen=True)
class Dialect:
    name: str
    description: str  # one line, for `mxhook dialect list`
    inbound: Side | None = None
    events: Side | None = None
    # events side: events per request; None = a batch, up to the endpoint's --max-events
    events_per_request: int | None = None
    event_types: tuple[str, ...] | None = None  # the event types it posts (None: every type)
    signing_key: bool = False  # signs with a key of its system's: --signing-key is required
    https_only: bool = False  # refuses --allow-http
    url_userinfo: bool = False  # takes credentials as https://USER:PASS@host/ (Basic auth)
    # what the receiving application would refuse about the destination (empty: nothing)
    check_target: Callable[[Target], list[str]] | None = None

    @property
    def sides(self) -> tuple[str, ...]:
        return tuple(side for side in SIDES if self.side(side) is not None)

    def side(self, side: str) -> Side | None:
        return self.inbound if side == INBOUND else self.events if side == EVENTS else None


def _types(module) -> tuple[str, ...]:
    return tuple(sorted(module.EVENT_TYPES))


DIALECTS: dict[str, Dialect] = {d.name: d for d in (
    Dialect(NATIVE, "mxhook's own bodies (docs/payloads.md), shaped by --format",
            inbound=Side((JSON, MULTIPART, RFC822), api_key=True),
            events=Side((JSON, FORM), api_key=True)),
    Dialect(smtp2go.NAME, "SMTP2GO's webhook: one form-encoded event per request",
            events=Side((FORM,)), events_per_request=smtp2go.EVENTS_PER_REQUEST,
            event_types=_types(smtp2go), url_userinfo=True),
    Dialect(paubox.NAME, "Paubox's mail log webhook: one JSON event per request, HTTPS only",
            events=Side((JSON,)), events_per_request=paubox.EVENTS_PER_REQUEST,
            event_types=_types(paubox), https_only=True),
    Dialect(msndr.NAME, "msndr's webhook: one JSON event per request",
            events=Side((JSON,)), events_per_request=msndr.EVENTS_PER_REQUEST,
            event_types=_types(msndr)),
    Dialect(sendgrid.NAME, "SendGrid: Inbound Parse (parsed fields and files); Event Webhook "
                           "(JSON array of events)",
            inbound=Side((MULTIPART,)), events=Side((JSON,)),
            events_per_request=sendgrid.EVENTS_PER_REQUEST, event_types=_types(sendgrid)),
    Dialect(sendgrid.RAW_NAME, "SendGrid Inbound Parse with \"post the raw, full MIME message\" "
                               "(the message as the email field)",
            inbound=Side((MULTIPART,))),
    Dialect(mailgun.NAME, "Mailgun: routes' forward() and event webhooks (one per request), "
                          "signed with the Mailgun signing key",
            inbound=Side((FORM, MULTIPART)), events=Side((JSON,)),
            events_per_request=mailgun.EVENTS_PER_REQUEST, event_types=_types(mailgun),
            signing_key=True),
    Dialect(postmark.NAME, "Postmark: inbound JSON; Delivery, Bounce, SpamComplaint, Open, Click "
                           "and SubscriptionChange webhooks (one per request)",
            inbound=Side((JSON,)), events=Side((JSON,)),
            events_per_request=postmark.EVENTS_PER_REQUEST, event_types=_types(postmark)),
    Dialect(actionmailbox.NAME, "Rails Action Mailbox relay ingress: the raw message, Basic auth "
                                f"as {actionmailbox.INGRESS_USER!r}",
            inbound=Side((RFC822,)), check_target=actionmailbox.check_target),
)}


def names(side: str) -> tuple[str, ...]:
    """The dialects serving `side`, in catalogue order."""
    return tuple(name for name, d in DIALECTS.items() if d.side(side) is not None)


def lookup(name: str, side: str) -> Dialect:
    """The dialect `name` for `side`; DestinationError for an unknown name (listing the known
    ones) or one that does not serve `side` (saying where it goes)."""
    found = DIALECTS.get(name)
    owner = OWNERS[side]
    if found is None:
        raise DestinationError(f"unknown dialect {name!r} for {owner}s "
                               f"(known: {', '.join(names(side))}; see `mxhook dialect list`)")
    if found.side(side) is None:
        (other,) = found.sides
        raise DestinationError(
            f"the {name} dialect posts {_POSTS[other]}, not {_POSTS[side]}: give it to "
            f"{'a rule' if other == INBOUND else 'an endpoint'} (`mxhook {OWNERS[other]} add` "
            f"--dialect {name}); {owner}s take {', '.join(names(side))}")
    return found


def check(dest: Destination, side: str, *, template: bool = False) -> Dialect:
    """Raise DestinationError on the first thing the destination's dialect refuses about it;
    return the dialect. `template`: the destination has (or is given) a template."""
    dialect = lookup(dest.dialect, side)
    name = dialect.name
    if name != NATIVE:
        if template:
            raise DestinationError(
                f"a template is the body of the native dialect, not of {name}: give either "
                f"--template (with --dialect native) or --dialect {name} (with --no-template)")
        if dest.format != _DEFAULT_FORMAT:
            raise DestinationError(f"--format {dest.format} shapes the native body only: the {name} "
                                   f"dialect takes the default --format {_DEFAULT_FORMAT}")
    elif template and dest.format != _DEFAULT_FORMAT:
        raise DestinationError(f"--format {dest.format} shapes the native body only: with a "
                               f"template give --format {_DEFAULT_FORMAT} (the template declares "
                               "its content type, --template-type)")
    if dialect.signing_key:
        problem = mailgun.check_signing_key(dest.signing_key)
        if problem:
            raise DestinationError(problem)
        if any(ord(c) < 0x20 or ord(c) == 0x7f for c in dest.signing_key):
            raise DestinationError("--signing-key contains a control character (a line end from a file?)")
    elif dest.signing_key is not None:
        raise DestinationError(f"--signing-key is for the dialects that sign with a key of their "
                               f"system's ({', '.join(signing_dialects())}), not {name}")
    if dest.api_key is not None and not dialect.side(side).api_key:
        raise DestinationError(f"the {name} dialect's body has no place for an API key: drop "
                               "--api-key (authenticate with --basic-auth or --bearer)")
    if dialect.https_only and dest.allow_http:
        raise DestinationError(f"the {name} dialect is HTTPS only: drop --allow-http")
    if dialect.check_target is not None:
        problems = dialect.check_target(Target.of(OWNERS[side], None, "", dest))
        if problems:
            raise DestinationError(f"the {name} dialect: " + "; ".join(problems))
    return dialect


def signing_dialects() -> tuple[str, ...]:
    return tuple(name for name, d in DIALECTS.items() if d.signing_key)


def split_userinfo(url: str) -> tuple[str, str | None]:
    """(the URL without user info, its `USER:PASSWORD` percent-decoded), or (url, None) when it
    has none; DestinationError when it has a user without a password, or a user with ':'."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return url, None  # check_url says what is wrong with it
    userinfo, at, host = parts.netloc.rpartition("@")
    if not at:
        return url, None
    user, colon, password = userinfo.partition(":")
    user, password = unquote(user), unquote(password)
    if not user or not colon or not password or ":" in user:
        raise DestinationError("the URL's user info must be USER:PASSWORD (percent-encoded), "
                               "as https://USER:PASSWORD@host/path")
    return urlunsplit(parts._replace(netloc=host)), f"{user}:{password}"

