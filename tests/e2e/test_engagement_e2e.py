"""Engagement events end to end (issue 19's proof): the real private Postfix with mxhook-milter,
mxhook-spooler, mxhook-logfollow and a real mxhook-track process on a loopback port, tracking
on for the sending domain (opens, clicks, one-click unsubscribe), an event endpoint with
`--events all` at a real HTTP receiver.

An application sends an HTML message to one recipient; from the copy smtp-sink keeps, the test
takes the pixel URL, the rewritten link and the List-Unsubscribe URL and uses them as a reader
would: the pixel fetched by a browser (a person's open) and by Gmail's image proxy (a machine's,
with its reason), the link clicked (a 302 to the original URL, not followed further), the
RFC 8058 one-click POST, and a spam complaint (an ARF report quoting the message's reference
header) mailed through the same Postfix to `[tracking] feedback_address`. The receiver gets
`opened`, `clicked`, `unsubscribed` and `complained`, each with the message's fields from its
`queued` event; the next message from the sending domain to the recipient is refused at RCPT
with a `blocked` event, while another sending domain may still mail them.

`[tracking] public_url` is plain http on loopback: the config takes `http://` as it takes
`https://` (`mxhook check` warns about it), and TLS is a reverse proxy's job in front of
mxhook-track anyway (docs/tracking-endpoint.md), so the test talks to it as the proxy would.
"""
from __future__ import annotations

import base64
import email
import email.policy
import http.client
import os
import re
import shutil
import tempfile
from urllib.parse import urlsplit

import pytest

from tests.e2e.test_events import add_endpoint, find, has_all, wait_events
from tests.e2e.test_tracking_e2e import APP, RCPT, SUBMISSION, delivered, html_message, html_of
from tests.support.postfix import free_port

pytestmark = pytest.mark.e2e

SENDING_DOMAIN = APP.rpartition("@")[2]
FEEDBACK = "fbl@ours.example"
BROWSER = "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0"
GMAIL = "Mozilla/5.0 (Windows NT 5.1; rv:11.0) Gecko Firefox/11.0 (via ggpht.com GoogleImageProxy)"
TOKEN = r"/([A-Za-z0-9_.-]+)"


@pytest.fixture
def workdir():
    # smtp-sink runs as postfix and writes the delivered copy here
    directory = tempfile.mkdtemp(prefix="mxhook-engagement-")
    os.makedirs(os.path.join(directory, "sink"))
    for path in (directory, os.path.join(directory, "sink")):
        os.chmod(path, 0o777)
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def stack(make_stack, workdir):
    key_file = os.path.join(workdir, "tracking.key")
    with open(key_file, "w") as f:
        f.write(base64.b64encode(os.urandom(32)).decode() + "\n")
    port = free_port()
    st = make_stack(
        logfollow=True, track=True, listeners=SUBMISSION,
        sinks={"keep": ["-d", os.path.join(workdir, "sink", "%M.")]},
        transport={RCPT.rpartition("@")[2]: "keep"},
        config={"tracking": {"public_url": f"http://127.0.0.1:{port}", "listen": f"127.0.0.1:{port}",
                             "key_file": key_file, "feedback_address": FEEDBACK,
                             # the test clicks seconds after sending, as a gateway's scanner would
                             "machine_click_seconds": "0"}})
    st.cli("tracking", "set", SENDING_DOMAIN, "--opens", "--clicks", "--unsubscribe")
    add_endpoint(st, "/events", "--events", "all")
    st.wait_milter_snapshot()
    return st


def request(st, method: str, url: str, user_agent: str = BROWSER, body: bytes | None = None):
    """(status, headers) of one request to mxhook-track, redirects not followed."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
    headers = {"User-Agent": user_agent}
    if body is not None:
        headers["Content-Type"] = "application/x-www-form-urlencoded"
    try:
        conn.request(method, parts.path, body=body, headers=headers)
        resp = conn.getresponse()
        resp.read()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}
    finally:
        conn.close()


def arf_report(reference: str, message_id: str) -> bytes:
    """A feedback-loop report (RFC 5965) quoting the original's headers, recipient redacted."""
    return (
        f"From: fbl@isp.example\r\nTo: {FEEDBACK}\r\nSubject: FW: Your offer\r\n"
        "Message-ID: <fbl-1@isp.example>\r\nMIME-Version: 1.0\r\n"
        'Content-Type: multipart/report; report-type=feedback-report; boundary="arf"\r\n\r\n'
        "--arf\r\nContent-Type: text/plain\r\n\r\nA recipient reported this message as spam.\r\n\r\n"
        "--arf\r\nContent-Type: message/feedback-report\r\n\r\n"
        "Feedback-Type: abuse\r\nUser-Agent: ISP-FBL/1.0\r\nVersion: 1\r\n"
        f"Original-Mail-From: <{APP}>\r\nArrival-Date: Thu, 3 Dec 2026 10:00:00 +0000\r\n"
        "Source-IP: 127.0.0.1\r\n\r\n"
        "--arf\r\nContent-Type: text/rfc822-headers\r\n\r\n"
        f"From: App <{APP}>\r\nTo: redacted@isp.example\r\nSubject: Your offer\r\n"
        f"Message-ID: {message_id}\r\nX-Mxhook-Ref: {reference}\r\n\r\n"
        "--arf--\r\n"
    ).encode()


def test_open_click_unsubscribe_and_complaint_reach_the_endpoint_and_suppress(stack, workdir):
    st = stack
    public = st.cfg.values["tracking"]["public_url"]
    res = st.send(APP, [RCPT], html_message(None), port=st.postfix.ports["submission"])
    assert res.accepted, res

    message = delivered(workdir)
    parsed = email.message_from_bytes(message, policy=email.policy.default)
    message_id = parsed["Message-ID"]
    html = html_of(message)
    [pixel] = re.findall(re.escape(public) + "/o" + TOKEN, html)
    [click] = re.findall(re.escape(public) + "/c" + TOKEN, html)
    unsubscribe = re.fullmatch(rf"<({re.escape(public)}/u{TOKEN})>", parsed["List-Unsubscribe"]).group(1)
    assert parsed["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"

    assert request(st, "GET", f"{public}/o/{pixel}")[0] == 200
    assert request(st, "GET", f"{public}/o/{pixel}", GMAIL)[0] == 200
    status, headers = request(st, "GET", f"{public}/c/{click}")
    assert (status, headers["location"]) == (302, "https://shop.example/offer?id=1&x=2")
    assert request(st, "POST", unsubscribe, body=b"List-Unsubscribe=One-Click")[0] == 200
    assert request(st, "GET", f"{public}/o/{pixel[:-2]}xx")[0] == 404  # forged: no event
    complaint = st.send("fbl@isp.example", [FEEDBACK], arf_report(parsed["X-Mxhook-Ref"], message_id))
    assert complaint.accepted, complaint

    evs = wait_events(st, lambda evs: len(find(evs, "opened", RCPT)) == 2 and has_all(
        [("clicked", RCPT), ("unsubscribed", RCPT), ("complained", RCPT), ("registered", RCPT)])(evs))
    engagement = [e for e in evs if e["type"] in ("opened", "clicked", "unsubscribed", "complained")]
    for e in engagement:  # joined with the message's queued event by queue id
        assert (e["queue_id"], e["recipient"], e["sender"]) == (res.queue_id, RCPT, APP), e
        assert (e["subject"], e["message_id"]) == ("Your offer", message_id), e
        assert e["engagement"]["sending_domain"] == SENDING_DOMAIN, e
    person, proxy = sorted(find(evs, "opened", RCPT), key=lambda e: e["engagement"]["machine"])
    assert person["source"] == "track"
    assert (person["engagement"]["machine"], person["engagement"]["machine_reason"]) == (False, None)
    assert (person["engagement"]["client"], person["engagement"]["user_agent"]) == ("Firefox", BROWSER)
    assert (proxy["engagement"]["machine"], proxy["engagement"]["machine_reason"]) == (True, "gmail_image_proxy")
    (clicked,) = find(evs, "clicked", RCPT)
    assert clicked["engagement"]["url"] == "https://shop.example/offer?id=1&x=2"
    assert (clicked["engagement"]["link"], clicked["engagement"]["machine"]) == (0, False)
    (unsubscribed,) = find(evs, "unsubscribed", RCPT)
    assert unsubscribed["source"] == "track"
    (complained,) = find(evs, "complained", RCPT)
    assert complained["source"] == "feedback" and complained["engagement"]["feedback_type"] == "abuse"

    # suppressed for the sending domain: refused at RCPT with a blocked event
    st.wait_milter_snapshot()
    again = st.send(APP, [RCPT], html_message(None), port=st.postfix.ports["submission"])
    assert again.rcpt[RCPT].code == 550, again
    wait_events(st, lambda evs: [e for e in find(evs, "blocked", RCPT) if e["source"] == "milter"])
    # another sending domain may still mail the recipient
    other = st.send("news@other.example", [RCPT],
                    b"From: news@other.example\r\nTo: " + RCPT.encode() + b"\r\nSubject: hi\r\n\r\nhi\r\n",
                    port=st.postfix.ports["submission"])
    assert other.rcpt[RCPT].code == 250, other
