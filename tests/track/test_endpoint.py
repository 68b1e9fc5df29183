"""mxhook-track over HTTP on loopback: every route, the events it leaves in the spool (read back
from disk as soon as the answer came), refusals, key rotation, spool failure and privacy."""
from __future__ import annotations

import base64
import os
import shutil
import threading
import time

import pytest

from mxhook.model import tracktokens
from mxhook.model.events import ENGAGEMENT_KEYS
from tests.track.conftest import KEY_A, KEY_B, key_line, token

CHROME = ("Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
          "Chrome/120.0.0.0 Safari/537.36")
READER = {"User-Agent": CHROME, "X-Forwarded-For": "192.0.2.9"}
C, O, U = tracktokens.CLICK, tracktokens.OPEN, tracktokens.UNSUBSCRIBE


def test_pixel_answers_a_gif_and_records_an_opened_event(track):
    status, headers, body = track.get(f"/o/{token(O)}", headers=READER)
    assert status == 200 and headers["content-type"] == "image/gif"
    assert body.startswith(b"GIF89a") and len(body) == 43
    assert "no-store" in headers["cache-control"] and headers["pragma"] == "no-cache"
    [event] = track.events()  # on disk as soon as the answer came
    assert (event.type, event.source, event.queue_id, event.recipient) == (
        "opened", "track", "4ABC123", "alice@example.org")
    e = event.engagement
    assert set(e) == set(ENGAGEMENT_KEYS)
    assert (e["ip"], e["user_agent"], e["sending_domain"]) == ("192.0.2.9", CHROME, "shop.example")
    assert (e["client"], e["client_device"], e["client_os"]) == ("Chrome", "desktop", "Windows")
    assert (e["continent"], e["country"], e["city"]) == ("EU", "DE", "Berlin")
    assert (e["machine"], e["machine_reason"]) == (False, None)
    assert e["url"] is None and e["link"] is None


def test_head_gets_headers_only_and_a_machine_verdict(track):
    status, headers, body = track.request("HEAD", f"/o/{token(O)}", headers=READER)
    assert status == 200 and body == b"" and headers["content-length"] == "43"
    [event] = track.events()
    assert (event.engagement["machine"], event.engagement["machine_reason"]) == (True, "head_request")


def test_click_redirects_to_the_token_s_url_and_records_it(track):
    url = "https://shop.example/item?id=7&utm=x"
    status, headers, body = track.get(f"/c/{token(C, url=url, link=4)}", headers=READER)
    assert status == 302 and headers["location"] == url and body == b""
    [event] = track.events()
    assert event.type == "clicked"
    assert (event.engagement["url"], event.engagement["link"]) == (url, 4)
    assert event.engagement["machine"] is False


def test_a_click_target_is_sent_as_an_ascii_location(track):
    status, headers, _ = track.get(f"/c/{token(C, url='https://bücher.example/straße?q=a b#x')}")
    assert (status, headers["location"]) == (302, "https://xn--bcher-kva.example/stra%C3%9Fe?q=a%20b#x")
    [event] = track.events()
    assert event.engagement["url"] == "https://bücher.example/straße?q=a b#x"  # as the mail had it


def _edited(tok: str, old: str, new: str) -> str:
    """The token with its signed text edited and the tag kept: what an attacker can make."""
    head, _, tag = tok.partition(".")
    signed = base64.urlsafe_b64decode(head + "=" * (-len(head) % 4)).replace(old.encode(), new.encode())
    return base64.urlsafe_b64encode(signed).rstrip(b"=").decode() + "." + tag


@pytest.mark.parametrize("path", [
    lambda: "/c/" + _edited(token(C, url="https://shop.example/a"), "shop.example/a", "evil.example/a"),
    lambda: "/c/" + token(C, key=KEY_B),  # a key the install does not have
    lambda: "/c/" + token(O),  # an open token at the click route
    lambda: "/o/" + token(C),
    lambda: "/u/" + token(O),
    lambda: "/o/" + token(O)[:-2],
    lambda: "/o/" + token(O).replace(".", ""),
    lambda: "/o/not-a-token",
    lambda: "/o/" + tracktokens.make_token((KEY_A,), tracktokens.Track(
        tracktokens.REFERENCE, "Q", "", "d", 1)),
    lambda: "/c/" + token(C, url="javascript:alert(1)"),  # signed, but not http(s)
    lambda: "/c/" + token(C, url="ftp://shop.example/file"),
    lambda: "/c/" + token(C, url="https:///no-host"),
    lambda: "/c/" + token(C, url="https://shop.example/\r\nSet-Cookie: a=b"),
    lambda: "/c/" + token(C, url="https://sh op.example/"),
    lambda: "/c/" + token(C, url="https://shop.example:99999/"),
    lambda: "/x/" + token(O),
    lambda: "/o/" + token(O) + "/resubscribe",
    lambda: "/",
])
def test_forged_foreign_and_unusable_tokens_get_a_bare_404_and_no_event(track, path):
    status, headers, body = track.get(path(), headers=READER)
    assert (status, body) == (404, b"not found\n")
    assert track.events() == []


def test_methods_outside_a_route_are_405(track):
    status, headers, _ = track.post(f"/o/{token(O)}")
    assert status == 405 and headers["allow"] == "GET, HEAD"
    status, headers, _ = track.request("DELETE", f"/u/{token(U)}")
    assert status == 405 and headers["allow"] == "GET, HEAD, POST"
    assert track.events() == []


def test_healthz(track):
    assert track.get("/healthz")[:1] == (200,)


def test_unsubscribe_get_shows_a_page_and_changes_nothing(track):
    tok = token(U, recipient="<b>al&ice</b>@example.org")
    status, headers, body = track.get(f"/u/{tok}", headers=READER)
    page = body.decode()
    assert status == 200 and headers["content-type"] == "text/html; charset=utf-8"
    assert '<form method="post" action="">' in page and "<script" not in page.lower()
    assert "&lt;b&gt;al&amp;ice&lt;/b&gt;@example.org" in page and "<b>al" not in page
    assert f'href="{tok}/resubscribe"' in page
    assert "default-src 'none'" in headers["content-security-policy"]
    assert track.request("HEAD", f"/u/{tok}")[:1] == (200,)
    assert track.events() == []


def test_one_click_post_unsubscribes(track):
    status, _, body = track.post(f"/u/{token(U)}", headers=READER)
    assert status == 200 and b"Unsubscribed" in body
    [event] = track.events()
    assert (event.type, event.queue_id, event.recipient) == ("unsubscribed", "4ABC123", "alice@example.org")
    assert event.engagement["sending_domain"] == "shop.example"
    assert event.engagement["machine"] is None  # a POST is a person's (or their client's) act


def test_the_page_s_form_unsubscribes_too_and_an_empty_post_as_well(track):
    assert track.post(f"/u/{token(U)}", body=b"List-Unsubscribe=One-Click&x=1")[0] == 200
    assert track.post(f"/u/{token(U)}", body=b"")[0] == 200
    assert [e.type for e in track.events()] == ["unsubscribed", "unsubscribed"]


def test_resubscribe_page_then_post(track):
    tok = token(U)
    status, _, body = track.get(f"/u/{tok}/resubscribe")
    assert status == 200 and b'<form method="post"' in body
    assert track.events() == []
    status, _, body = track.post(f"/u/{tok}/resubscribe")
    assert status == 200 and b"Subscribed again" in body
    [event] = track.events()
    assert event.type == "resubscribed" and event.recipient == "alice@example.org"


def test_several_recipients_give_a_null_recipient(track):
    track.get(f"/o/{token(O, recipient='')}")
    [event] = track.events()
    assert event.recipient is None and event.queue_id == "4ABC123"


def test_keys_rotate_with_overlap_when_the_file_changes(track):
    old, new = token(O, key=KEY_A), token(O, key=KEY_B)
    assert track.get(f"/o/{new}")[0] == 404
    track.key_file.write_text(key_line(KEY_A) + key_line(KEY_B))
    assert _eventually(lambda: track.get(f"/o/{new}")[0] == 200)
    assert track.get(f"/o/{old}")[0] == 200  # overlap: both verify
    track.key_file.write_text("# A retired\n" + key_line(KEY_B))
    assert _eventually(lambda: track.get(f"/o/{old}")[0] == 404)
    assert track.get(f"/o/{new}")[0] == 200
    track.key_file.write_text("not a key\n")  # a broken file keeps the keys it replaced
    time.sleep(1.5)
    assert track.get(f"/o/{new}")[0] == 200
    assert "tracking key file" in track.log_text()


def test_a_spool_that_refuses_answers_503_and_loses_nothing(track):
    assert track.get(f"/o/{token(O)}")[0] == 200
    time.sleep(0.6)  # the open segment is sealed into new/: the next hit needs a new one
    tmp = os.path.join(track.spool_dir, "tmp")
    shutil.rmtree(tmp)
    open(tmp, "w").close()  # tmp/ is a file now: no segment can be created (root or not)
    try:
        for path in (f"/o/{token(O)}", f"/c/{token(C)}", f"/u/{token(U)}"):
            method = track.post if path.startswith("/u/") else track.get
            status, headers, _ = method(path)
            assert (status, headers["retry-after"]) == (503, "5"), path
    finally:
        os.unlink(tmp)
        os.mkdir(tmp)
    assert len(track.events()) == 1
    assert "answered 503" in track.log_text()
    assert track.get(f"/o/{token(O)}")[0] == 200  # the client's retry
    assert len(track.events()) == 2


def test_concurrent_hits_are_each_recorded_once(track):
    results = []

    def hit(n):
        results.append(track.get(f"/c/{token(C, link=n, queue_id=f'Q{n}')}", headers=READER)[0])

    threads = [threading.Thread(target=hit, args=(n,)) for n in range(24)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [302] * 24
    events = track.events()
    assert len({e.id for e in events}) == 24 and {e.queue_id for e in events} == {f"Q{n}" for n in range(24)}


def test_bot_verdicts_through_the_daemon(make_track, tmp_path):
    rules = tmp_path / "bots.rules"
    rules.write_text("agent our_monitor both ^UptimeProbe/\n")
    t = make_track(machine_rules_file=str(rules), machine_rules_off="crawler")
    t.get(f"/c/{token(C, sent=time.time())}", headers=READER)  # right after sending
    t.get(f"/c/{token(C, link=-1, queue_id='HP')}", headers=READER)  # the honeypot
    for link in range(3):  # three links of one message at once
        t.get(f"/c/{token(C, link=link, queue_id='BURST')}", headers=READER)
    t.get(f"/o/{token(O)}", headers={"User-Agent": "Mozilla/5.0", "X-Forwarded-For": "17.58.1.2"})
    t.get(f"/o/{token(O)}", headers={"User-Agent": "UptimeProbe/2"})
    t.get(f"/o/{token(O)}", headers={"User-Agent": "Mozilla/5.0 (compatible; Googlebot/2.1)"})
    verdicts = [(e.engagement["machine"], e.engagement["machine_reason"]) for e in t.events()]
    assert verdicts == [(True, "click_after_sending"), (True, "honeypot_link"), (False, None),
                        (False, None), (True, "click_burst"), (True, "apple_mail_privacy_protection"),
                        (True, "our_monitor"), (False, None)]


def test_aggregate_privacy_drops_ip_and_user_agent_after_scoring(make_track):
    t = make_track(privacy="aggregate")
    t.get(f"/o/{token(O)}", headers=READER)
    t.request("HEAD", f"/o/{token(O)}", headers={"User-Agent": "curl/8", "X-Forwarded-For": "192.0.2.1"})
    first, second = [e.engagement for e in t.events()]
    assert first["ip"] is None and first["user_agent"] is None
    assert (first["client"], first["country"], first["machine"]) == ("Chrome", "DE", False)
    assert (second["ip"], second["machine"], second["machine_reason"]) == (None, True, "head_request")
    assert "192.0.2" not in t.log_text()


@pytest.mark.parametrize("geoip", ["", "/nonexistent/geo.mmdb", "broken"])
def test_no_geoip_database_means_empty_place_never_an_error(make_track, tmp_path, geoip):
    if geoip == "broken":
        geoip = str(tmp_path / "broken.mmdb")
        open(geoip, "wb").write(b"not a database" * 10)
    t = make_track(geoip_database=geoip)
    assert t.get(f"/o/{token(O)}", headers=READER)[0] == 200
    [event] = t.events()
    assert (event.engagement["country"], event.engagement["client"]) == (None, "Chrome")


def test_an_address_the_database_lacks_or_ipv6_gives_empty_place(track):
    track.get(f"/o/{token(O)}", headers={"X-Forwarded-For": "198.51.100.1"})
    track.get(f"/o/{token(O)}", headers={"X-Forwarded-For": "2001:db8::1"})
    assert [(e.engagement["ip"], e.engagement["country"]) for e in track.events()] == [
        ("198.51.100.1", None), ("2001:db8::1", None)]


def _eventually(check, timeout=5.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.1)
    return False
