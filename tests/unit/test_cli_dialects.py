"""`--dialect`, `--signing-key`, `--template` on rules and endpoints, and `mxhook dialect list`:
every refusal exits 2 with one line and leaves rules.db as it was; template versions are stored
and listed; the signing key is masked wherever it is shown."""
from __future__ import annotations

import importlib
import json
import pkgutil
import sqlite3

import pytest

from tests.unit import test_cli
from tests.unit.test_cli import Env

from mxhook.payloads import dialects, templates
from mxhook.payloads.dialects import catalogue

test_dns = test_cli.test_dns  # the autouse fixture: no DNS in these tests

SIGNING_KEY = "key-0123456789abcdef"
URL = "https://app.example.net/in"
EVENTS_URL = "https://app.example.net/events"
GOOD_TEMPLATE = '{"subject": "{{ message.subject }}", "to": {{ envelope.recipients|tojson }}}\n'
SECOND_TEMPLATE = GOOD_TEMPLATE.replace('"subject":', '"subj":')
EVENTS_TEMPLATE = '{"n": {{ count }}, "types": [{% for e in events %}"{{ e.type }}"{% if not loop.last %},{% endif %}{% endfor %}]}\n'


@pytest.fixture
def env(tmp_path):
    env = Env(tmp_path)
    env.ok("domain", "add", "ours.example")
    return env


def fails(env: Env, *args, match: str):
    """Exit 2, one line on stderr, rules.db unchanged (Env.fails)."""
    res = env.fails(*args, match=match)
    assert len(res.stderr.strip().splitlines()) == 1, res.stderr
    return res


def add_rule(env: Env, *args, name="r1"):
    return env.ok("rule", "add", name, "--url", URL, "--when", "To~.", *args)


def write(tmp_path, name: str, text: str | bytes):
    path = tmp_path / name
    path.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8"))
    return str(path)


def rows(env: Env, sql: str, *params):
    conn = sqlite3.connect(env.rules_db)
    try:
        return conn.execute(sql, params).fetchall()
    finally:
        conn.close()


# -- dialect names and sides ----------------------------------------------------------------

def test_an_unknown_dialect_lists_the_known_ones_of_its_side(env):
    res = fails(env, "rule", "add", "r1", "--url", URL, "--when", "To~.", "--dialect", "nope",
                match="unknown dialect 'nope' for rules")
    assert "native, sendgrid, sendgrid-raw, mailgun, postmark, actionmailbox" in res.stderr
    res = fails(env, "endpoint", "add", EVENTS_URL, "--dialect", "nope",
                match="unknown dialect 'nope' for endpoints")
    assert "native, smtp2go, paubox, msndr, sendgrid, mailgun, postmark" in res.stderr


def test_a_dialect_of_the_other_side_says_where_it_goes(env):
    fails(env, "rule", "add", "r1", "--url", URL, "--when", "To~.", "--dialect", "paubox",
          match="the paubox dialect posts events, not inbound mail: give it to an endpoint")
    fails(env, "endpoint", "add", EVENTS_URL, "--dialect", "actionmailbox",
          match="the actionmailbox dialect posts inbound mail, not events: give it to a rule")
    fails(env, "endpoint", "add", EVENTS_URL, "--dialect", "sendgrid-raw", match="posts inbound mail")
    add_rule(env)
    fails(env, "rule", "edit", "r1", "--dialect", "smtp2go", match="posts events, not inbound mail")


def test_existing_and_default_destinations_are_native(env):
    add_rule(env)
    env.ok("endpoint", "add", EVENTS_URL)
    assert env.json("rule", "show", "r1", "--json")["dialect"] == "native"
    assert env.json("endpoint", "show", "1", "--json")["dialect"] == "native"
    assert rows(env, "SELECT dialect FROM rules") == [("native",)]


def test_list_shows_the_dialect_column(env):
    add_rule(env, "--dialect", "postmark")
    env.ok("endpoint", "add", EVENTS_URL, "--dialect", "msndr")
    listed = env.ok("rule", "list").stdout.splitlines()
    assert "DIALECT" in listed[0] and "postmark" in listed[2]
    listed = env.ok("endpoint", "list").stdout.splitlines()
    assert "DIALECT" in listed[0] and "msndr" in listed[2]
    assert env.json("rule", "list", "--json")[0]["dialect"] == "postmark"


# -- what each dialect demands ------------------------------------------------------------------

def test_mailgun_needs_its_signing_key(env):
    fails(env, "rule", "add", "r1", "--url", URL, "--when", "To~.", "--dialect", "mailgun",
          match="--signing-key")
    fails(env, "endpoint", "add", EVENTS_URL, "--dialect", "mailgun", match="--signing-key")
    add_rule(env, "--dialect", "mailgun", "--signing-key", SIGNING_KEY)
    fails(env, "rule", "edit", "r1", "--signing-key", " ", match="--signing-key")
    fails(env, "rule", "edit", "r1", "--signing-key-file", "/dev/zero", match="not a secret")


def test_a_signing_key_only_where_the_dialect_signs_with_one(env):
    fails(env, "rule", "add", "r1", "--url", URL, "--when", "To~.", "--signing-key", SIGNING_KEY,
          match="--signing-key is for the dialects that sign with a key of their system's (mailgun)")


def test_changing_from_mailgun_drops_its_signing_key(env):
    add_rule(env, "--dialect", "mailgun", "--signing-key", SIGNING_KEY)
    env.ok("rule", "edit", "r1", "--dialect", "native")
    assert rows(env, "SELECT dialect, signing_key FROM rules") == [("native", None)]


def test_the_signing_key_is_masked_everywhere(env, tmp_path):
    key_file = write(tmp_path, "key", SIGNING_KEY + "\n")
    add_rule(env, "--dialect", "mailgun", "--signing-key-file", key_file)
    assert rows(env, "SELECT signing_key FROM rules") == [(SIGNING_KEY,)]  # line end dropped
    env.ok("endpoint", "add", EVENTS_URL, "--dialect", "mailgun", "--signing-key", SIGNING_KEY)
    outputs = [env.ok(*args).stdout for args in (
        ("rule", "show", "r1"), ("rule", "show", "r1", "--json"), ("rule", "list"),
        ("rule", "list", "--json"), ("endpoint", "show", "1"), ("endpoint", "show", "1", "--json"),
        ("endpoint", "list", "--json"))]
    assert not any(SIGNING_KEY in out or SIGNING_KEY[:-4] in out for out in outputs)
    assert "signing key ****cdef" in outputs[0]
    assert json.loads(outputs[1])["signing_key"] == "****cdef"
    assert json.loads(outputs[3])[0]["signing_key"] == "****cdef"
    assert json.loads(outputs[5])["signing_key"] == "****cdef"
    fails(env, "rule", "edit", "r1", "--signing-key", "x", "--signing-key-file", key_file,
          match="not two of them")


def test_paubox_is_https_only(env):
    fails(env, "endpoint", "add", "http://127.0.0.1:9/ev", "--allow-http", "--dialect", "paubox",
          match="the paubox dialect is HTTPS only: drop --allow-http")
    fails(env, "endpoint", "add", "http://127.0.0.1:9/ev", "--dialect", "paubox", match="not HTTPS")


def test_actionmailbox_checks_what_the_ingress_refuses(env):
    fails(env, "rule", "add", "r1", "--url", URL, "--when", "To~.", "--dialect", "actionmailbox",
          match="needs HTTP Basic auth")
    fails(env, "rule", "add", "r1", "--url", URL, "--when", "To~.", "--dialect", "actionmailbox",
          "--basic-auth", "actionmailbox:pw", match="the relay ingress is at")
    ingress = "https://app.example.net/rails/action_mailbox/relay/inbound_emails"
    env.ok("rule", "add", "rails", "--url", ingress, "--when", "To~.", "--dialect",
           "actionmailbox", "--basic-auth", "actionmailbox:pw")
    fails(env, "rule", "edit", "rails", "--basic-auth", "bob:pw", match="takes the user 'actionmailbox'")


def test_other_dialects_take_the_default_format_and_no_api_key(env):
    fails(env, "rule", "add", "r1", "--url", URL, "--when", "To~.", "--dialect", "postmark",
          "--format", "multipart", match="--format multipart shapes the native body only")
    fails(env, "rule", "add", "r1", "--url", URL, "--when", "To~.", "--dialect", "sendgrid",
          "--api-key", "key-123456789012", match="has no place for an API key")
    fails(env, "endpoint", "add", EVENTS_URL, "--dialect", "smtp2go", "--format", "form",
          match="shapes the native body only")
    add_rule(env, "--format", "multipart")
    fails(env, "rule", "edit", "r1", "--dialect", "postmark", match="--format multipart")
    env.ok("rule", "edit", "r1", "--dialect", "postmark", "--format", "json")


def test_an_endpoint_dialect_posting_none_of_its_categories_is_a_warning(env):
    res = env.ok("endpoint", "add", EVENTS_URL, "--dialect", "paubox", "--events", "blocks")
    assert "warning: the paubox dialect posts none of the events selected" in res.stderr


# -- SMTP2GO's credentials in the URL -----------------------------------------------------------

def test_smtp2go_takes_basic_auth_from_the_url(env):
    env.ok("endpoint", "add", "https://us%40er:p%3Ass@app.example.net/ev", "--dialect", "smtp2go")
    assert rows(env, "SELECT url, basic_auth FROM endpoints") == [
        ("https://app.example.net/ev", "us@er:p:ss")]
    shown = env.json("endpoint", "show", "1", "--json")
    assert shown["url"] == "https://app.example.net/ev" and shown["basic_auth"] == "us@er:****"
    env.ok("endpoint", "edit", "1", "--url", "https://ann:pw2@app.example.net/ev2")
    assert rows(env, "SELECT url, basic_auth FROM endpoints") == [("https://app.example.net/ev2", "ann:pw2")]


def test_url_credentials_are_refused_with_auth_options_and_for_other_dialects(env):
    fails(env, "endpoint", "add", "https://u:p@app.example.net/ev", "--dialect", "smtp2go",
          "--bearer", "tok-abcdefghijkl", match="give the credentials once")
    fails(env, "endpoint", "add", "https://u:p@app.example.net/ev", "--dialect", "smtp2go",
          "--basic-auth", "a:b", match="give the credentials once")
    fails(env, "endpoint", "add", "https://u@app.example.net/ev", "--dialect", "smtp2go",
          match="must be USER:PASSWORD")
    fails(env, "endpoint", "add", "https://u:p@app.example.net/ev", match="not in the URL")
    fails(env, "endpoint", "add", "https://u:p@app.example.net/ev", "--dialect", "msndr",
          match="not in the URL")
    fails(env, "rule", "add", "r1", "--url", "https://u:p@app.example.net/in", "--when", "To~.",
          match="not in the URL")


# -- templates --------------------------------------------------------------------------------

def test_template_versions_are_stored_listed_and_kept(env, tmp_path):
    first = write(tmp_path, "t1.j2", GOOD_TEMPLATE)
    second = write(tmp_path, "t2.j2", SECOND_TEMPLATE)
    res = add_rule(env, "--template", first)
    assert "template version 1 to" in res.stdout
    env.ok("rule", "edit", "r1", "--template", second)
    env.ok("rule", "edit", "r1", "--template", second)  # the same again: no new version
    shown = env.json("rule", "show", "r1", "--json")
    digest = templates.template_version(SECOND_TEMPLATE, templates.JSON)
    assert shown["template"] == {"version": 2, "content_type": "application/json",
                                 "digest": digest, "created": shown["template"]["created"]}
    assert [v["version"] for v in shown["template_versions"]] == [1, 2]
    assert "source" not in shown["template"]
    assert env.json("rule", "show", "r1", "--json", "--template-source")["template"]["source"] \
        == SECOND_TEMPLATE
    text = env.ok("rule", "show", "r1").stdout
    assert f"version 2 (application/json, digest {digest}" in text and "stored versions: 1, 2" in text
    assert SECOND_TEMPLATE.strip() in env.ok(
        "rule", "show", "r1", "--template-source").stdout
    assert rows(env, "SELECT owner_kind, owner_id, version, content_type, source FROM templates") == [
        ("rule", 1, 1, templates.JSON, GOOD_TEMPLATE),
        ("rule", 1, 2, templates.JSON, SECOND_TEMPLATE)]

    env.ok("rule", "edit", "r1", "--no-template")
    shown = env.json("rule", "show", "r1", "--json")
    assert shown["template"] is None and [v["version"] for v in shown["template_versions"]] == [1, 2]
    assert "template:       none" in env.ok("rule", "show", "r1").stdout
    env.ok("rule", "remove", "r1")  # its accepted mail may still be retried with them
    assert len(rows(env, "SELECT * FROM templates")) == 2


def test_an_endpoint_template_and_its_removal(env, tmp_path):
    path = write(tmp_path, "ev.j2", EVENTS_TEMPLATE)
    res = env.ok("endpoint", "add", EVENTS_URL, "--template", path)
    assert "template version 1" in res.stdout
    assert env.json("endpoint", "show", "1", "--json")["template"]["version"] == 1
    form = write(tmp_path, "ev.form", "n={{ count }}")
    env.ok("endpoint", "edit", "1", "--template", form, "--template-type", templates.FORM)
    assert rows(env, "SELECT version, content_type FROM templates") == [(1, templates.JSON), (2, templates.FORM)]
    env.ok("endpoint", "remove", "1")
    assert rows(env, "SELECT * FROM templates") == []


@pytest.mark.parametrize("source, match", [
    ('{"a": 1}\n{% if %}\n', "line 2"),
    ('{"a": {{ message.subject }}}', "output is not JSON"),
    ('{"a": "{{ no_such_variable }}"}', "no_such_variable"),
    (b'{"a": "\xff"}', "is not UTF-8 text"),
])
def test_a_bad_template_is_refused_and_nothing_stored(env, tmp_path, source, match):
    path = write(tmp_path, "bad.j2", source)
    res = fails(env, "rule", "add", "r1", "--url", URL, "--when", "To~.", "--template", path, match=match)
    assert "bad.j2" in res.stderr
    add_rule(env)
    fails(env, "rule", "edit", "r1", "--template", path, match=match)
    if "message" not in str(source):  # an endpoint's template sees events, not a message
        fails(env, "endpoint", "add", EVENTS_URL, "--template", path, match=match)


def test_a_template_file_is_read_up_to_its_limit(env):
    fails(env, "rule", "add", "r1", "--url", URL, "--when", "To~.", "--template", "/dev/zero",
          match="/dev/zero is larger than a template may be")


def test_a_template_excludes_other_dialects_and_formats(env, tmp_path):
    path = write(tmp_path, "t.j2", GOOD_TEMPLATE)
    fails(env, "rule", "add", "r1", "--url", URL, "--when", "To~.", "--template", path,
          "--dialect", "postmark", match="a template is the body of the native dialect")
    fails(env, "rule", "add", "r1", "--url", URL, "--when", "To~.", "--template", path,
          "--format", "raw", match="with a template give --format json")
    add_rule(env, "--template", path)
    fails(env, "rule", "edit", "r1", "--dialect", "postmark", match="with --no-template")
    env.ok("rule", "edit", "r1", "--dialect", "postmark", "--no-template")
    fails(env, "rule", "edit", "r1", "--template", path, match="--dialect native")
    env.ok("rule", "edit", "r1", "--template", path, "--dialect", "native")
    assert env.json("rule", "show", "r1", "--json")["template"]["version"] == 1  # the same text


def test_template_options_that_do_not_go_together(env, tmp_path):
    path = write(tmp_path, "t.j2", GOOD_TEMPLATE)
    fails(env, "rule", "add", "r1", "--url", URL, "--when", "To~.", "--template-type", templates.TEXT,
          match="--template-type goes with --template")
    add_rule(env)
    fails(env, "rule", "edit", "r1", "--template", path, "--no-template", match="either --template")


# -- the catalogue ----------------------------------------------------------------------------

def dialect_modules():
    return [importlib.import_module(f"{dialects.__name__}.{m.name}")
            for m in pkgutil.iter_modules(dialects.__path__)
            if not m.name.startswith("_") and m.name != "catalogue"]


def test_dialect_list_has_every_dialect_module(env):
    listed = {d["name"]: d for d in env.json("dialect", "list", "--json")}
    modules = dialect_modules()
    assert len(modules) >= 7
    for module in modules:
        inbound_names = getattr(module, "INBOUND_DIALECTS", None) or (
            {module.NAME: module.inbound_request} if hasattr(module, "inbound_request") else {})
        for name in inbound_names:
            assert "inbound" in listed[name]["sides"], name
        if hasattr(module, "event_request"):
            entry = listed[module.NAME]
            assert "events" in entry["sides"], module.NAME
            assert entry["events"]["events_per_request"] == module.EVENTS_PER_REQUEST
            assert set(entry["events"]["event_types"]) == set(module.EVENT_TYPES)
        else:
            assert listed[module.NAME]["events"] is None
    named = {m.NAME for m in modules} | {n for m in modules for n in getattr(m, "INBOUND_DIALECTS", {})}
    assert set(listed) == named | {"native"}
    assert listed["mailgun"]["signing_key"] and listed["paubox"]["https_only"]
    assert listed["smtp2go"]["url_userinfo"] and listed["native"]["inbound"]["api_key"]
    text = env.ok("dialect", "list").stdout
    assert text.startswith("NAME") and all(name in text for name in listed)


def test_catalogue_names_by_side():
    assert catalogue.names("inbound")[0] == catalogue.names("events")[0] == "native"
    assert set(catalogue.names("inbound")) | set(catalogue.names("events")) == set(catalogue.DIALECTS)
    assert catalogue.signing_dialects() == ("mailgun",)
    assert catalogue.split_userinfo("https://a:b%2Fc@h.example:8443/p?q") == (
        "https://h.example:8443/p?q", "a:b/c")
    assert catalogue.split_userinfo("https://h.example/p") == ("https://h.example/p", None)
