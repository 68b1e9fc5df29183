"""Header values and addresses as they arrive on the wire: bytes, possibly 8-bit, possibly broken.

Pure functions, shared by the milter (rule matching, heuristics) and the message normalizer.
Nothing here raises on bad input: undecodable bytes become U+FFFD, unparsable address lists give
the addresses that could be found.
"""
from __future__ import annotations

import email.header
import email.utils
import encodings.idna
import re
import unicodedata

_FOLD = re.compile(r"\r?\n[ \t]*")
_ENCODED_WORD = re.compile(r"=\?[^?\s]+\?[bBqQ]\?[^?\s]*\?=")


def to_text(raw: bytes | str) -> str:
    """Raw header bytes to str: UTF-8 when valid, else Latin-1 (every byte maps, nothing lost).

    pymilter hands values over as str with surrogate escapes; those are turned back into bytes
    first so both callers get the same answer.
    """
    if isinstance(raw, str):
        try:
            raw.encode("utf-8")
            return raw
        except UnicodeEncodeError:
            try:
                raw = raw.encode("utf-8", "surrogateescape")
            except UnicodeEncodeError:  # a lone surrogate that stands for no byte (e.g. UTF-7)
                return raw.encode("utf-8", "replace").decode("utf-8")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


def unfold(value: str) -> str:
    return _FOLD.sub(" ", value).strip()


def decode_value(raw: bytes | str) -> str:
    """Unfolded, RFC 2047-decoded header value. Unknown charsets and broken encoded words are
    kept as they came rather than raising."""
    text = unfold(to_text(raw))
    if not _ENCODED_WORD.search(text):
        return text
    try:
        parts = email.header.decode_header(text)
    except Exception:  # email.header raises a zoo of errors on broken input
        return text
    out = []
    for chunk, charset in parts:
        if isinstance(chunk, str):
            out.append(chunk)
            continue
        if charset is None:  # the unencoded stretches, which decode_header re-encoded this way
            out.append(chunk.decode("raw-unicode-escape", "replace"))
            continue
        try:
            out.append(chunk.decode(charset, "replace"))
        except (LookupError, ValueError):  # unknown charset; idna, NUL in the label, ...
            out.append(chunk.decode("latin-1"))
    return "".join(out)


_IDNA_DOTS = re.compile("[.\u3002\uff0e\uff61]")  # IDNA label separators (RFC 3490 3.1)


def domain_a_label(domain: str, *, strict: bool = True) -> str:
    """The form permitted domains are stored and compared in: lower case, labels mapped as
    IDNA does it (nameprep: zero-width and soft-hyphen characters vanish, full-width letters
    fold) and encoded as A-labels (`bücher.example` -> `xn--bcher-kva.example`), no trailing
    dot (any IDNA dot; also one left over when a label maps to nothing). A label IDNA cannot
    encode raises UnicodeError when `strict`, else stays as mapped so far, less any invisible
    character (control, format, space, unassigned): a look-alike of our domain must not escape
    the comparison by being invalid."""
    labels = _IDNA_DOTS.split(domain.lower())
    out = []
    for label in labels:
        if not strict:
            label = _visible(label)
        if not label.isascii():
            try:
                label = encodings.idna.nameprep(label)
            except UnicodeError:
                if strict:
                    raise
            if not strict:
                label = _visible(label)  # nameprep may make spaces (NFKC of an accent)
        if not label.isascii():
            try:
                label = encodings.idna.ToASCII(label).decode("ascii")
            except UnicodeError:
                if strict:
                    raise
        out.append(label.lower())
    while len(out) > 1 and out[-1] == "":
        out.pop()
    return ".".join(out)


def _visible(label: str) -> str:
    if label.isprintable() and " " not in label:
        return label
    return "".join(c for c in label if unicodedata.category(c)[0] not in "CZ")


def plain_address(addr: str) -> str:
    """An address without angle brackets and spaces, in lower case: the form events report a
    recipient in (as the application wrote it)."""
    return addr.strip().strip("<>").strip().lower()


def normalize_address(addr: str) -> str:
    """Comparable form of one address: `plain_address`, the domain as `domain_a_label` gives
    it, so `Bob@Ours.Example.` and `bob@ours.example` (or a U-label and its A-label) are the
    same address for the domain check, the heuristics, the block list and event correlation.
    The local part is case-sensitive by RFC 5321, but every real system treats it as not.
    '' for the null sender."""
    a = plain_address(addr)
    local, at, domain = a.rpartition("@")
    if at and (not domain.isascii() or domain.endswith(".") or not domain.isprintable() or " " in domain):
        return f"{local}@{domain_a_label(domain, strict=False)}"
    return a


def address_domain(addr: str) -> str:
    a = normalize_address(addr)
    return a.rpartition("@")[2] if "@" in a else ""


_ATOM = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_PLAIN_ADDRESS = rf"{_ATOM}(?:\.{_ATOM})*@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*"
# One mailbox in the forms nearly all mail uses (`a@b`, `<a@b>`, `Plain Name <a@b>`): the
# answer email.utils.getaddresses would give, without its ~25 us parse, on the milter's path.
_PLAIN_MAILBOX = re.compile(rf"\s*(?:(?:({_ATOM}(?: {_ATOM})*) )?<({_PLAIN_ADDRESS})>|({_PLAIN_ADDRESS}))\s*")


def parse_addresses(raw: bytes | str) -> list[tuple[str, str]]:
    """(display name, normalized address) pairs from an address header value.

    The addresses are parsed before encoded words are decoded (RFC 2047 forbids them in
    addresses): a display name that decodes to `<x@y>` must not hide the real address."""
    text = unfold(to_text(raw))
    plain = _PLAIN_MAILBOX.fullmatch(text)
    if plain:
        name, bracketed, bare = plain.groups()
        return [(_display_name(name or ""), (bracketed or bare).lower())]
    try:
        pairs = email.utils.getaddresses([text])
    except Exception:
        pairs = []
    result = []
    for name, addr in pairs:
        addr = normalize_address(addr)
        if "@" in addr:
            result.append((_display_name(name), addr))
    return result


def _display_name(name: str) -> str:
    return decode_value(name) if _ENCODED_WORD.search(name) else name


def first_address(raw: bytes | str | None) -> str:
    if raw is None:
        return ""
    found = parse_addresses(raw)
    return found[0][1] if found else ""
