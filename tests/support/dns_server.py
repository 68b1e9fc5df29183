"""The DNS of the authentication tests: a zone ({(name, type): [values]}, the table
`mxhook.mailauth.resolvers.StaticResolver` reads), DKIM keys made and published in it, messages
signed with them, and `DnsServer`, a real UDP server on 127.0.0.1 answering the same zone, so the
dnspython resolver (and the milter daemon, through `[authentication] nameservers`) can be
pointed at it.
"""
from __future__ import annotations

import base64
import socket
import threading

import dkim
import dns.flags
import dns.message
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa


class Key:
    """A DKIM key pair: `private` as dkimpy's sign() takes it, `record` as published."""

    def __init__(self, algorithm: str = "rsa", bits: int = 1024):
        self.algorithm = algorithm
        if algorithm == "rsa":
            key = rsa.generate_private_key(public_exponent=65537, key_size=bits)
            self.private = key.private_bytes(serialization.Encoding.PEM,
                                             serialization.PrivateFormat.TraditionalOpenSSL,
                                             serialization.NoEncryption())
            public = key.public_key().public_bytes(serialization.Encoding.DER,
                                                   serialization.PublicFormat.SubjectPublicKeyInfo)
            self.record = "v=DKIM1; k=rsa; p=" + base64.b64encode(public).decode()
            self.signature_algorithm = b"rsa-sha256"
        else:
            key = ed25519.Ed25519PrivateKey.generate()
            seed = key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                                     serialization.NoEncryption())
            public = key.public_key().public_bytes(serialization.Encoding.Raw,
                                                   serialization.PublicFormat.Raw)
            self.private = base64.b64encode(seed)
            self.record = "v=DKIM1; k=ed25519; p=" + base64.b64encode(public).decode()
            self.signature_algorithm = b"ed25519-sha256"


def publish(zone: dict, key: Key, selector: str, domain: str) -> None:
    zone[(f"{selector}._domainkey.{domain}", "TXT")] = [key.record]


def sign(message: bytes, key: Key, selector: str, domain: str) -> bytes:
    """`message` with a DKIM-Signature of `domain` on top (relaxed/simple)."""
    header = dkim.sign(message, selector.encode(), domain.encode(), key.private,
                       signature_algorithm=key.signature_algorithm,
                       include_headers=[b"from", b"to", b"subject", b"date", b"message-id"])
    return header + message


def arc_seal(message: bytes, key: Key, selector: str, domain: str, authserv_id: str,
             results: str) -> bytes:
    """`message` with an Authentication-Results of `authserv_id` and the ARC set sealing it."""
    with_results = f"Authentication-Results: {authserv_id}; {results}\r\n".encode() + message
    headers = dkim.arc_sign(with_results, selector.encode(), domain.encode(), key.private,
                            authserv_id.encode(),
                            include_headers=[b"from", b"to", b"subject", b"date",
                                             b"message-id"])
    return b"".join(headers) + with_results


def _rdata_text(rdtype: str, value) -> str:
    if rdtype == "TXT":
        data = value.encode() if isinstance(value, str) else value
        chunks = [data[i:i + 255] for i in range(0, len(data), 255)] or [b""]
        return " ".join('"' + c.decode().replace("\\", "\\\\").replace('"', '\\"') + '"'
                        for c in chunks)
    if rdtype == "MX":
        return f"{value[0]} {value[1].rstrip('.')}."
    if rdtype == "PTR":
        return value.rstrip(".") + "."
    return value


class DnsServer:
    """A UDP DNS server on 127.0.0.1 (a free port) answering `zone`; names in `servfail` get
    SERVFAIL, names in `silent` no answer at all. Use as a context manager; `nameserver` is
    the 'address:port' for `[authentication] nameservers`."""

    def __init__(self, zone: dict, *, servfail=(), silent=()):
        self.zone = {(n.rstrip(".").lower(), t.upper()): v for (n, t), v in zone.items()}
        self.servfail = {n.rstrip(".").lower() for n in servfail}
        self.silent = {n.rstrip(".").lower() for n in silent}
        self.queries = 0
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.settimeout(0.2)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="test-dns", daemon=True)

    @property
    def nameserver(self) -> str:
        host, port = self._sock.getsockname()
        return f"{host}:{port}"

    def __enter__(self) -> "DnsServer":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(5)
        self._sock.close()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                wire, peer = self._sock.recvfrom(4096)
            except socket.timeout:
                continue
            except OSError:
                return
            self.queries += 1
            try:
                reply = self._answer(dns.message.from_wire(wire))
            except Exception:
                continue  # not a query we can read: no answer, as a real server would do
            if reply is not None:
                self._sock.sendto(reply, peer)

    def _answer(self, query: dns.message.Message) -> bytes | None:
        question = query.question[0]
        name = question.name.to_text(omit_final_dot=True).lower()
        rdtype = dns.rdatatype.to_text(question.rdtype)
        if name in self.silent:
            return None
        response = dns.message.make_response(query)
        response.flags |= dns.flags.AA
        if name in self.servfail:
            response.set_rcode(dns.rcode.SERVFAIL)
        elif (name, rdtype) in self.zone:
            texts = [_rdata_text(rdtype, v) for v in self.zone[(name, rdtype)]]
            response.answer.append(dns.rrset.from_text_list(question.name, 300, dns.rdataclass.IN,
                                                            rdtype, texts))
        elif not any(n == name for n, _ in self.zone):
            response.set_rcode(dns.rcode.NXDOMAIN)
        return response.to_wire()
