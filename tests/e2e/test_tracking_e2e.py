"""Tracking end to end: an application sends HTML mail through the real private Postfix, with
tracking on for its sending domain; mxhook-milter rewrites it, Debian's dkimpy-milter (the
second milter, after mxhook's, as docs/tracking.md says) signs it, and the copy smtp-sink keeps
has tracked links, the open pixel, the one-click unsubscribe headers, the reference header, no
X-Mxhook-Track, and a DKIM signature that verifies (dkimpy's `dkim.verify`, its DNS lookup
answering with the test key). With the signer first, the signature breaks: what `mxhook
check` warns about."""
from __future__ import annotations

import base64
import email
import json
import email.policy
import glob
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from email.message import EmailMessage

import dkim
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from mxhook.model import tracktokens
from mxhook.model.keyring import parse_keys
from tests.support.daemons import MILTER_SOCKET_SPEC

pytestmark = pytest.mark.e2e

DKIMPY_MILTER = shutil.which("dkimpy-milter") or "/usr/bin/dkimpy-milter"
PUBLIC = "https://t.example.com"
APP = "news@app.example"
RCPT = "bob@rcpt.example"
SUBMISSION = {"submission": {"milter_macro_daemon_name": "ORIGINATING"}}
KEY = base64.b64encode(os.urandom(32)).decode()
SIGNED = ("from", "to", "subject", "date", "message-id", "mime-version", "content-type",
          "list-unsubscribe", "list-unsubscribe-post")
HTML = ('<html><body><p>Hello Bob,</p>\n'
        '<p><a href="https://shop.example/offer?id=1&amp;x=2">See the offer</a> or\n'
        '<a href="mailto:help@app.example">write to us</a>.</p>\n</body></html>\n')


@pytest.fixture
def workdir():
    # smtp-sink (as postfix) and dkimpy-milter (as postfix) write here: not pytest's root-only tmp
    directory = tempfile.mkdtemp(prefix="mxhook-tracking-")
    os.chmod(directory, 0o777)
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


class DkimpyMilter:
    """Debian's dkimpy-milter signing mail from app.example (selector `test`), on a unix socket."""

    def __init__(self, directory: str):
        self.dir = directory
        self.socket = os.path.join(directory, "dkimpy.sock")
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.key_path = os.path.join(directory, "dkim.key")
        with open(self.key_path, "wb") as f:
            f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption()))
        public = key.public_key().public_bytes(serialization.Encoding.DER,
                                               serialization.PublicFormat.SubjectPublicKeyInfo)
        self.txt = b"v=DKIM1; k=rsa; p=" + base64.b64encode(public)
        self.conf = os.path.join(directory, "dkimpy-milter.conf")
        with open(self.conf, "w") as f:
            f.write(f"Syslog no\nUMask 0\nMode s\nSocket local:{self.socket}\nDomain app.example\n"
                    f"Selector test\nKeyFile {self.key_path}\nUserID postfix\n"
                    "InternalHosts 127.0.0.1\n"
                    # RFC 8058 asks for both fields under the signature (not a default of dkimpy)
                    f"SignHeaders {','.join(SIGNED)}\n")
        self.proc: subprocess.Popen | None = None

    def start(self) -> "DkimpyMilter":
        # run as root it reads the key, then drops to postfix (UserID): smtpd can use its socket
        self.log = open(os.path.join(self.dir, "dkimpy.out"), "wb")
        self.proc = subprocess.Popen([DKIMPY_MILTER, self.conf], stdout=self.log,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 15
        while not os.path.exists(self.socket):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"dkimpy-milter did not start: {open(self.log.name).read()}")
            time.sleep(0.1)
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        self.log.close()

    def dns(self, name, timeout=5):
        return self.txt if name == b"test._domainkey.app.example." else None


@pytest.fixture
def signer(workdir):
    if not os.path.exists(DKIMPY_MILTER):
        pytest.fail("dkimpy-milter is not installed: apt-get install dkimpy-milter (make test does)")
    milter = DkimpyMilter(workdir).start()
    yield milter
    milter.stop()


def tracking_stack(make_stack, workdir, signer, *, signer_first=False):
    key_file = os.path.join(workdir, "tracking.key")
    with open(key_file, "w") as f:
        f.write(KEY + "\n")
    ours, theirs = MILTER_SOCKET_SPEC, f"unix:{signer.socket}"
    milters = f"{theirs}, {ours}" if signer_first else f"{ours}, {theirs}"
    os.makedirs(os.path.join(workdir, "sink"), mode=0o777)
    os.chmod(os.path.join(workdir, "sink"), 0o777)
    st = make_stack(permit=(), listeners=SUBMISSION, postfix_main_cf={"smtpd_milters": milters},
                    sinks={"keep": ["-d", os.path.join(workdir, "sink", "%M.")]},
                    transport={"rcpt.example": "keep"},
                    config={"tracking": {"public_url": PUBLIC, "key_file": key_file}})
    st.cli("tracking", "set", "app.example", "--opens", "--clicks", "--unsubscribe")
    st.wait_milter_snapshot()
    return st


def dkim_order(st) -> list[dict]:
    """`mxhook check`'s milter-order results for this Postfix."""
    proc = st.cli("check", "--postfix-dir", st.postfix.config_dir, "--json", check=False)
    return [r for r in json.loads(proc.stdout) if r["check"] == "dkim_order"]


def html_message(track_header: str | None = "opens, clicks, unsubscribe") -> bytes:
    msg = EmailMessage()
    msg["From"] = f"App <{APP}>"
    msg["To"] = RCPT
    msg["Subject"] = "Your offer"
    msg["Date"] = email.utils.formatdate()
    msg["Message-ID"] = email.utils.make_msgid(domain="app.example")
    if track_header:
        msg["X-Mxhook-Track"] = track_header
    msg.set_content("Hello Bob,\nsee the offer: https://shop.example/offer?id=1\n")
    msg.add_alternative(HTML, subtype="html")
    return msg.as_bytes(policy=email.policy.SMTP)


def delivered(workdir: str, timeout: float = 30.0) -> bytes:
    deadline = time.monotonic() + timeout
    while True:
        files = glob.glob(os.path.join(workdir, "sink", "*"))
        if files:
            time.sleep(0.2)  # smtp-sink writes the file as the message comes
            dump = open(files[0], "rb").read()
            # the message as it was sent: after smtp-sink's own X-Client-* trace lines
            return re.sub(rb"(?<!\r)\n", b"\r\n", dump[dump.index(b"Received: "):])
        if time.monotonic() > deadline:
            raise TimeoutError("no message at smtp-sink")
        time.sleep(0.2)


def html_of(message: bytes) -> str:
    parsed = email.message_from_bytes(message, policy=email.policy.default)
    return parsed.get_body(("html",)).get_content()


def test_tracked_mail_is_rewritten_before_dkimpy_milter_signs_it(make_stack, workdir, signer):
    st = tracking_stack(make_stack, workdir, signer)
    res = st.send(APP, [RCPT], html_message(), port=st.postfix.ports["submission"])
    assert res.accepted, res
    message = delivered(workdir)
    keys = parse_keys(KEY)
    parsed = email.message_from_bytes(message, policy=email.policy.default)

    assert parsed["X-Mxhook-Track"] is None
    html = html_of(message)
    [click] = re.findall(re.escape(PUBLIC) + r"/c/([A-Za-z0-9_.-]+)", html)
    track = tracktokens.verify(keys, click, kind="c")
    assert (track.url, track.link, track.recipient, track.sending_domain, track.queue_id) == (
        "https://shop.example/offer?id=1&x=2", 0, RCPT, "app.example", res.queue_id)
    assert 'href="mailto:help@app.example"' in html
    [pixel] = re.findall(re.escape(PUBLIC) + r"/o/([A-Za-z0-9_.-]+)", html)
    assert tracktokens.verify(keys, pixel, kind="o").queue_id == res.queue_id
    assert "https://shop.example/offer?id=1" in parsed.get_body(("plain",)).get_content()  # text part untouched

    [unsubscribe] = re.fullmatch(rf"<{re.escape(PUBLIC)}/u/([A-Za-z0-9_.-]+)>", parsed["List-Unsubscribe"]).groups()
    assert tracktokens.verify(keys, unsubscribe, kind="u").recipient == RCPT
    assert parsed["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert tracktokens.verify(keys, parsed["X-Mxhook-Ref"], kind="r").queue_id == res.queue_id

    # as Postfix wrote them: one space after the colon (the milter gives it: header_leading_space)
    assert re.search(rb"\r\nList-Unsubscribe: <https://", message)
    assert b"\r\nList-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n" in message

    signature = parsed["DKIM-Signature"]
    assert signature is not None, message[:2000]
    signed = re.search(r"h=([^;]+)", signature).group(1).replace(" ", "").lower().split(":")
    assert {"list-unsubscribe", "list-unsubscribe-post"} <= set(signed), signature
    assert dkim.verify(message, dnsfunc=signer.dns), message[:3000]
    assert dkim_order(st) == []


def test_a_signer_before_mxhook_signs_the_untracked_body_and_the_signature_breaks(make_stack, workdir, signer):
    st = tracking_stack(make_stack, workdir, signer, signer_first=True)
    res = st.send(APP, [RCPT], html_message(None), port=st.postfix.ports["submission"])
    assert res.accepted, res
    message = delivered(workdir)
    assert f"{PUBLIC}/o/" in html_of(message)  # tracked after it was signed
    assert not dkim.verify(message, dnsfunc=signer.dns)
    [warning] = dkim_order(st)
    assert not warning["ok"] and warning["code"] == "dkim_before_mxhook"
    assert f"dkimpy (unix:{signer.socket}) comes before mxhook's milter" in warning["message"]
