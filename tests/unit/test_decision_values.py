"""Rules see a header field as the payload shows it (the receiver can check a rule against
the `headers` it was posted)."""
from mxhook.model.decision import decide, header_index
from mxhook.model.message import normalize, split_headers
from mxhook.model.rules import Rule, RuleSet, parse_condition
from mxhook.model.targets import Destination

RAW = (b"From: =?utf-8?q?Doe=2C_John?= <john@sender.example>\r\n"
       b"To: sales@ours.example\r\n"
       b"Subject: =?utf-8?q?Doe=2C_John?=\r\n"
       b"\r\nbody\r\n")
FIELDS = split_headers(RAW)[0]  # as Postfix hands them to the milter


def test_address_field_index_equals_payload_headers_value():
    payload = {h["name"].lower(): h["value"] for h in normalize(RAW)["headers"]}
    index = header_index(FIELDS)
    assert index["from"] == [payload["from"]] == ['"Doe, John" <john@sender.example>']
    assert index["subject"] == [payload["subject"]] == ["Doe, John"]


def test_rule_on_quoted_display_name_matches_what_the_payload_posts():
    rule = Rule(name="quoted", destination=Destination("https://hook.example/in"),
                conditions=(parse_condition('from~^"Doe, John" <john@'),))
    d = decide(RuleSet([rule]), frozenset({"ours.example"}), ["sales@ours.example"], FIELDS,
               enabled_heuristics=())
    assert [r.name for r, _ in d.grouped()] == ["quoted"]
