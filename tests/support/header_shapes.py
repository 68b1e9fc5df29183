"""Odd header-section shapes and what Postfix passes a milter for each (header callbacks and
body), read from Postfix's smtpd.c (a leading "From " line becomes X-Mailbox-Line; a first
line starting with white space gets an empty line before it) and mime_state.c (fields,
continuations, "name : value" read as "name: value", the first other line ends the section;
the empty separator line is not passed on). tests/e2e/test_payload_shapes.py checks this
table against the real Postfix; tests/unit/test_header_shapes.py checks message.normalize
against it."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Shape:
    id: str
    raw: bytes  # what the client sends after DATA
    headers: list[tuple[str, bytes]]  # the milter's header callbacks: name, value after the colon
    body: bytes  # the milter's body
    # the Postfix versions that pass the milter this ([from, before); None: any) where they differ
    postfix: tuple[tuple[int, int] | None, tuple[int, int] | None] = (None, None)

    def applies_to(self, version: tuple[int, int]) -> bool:
        since, before = self.postfix
        return (since is None or version >= since) and (before is None or version < before)

    def as_milter_spools(self) -> bytes:
        """The message as mxhook-milter spools it: the header callbacks (Postfix folds with
        LF, the milter writes CRLF), an empty line, the body."""
        block = b"".join(name.encode("ascii") + b":" + value.replace(b"\n", b"\r\n") + b"\r\n"
                         for name, value in self.headers)
        return block + b"\r\n" + self.body


_FAKE = b"From: ceo@ours.example\r\nSubject: Wire the money\r\nDate: Thu, 03 Dec 2026 09:00:00 +0000\r\n"
_PLAIN = b"From: a@sender.example\r\nSubject: s\r\n"

SHAPES = [
    Shape("first line white space",
          b" \r\n" + _FAKE + b"\r\nPay now.\r\n",
          [], b" \r\n" + _FAKE + b"\r\nPay now.\r\n"),
    Shape("first line white space and text",
          b"\tnote\r\n" + _FAKE + b"\r\nPay now.\r\n",
          [], b"\tnote\r\n" + _FAKE + b"\r\nPay now.\r\n"),
    Shape("first line empty",
          b"\r\n" + _FAKE + b"\r\nPay now.\r\n",
          [], _FAKE + b"\r\nPay now.\r\n"),
    Shape("a line without a colon",
          _PLAIN + b"Not a header line\r\nX-After: 1\r\n\r\nbody\r\n",
          [("From", b" a@sender.example"), ("Subject", b" s")],
          b"Not a header line\r\nX-After: 1\r\n\r\nbody\r\n"),
    Shape("a colon without a name",
          _PLAIN + b": no name\r\n\r\nbody\r\n",
          [("From", b" a@sender.example"), ("Subject", b" s")], b": no name\r\n\r\nbody\r\n"),
    Shape("8-bit in a field name",
          _PLAIN + b"X-Caf\xc3\xa9: 1\r\n\r\nbody\r\n",
          [("From", b" a@sender.example"), ("Subject", b" s")], b"X-Caf\xc3\xa9: 1\r\n\r\nbody\r\n"),
    Shape("obs-fold: white-space-only continuation lines",
          b"Subject: one\r\n \r\n\t two\r\nFrom: a@sender.example\r\n\r\nbody\r\n",
          [("Subject", b" one\n \n\t two"), ("From", b" a@sender.example")], b"body\r\n"),
    Shape("obs-field: white space before the colon",
          b"Subject\t:s\r\nFrom : a@sender.example\r\n\r\nbody\r\n",
          [("Subject", b"s"), ("From", b" a@sender.example")], b"body\r\n"),
    Shape("obs-field From first: an mbox line to smtpd",
          b"From : ceo@ours.example\r\nSubject: s\r\n\r\nbody\r\n",
          [("X-Mailbox-Line", b" From : ceo@ours.example"), ("Subject", b" s")], b"body\r\n"),
    Shape("mbox From_ line",
          b"From a@sender.example Thu Dec  3 09:00:00 2026\r\n" + _PLAIN + b"\r\nbody\r\n",
          [("X-Mailbox-Line", b" From a@sender.example Thu Dec  3 09:00:00 2026"),
           ("From", b" a@sender.example"), ("Subject", b" s")], b"body\r\n"),
    # Postfix 3.7 (Debian 12) ends the header section at the white-space line; 3.10 (Debian 13)
    # reads it as a continuation of X-Mailbox-Line, and the lines after it as header fields
    # (there, a From in our domain is refused as the heuristic says: _PLAIN keeps it accepted).
    Shape("mbox From_ line then white space",
          b">From a@sender.example\r\n " + b"\r\n" + _FAKE + b"\r\nPay now.\r\n",
          [("X-Mailbox-Line", b" >From a@sender.example")], b" \r\n" + _FAKE + b"\r\nPay now.\r\n",
          postfix=(None, (3, 10))),
    Shape("mbox From_ line then white space, Postfix 3.10",
          b">From a@sender.example\r\n " + b"\r\n" + _PLAIN + b"\r\nbody\r\n",
          [("X-Mailbox-Line", b" >From a@sender.example\n "), ("From", b" a@sender.example"),
           ("Subject", b" s")], b"body\r\n", postfix=((3, 10), None)),
]
# mxhook's own splitter (model.message.split_headers, used on a message as sent) reads a message
# as Postfix 3.7 does; what a milter is passed and spools is what every payload is made from.
SPLITTER_VERSION = (3, 7)
