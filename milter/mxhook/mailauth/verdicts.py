"""The verdicts of one message, as values: what `verify` found or a trusted upstream verifier
said. Three views: `as_dict` (the payload's `authentication` field), `conditions` (flat names a
rule can match: `dmarc~^fail$`) and `header_value` (an RFC 8601 Authentication-Results value)."""
from __future__ import annotations

from dataclasses import dataclass, field

import authres
import authres.arc
import authres.dmarc

# The strongest DKIM result first: the flat `dkim` condition is the best of the signatures'.
DKIM_ORDER = ("pass", "temperror", "fail", "permerror", "neutral", "policy", "none")


@dataclass(frozen=True)
class Spf:
    result: str  # pass, fail, softfail, neutral, none, temperror, permerror
    domain: str = ""  # MAIL FROM's domain, or the HELO name when MAIL FROM is null
    identity: str = "mailfrom"  # or "helo"
    client_ip: str = ""
    reason: str = ""

    def as_dict(self) -> dict:
        return {"result": self.result, "domain": self.domain, "identity": self.identity,
                "client_ip": self.client_ip, "reason": self.reason}


@dataclass(frozen=True)
class Dkim:
    """One DKIM-Signature field's result."""

    result: str  # pass, fail, neutral, temperror, permerror
    domain: str = ""  # d=
    selector: str = ""  # s=
    algorithm: str = ""  # a=
    reason: str = ""

    def as_dict(self) -> dict:
        return {"result": self.result, "domain": self.domain, "selector": self.selector,
                "algorithm": self.algorithm, "reason": self.reason}


@dataclass(frozen=True)
class Alignment:
    spf: bool = False  # SPF passed for a domain aligned with From's
    dkim: bool = False  # some DKIM signature passed for a d= aligned with From's
    spf_mode: str = "relaxed"  # the record's aspf: relaxed or strict
    dkim_mode: str = "relaxed"  # adkim

    def as_dict(self) -> dict:
        return {"spf": self.spf, "dkim": self.dkim, "spf_mode": self.spf_mode,
                "dkim_mode": self.dkim_mode}


@dataclass(frozen=True)
class Dmarc:
    result: str  # pass, fail, none, temperror, permerror
    domain: str = ""  # the From domain evaluated
    policy: str = ""  # what the record asks for this From domain: p, or sp for a subdomain
    record_domain: str = ""  # where the record was found: the From domain or its org domain
    p: str = ""
    sp: str = ""
    pct: int = 100
    alignment: Alignment = field(default_factory=Alignment)
    reason: str = ""

    def as_dict(self) -> dict:
        return {"result": self.result, "domain": self.domain, "policy": self.policy,
                "record_domain": self.record_domain, "p": self.p, "sp": self.sp, "pct": self.pct,
                "alignment": self.alignment.as_dict(), "reason": self.reason}


@dataclass(frozen=True)
class Arc:
    result: str  # none, pass, fail (temperror when a key could not be looked up)
    reason: str = ""

    def as_dict(self) -> dict:
        return {"result": self.result, "reason": self.reason}


@dataclass(frozen=True)
class Upstream:
    """One Authentication-Results field the message came with. `trusted` only when its
    authserv-id is configured as trusted; an untrusted one (which the sender may have written)
    is reported, never used for a verdict."""

    authserv_id: str
    trusted: bool
    value: str  # the field's value, unfolded
    results: tuple[tuple[str, str, tuple[tuple[str, str], ...]], ...] = ()  # (method, result, ((ptype.property, value), ...))
    error: str = ""  # why the value could not be parsed

    def as_dict(self) -> dict:
        out = {"authserv_id": self.authserv_id, "trusted": self.trusted, "value": self.value,
               "results": [{"method": m, "result": r, "properties": dict(props)}
                           for m, r, props in self.results]}
        if self.error:
            out["error"] = self.error
        return out


NONE_SPF = Spf("none")
NONE_DMARC = Dmarc("none")
NONE_ARC = Arc("none")


@dataclass(frozen=True)
class Verdicts:
    spf: Spf = NONE_SPF
    dkim: tuple[Dkim, ...] = ()
    dmarc: Dmarc = NONE_DMARC
    arc: Arc = NONE_ARC
    source: str = "mxhook"  # "mxhook": verified here; "upstream": a trusted verifier's header
    authserv_id: str = ""  # whose verdicts: this host's, or the trusted upstream's
    upstream: tuple[Upstream, ...] = ()

    def as_dict(self) -> dict:
        """The payload's `authentication` object (docs/authentication.md, "Payload")."""
        return {"source": self.source, "authserv_id": self.authserv_id,
                "spf": self.spf.as_dict(), "dkim": [d.as_dict() for d in self.dkim],
                "dmarc": self.dmarc.as_dict(), "arc": self.arc.as_dict(),
                "upstream": [u.as_dict() for u in self.upstream]}

    @property
    def dkim_result(self) -> str:
        """The best signature's result; none without a signature."""
        results = {d.result for d in self.dkim}
        return next((r for r in DKIM_ORDER if r in results), "none")

    def conditions(self) -> dict[str, str]:
        """Flat names -> result strings, for rule conditions (`--when 'dmarc~^fail$'`)."""
        return {"spf": self.spf.result, "dkim": self.dkim_result, "dmarc": self.dmarc.result,
                "dmarc_policy": self.dmarc.policy, "arc": self.arc.result}

    def header_value(self, authserv_id: str | None = None) -> str:
        """An RFC 8601 Authentication-Results value under `authserv_id` (default: the verdicts'
        own)."""
        results = []
        if self.spf.result != "none" or self.spf.domain:
            ident = {"smtp_helo": self.spf.domain} if self.spf.identity == "helo" \
                else {"smtp_mailfrom": self.spf.domain}
            results.append(authres.SPFAuthenticationResult(result=self.spf.result, **_set(ident)))
        for d in self.dkim:
            results.append(authres.DKIMAuthenticationResult(
                result=d.result, header_d=d.domain or None, header_s=d.selector or None,
                header_a=d.algorithm or None))
        if self.dmarc.result != "none" or self.dmarc.domain:
            results.append(authres.dmarc.DMARCAuthenticationResult(
                result=self.dmarc.result, header_from=self.dmarc.domain or None,
                policy=self.dmarc.policy or None))
        if self.arc.result != "none":
            results.append(authres.arc.ARCAuthenticationResult(result=self.arc.result))
        header = authres.AuthenticationResultsHeader(
            authserv_id=authserv_id or self.authserv_id or "localhost", results=results)
        return header.header_value()


def _set(values: dict) -> dict:
    return {k: v for k, v in values.items() if v}
