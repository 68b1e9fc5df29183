"""Header values and addresses as they arrive on the wire: bytes, possibly 8-bit, possibly broken.

Pure functions, shared by the milter (rule matching, heuristics) and the message normalizer.
Nothing here raises on bad input: undecodable bytes become U+FFFD, unparsable address lists give
the addresses that could be found.
"""
from __future__ import annotations

import base64
import binascii
import codecs
import functools
import hashlib
import re
import unicodedata
from typing import Collection, NamedTuple

import idna

# RFC 5322 2.2.3: unfolding removes a line break that white space follows, and nothing else. A
# line break that folds nothing cannot be part of a field (only of decoded text): a space.
_FOLD = re.compile(r"\r?\n(?=[ \t])")
_BARE_LINE_BREAK = re.compile(r"\r?\n")
_ENCODED_WORD = re.compile(r"=\?([^?\s]+)\?([bBqQ])\?([^?\s]*)\?=")
_QP_ESCAPE = re.compile(rb"=([0-9A-Fa-f]{2})")
_NOT_BASE64 = re.compile(r"[^A-Za-z0-9+/]")

# Labels Python has no codec for, and codecs that decode less than what senders mean by the label:
# decoded with the superset, as browsers do (WHATWG Encoding Standard). The one table for encoded
# words and body text alike (message.decode_text).
_LABEL_CODECS = {"iso-8859-8-i": "iso8859-8", "iso-8859-6-i": "iso8859-6", "windows-874": "cp874",
                 "x-gbk": "gb18030"}
_SUPERSET_CODECS = {"gb2312": "gb18030", "gbk": "gb18030", "big5": "big5hkscs", "euc_kr": "cp949",
                    "tis-620": "cp874"}
# Python codecs that are text encodings but no mail charsets (or transform text in surprising ways).
_NOT_CHARSETS = {"raw-unicode-escape", "unicode-escape", "undefined", "idna", "punycode", "mbcs", "oem"}


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
    """RFC 5322 unfolding (each line break before white space removed; white space kept as it
    is), less the white space that leads the value (after the colon: Postfix does not hand that
    to a milter either)."""
    return _BARE_LINE_BREAK.sub(" ", _FOLD.sub("", value)).lstrip(" \t")


def charset_codec(label: str | None) -> str | None:
    """The Python codec name for a MIME charset label (superset codecs for labels that senders
    use for more than the label says, e.g. gb2312 -> gb18030), or None when there is none."""
    if not label:
        return None
    name = label.strip().strip('"').strip().lower()
    name = _LABEL_CODECS.get(name, name)
    try:
        info = codecs.lookup(name)
    except Exception:  # LookupError, or worse for labels with NULs or surrogates
        return None
    if not getattr(info, "_is_text_encoding", True) or info.name in _NOT_CHARSETS:
        return None
    return _SUPERSET_CODECS.get(info.name, info.name)


def decode_value(raw: bytes | str) -> str:
    """Unfolded, RFC 2047-decoded header value. Unknown charsets and broken encoded words are
    kept as they came rather than raising."""
    return decode_words(unfold(to_text(raw)))


def decode_words(text: str) -> str:
    """RFC 2047 encoded words in `text` decoded. White space between two encoded words goes;
    adjacent encoded words in one charset are decoded together (a character may be split
    between them). An encoded word whose payload cannot be decoded stays as written; an unknown
    charset is read as UTF-8, else Latin-1."""
    if "=?" not in text:
        return text
    out: list[str] = []
    word_charset: str | None = None  # charset of the encoded word(s) in `word_bytes`
    word_bytes = b""
    gap_start = 0
    for m in _ENCODED_WORD.finditer(text):
        data = _word_payload(m.group(2), m.group(3))
        if data is None:
            continue  # stays part of the text around it
        gap = text[gap_start:m.start()]
        charset = m.group(1).partition("*")[0].lower()  # RFC 2231 language suffix dropped
        gap_is_space = not gap.strip(" \t\r\n")
        if word_charset is None:
            out.append(gap)
        elif gap_is_space and charset == word_charset:
            word_bytes += data
            gap_start = m.end()
            continue
        else:
            out.append(_decode_bytes(word_bytes, word_charset))
            if not gap_is_space:
                out.append(gap)
        word_charset, word_bytes = charset, data
        gap_start = m.end()
    if word_charset is not None:
        out.append(_decode_bytes(word_bytes, word_charset))
    out.append(text[gap_start:])
    return "".join(out)


def _word_payload(encoding: str, payload: str) -> bytes | None:
    if encoding in "bB":
        data = _NOT_BASE64.sub("", payload)
        data = data[: len(data) - len(data) % 4] if len(data) % 4 == 1 else data + "=" * (-len(data) % 4)
        try:
            return base64.b64decode(data)
        except (binascii.Error, ValueError):
            return None
    data = payload.encode("utf-8", "surrogateescape").replace(b"_", b" ")
    return _QP_ESCAPE.sub(lambda m: bytes([int(m.group(1), 16)]), data)


def _decode_bytes(data: bytes, label: str) -> str:
    codec = charset_codec(label)
    if codec is not None:
        try:
            return data.decode(codec, "replace")
        except Exception:  # codecs that fail even with "replace" (NUL in a label, ...)
            pass
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("latin-1")


# ---------------------------------------------------------------------------------------------
# Domains and addresses

def domain_a_label(domain: str, *, strict: bool = True) -> str:
    """The form permitted domains are stored and compared in: IDNA 2008 with the UTS #46
    mapping (lower case, full-width letters folded, zero-width and soft-hyphen characters
    dropped, every IDNA dot a dot, `faß` kept as `faß`), each label an A-label
    (`bücher.example` -> `xn--bcher-kva.example`), no trailing dot (also one left over when a
    label maps to nothing). ASCII labels stay as they are (lower case). A label IDNA 2008
    refuses raises UnicodeError when `strict`; else the label loses any invisible character
    (control, format, space, unassigned) and is mapped as far as it can be and punycoded as it
    is: a look-alike of our domain must not escape the comparison by being invalid."""
    text = domain if strict else _visible(domain)
    mapped = _uts46_map(text, strict)
    labels = mapped.split(".")
    while len(labels) > 1 and labels[-1] == "":
        labels.pop()
    if not strict and sum(map(len, labels)) + len(labels) - 1 > MAX_DOMAIN_LENGTH and not mapped.isascii():
        return ".".join(label.lower() if label.isascii() else _overlong_label(label) for label in labels)
    return ".".join(_a_label(label, strict) for label in labels)


def _uts46_map(text: str, strict: bool) -> str:
    try:
        return idna.uts46_remap(text, std3_rules=False, transitional=False)
    except idna.IDNAError:
        if strict:
            raise
    out = []
    for c in text:
        try:
            out.append(idna.uts46_remap(c, std3_rules=False, transitional=False))
        except idna.IDNAError:
            out.append(c.lower())
    return unicodedata.normalize("NFC", "".join(out))


# RFC 1035 limits. An A-label is never shorter than its U-label, so a longer label or domain
# cannot be a real one, and IDNA's punycoding (quadratic in the label's distinct characters)
# is not worth its cost on it.
MAX_LABEL_LENGTH = 63
MAX_DOMAIN_LENGTH = 253


def _a_label(label: str, strict: bool) -> str:
    if label.isascii():
        return label.lower()
    if len(label) > MAX_LABEL_LENGTH:
        if strict:
            raise UnicodeError(f"label of {len(label)} characters is longer than {MAX_LABEL_LENGTH}")
        return _overlong_label(label)
    try:
        return idna.alabel(label).decode("ascii")
    except (idna.IDNAError, UnicodeError, IndexError):  # IndexError: idna 3.3 on some empty remaps
        if strict:
            raise UnicodeError(f"label {label!r} is not valid IDNA 2008") from None
    label = _visible(label)
    if label.isascii():
        return label.lower()
    try:
        return "xn--" + label.encode("punycode").decode("ascii")
    except UnicodeError:  # lone surrogates
        return label


def _overlong_label(label: str) -> str:
    """A stand-in for a non-ASCII label that cannot be part of a real domain: distinct per
    label, and never equal to a host-name label (`!` is no letter, digit or hyphen)."""
    digest = hashlib.sha256(label.encode("utf-8", "surrogatepass")).hexdigest()[:16]
    return f"!overlong-{digest}"


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


class Mailbox(NamedTuple):
    name: str  # display name, encoded words decoded; "" if none
    address: str  # as written, without comments, white space and angle brackets
    normalized: str  # normalize_address(address): what comparisons use


# Fields whose values are address lists (RFC 5322 3.6.2, 3.6.3, 3.6.6).
ADDRESS_FIELDS = frozenset({
    "from", "sender", "reply-to", "to", "cc", "bcc",
    "resent-from", "resent-sender", "resent-to", "resent-cc", "resent-bcc",
})

_ATOM = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_PLAIN_ADDRESS = rf"{_ATOM}(?:\.{_ATOM})*@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*"
# One mailbox in the forms nearly all mail uses (`a@b`, `<a@b>`, `Plain Name <a@b>`): the
# answer the full parser below would give, without its cost, on the milter's path.
_PLAIN_MAILBOX = re.compile(rf"\s*(?:(?:({_ATOM}(?: {_ATOM})*) )?<({_PLAIN_ADDRESS})>|({_PLAIN_ADDRESS}))\s*")
_WS = " \t\r\n"
_STOP = _WS + '"(<>,;:@.['
# Specials an encoded word may hold and still be one atom of a display name.
_SPECIALS_BUT_NAME_PUNCTUATION = re.compile(r'[][()<>;@\\"]')


def mailboxes(raw: bytes | str) -> list[Mailbox]:
    """The mailboxes of an address header value, as mail readers find them: RFC 5322 with its
    obsolete forms, comments and groups, and the common breakages (`ceo@ours.example
    <ceo@ours.example>`: an unquoted `@` in the display name, the angle-addr is the address;
    `Big Bug bb@bug.com`: no angle brackets, the word with the `@` is the address). Entries
    without an `@` are left out.

    The addresses are parsed before encoded words are decoded (RFC 2047 forbids them in
    addresses): a display name that decodes to `<x@y>` must not hide the real address."""
    text = unfold(to_text(raw))
    plain = _PLAIN_MAILBOX.fullmatch(text)
    if plain:
        name, bracketed, bare = plain.groups()
        address = bracketed or bare
        return [Mailbox(_display_name(name or ""), address, address.lower())]
    return _parse_mailboxes(text)


def parse_addresses(raw: bytes | str) -> list[tuple[str, str]]:
    """(display name, normalized address) pairs from an address header value (`mailboxes`)."""
    return [(m.name, m.normalized) for m in mailboxes(raw)]


def first_address(raw: bytes | str | None) -> str:
    if raw is None:
        return ""
    found = mailboxes(raw)
    return found[0].normalized if found else ""


# An `@` and the domain after it (or the name in a [domain literal]), wherever it stands.
_AT_DOMAIN = re.compile(r'@\s*(?:\[([^]\s]*)|([^][()<>,;:@\\"\s]+))')
_LOCAL_STOP = re.compile(r'[][()<>,;:@\\"\s]')
_SHOWN_LOCAL_LENGTH = 64


def written_addresses(raw: bytes | str, domains: Collection[str]) -> list[str]:
    """Every `local@domain` a reader could take for an address in a header value whose domain
    is one of `domains` (in `domain_a_label` form), as `local@domain` for messages: found in
    the raw text, in its RFC 2047-decoded text and in that text NFKC-folded (a full-width
    `＠`), in display names and comments too, the domain ending at the first special that is
    not a dot. Stricter than `mailboxes` by design: what a mail client may show or reply to,
    not what the field means."""
    wanted = _u_forms(frozenset(domains))
    raw_text = unfold(to_text(raw))
    decoded = decode_words(raw_text)
    seen: set[str] = set()
    found: list[str] = []
    for text in dict.fromkeys((raw_text, decoded, unicodedata.normalize("NFKC", decoded))):
        for m in _AT_DOMAIN.finditer(text):
            written = m.group(1) if m.group(1) is not None else m.group(2)
            if written in seen:
                continue
            seen.add(written)
            domain = wanted.get(_u_form(written))
            if domain is None:
                continue
            start = max(0, m.start() - _SHOWN_LOCAL_LENGTH)
            local = _LOCAL_STOP.split(text[start:m.start()])[-1]
            found.append("".join(c for c in local if c.isprintable()).lower() + "@" + domain)
    return found


def _u_form(domain: str) -> str:
    """`domain` as `domain_a_label(strict=False)` maps it, each label left a U-label: equal to
    a valid domain's U-label form exactly when the A-labels are equal (punycode is one to one),
    without the cost of punycoding every candidate."""
    if domain.isascii() and domain.isprintable():
        return domain.lower().rstrip(".")
    labels = _uts46_map(_visible(domain), False).split(".")
    while len(labels) > 1 and labels[-1] == "":
        labels.pop()
    return ".".join(label.lower() if label.isascii() else label for label in labels)


@functools.lru_cache(maxsize=16)
def _u_forms(domains: frozenset[str]) -> dict[str, str]:
    """U-label form -> A-label form of each of `domains` (both keys for an internationalized
    one)."""
    forms = {}
    for domain in domains:
        forms[domain] = domain
        try:
            forms[".".join(idna.ulabel(label) if label.startswith("xn--") else label
                           for label in domain.split("."))] = domain
        except (idna.IDNAError, UnicodeError):
            pass
    return forms


def format_mailbox(name: str, address: str) -> str:
    """`name <address>`, the name quoted when it has to be (email.utils.formataddr's rule, less
    its RFC 2047 encoding): text that parses back to the same mailbox."""
    if not name:  # an address with specials in it is only one mailbox in angle brackets
        return f"<{address}>" if _SPECIALS_IN_ADDRESS.search(address) else address
    if _NEEDS_QUOTES.search(name):
        name = '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return f"{name} <{address}>"


_NEEDS_QUOTES = re.compile(r'[][\\()<>@,:;".]|^\s|\s$|\s\s|[\r\n\t]|=\?')
_SPECIALS_IN_ADDRESS = re.compile(r'[][\\()<>,:;"\s]')


def decode_field(name: str, raw: bytes | str) -> str:
    """A header field's value as text (`decode_value`). In an address field whose encoded words
    decode to specials (`=?utf-8?q?Foo,_Bar?= <f@x>`), the mailboxes are written out again with
    their display names quoted, so the text still parses as the same mailboxes."""
    text = decode_value(raw)
    if name.lower() not in ADDRESS_FIELDS or not _ENCODED_WORD.search(unfold(to_text(raw))):
        return text
    found = mailboxes(raw)
    if not found:  # what decoding made look like an address is none
        return unfold(to_text(raw)) if mailboxes(text) else text
    return ", ".join(format_mailbox(m.name, m.address) for m in found)


def _display_name(name: str) -> str:
    return decode_words(name) if "=?" in name else name


# -- the full parser ------------------------------------------------------------------------------

def _parse_mailboxes(text: str) -> list[Mailbox]:
    result = []
    for chunk in _split_mailboxes(_tokens(text)):
        found = _mailbox(chunk)
        if found is not None:
            result.append(found)
    return result


def _tokens(text: str) -> list[tuple[str, str]]:
    """(kind, text) tokens: "ws", "qs" (quoted string, unescaped), "comment" (unescaped, nested
    comments kept as text), "literal" ([domain literal]), "atom", or the special itself as kind
    (`<>,;:@.`). Unterminated quotes, comments and literals run to the end."""
    out: list[tuple[str, str]] = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c in _WS:
            j = i + 1
            while j < n and text[j] in _WS:
                j += 1
            out.append(("ws", text[i:j]))
            i = j
        elif c == '"' or c == "(":
            buf = []
            depth = 1
            i += 1
            while i < n:
                ch = text[i]
                if ch == "\\" and i + 1 < n:
                    buf.append(text[i + 1])
                    i += 2
                    continue
                i += 1
                if c == '"' and ch == '"':
                    break
                if c == "(" and ch in "()":
                    depth += 1 if ch == "(" else -1
                    if depth == 0:
                        break
                buf.append(ch)
            out.append(("qs" if c == '"' else "comment", "".join(buf)))
        elif c == "[":
            j = text.find("]", i)
            j = n if j < 0 else j + 1
            out.append(("literal", text[i:j]))
            i = j
        elif c in "<>,;:@.":
            out.append((c, c))
            i += 1
        elif (word := _ENCODED_WORD.match(text, i)) and not _SPECIALS_BUT_NAME_PUNCTUATION.search(word.group()):
            # Mailers put raw commas, dots and colons inside Q-encoded display names
            # (=?utf-8?q?Doe,_John?=), so such an encoded word is one atom; one holding any
            # other special is not, so it cannot open a comment, end a group or hide an address
            # from the heuristics.
            out.append(("atom", word.group()))
            i = word.end()
        else:
            j = i + 1
            while j < n and text[j] not in _STOP:
                j += 1
            out.append(("atom", text[i:j]))
            i = j
    return out


def _split_mailboxes(tokens: list[tuple[str, str]]) -> list[list[tuple[str, str]]]:
    """Top-level `,` separates mailboxes; a group's name (up to `:`) and its `;` are dropped."""
    chunks: list[list[tuple[str, str]]] = []
    chunk: list[tuple[str, str]] = []
    chunk_has_at = False
    in_angle = False
    for tok in tokens:
        kind = tok[0]
        if kind == "<":
            in_angle = True
        elif kind == ">":
            in_angle = False
        elif kind == "@":
            chunk_has_at = True
        elif not in_angle:
            if kind in ",;":
                chunks.append(chunk)
                chunk, chunk_has_at = [], False
                continue
            if kind == ":" and not chunk_has_at:
                chunk = []  # the group's display name
                continue
        chunk.append(tok)
    chunks.append(chunk)
    return chunks


def _mailbox(chunk: list[tuple[str, str]]) -> Mailbox | None:
    first = left = None  # the first `<` (the display name is before it), the current one
    for i, (kind, _) in enumerate(chunk):
        if kind == "<" and left is None:
            first = i if first is None else first
            left = i
        elif left is not None and (kind == ">" or i == len(chunk) - 1):
            right = i if kind == ">" else len(chunk)
            inner = chunk[left + 1:right]
            if any(k == "@" for k, _ in inner):
                name = _phrase(chunk[:first]) or _comment_name(chunk[:first] + chunk[right + 1:])
                return _make(name, _addr_spec(inner))
            left = None
    words = _words([t for t in chunk if t[0] not in ("comment", "<", ">")])
    with_at = [i for i, w in enumerate(words) if any(k == "@" for k, _ in w)]
    if not with_at:
        return None
    at = with_at[-1]
    address = _addr_spec(words[at])
    name = " ".join(_phrase(w) for w in words[:at] + words[at + 1:]) or _comment_name(chunk)
    return _make(name, address)


def _make(name: str, address: str) -> Mailbox | None:
    normalized = normalize_address(address)
    local, _, domain = normalized.rpartition("@")
    if not local or not domain:
        return None
    return Mailbox(_display_name(name), address, normalized)


def _words(tokens: list[tuple[str, str]]) -> list[list[tuple[str, str]]]:
    """Runs of tokens between white space, white space next to `.` or `@` not counting
    (`john . doe @ example . org` is one address in RFC 5322's obsolete syntax)."""
    words: list[list[tuple[str, str]]] = []
    current: list[tuple[str, str]] = []
    pending_space = False
    for tok in tokens:
        if tok[0] == "ws":
            pending_space = True
            continue
        if pending_space and current and tok[0] not in ".@" and current[-1][0] not in ".@":
            words.append(current)
            current = []
        pending_space = False
        current.append(tok)
    if current:
        words.append(current)
    return words


_DOT_ATOM = re.compile(r"[^\s\"(),.:;<>@\[\\\]]+(?:\.[^\s\"(),.:;<>@\[\\\]]+)*")


def _addr_spec(tokens: list[tuple[str, str]]) -> str:
    """The address in an angle-addr or word: comments and white space gone, an obsolete source
    route (`@relay:`) dropped, a quoted local part quoted only if it needs to be."""
    parts = [t for t in tokens if t[0] not in ("ws", "comment")]
    if parts and parts[0][0] == "@" and any(k == ":" for k, _ in parts):
        last_colon = max(i for i, (k, _) in enumerate(parts) if k == ":")
        parts = parts[last_colon + 1:]
    out = []
    for kind, value in parts:
        if kind == "qs":
            escaped = value.replace("\\", "\\\\").replace('"', '\\"')
            out.append(value if _DOT_ATOM.fullmatch(value) else f'"{escaped}"')
        else:
            out.append(value)
    ats = [i for i, (kind, _) in enumerate(parts) if kind == "@"]
    if not ats:
        return "".join(out)
    local, domain = "".join(out[:ats[-1]]), "".join(out[ats[-1] + 1:])
    return f"{local}@{_domain_part(domain)}"


def _domain_part(text: str) -> str:
    """The domain at the start of `text`: a [domain literal], else up to the first special
    that is not a dot (`ours.example:` and `ours.example]` are `ours.example`)."""
    if text.startswith("["):
        end = text.find("]")
        return text if end < 0 else text[:end + 1]
    return _DOMAIN_TEXT.match(text).group()


_DOMAIN_TEXT = re.compile(r'[^][()<>,;:@\\"\s]*')


def _phrase(tokens: list[tuple[str, str]]) -> str:
    """Display-name text: quoted strings unquoted, comments and runs of white space one space
    between words."""
    out: list[str] = []
    space = False
    for kind, value in tokens:
        if kind in ("ws", "comment"):
            space = True
            continue
        if space and out:
            out.append(" ")
        space = False
        out.append(value)
    return "".join(out)


def _comment_name(tokens: list[tuple[str, str]]) -> str:
    """`a@b (Name)`: with no display name, the first comment stands for it."""
    for kind, value in tokens:
        if kind == "comment" and value.strip():
            return " ".join(value.split())
    return ""
