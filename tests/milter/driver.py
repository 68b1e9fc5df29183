"""A small driver for the milter adapter: one SMTP connection driven the way libmilter drives
it (negotiation with what Postfix offers, then the callbacks in protocol order with bytes, the
macros Postfix sends), recording what the milter did: its reply and its recipient changes.
It is also the milter context pymilter's Base calls into (getsymval, setreply, addrcpt, delrcpt)."""
from __future__ import annotations

import socket

import Milter

from mxhook.daemons.milter import Wiring

# Postfix offers every protocol option; the milter's negotiation keeps those it wants.
OFFERED = (Milter.CURR_ACTS, 0x1FFFFF, 0, 0)


class Connection:
    def __init__(self, wiring: Wiring, client=("192.0.2.7", "mail.sender.example"),
                 helo="mail.sender.example", port=40000):
        self.milter = wiring.factory()()
        self.macros: dict[str, str] = {}
        self.reply: tuple | None = None
        self.added: list[tuple[str, str | None]] = []
        self.deleted: list[str] = []
        self.at_eom = False  # libmilter allows recipient changes at end of message only
        self.milter._setctx(self)
        self.milter.negotiate(list(OFFERED))
        self.milter.connect(client[1], socket.AF_INET, (client[0], port))
        self.milter.hello(helo)

    # -- the context pymilter's Base calls ----------------------------------------------------

    def setpriv(self, priv):
        pass

    def getsymval(self, name):
        return self.macros.get(name)

    def setreply(self, code, xcode, *text):
        self.reply = (code, xcode, *text)

    def addrcpt(self, rcpt, params):
        assert self.at_eom, "addrcpt outside end of message"
        self.added.append((rcpt, params))

    def delrcpt(self, rcpt):
        assert self.at_eom, "delrcpt outside end of message"
        self.deleted.append(rcpt)

    # -- SMTP, as Postfix relays it ---------------------------------------------------------

    def mail(self, sender: str, *params: str):
        self.reply, self.added, self.deleted = None, [], []
        return self.milter.envfrom_bytes(sender.encode(), *(p.encode() for p in params))

    def rcpt(self, recipient: str, *params: str):
        self.reply = None
        return self.milter.envrcpt_bytes(recipient.encode(), *(p.encode() for p in params))

    def data(self, headers: list[tuple[str, bytes]], body: bytes = b""):
        """Header fields, end of headers, then the body and end of message unless end of
        headers answered: (stage, answer)."""
        for name, value in headers:
            self.milter.header_bytes(name, value)
        rc = self.milter.eoh()
        if rc != Milter.CONTINUE:
            return "eoh", rc
        if body:
            self.milter.body(body)
        self.at_eom = True
        try:
            return "eom", self.milter.eom()
        finally:
            self.at_eom = False

    def send(self, rcpts, headers, body=b"Hello\r\n", mail_from="<alice@sender.example>",
             queue_id="4QX1"):
        """One message through the callbacks: (stage, answer) of the first answer that is not
        CONTINUE, or of end of message."""
        self.macros["i"] = queue_id
        rc = self.mail(mail_from)
        if rc not in (Milter.CONTINUE, Milter.NOREPLY):  # envfrom is @noreply
            return "mail", rc
        for r in rcpts:
            rc = self.rcpt(r)
            if rc != Milter.CONTINUE:
                return "rcpt", rc
        return self.data(headers, body)
