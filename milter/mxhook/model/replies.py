"""Stripped replies: the new text of a reply without the quoted thread, its signature, and the
same for HTML where the quoting structure is recognised. Pure; linear in the input.

Hand-written: neither Debian 12 nor 13 packages a Python reply parser (talon,
email-reply-parser and quotequail are PyPI-only; Debian has only Ruby's and Perl's), and talon
needs a trained classifier. docs/payloads.md "Stripped replies" says what is recognised.

Text (`strip_text`), line by line:
1. The thread starts at the first *marker*: an Outlook-style separator (`-----Original
   Message-----` and its translations), a forward marker (`---------- Forwarded message
   ---------`, `Begin forwarded message:`, ...), or an Outlook header block (a `From:` line
   followed within a few lines by a `Sent:`/`Date:` line and a `To:`/`Subject:` line, or by
   both `To:` and `Subject:` when the `From:` line has an address; in several languages),
   with the `____` rule Outlook puts above it. Everything from there on is the thread. A
   forward's own new text, above its marker, is kept.
2. Of what is above, a trailing block of `>` lines is the thread, with the attribution line
   (`On ... wrote:`, also wrapped over two lines, and its translations) above it. `>` lines
   followed by new text are an interleaved (or bottom-posted) reply: kept, all of it.
3. The signature is cut from the end of what is left: from the last `-- ` line; else from a
   mobile sign-off (`Sent from my iPhone`, ...); else the few short lines (name, title,
   phone) after a closing phrase (`Best regards,`, `Mit freundlichen Grüßen`, ...), the
   phrase staying in the text. When a candidate does not look like a signature, nothing is cut.

HTML (`strip_html`) with the stdlib html.parser, never by rewriting HTML with patterns: the
elements that hold a quoted thread (Gmail `div.gmail_quote`, Apple Mail and Thunderbird
`blockquote type="cite"` and Thunderbird's `moz-cite-prefix`) are removed when no text
follows them; from Outlook's `#appendonsend` / `#divRplyFwdMsg` (and Outlook desktop's
bordered header block) everything to the end is removed. The result's text is then checked
with the text rules: when it still holds a quote or marker (a structure not recognised), the
answer is "" rather than a wrong cut. An HTML body without any sign of quoting is returned as
it is.
"""
from __future__ import annotations

import bisect
import re
from dataclasses import dataclass
from html.parser import HTMLParser

# Lines longer than these are never markers, attributions or signature lines: pattern work per
# line stays bounded, so the whole is linear in the input.
MAX_MARKER_LINE = 400
MAX_SIGNATURE_LINE = 80
HEADER_BLOCK_SPAN = 8  # lines after a From: line in which Sent:/Date: and To:/Subject: are looked for
MAX_SIGNATURE_LINES = 30  # non-blank lines after `-- ` (disclaimers are long)
MAX_CLOSING_LINES = 6  # non-blank lines after a closing phrase
MAX_QUOTE_PREFIX = 8  # `> ` per blockquote level in an HTML body's text, up to this many
MAX_END_TAG_SEARCH = 64  # open elements an end tag is matched against (unclosed markup stays linear)


@dataclass(frozen=True)
class Stripped:
    text: str  # the new text, without quoted thread and signature
    signature: str  # the signature block cut from it, "" when none
    html: str  # the HTML without its quoted thread; "" when unsure or no HTML


def strip(text: str, html: str) -> Stripped:
    """The stripped reply of a message's text and HTML bodies. Without a text body, the text
    and signature come from the HTML's text."""
    has_text = bool(text.strip())
    if not has_text and html:
        text = html_text(html)
    stripped_text, signature, threaded = _strip_text(text)
    if not html:
        return Stripped(stripped_text, signature, "")
    if has_text and not threaded and not _may_quote(html):
        # neither body shows quoting: the HTML needs no parse (most mail that is not a reply)
        return Stripped(stripped_text, signature, html)
    return Stripped(stripped_text, signature, strip_html(html))


# ---------------------------------------------------------------------------------------------
# Patterns

def _alternation(words) -> str:
    return "|".join(re.escape(w) for w in sorted(words, key=len, reverse=True))


_FROM = ("From", "Von", "De", "Van", "Da", "Od", "От", "Från", "Fra", "Lähettäjä", "Feladó",
         "Kimden", "Remetente", "发件人", "寄件者", "寄件人", "差出人", "送信者")
_SENT = ("Sent", "Date", "Gesendet", "Datum", "Envoyé", "Envoyé le", "Enviado", "Enviado el",
         "Enviada em", "Fecha", "Verzonden", "Inviato", "Data", "Wysłano", "Wysłane",
         "Отправлено", "Дата", "Skickat", "Sendt", "Lähetetty", "Elküldve", "Gönderildi",
         "Tarih", "发送时间", "时间", "日期", "寄件日期", "送信日時", "日付")
_TO = ("To", "An", "À", "A", "Para", "Aan", "Do", "Кому", "Till", "Til", "Vastaanottaja",
       "Címzett", "Kime", "收件人", "收件者", "宛先")
_SUBJECT = ("Subject", "Betreff", "Objet", "Asunto", "Assunto", "Onderwerp", "Oggetto", "Temat",
            "Тема", "Ämne", "Emne", "Aihe", "Tárgy", "Konu", "主题", "主旨", "件名")


def _label(words) -> re.Pattern:
    # `*From:*` (Markdown-ish bold of converted HTML), `De :` (French space before the colon)
    return re.compile(r"\s*\*{0,2}(?:%s)\*{0,2}[ \u00a0]?[:：]" % _alternation(words), re.IGNORECASE)


_FROM_LINE, _SENT_LINE = _label(_FROM), _label(_SENT)
_TO_LINE, _SUBJECT_LINE = _label(_TO), _label(_SUBJECT)

# The words between the dashes of a separator line, and forward markers standing alone
# (compared in lower case, without the trailing colon)
_SEPARATOR_WORDS = frozenset(w.lower() for w in (
    "Original Message", "Ursprüngliche Nachricht", "Original-Nachricht", "Originalnachricht",
    "Message d'origine", "Message original", "Mensaje original", "Mensagem original",
    "Oorspronkelijk bericht", "Origineel bericht", "Messaggio originale", "Wiadomość oryginalna",
    "Oryginalna wiadomość", "Исходное сообщение", "Ursprungligt meddelande", "Oprindelig meddelelse",
    "Opprinnelig melding", "Alkuperäinen viesti", "原始邮件", "原始郵件", "元のメッセージ",
    "Forwarded message", "Forwarded Message", "Weitergeleitete Nachricht", "Message transféré",
    "Mensaje reenviado", "Mensagem encaminhada", "Doorgestuurd bericht", "Messaggio inoltrato",
    "Wiadomość przekazana", "Przekazana wiadomość", "Пересылаемое сообщение",
    "Пересланное сообщение", "Vidarebefordrat meddelande", "Videresendt meddelelse",
    "Videresendt melding", "转发的邮件", "已转发邮件", "転送されたメッセージ", "Reply message",
))
_FORWARD_LINES = frozenset(w.lower() for w in (
    "Begin forwarded message", "Anfang der weitergeleiteten Nachricht",
    "Début du message réexpédié", "Début du message transféré", "Inicio del mensaje reenviado",
    "Comienzo del mensaje reenviado", "Início da mensagem reencaminhada",
    "Begin doorgestuurd bericht", "Inizio messaggio inoltrato", "Początek przekazywanej wiadomości",
    "Начало переадресованного сообщения", "Vidarebefordrat mejl", "以下是转发的邮件",
    "転送されたメッセージ",
))


class _LineStart:
    """A pattern anchored at line starts, searched as the first line's match and then as a
    newline followed by it (a literal first character: the regex engine skips ahead fast,
    where a multiline `^` is tried at every position)."""

    def __init__(self, pattern: str, flags: int = 0):
        self.first = re.compile(pattern, flags)
        self.later = re.compile("\n" + pattern, flags)


# Where a marker may start (checked further line by line): a line starting with a rule of
# dashes (underscores, ...), a From: label or a forward line's first word; quoted lines never.
_MARKER_WORDS = (*_FROM, *{line.split()[0] for line in _FORWARD_LINES})
_MARKER_HINT = _LineStart(
    # the lookahead (the words' first letters) turns most lines away before the alternation
    r"[ \t]*+(?=[-_=*%s])(?:[-_=*]{2}|\*{0,2}(?:%s)\*{0,2}[ \u00a0]?[:：]|(?:%s))" % (
        re.escape("".join(sorted({w[0].lower() + w[0].upper() for w in _MARKER_WORDS}))),
        _alternation(_FROM), _alternation({line.split()[0] for line in _FORWARD_LINES})),
    re.IGNORECASE)
_QUOTED_LINE = _LineStart(r"[ \t]*+>")
# a line ending in a colon (one pattern per colon: a literal first character is found fast)
_COLON_ENDS = tuple(re.compile(colon + r"[ \t]*+(?=\n|\Z)") for colon in (":", "："))
_SEPARATOR = re.compile(r"\s*[-_=*]{2,}\s*([^-_=*].{0,60}?)\s*[-_=*]{2,}\s*")
_UNDERSCORE_RULE = re.compile(r"\s*_{10,}\s*")

# Attribution lines, matched on one line or two joined (Gmail wraps long ones)
_ATTRIBUTION = re.compile(
    r"\s*(?:"
    r"On\s.{1,%(n)d}\swrote\s?:"                              # en
    r"|Am\s.{1,%(n)d}\sschrieb\b.{0,%(n)d}:"                   # de
    r"|Le\s.{1,%(n)d}\sa\s+écrit[ \u00a0]?:"                   # fr
    r"|El\s.{1,%(n)d}\s(?:escribió|escribio)\s?:"              # es
    r"|Em\s.{1,%(n)d}\sescreveu\s?:"                           # pt
    r"|Op\s.{1,%(n)d}\sschreef\b.{0,%(n)d}:"                   # nl
    r"|Op\s.{1,%(n)d}\sheeft\s.{1,%(n)d}\shet volgende geschreven\s?:"  # nl (Apple Mail)
    r"|Il\s.{1,%(n)d}\sha\s+scritto\s?:"                       # it
    r"|W\s+dniu\s.{1,%(n)d}\s(?:pisze|napisał\(a\)|napisał|napisała)\s?:"  # pl
    r"|(?:Den|På)\s.{1,%(n)d}\sskrev\b.{0,%(n)d}:"             # sv, da, no
    r"|.{1,%(n)d}\s(?:пишет|написал\(а\)|написал|написала)\s?:"  # ru
    r"|.{1,%(n)d}写道\s?[：:]"                                  # zh
    r"|.{1,%(n)d}님이\s?작성\s?[：:]"                           # ko
    r"|.{1,%(n)d}(?:のメール|のメッセージ|は書きました|が書きました)\s?[：:]"  # ja (Apple, Thunderbird)
    r"|(?=[^<>]{0,%(n)d}\d)[^<>]{1,%(n)d}<[^<>\s]+@[^<>\s]+>\s?[：:]"  # Gmail, any language: date, name <address>:
    r")\s*" % {"n": MAX_MARKER_LINE}, re.IGNORECASE)

_DIGIT = re.compile(r"\d")
_MOBILE = re.compile(
    r"\s*(?:Sent from my\s.{1,40}|Sent from (?:Outlook|Mail|Yahoo Mail|Proton Mail)\b.{0,40}"
    r"|Get Outlook for\s.{1,60}|Von meinem\s.{1,40}\sgesendet|Gesendet von meinem\s.{1,40}"
    r"|Gesendet mit\s.{1,40}|Envoyé de mon\s.{1,40}|Envoyé depuis mon\s.{1,40}"
    r"|Enviado desde mi\s.{1,40}|Enviado do meu\s.{1,40}|(?:Verzonden|Verstuurd) (?:vanaf|met) mijn\s.{1,40}"
    r"|Inviato da(?:l mio)?\s.{1,40}|Wysłane z(?: mojego)?\s.{1,40}|Отправлено с\s.{1,40}"
    r"|Skickat från min\s.{1,40}|Sendt fra min\s.{1,40}|从我的.{1,20}发送|发自我的.{1,20}"
    r"|.{1,20}から送信|.{1,20}에서 보냄)\s*",
    re.IGNORECASE)
_CLOSINGS = frozenset(w.lower() for w in (
    "Thanks", "Thank you", "Thanks again", "Many thanks", "Thanks a lot", "Thx", "Cheers", "Best",
    "Best regards", "Kind regards", "Regards", "Warm regards", "Best wishes", "All the best",
    "Sincerely", "Yours sincerely", "Yours truly", "Yours", "BR",
    "Mit freundlichen Grüßen", "Mit freundlichen Grüssen", "Freundliche Grüße", "Viele Grüße",
    "Beste Grüße", "Liebe Grüße", "Schöne Grüße", "Gruß", "Grüße", "MfG", "LG",
    "Cordialement", "Bien cordialement", "Bien à vous", "Merci", "Salutations", "Amitiés",
    "Saludos", "Un saludo", "Saludos cordiales", "Atentamente", "Gracias", "Un abrazo",
    "Atenciosamente", "Abraços", "Obrigado", "Obrigada",
    "Met vriendelijke groet", "Met vriendelijke groeten", "Groeten", "Groet", "Mvg",
    "Cordiali saluti", "Saluti", "Distinti saluti", "Grazie", "Un saluto",
    "Pozdrawiam", "Z poważaniem", "Pozdrowienia", "Dziękuję",
    "С уважением", "Спасибо", "Всего доброго", "Всего наилучшего",
    "Med vänliga hälsningar", "Vänliga hälsningar", "Hälsningar", "Mvh", "Med venlig hilsen",
    "Venlig hilsen", "Vennlig hilsen", "Ystävällisin terveisin",
    "此致", "此致敬礼", "谢谢", "祝好", "よろしくお願いします", "よろしくお願いいたします",
))
_CLOSING_TRAIL = " \t,.!;:、。！，"


# ---------------------------------------------------------------------------------------------
# Text

def _blank(line: str) -> bool:
    return not line.strip()


def _quoted(line: str) -> bool:
    return line.lstrip(" \t").startswith(">")


def _short(line: str, limit: int = MAX_MARKER_LINE) -> bool:
    return len(line) <= limit


def _separator(line: str) -> bool:
    if not _short(line, 120):
        return False
    m = _SEPARATOR.fullmatch(line)
    if m is not None:
        return m.group(1).strip().lower() in _SEPARATOR_WORDS
    return line.strip().rstrip(":： \u00a0").lower() in _FORWARD_LINES


def _header_block(lines: list[str], i: int) -> bool:
    """Whether an Outlook-style header block (From:, then Sent:/Date: and To:/Subject:) starts
    at line i."""
    if not _short(lines[i]) or _FROM_LINE.match(lines[i]) is None:
        return False
    sent = to = subject = False
    for line in lines[i + 1:i + 1 + HEADER_BLOCK_SPAN]:
        if not _short(line) or _quoted(line):
            continue
        sent = sent or _SENT_LINE.match(line) is not None
        to = to or _TO_LINE.match(line) is not None
        subject = subject or _SUBJECT_LINE.match(line) is not None
        # From: and Sent:/Date: with To: or Subject:; or, without a date (mobile clients),
        # an address in From: with both To: and Subject:
        if (sent and (to or subject)) or (to and subject and "@" in lines[i]):
            return True
    return False


class _Lines:
    """A text's lines, and the line index of an offset for offsets asked in increasing order
    (each newline is counted once: linear)."""

    def __init__(self, text: str):
        self.text = text
        self.lines = text.split("\n")
        self._pos = self._index = 0

    def index(self, offset: int) -> int:
        if offset < self._pos:  # a new pass from the start
            self._pos = self._index = 0
        self._index += self.text.count("\n", self._pos, offset)
        self._pos = offset
        return self._index

    def starting(self, pattern: _LineStart) -> list[int]:
        """The indexes of the lines that start with `pattern`, in order."""
        out = [0] if pattern.first.match(self.text) else []
        out += [self.index(m.start()) + 1 for m in pattern.later.finditer(self.text)]
        self._pos = self._index = 0
        return out

    def holding(self, pattern: re.Pattern) -> list[int]:
        """The indexes of the lines where `pattern` matches, in order (one per match)."""
        out = [self.index(m.start()) for m in pattern.finditer(self.text)]
        self._pos = self._index = 0
        return out


def _first_marker(text: _Lines) -> int | None:
    """The line where a separator, forward marker or Outlook header block starts the thread."""
    lines = text.lines
    for i in text.starting(_MARKER_HINT):
        if _separator(lines[i]):
            return i
        if _header_block(lines, i):
            j = i - 1
            while j >= 0 and _blank(lines[j]):
                j -= 1
            if j >= 0 and _short(lines[j], 200) and (_UNDERSCORE_RULE.fullmatch(lines[j])
                                                     or _SEPARATOR.fullmatch(lines[j])):
                return j
            return i
    return None


def _attribution_at(lines: list[str], k: int) -> int | None:
    """The first line of an attribution that ends at line k (one line, or two joined), or None."""
    if _short(lines[k]) and _ATTRIBUTION.fullmatch(lines[k]):
        return k
    if k > 0 and not _blank(lines[k - 1]) and not _quoted(lines[k - 1]) \
            and _short(lines[k - 1] + lines[k]) \
            and _ATTRIBUTION.fullmatch(lines[k - 1].rstrip() + " " + lines[k].lstrip()):
        return k - 1
    return None


def _thread_start(text: _Lines) -> int | None:
    """Where the quoted thread starts (a line index), or None when there is none."""
    lines = text.lines
    end = _first_marker(text)
    cut = end
    if end is None:
        end = len(lines)
    k = end - 1
    quoted = False
    while k >= 0 and (_blank(lines[k]) or _quoted(lines[k])):
        quoted = quoted or _quoted(lines[k])
        k -= 1
    if k < 0:
        return 0 if quoted else cut
    # an attribution followed by nothing but quotes, blank lines and the marker: Gmail's
    # plain text of an HTML-only quote ends with it too
    attribution = _attribution_at(lines, k)
    if attribution is not None:
        return attribution
    if quoted:
        return k + 1
    return cut if cut is not None else _unquoted_thread(text, end)


def _unquoted_thread(text: _Lines, end: int) -> int | None:
    """An attribution with a date and an address followed by the old message without `>`
    (Yahoo, converted HTML): only when no `>` line follows it, so a bottom-posted reply under a
    quote is never cut."""
    lines = text.lines
    after = max((i for i in text.starting(_QUOTED_LINE) if i < end), default=0)
    for i in sorted(set(text.holding(_COLON_ENDS[0]) + text.holding(_COLON_ENDS[1]))):
        if after < i < end:
            line = lines[i]
            if _short(line) and "@" in line and _DIGIT.search(line) and _ATTRIBUTION.fullmatch(line) \
                    and any(not _blank(rest) for rest in lines[i + 1:i + 3]):
                return i
    return None


def _signature_start(lines: list[str]) -> tuple[int, bool] | None:
    """(first line of the signature, whether that line stays in the text), or None."""
    first = next((i for i, line in enumerate(lines) if not _blank(line)), None)
    nonblank = []  # the last non-blank lines' indexes, in order
    for i in range(len(lines) - 1, -1, -1):
        if len(nonblank) > MAX_SIGNATURE_LINES:
            break
        if not _blank(lines[i]):
            nonblank.insert(0, i)
    if first is None or len(nonblank) < 2:
        return None
    for i in reversed(nonblank):
        if lines[i].rstrip(" ") == "--":  # `-- ` (RFC 3676), or with its space lost
            return (i, False) if i > first else None
    for i in reversed(nonblank[-4:]):
        if _short(lines[i], MAX_SIGNATURE_LINE) and _MOBILE.fullmatch(lines[i]):
            return (i, False) if i > first else None
    for i in reversed(nonblank[-(MAX_CLOSING_LINES + 1):-1]):
        line = lines[i]
        if not _short(line, MAX_SIGNATURE_LINE):
            continue
        if line.strip().rstrip(_CLOSING_TRAIL).lower() in _CLOSINGS:
            after = [lines[j] for j in nonblank if j > i]
            if _looks_like_signature(after):
                return (i, True)
            return None
    return None


def _looks_like_signature(after: list[str]) -> bool:
    """Lines after a closing phrase: a name first (a few words, no sentence end), then short
    contact lines."""
    if not after or len(after) > MAX_CLOSING_LINES:
        return False
    name = after[0].strip()
    if len(name) > 40 or len(name.split()) > 5 or name[-1:] in ".?!:;" or _quoted(name):
        return False
    return all(_short(line, MAX_SIGNATURE_LINE) and not _quoted(line) for line in after)


def _trim(lines: list[str]) -> str:
    """The lines without the blank ones around them, and without trailing white space."""
    first = next((i for i, line in enumerate(lines) if not _blank(line)), len(lines))
    last = next((i for i in range(len(lines) - 1, first - 1, -1) if not _blank(lines[i])), first - 1)
    return "\n".join(lines[first:last + 1]).rstrip()


def strip_text(text: str) -> tuple[str, str]:
    """(the new text without the quoted thread and the signature, the signature)."""
    return _strip_text(text)[:2]


def _strip_text(text: str) -> tuple[str, str, bool]:
    """strip_text's answer, and whether a quoted thread was cut."""
    lines = _Lines(text)
    cut = _thread_start(lines)
    lines = lines.lines if cut is None else lines.lines[:cut]
    sig = _signature_start(lines)
    if sig is None:
        return _trim(lines), "", cut is not None
    start, keep_line = sig
    if keep_line:
        return _trim(lines[:start + 1]), _trim(lines[start + 1:]), cut is not None
    return _trim(lines[:start]), _trim(lines[start:]), cut is not None


def has_thread(text: str) -> bool:
    """Whether the text holds a quoted thread the text rules would cut."""
    return _thread_start(_Lines(text)) is not None


# ---------------------------------------------------------------------------------------------
# HTML

_VOID = frozenset(("area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta",
                   "source", "track", "wbr"))
_BLOCK = frozenset(("address", "article", "aside", "blockquote", "br", "dd", "div", "dl", "dt",
                    "fieldset", "figure", "footer", "form", "h1", "h2", "h3", "h4", "h5", "h6",
                    "header", "hr", "li", "main", "nav", "ol", "p", "pre", "section", "table",
                    "tbody", "td", "tfoot", "th", "thead", "tr", "ul"))
_HIDDEN = frozenset(("head", "script", "style", "title", "template"))
_SPACES = re.compile(r"[ \t\n\r\f\u00a0]+")


_QUOTING_WORDS = ("gmail_quote", "cite", "appendonsend", "divrplyfwdmsg", "outlookmessageheader",
                  "border-top", "<blockquote")


def _may_quote(html: str) -> bool:
    """Whether the HTML has any of the quoting structures strip_html looks for."""
    lowered = html.lower()
    return any(word in lowered for word in _QUOTING_WORDS)


class _Element:
    __slots__ = ("tag", "start", "end", "parent", "kind")

    def __init__(self, tag: str, start: int, parent: "_Element | None", kind: str | None):
        self.tag, self.start, self.end, self.parent, self.kind = tag, start, None, parent, kind


def _kind(tag: str, attrs: list[tuple[str, str | None]]) -> str | None:
    """'quote' (removed when no text follows) or 'rest' (removed with everything after it)."""
    values = {name: (value or "") for name, value in attrs}
    classes = values.get("class", "").split()
    ident = values.get("id", "")
    if tag == "div" and ("gmail_quote" in classes or "gmail_quote_container" in classes):
        return "quote"
    if tag == "blockquote" and values.get("type", "").lower() == "cite":
        return "quote"
    if "moz-cite-prefix" in classes:
        return "quote"
    if ident in ("appendonsend", "divRplyFwdMsg") or "OutlookMessageHeader" in classes:
        return "rest"
    if tag == "div" and "border-top:solid" in values.get("style", "").replace(" ", "").lower():
        return "outlook-border"  # Outlook desktop: decided by its text (a From: line)
    return None


class _Html(HTMLParser):
    """One pass over an HTML body: its elements with source offsets (for cutting) and its text
    (blocks as lines, quote blocks as `> ` lines)."""

    def __init__(self, source: str):
        super().__init__(convert_charrefs=True)
        self.source = source
        self.line_starts = [0]
        for m in re.finditer("\n", source):
            self.line_starts.append(m.end())
        self.root = _Element("#root", 0, None, None)
        self.stack: list[_Element] = [self.root]
        self.elements: list[_Element] = []
        self.texts: list[tuple[int, _Element]] = []  # (offset, innermost element) of non-blank text
        self.lines: list[str] = []
        self.line: list[str] = []
        self.quote_depth = 0
        self.line_depth = 0
        self.hidden = 0

    def position(self) -> int:
        line, col = self.getpos()
        return self.line_starts[line - 1] + col

    def newline(self) -> None:
        text = _SPACES.sub(" ", "".join(self.line)).strip()
        if text or (self.lines and self.lines[-1]):
            self.lines.append("> " * min(self.line_depth, MAX_QUOTE_PREFIX) + text if text else "")
        self.line = []
        self.line_depth = self.quote_depth

    def handle_starttag(self, tag, attrs):
        start = self.position()
        if tag == "body":  # a head left open ends where the body starts, as in browsers
            self.close_element("head", start)
        if tag in _BLOCK:
            self.newline()
        if tag == "blockquote":
            self.quote_depth += 1
            self.line_depth = self.quote_depth
        if tag in _VOID:
            return
        if tag in _HIDDEN:
            self.hidden += 1
        element = _Element(tag, start, self.stack[-1], _kind(tag, attrs))
        self.stack.append(element)
        self.elements.append(element)

    def handle_startendtag(self, tag, attrs):
        if tag in _BLOCK:
            self.newline()

    def handle_endtag(self, tag):
        if tag in _BLOCK:
            self.newline()
        end = self.source.find(">", self.position())
        self.close_element(tag, len(self.source) if end < 0 else end + 1)

    def close_element(self, tag: str, end: int) -> None:
        """Close the innermost open `tag` element (among the last MAX_END_TAG_SEARCH) and the
        elements left open inside it; nothing when none is open."""
        for n in range(len(self.stack) - 1, max(0, len(self.stack) - 1 - MAX_END_TAG_SEARCH), -1):
            if self.stack[n].tag == tag:
                for element in self.stack[n:]:
                    element.end = end
                    if element.tag in _HIDDEN:
                        self.hidden -= 1
                    elif element.tag == "blockquote":
                        self.quote_depth -= 1
                self.line_depth = min(self.line_depth, self.quote_depth)
                del self.stack[n:]
                return

    def handle_data(self, data):
        if self.hidden:
            return
        if data.strip(" \t\n\r\f\u00a0"):
            self.texts.append((self.position(), self.stack[-1]))
        if not self.line:
            self.line_depth = self.quote_depth
        self.line.append(data)

    def text(self) -> str:
        self.newline()
        return "\n".join(self.lines)


def _parse(html: str) -> _Html:
    parser = _Html(html)
    parser.feed(html)
    parser.close()
    return parser


def html_text(html: str) -> str:
    """The text of an HTML body: one line per block, blockquote lines prefixed `> `."""
    return _parse(html).text()


def _element_text(parser: _Html, element: _Element) -> str:
    end = len(parser.source) if element.end is None else element.end
    inner = parser.source[element.start:min(end, element.start + 4 * MAX_MARKER_LINE)]
    return html_text(inner)


def strip_html(html: str) -> str:
    """The HTML without its quoted thread; the HTML as it is when it shows no quoting; "" when
    it shows quoting in a structure not recognised."""
    parser = _parse(html)
    plain = parser.text()
    rest = None
    for element in parser.elements:
        if element.kind == "rest" or (element.kind == "outlook-border" and _FROM_LINE.match(
                _element_text(parser, element).lstrip("\n")) is not None):
            rest = element
            break
    quotes = [e for e in parser.elements if e.kind == "quote"
              and (rest is None or e.start < rest.start)]
    top = _outermost(quotes)
    starts = [q.start for q in top]
    # the quote blocks after the last text outside every quote block: a trailing thread
    last_text = -1
    for offset, _element in reversed(parser.texts):
        if rest is not None and offset >= rest.start:
            continue
        n = bisect.bisect_right(starts, offset) - 1
        if n < 0 or offset >= _end(top[n]):
            last_text = offset
            break
    removed = [e for e in top if e.start > last_text]
    attribution = _attribution_element(parser, last_text, removed)
    if attribution is not None:
        removed.insert(0, attribution)
    if rest is None and not removed:
        return "" if has_thread(plain) else html
    out, pos = [], 0
    for e in removed:
        out.append(html[pos:e.start])
        pos = len(html) if e.end is None else e.end
        if e.end is None:
            out.append(_closing(e.parent))
            break
    if rest is not None and pos <= rest.start:
        out.append(html[pos:rest.start])
        out.append(_closing(rest.parent))
    elif pos < len(html) and (not removed or removed[-1].end is not None):
        out.append(html[pos:])
    result = "".join(out)
    return "" if has_thread(html_text(result)) else result


def _attribution_element(parser: _Html, last_text: int, removed: list[_Element]) -> _Element | None:
    """The element before the removed quotes that holds the last text and nothing but an
    attribution (Apple Mail puts `On ... wrote:` in a div before the blockquote)."""
    if not removed or last_text < 0:
        return None
    element = next(e for offset, e in reversed(parser.texts) if offset == last_text)
    if element.tag == "#root" or element.end is None or element.end > removed[0].start:
        return None
    text = _element_text(parser, element).strip()
    if "\n" in text or not _short(text) or _ATTRIBUTION.fullmatch(text) is None:
        return None
    return element


def _end(element: _Element) -> float:
    return float("inf") if element.end is None else element.end


def _outermost(quotes: list[_Element]) -> list[_Element]:
    """The quote elements not inside another one (`quotes` in source order)."""
    out, end = [], -1.0
    for e in quotes:
        if e.start >= end:
            out.append(e)
            end = _end(e)
    return out


def _closing(element: _Element | None) -> str:
    """End tags for `element` and its ancestors, innermost first."""
    tags = []
    while element is not None and element.tag != "#root":
        tags.append(f"</{element.tag}>")
        element = element.parent
    return "".join(tags)
