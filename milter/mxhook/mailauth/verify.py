"""SPF (pyspf), DKIM and ARC (dkimpy), DMARC (authheaders' record lookup over the Public Suffix
List that authheaders reads) for one message, every lookup through one `resolvers.Budget`.

`verify` never raises: a lookup that fails or outlasts the message's DNS budget makes its check
temperror, and anything else a library raises makes it permerror (DKIM: neutral for a signature
that cannot be processed, as RFC 8601 2.7.1 has it).

DMARC's policy choice and alignment are done here, over authheaders' `lookup_receiver_record`:
authheaders' own `dmarc_per_from` (0.15.2 in Debian 12, and 0.16.3) weighs only the first DKIM
signature, reads a domain only up to its first `-` (`get_domain_part`) and parses the whole
Public Suffix List at every call (40 ms). The list is read once here, with publicsuffix2 as
authheaders does.
"""
from __future__ import annotations

import contextlib
import contextvars
import importlib.resources
import threading
import time
from functools import lru_cache
from typing import Callable

import dkim
import spf
from authheaders.dmarc_lookup import lookup_receiver_record
from publicsuffix2 import PublicSuffixList

from mxhook.mailauth.resolvers import TYPES, Budget, DnsTempError, Resolver
from mxhook.mailauth.verdicts import Alignment, Arc, Dkim, Dmarc, Spf, Verdicts
from mxhook.model.headers import mailboxes, normalize_address
from mxhook.model.message import header_section

DEFAULT_BUDGET = 5.0
DEFAULT_TIMEOUT = 2.0


def verify(message: bytes, *, client_ip: str, helo: str, mail_from: str, dns: Resolver,
           authserv_id: str = "", budget: float = DEFAULT_BUDGET,
           timeout: float = DEFAULT_TIMEOUT, clock: Callable[[], float] = time.monotonic) -> Verdicts:
    """The SPF verdict for `mail_from` (HELO's when it is null) from `client_ip`, every DKIM
    signature's, the From domain's DMARC and the ARC chain's. `dns` answers every lookup; all of
    them together take at most `budget` seconds on `clock` (each at most `timeout`)."""
    lookups = Budget(dns, seconds=budget, timeout=timeout, clock=clock)
    spf_verdict = check_spf(client_ip=client_ip, helo=helo, mail_from=mail_from, lookups=lookups)
    dkim_verdicts = check_dkim(message, lookups)
    dmarc_verdict = check_dmarc(from_domains(message), spf_verdict, dkim_verdicts, lookups)
    arc_verdict = check_arc(message, lookups)
    return Verdicts(spf=spf_verdict, dkim=dkim_verdicts, dmarc=dmarc_verdict, arc=arc_verdict,
                    source="mxhook", authserv_id=authserv_id)


# ---------------------------------------------------------------------------------------------
# SPF

# pyspf looks every name up through its module-level `DNSLookup` and offers no parameter for
# it, so that function is wrapped once: inside `_spf_lookups(budget)` (a context variable, so
# per thread and per call) it asks the budget; anywhere else it is pyspf's own.
_SPF_LOOKUPS: contextvars.ContextVar[Budget | None] = contextvars.ContextVar(
    "mxhook_spf_lookups", default=None)
_hook_lock = threading.Lock()


def _install_spf_hook() -> None:
    with _hook_lock:
        if getattr(spf.DNSLookup, "mxhook_wrapped", None) is None:
            spf.DNSLookup = _spf_dns_lookup(spf.DNSLookup)


def _spf_dns_lookup(original):
    def lookup(name, qtype, strict=True, timeout=None):
        budget = _SPF_LOOKUPS.get()
        if budget is None:
            return original(name, qtype, strict, timeout)
        if qtype not in TYPES:
            return []
        try:
            values = budget.lookup(name, qtype)
        except DnsTempError as exc:
            raise spf.TempError(f"DNS {exc}") from None
        if qtype == "TXT":  # pyspf wants each TXT record as its list of strings
            return [((name, qtype), [v]) for v in values]
        return [((name, qtype), v) for v in values]

    lookup.mxhook_wrapped = original
    return lookup


@contextlib.contextmanager
def _spf_lookups(budget: Budget):
    _install_spf_hook()
    token = _SPF_LOOKUPS.set(budget)
    try:
        yield
    finally:
        _SPF_LOOKUPS.reset(token)


def check_spf(*, client_ip: str, helo: str, mail_from: str, lookups: Budget) -> Spf:
    """The SPF verdict alone (`verify` runs it, or takes one made earlier in the session)."""
    sender = mail_from.strip().strip("<>").strip()
    identity = "mailfrom" if sender else "helo"
    # a MAIL FROM without '@' is a domain to pyspf (postmaster@ it), so it is the one reported
    domain = (sender.rpartition("@")[2] if "@" in sender else sender) if sender else helo
    domain = domain.rstrip(".").lower()
    if not client_ip or not domain:
        return Spf("none", domain, identity, client_ip, "no client address or no identity")
    try:
        query = spf.query(i=client_ip, s=sender, h=helo, timeout=lookups.timeout)
        with _spf_lookups(lookups):
            result, _code, explanation = query.check()
    except DnsTempError as exc:
        return Spf("temperror", domain, identity, client_ip, str(exc))
    except Exception as exc:  # pyspf's own failure on odd input: no verdict to rely on
        return Spf("permerror", domain, identity, client_ip, f"{type(exc).__name__}: {exc}")
    return Spf(result, domain, identity, client_ip, explanation)


# ---------------------------------------------------------------------------------------------
# DKIM and ARC

class _Notes:
    """The logger dkimpy writes to: its error lines are a failed signature's reason."""

    def __init__(self):
        self.errors: list[str] = []

    def debug(self, *_args, **_kw):
        pass

    info = debug

    def warning(self, msg, *args, **_kw):
        self.errors.append(str(msg) % args if args else str(msg))

    error = warning


def _key_lookup(lookups: Budget, missing: list[str]):
    """dkimpy's `dnsfunc`: the TXT record at a selector's name, None when there is none."""

    def dnsfunc(name, timeout=None):
        text = name.decode("ascii", "replace") if isinstance(name, bytes) else name
        values = lookups.txt(text.rstrip("."))
        if not values:
            missing.append(text)
            return None
        return values[0]

    return dnsfunc


def _text(value) -> str:
    return value.decode("ascii", "replace") if isinstance(value, bytes) else str(value or "")


def check_dkim(message: bytes, lookups: Budget) -> tuple[Dkim, ...]:
    notes = _Notes()
    try:
        signer = dkim.DKIM(message, logger=notes, timeout=lookups.timeout)
    except Exception as exc:  # a header section dkimpy cannot read
        if b"dkim-signature" in message.lower():
            return (Dkim("permerror", reason=f"unreadable message: {exc}"),)
        return ()
    count = sum(1 for name, _ in signer.headers if name.lower() == b"dkim-signature")
    verdicts = []
    for idx in range(count):
        notes.errors.clear()
        missing: list[str] = []
        signer.signature_fields = {}
        try:
            ok = signer.verify(idx=idx, dnsfunc=_key_lookup(lookups, missing))
            if ok:
                result, reason = "pass", ""
            elif missing:
                result, reason = "permerror", f"no key for signature at {missing[0]}"
            elif notes.errors:
                result, reason = "permerror", notes.errors[-1]
            else:
                result, reason = "fail", "signature did not verify"
        except DnsTempError as exc:
            result, reason = "temperror", str(exc)
        except dkim.ValidationError as exc:
            # the body changed: fail; a signature field that cannot be used (a tag missing,
            # expired, ...): neutral, as RFC 8601 2.7.1 names signatures not able to be processed
            result = "fail" if str(exc).startswith("body hash mismatch") else "neutral"
            reason = str(exc)
        except dkim.MessageFormatError as exc:
            result, reason = "neutral", str(exc)
        except Exception as exc:  # a key that cannot be used
            result, reason = "permerror", f"{type(exc).__name__}: {exc}"
        fields = signer.signature_fields
        verdicts.append(Dkim(result, _text(fields.get(b"d")).lower(), _text(fields.get(b"s")),
                             _text(fields.get(b"a")), reason))
    return tuple(verdicts)


def check_arc(message: bytes, lookups: Budget) -> Arc:
    notes = _Notes()
    try:
        chain = dkim.ARC(message, logger=notes, timeout=lookups.timeout)
        cv, _results, comment = chain.verify(dnsfunc=_key_lookup(lookups, []))
    except DnsTempError as exc:
        return Arc("temperror", str(exc))
    except Exception as exc:
        return Arc("fail", f"{type(exc).__name__}: {exc}")
    if cv is None:  # an earlier hop recorded a failure: the chain ended there
        return Arc("fail", comment)
    result = _text(cv)
    return Arc(result, "" if result in ("pass", "none") else comment)


# ---------------------------------------------------------------------------------------------
# DMARC

_psl_lock = threading.Lock()
_psl: list[PublicSuffixList] = []


def _suffix_list_path() -> str:
    """The list authheaders reads: Debian's (package publicsuffix, named by the findpsl module
    Debian adds), else the copy inside authheaders."""
    try:
        from authheaders.findpsl import location
        return location
    except ImportError:
        return str(importlib.resources.files("authheaders") / "public_suffix_list.txt")


@lru_cache(maxsize=4096)
def organizational_domain(domain: str) -> str:
    """The registrable domain (RFC 7489 3.2) from the Public Suffix List authheaders uses."""
    with _psl_lock:
        if not _psl:
            with open(_suffix_list_path(), encoding="utf-8") as f:
                _psl.append(PublicSuffixList(f))
    psl = _psl[0]
    if psl.get_tld(domain, strict=True) is None:
        # a TLD the list does not name: its implicit "*" rule makes the last label the suffix
        # (publicsuffix2 would answer the TLD alone)
        return ".".join(domain.split(".")[-2:])
    return psl.get_sld(domain, strict=True) or domain


def _aligned(domain: str, from_domain: str, mode: str) -> bool:
    if not domain:
        return False
    if mode == "strict":
        return domain == from_domain
    return organizational_domain(domain) == organizational_domain(from_domain)


def from_domains(message: bytes) -> list[str]:
    """The domains of the From field's mailboxes, in order, each once."""
    fields, _offset, _defects = header_section(message)
    found: list[str] = []
    for name, raw in fields:
        if name.lower() == "from":
            for box in mailboxes(raw):
                domain = normalize_address(box.address).rpartition("@")[2].rstrip(".")
                if domain and domain not in found:
                    found.append(domain)
    return found


def _record_lookup(lookups: Budget):
    """authheaders' `dnsfunc`: the one DMARC record at a `_dmarc` name, as text (several count
    as none, RFC 7489 6.6.3)."""

    def dnsfunc(name):
        records = [v for v in lookups.txt(name) if v[:8].lower() == b"v=dmarc1"]
        return records[0].decode("utf-8", "replace") if len(records) == 1 else None

    return dnsfunc


# The worst verdict is reported when From names several domains (RFC 7489 6.6.1).
_DMARC_SEVERITY = {"fail": 0, "temperror": 1, "permerror": 2, "none": 3, "pass": 4}
_POLICY_SEVERITY = {"reject": 0, "quarantine": 1, "none": 2, "": 3}


def check_dmarc(domains: list[str], spf_verdict: Spf, dkim_verdicts: tuple[Dkim, ...],
                lookups: Budget) -> Dmarc:
    if not domains:
        return Dmarc("none", reason="no From domain")
    verdicts = [_dmarc_for(d, spf_verdict, dkim_verdicts, lookups) for d in domains]
    return min(verdicts, key=lambda v: (_DMARC_SEVERITY.get(v.result, 9),
                                        _POLICY_SEVERITY.get(v.policy, 9)))


def _dmarc_for(domain: str, spf_verdict: Spf, dkim_verdicts: tuple[Dkim, ...],
               lookups: Budget) -> Dmarc:
    dnsfunc = _record_lookup(lookups)
    try:
        record, record_domain = lookup_receiver_record(domain, dnsfunc), domain
        if not record:
            record_domain = organizational_domain(domain)
            record = lookup_receiver_record(record_domain, dnsfunc) if record_domain != domain else {}
    except DnsTempError as exc:
        return Dmarc("temperror", domain, reason=str(exc))
    except Exception as exc:  # a record authheaders cannot parse (a tag without '=')
        return Dmarc("permerror", domain, reason=f"unreadable DMARC record: {exc}")
    p = record.get("p", "").rstrip("\\")
    if p not in ("none", "quarantine", "reject"):
        return Dmarc("none", domain, reason="no DMARC record" if not record
                     else f"DMARC record without a valid p= at {record_domain}")
    sp = record.get("sp", "").rstrip("\\")
    sp = sp if sp in ("none", "quarantine", "reject") else p
    try:
        pct = min(100, max(0, int(record.get("pct", "100"))))
    except ValueError:
        pct = 100
    policy = p if record_domain == domain else sp
    spf_mode = "strict" if record.get("aspf") == "s" else "relaxed"
    dkim_mode = "strict" if record.get("adkim") == "s" else "relaxed"
    spf_aligned = _aligned(spf_verdict.domain, domain, spf_mode)
    dkim_aligned = [d for d in dkim_verdicts if _aligned(d.domain, domain, dkim_mode)]
    alignment = Alignment(spf=spf_verdict.result == "pass" and spf_aligned,
                          dkim=any(d.result == "pass" for d in dkim_aligned),
                          spf_mode=spf_mode, dkim_mode=dkim_mode)
    if alignment.spf or alignment.dkim:
        result, reason = "pass", ""
    elif (spf_aligned and spf_verdict.result == "temperror") \
            or any(d.result == "temperror" for d in dkim_aligned):
        # an aligned check that could still pass could not be done: not a failure to act on
        result, reason = "temperror", "an aligned SPF or DKIM check had a temporary error"
    else:
        result, reason = "fail", "no aligned SPF or DKIM pass"
    return Dmarc(result, domain, policy, record_domain, p, sp, pct, alignment, reason)
