"""model/machine.py: the bot verdict of opens and clicks, table-driven."""
from __future__ import annotations

import pytest

from mxhook.model import machine
from mxhook.model.machine import CLICKS, OPENS, ClickWindow, Hit, Settings, parse_rules, verdict

CHROME = ("Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
          "Chrome/120.0.0.0 Safari/537.36")
IPHONE_MAIL = ("Mozilla/5.0 (iPhone; CPU iPhone OS 16_0 like Mac OS X) AppleWebKit/605.1.15 "
               "(KHTML, like Gecko) Mobile/15E148")
OUTLOOK = "Microsoft Office/16.0 (Windows NT 10.0; Microsoft Outlook 16.0.4266; Pro)"
GMAIL_PROXY = "Mozilla/5.0 (Windows NT 5.1; rv:11.0) Gecko Firefox/11.0 (via ggpht.com GoogleImageProxy)"
SENT = 1_800_000_000.0
LATER = SENT + 3600


def hit(kind=OPENS, method="GET", ua=CHROME, ip="198.51.100.7", now=LATER, link=None, recent=()):
    if kind == CLICKS and link is None:
        link = 0
    return Hit(kind, method, ua, ip, SENT, now, link, recent)


CASES = [
    # (what, hit, expected verdict)
    ("a person's open", hit(), (False, None)),
    ("a person's open in Apple Mail", hit(ua=IPHONE_MAIL), (False, None)),
    ("a person's open in Outlook", hit(ua=OUTLOOK), (False, None)),
    ("a person's click", hit(CLICKS), (False, None)),
    ("a person's click an hour later on IPv6", hit(CLICKS, ip="2001:db8::1"), (False, None)),
    ("HEAD pixel", hit(method="HEAD"), (True, "head_request")),
    ("HEAD click", hit(CLICKS, method="HEAD"), (True, "head_request")),
    ("no user agent", hit(ua="  "), (True, "no_user_agent")),
    ("Apple MPP user agent", hit(ua="Mozilla/5.0"), (True, "apple_mail_privacy_protection")),
    ("Apple MPP network", hit(ip="17.58.100.1"), (True, "apple_mail_privacy_protection")),
    ("Apple MPP network as IPv4-mapped IPv6", hit(ip="::ffff:17.58.100.1"),
     (True, "apple_mail_privacy_protection")),
    ("a click from Apple's network is a person's (opens only)", hit(CLICKS, ip="17.58.100.1"),
     (False, None)),
    ("Gmail image proxy", hit(ua=GMAIL_PROXY), (True, "gmail_image_proxy")),
    ("Gmail proxy UA on a click: opens only", hit(CLICKS, ua=GMAIL_PROXY), (False, None)),
    ("Microsoft link preview", hit(CLICKS, ua="Mozilla/5.0 (compatible; BingPreview/1.0b)"),
     (True, "microsoft_link_scanner")),
    ("Office existence discovery", hit(CLICKS, ua="Microsoft Office Existence Discovery"),
     (True, "microsoft_link_scanner")),
    ("Proofpoint", hit(CLICKS, ua="Mozilla/5.0 Proofpoint URL Defense"), (True, "security_gateway_scanner")),
    ("Mimecast", hit(CLICKS, ua="Mimecast-Url-Protect/1.0"), (True, "security_gateway_scanner")),
    ("Barracuda", hit(CLICKS, ua="Barracuda Sentinel (EE)"), (True, "security_gateway_scanner")),
    ("curl", hit(CLICKS, ua="curl/8.5.0"), (True, "automated_client")),
    ("python-requests", hit(ua="python-requests/2.31"), (True, "automated_client")),
    ("headless Chrome", hit(CLICKS, ua=CHROME.replace("Chrome/", "HeadlessChrome/")),
     (True, "automated_client")),
    ("a crawler", hit(ua="Mozilla/5.0 (compatible; Googlebot/2.1)"), (True, "crawler")),
    ("a Cubot phone is no bot", hit(ua="Mozilla/5.0 (Linux; Android 10; Cubot X30) Chrome/120.0"),
     (False, None)),
    ("honeypot link", hit(CLICKS, link=machine.HONEYPOT_LINK), (True, "honeypot_link")),
    ("the honeypot first, whatever else", hit(CLICKS, method="HEAD", link=-1), (True, "honeypot_link")),
    ("click 2 s after sending", hit(CLICKS, now=SENT + 2), (True, "click_after_sending")),
    ("click 6 s after sending", hit(CLICKS, now=SENT + 6), (False, None)),
    ("an open 2 s after sending counts (MPP is caught by who, not when)", hit(now=SENT + 2),
     (False, None)),
    ("third link within a second", hit(CLICKS, link=2, recent=((LATER - 0.5, 0), (LATER - 0.2, 1))),
     (True, "click_burst")),
    ("the same link three times is no burst", hit(CLICKS, link=0,
                                                 recent=((LATER - 0.5, 0), (LATER - 0.2, 0))),
     (False, None)),
    ("three links over a minute is no burst", hit(CLICKS, link=2,
                                                 recent=((LATER - 60, 0), (LATER - 30, 1))),
     (False, None)),
]


@pytest.mark.parametrize("what,the_hit,expected", CASES, ids=[c[0] for c in CASES])
def test_verdict(what, the_hit, expected):
    assert verdict(the_hit) == expected


SETTINGS_CASES = [
    ("a longer click window", Settings(click_seconds=60), hit(CLICKS, now=SENT + 30),
     (True, "click_after_sending")),
    ("click window off", Settings(click_seconds=0), hit(CLICKS, now=SENT + 1), (False, None)),
    ("burst of two", Settings(burst_links=2), hit(CLICKS, link=1, recent=((LATER - 0.1, 0),)),
     (True, "click_burst")),
    ("burst off", Settings(burst_links=0), hit(CLICKS, link=2, recent=((LATER, 0), (LATER, 1))),
     (False, None)),
    ("a reason turned off", Settings(off=frozenset({"gmail_image_proxy"})), hit(ua=GMAIL_PROXY),
     (False, None)),
    ("a reason off leaves the next one", Settings(off=frozenset({"head_request"})),
     hit(method="HEAD", ua="curl/8"), (True, "automated_client")),
    ("an admin's network", Settings(rules=parse_rules(
        "network icloud_private_relay opens 172.224.226.0/27 2a02:26f7:b3c0:4000::/64")
        + machine.BUILTIN), hit(ip="2a02:26f7:b3c0:4000::5"), (True, "icloud_private_relay")),
    ("an admin's agent before the built-in ones", Settings(rules=parse_rules(
        "agent our_monitor both ^curl/") + machine.BUILTIN), hit(CLICKS, ua="curl/8"),
     (True, "our_monitor")),
]


@pytest.mark.parametrize("what,settings,the_hit,expected", SETTINGS_CASES,
                         ids=[c[0] for c in SETTINGS_CASES])
def test_verdict_settings(what, settings, the_hit, expected):
    assert verdict(the_hit, settings) == expected


def test_parse_rules_reads_comments_scopes_and_several_networks():
    rules = parse_rules("# relay\n\nnetwork relay opens 10.0.0.0/8 fd00::/8\n"
                        "agent   gw  clicks  Example Guard/\\d+\n")
    assert [(r.kind, r.reason, r.scope) for r in rules] == [
        ("network", "relay", "opens"), ("agent", "gw", "clicks")]
    assert set(rules[0].networks) == {(4, 8), (6, 8)}
    assert rules[1].pattern.search("example guard/12")


@pytest.mark.parametrize("line,message", [
    ("network relay opens", "KIND REASON SCOPE VALUE"),
    ("host relay opens 10.0.0.0/8", "agent or network"),
    ("network Relay opens 10.0.0.0/8", "lower-case"),
    ("network relay always 10.0.0.0/8", "scope"),
    ("network relay opens 10.0.0.1/8", "line 1"),
    ("agent gw both (unclosed", "line 1"),
])
def test_parse_rules_names_the_bad_line(line, message):
    with pytest.raises(ValueError, match=message):
        parse_rules(line)


def test_a_large_network_list_is_looked_up_by_prefix_length():
    cidrs = [f"10.{a}.{b}.0/24" for a in range(256) for b in range(0, 256, 2)]
    rule = machine.network("relay", OPENS, *cidrs, "2001:db8::/32")
    settings = Settings(rules=(rule,))
    assert verdict(hit(ip="10.200.4.9"), settings) == (True, "relay")
    assert verdict(hit(ip="10.200.5.9"), settings) == (False, None)
    assert verdict(hit(ip="2001:db8:1::1"), settings) == (True, "relay")
    assert verdict(hit(ip="2001:db9::1"), settings) == (False, None)


def test_click_window_keeps_a_message_s_recent_clicks_and_forgets_old_messages():
    window = ClickWindow(seconds=1.0, max_messages=2)
    assert window.add("Q1", 100.0, 0) == ()
    assert window.add("Q1", 100.5, 1) == ((100.0, 0),)
    assert window.add("Q1", 101.2, 2) == ((100.5, 1),)  # 100.0 is older than a second
    window.add("Q2", 101.3, 0)
    window.add("Q3", 101.4, 0)  # Q1 is the least recent: forgotten
    assert window.add("Q1", 101.5, 3) == ()
