"""Rails Action Mailbox, relay ingress: what `ActionMailbox::Ingresses::Relay::InboundEmailsController`
takes. Pure.

The ingress (POST /rails/action_mailbox/relay/inbound_emails) answers 404 unless the app set
`config.action_mailbox.ingress = :relay`, 401 unless HTTP Basic auth gives the user
`actionmailbox` and the app's ingress password, 415 unless the media type is
`message/rfc822`; then it stores the body as the raw message. So the body is the message as it
came, with the envelope in front of it as header fields:

- `X-Original-To: <recipient>`, one per envelope recipient this rule matched: Action Mailbox
  routes on `mail.recipients` (To, Cc, Bcc, X-Original-To, X-Forwarded-To), so a Bcc or
  envelope-only recipient still reaches its mailbox (Postfix's pipe(8) adds the same field
  with its O flag);
- the native `raw` format's X-Mxhook-* fields (payloads/inbound.py), without the rule's API key,
  which the raw message would otherwise keep in the app's storage (the ingress authenticates
  with Basic auth).

The body is the same on every retry, so the app's own duplicate check (Message-ID + SHA1 of
the body, `create_and_extract_message_id!`) drops a repeat. No size cap applies, as for `raw`.
The auth is the rule's target (`basic_auth`): `check_target` says what the ingress would refuse.
"""
from __future__ import annotations

from urllib.parse import urlsplit

from mxhook.model.targets import Target
from mxhook.payloads import encodings, inbound
from mxhook.payloads.dialects import InboundContext
from mxhook.payloads.encodings import Rendered

NAME = "actionmailbox"
INGRESS_USER = "actionmailbox"
INGRESS_PATH = "/rails/action_mailbox/relay/inbound_emails"
LEFT_OUT = frozenset({"X-Mxhook-Api-Key"})


def inbound_request(delivery: inbound.Delivery, ctx: InboundContext) -> Rendered:
    headers = [("X-Original-To", inbound.header_safe(r)) for r in delivery.recipients]
    headers += [(name, value) for name, value in inbound.envelope_headers(delivery)
                if name not in LEFT_OUT]
    return encodings.raw_message(headers, delivery.raw)


def check_target(target: Target) -> list[str]:
    """What the relay ingress would refuse about a rule's target (empty: nothing)."""
    problems = []
    if target.bearer is not None:
        problems.append("Action Mailbox's relay ingress takes HTTP Basic auth, not a Bearer token")
    if target.basic_auth is None:
        problems.append(f"Action Mailbox's relay ingress needs HTTP Basic auth: --basic-auth "
                        f"{INGRESS_USER}:PASSWORD, PASSWORD being the app's "
                        f"action_mailbox.ingress_password (or RAILS_INBOUND_EMAIL_PASSWORD)")
    else:
        user, _, password = target.basic_auth.partition(":")
        if user != INGRESS_USER:
            problems.append(f"Action Mailbox's relay ingress takes the user {INGRESS_USER!r} "
                            f"only, not {user!r}")
        if not password:
            problems.append("the Basic auth password is empty: give the app's "
                            "action_mailbox.ingress_password")
    path = urlsplit(target.url).path.rstrip("/")
    if not path.endswith(INGRESS_PATH):
        problems.append(f"the relay ingress is at {INGRESS_PATH} (e.g. https://app.example"
                        f"{INGRESS_PATH}), not {path or '/'}")
    return problems
