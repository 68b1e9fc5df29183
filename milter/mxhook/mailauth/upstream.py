"""Authentication-Results fields a message arrives with (RFC 8601), parsed with authres.

Only a field whose authserv-id is configured as trusted (a verifier in front of this host, which
removes such fields from outside) may give verdicts; every other one is the sender's word and
is reported marked `trusted: false`."""
from __future__ import annotations

from typing import Collection, Iterable

import authres

from mxhook.mailauth.verdicts import (NONE_ARC, NONE_DMARC, NONE_SPF, Alignment, Arc, Dkim,
                                      Dmarc, Spf, Upstream, Verdicts)
from mxhook.model.headers import to_text, unfold

FIELD = "authentication-results"


def upstream_results(headers: Iterable[tuple[str, str | bytes]],
                     trusted_authserv_ids: Collection[str]) -> tuple[Upstream, ...]:
    """Every Authentication-Results field of `headers` ((name, value) in message order), each
    marked trusted when its authserv-id (case-insensitive) is in `trusted_authserv_ids`."""
    trusted = {t.strip().lower() for t in trusted_authserv_ids if t.strip()}
    found = []
    for name, value in headers:
        if name.strip().lower() != FIELD:
            continue
        text = unfold(to_text(value)).strip()
        try:
            parsed = authres.AuthenticationResultsHeader.parse_value(text)
        except Exception as exc:  # authres raises its own SyntaxError and others on junk
            found.append(Upstream(_first_word(text), False, text,
                                  error=f"{type(exc).__name__}: {exc}"))
            continue
        authserv_id = (parsed.authserv_id or "").lower()
        results = tuple((r.method, (r.result or "").lower(),
                         tuple((f"{p.type}.{p.name}", str(p.value)) for p in r.properties))
                        for r in parsed.results if getattr(r, "method", None))
        found.append(Upstream(authserv_id, authserv_id in trusted, text, results))
    return tuple(found)


def _first_word(text: str) -> str:
    return text.split(";", 1)[0].split()[0].lower() if text.split() else ""


def verdicts_from_upstream(upstream: tuple[Upstream, ...]) -> Verdicts:
    """The verdicts of the first trusted field (the topmost: the nearest trusted verifier's);
    all "none" when there is none. `upstream` is kept whole in the result."""
    chosen = next((u for u in upstream if u.trusted and not u.error), None)
    if chosen is None:
        return Verdicts(source="upstream", upstream=upstream)
    spf_verdict, dmarc_verdict, arc_verdict, dkims = NONE_SPF, NONE_DMARC, NONE_ARC, []
    for method, result, props in chosen.results:
        p = dict(props)
        if method == "spf" and spf_verdict is NONE_SPF:
            helo = "smtp.mailfrom" not in p and "smtp.helo" in p
            domain = p.get("smtp.helo", "") if helo else p.get("smtp.mailfrom", "")
            spf_verdict = Spf(result, domain.rpartition("@")[2].lower(),
                              "helo" if helo else "mailfrom", p.get("smtp.remote-ip", ""))
        elif method == "dkim":
            dkims.append(Dkim(result, p.get("header.d", "").lower(), p.get("header.s", ""),
                              p.get("header.a", "")))
        elif method == "dmarc" and dmarc_verdict is NONE_DMARC:
            dmarc_verdict = Dmarc(result, p.get("header.from", "").lower(),
                                  p.get("policy.dmarc", "").lower(), alignment=Alignment())
        elif method == "arc" and arc_verdict is NONE_ARC:
            arc_verdict = Arc(result)
    return Verdicts(spf=spf_verdict, dkim=tuple(dkims), dmarc=dmarc_verdict, arc=arc_verdict,
                    source="upstream", authserv_id=chosen.authserv_id, upstream=upstream)
