"""The `mxhook` CLI against a temporary config, rules.db (and state.db for the log commands)."""
from __future__ import annotations

import json
import os
import sqlite3
import time
from datetime import datetime, timezone

import pytest
from click.testing import CliRunner

from tests.support.cli import separate_runner

from mxhook import cli as climod
from mxhook import config
from mxhook.cli import output
from mxhook.model.records import to_datetime
from mxhook.delivery import egress
from mxhook.delivery import signing
from mxhook.services import targets, times

BEARER = "tok-abcdefghijklmnop-wxyz"
API_KEY = "key-0123456789-9876"


class Env:
    def __init__(self, tmp_path, **milter):
        self.dir = tmp_path
        self.rules_db = str(tmp_path / "lib" / "rules.db")
        self.state_db = str(tmp_path / "lib" / "state.db")
        self.spool_dir = str(tmp_path / "spool")
        self.conf = str(tmp_path / "mxhook.conf")
        self.write_config(**milter)
        self.runner = separate_runner()

    def write_config(self, allow_networks="127.0.0.0/8, 10.0.0.0/8", **milter):
        values = {"paths": {"rules_db": self.rules_db, "state_db": self.state_db,
                            "spool_dir": self.spool_dir},
                  # loopback receivers and the LAN endpoints below (the SSRF guard)
                  "http": {"allow_networks": allow_networks}}
        if milter:
            values["milter"] = milter
        with open(self.conf, "w") as fh:
            fh.write(config.render(values))

    def run(self, *args, input=None):
        return self.runner.invoke(climod.cli, ["--config", self.conf, *args], input=input)

    def ok(self, *args, input=None):
        res = self.run(*args, input=input)
        assert res.exit_code == 0, (res.stdout, res.stderr, res.exception)
        return res

    def json(self, *args):
        return json.loads(self.ok(*args).stdout)

    def dump(self):
        """Every row of rules.db, or None when the file does not exist."""
        if not os.path.exists(self.rules_db):
            return None
        conn = sqlite3.connect(self.rules_db)
        try:
            tables = [t for (t,) in conn.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table' AND name != 'sqlite_sequence'")]
            dump = {t: conn.execute(f"SELECT * FROM {t} ORDER BY 1").fetchall() for t in tables}
        finally:
            conn.close()
        new_dir = os.path.join(self.spool_dir, "new")
        dump["spool"] = sorted(os.listdir(new_dir)) if os.path.isdir(new_dir) else None
        return dump

    def fails(self, *args, match: str, input=None, code: int = 2):
        """Exit status `code` (2: a usage error, 1: any other), a message on stderr, nothing
        written."""
        before = self.dump()
        res = self.run(*args, input=input)
        assert res.exit_code == code, (res.exit_code, res.stdout, res.stderr, res.exception)
        assert match.lower() in res.stderr.lower(), res.stderr
        assert self.dump() == before
        return res


PUBLIC_IP = "93.184.216.34"
TEST_DNS = {"lan.example": ["192.168.7.7"], "meta.example": ["169.254.169.254"],
            "mixed.example": [PUBLIC_IP, "10.9.9.9"]}


@pytest.fixture(autouse=True)
def test_dns(monkeypatch):
    """The endpoint check never asks real DNS: names below resolve as listed, `*.invalid` does
    not resolve, every other name resolves to a public address."""
    table = egress.static_resolver(TEST_DNS)

    def resolve(host, port, *args):
        name = str(host).lower().rstrip(".")
        if name in TEST_DNS or name.endswith(".invalid"):
            return table(name, port, *args)
        return egress.static_resolver({name: [PUBLIC_IP]})(name, port, *args)

    monkeypatch.setattr(targets, "RESOLVER", resolve)


@pytest.fixture
def env(tmp_path):
    return Env(tmp_path)


@pytest.fixture
def populated(env):
    env.ok("domain", "add", "ours.example")
    env.ok("rule", "add", "invoices", "--url", "https://app.example.net/in",
           "--when", "To~^invoices@", "--when", "Subject~invoice", "--unless", r"From~@spam\.example$",
           "--bearer", BEARER)
    env.ok("rule", "add", "catchall", "--url", "http://127.0.0.1:9/all", "--allow-http",
           "--when", "To~.", "--priority", "10", "--discard", "--basic-auth", "bob:s3cret-pass",
           "--api-key", API_KEY, "--format", "raw", "--retry-interval", "10",
           "--retry-period", "10", "--timeout", "999")
    return env


# -- config ---------------------------------------------------------------------------------

def test_help_needs_no_config(tmp_path):
    res = CliRunner().invoke(climod.cli, ["--config", str(tmp_path / "missing.conf"), "--help"])
    assert res.exit_code == 0 and "domain" in res.output and "rule" in res.output


def test_missing_explicit_config_exits_1(tmp_path):
    res = separate_runner().invoke(
        climod.cli, ["--config", str(tmp_path / "missing.conf"), "domain", "list"])
    assert res.exit_code == 1 and "config file not found" in res.stderr


def test_bad_config_key(env):
    with open(env.conf, "a") as fh:
        fh.write("[milter]\nbogus = 1\n")
    res = env.run("domain", "list")
    assert res.exit_code == 1 and "unknown key 'bogus'" in res.stderr


def test_config_from_environment(env, monkeypatch):
    monkeypatch.setenv("MXHOOK_CONFIG", env.conf)
    res = env.runner.invoke(climod.cli, ["domain", "add", "env.example"])
    assert res.exit_code == 0
    assert env.dump()["domains"][0][0] == "env.example"


def test_main_entry_point(env, capsys):
    with pytest.raises(SystemExit) as exc:
        climod.main(["--config", env.conf, "domain", "add", "main.example"])
    assert exc.value.code == 0
    assert "Added domain main.example" in capsys.readouterr().out


# -- domains --------------------------------------------------------------------------------

def test_domain_commands(env):
    res = env.ok("domain", "add", "Ours.Example")
    assert "Added domain ours.example" in res.stdout
    env.ok("domain", "add", "quiet.example", "--no-log-denied")
    env.ok("domain", "add", "bücher.example")
    listed = env.json("domain", "list", "--json")
    assert [{k: d[k] for k in ("name", "log_denied")} for d in listed] == [
        {"name": "ours.example", "log_denied": True},
        {"name": "quiet.example", "log_denied": False},
        {"name": "xn--bcher-kva.example", "log_denied": True},
    ]
    assert all(set(d) == {"name", "log_denied", "unmatched", "reject_text", "created"} and d["created"].endswith("Z")
               for d in listed)
    table = env.ok("domain", "list").stdout
    assert "DOMAIN" in table and "quiet.example" in table
    env.ok("domain", "set", "quiet.example", "--log-denied")
    assert env.json("domain", "list", "--json")[1]["log_denied"] is True
    env.ok("domain", "remove", "quiet.example")
    assert [d["name"] for d in env.json("domain", "list", "--json")] == [
        "ours.example", "xn--bcher-kva.example"]


def test_domain_db_created_with_mode(env):
    env.ok("domain", "add", "ours.example")
    assert oct(os.stat(env.rules_db).st_mode & 0o777) == oct(0o640)


def test_domain_list_empty(env):
    env.ok("domain", "add", "x.example")
    env.ok("domain", "remove", "x.example")
    assert "No permitted domains" in env.ok("domain", "list").stdout
    assert env.json("domain", "list", "--json") == []


@pytest.mark.parametrize("bad", ["bad_domain.example", "user@ours.example", "-x.example", "1.2.3.4", ""])
def test_domain_add_invalid_creates_nothing(env, bad):
    env.fails("domain", "add", bad, match="domain" if bad else "empty")
    assert not os.path.exists(env.rules_db)


def test_domain_errors(env):
    env.fails("domain", "list", match="does not exist", code=1)
    env.fails("domain", "remove", "ours.example", match="does not exist", code=1)
    assert not os.path.exists(env.rules_db)
    env.ok("domain", "add", "ours.example")
    env.fails("domain", "add", "OURS.example", match="already permitted", code=1)
    env.fails("domain", "remove", "nope.example", match="not in the permitted domains", code=1)
    env.fails("domain", "set", "nope.example", "--no-log-denied", match="not in the permitted", code=1)
    env.fails("domain", "set", "ours.example", match="--log-denied")  # the switch is required


def test_error_is_one_line(env):
    res = env.fails("domain", "list", match="does not exist", code=1)
    assert res.stderr.count("\n") == 1 and res.stderr.startswith("Error: ")


# -- rules: add, list, show -------------------------------------------------------------------

def test_rule_show_json_shape_and_masking(populated):
    shown = populated.json("rule", "show", "invoices", "--json")
    assert set(shown) == {
        "id", "name", "priority", "enabled", "url", "format", "basic_auth", "bearer",
        "api_key", "retry_interval", "retry_period", "retry_backoff", "retry_cap", "timeout",
        "discard", "allow_http", "continue", "include_raw", "reject_text",
        "dialect", "signing_key", "template", "template_versions", "conditions", "created", "updated", "signing"}
    (key,) = shown["signing"]
    assert key["scheme"] == "v1" and key["secret"].startswith("whsec_****") and len(key["secret"]) == 14
    assert key["public_key"] is None and key["expires"] is None and key["created"]
    assert shown["name"] == "invoices" and shown["priority"] == 0 and shown["enabled"] is True
    assert shown["format"] == "json" and shown["retry_interval"] == 60
    assert shown["retry_period"] == 3 and shown["timeout"] == 30
    assert (shown["retry_backoff"], shown["retry_cap"]) == ("fixed", 3600)
    assert shown["bearer"] == "****wxyz" and shown["basic_auth"] is None
    assert shown["conditions"] == [
        {"header": "to", "pattern": "^invoices@", "negate": False},
        {"header": "subject", "pattern": "invoice", "negate": False},
        {"header": "from", "pattern": r"@spam\.example$", "negate": True},
    ]
    other = populated.json("rule", "show", "catchall", "--json")
    assert other["basic_auth"] == "bob:****"
    assert other["api_key"] == "****9876"
    assert (other["discard"], other["allow_http"], other["format"]) == (True, True, "raw")
    assert (other["retry_interval"], other["retry_period"], other["timeout"]) == (10, 10, 999)


def test_secrets_never_printed(populated):
    outputs = [populated.ok(*args).stdout for args in (
        ("rule", "list"), ("rule", "list", "--json"), ("rule", "show", "invoices"),
        ("rule", "show", "invoices", "--json"), ("rule", "show", "catchall"),
        ("rule", "show", "catchall", "--json"))]
    for out in outputs:
        for secret in (BEARER, "s3cret-pass", API_KEY):
            assert secret not in out
    # ...but they are stored in full, for the spooler
    row = sqlite3.connect(populated.rules_db).execute(
        "SELECT bearer FROM rules WHERE name='invoices'").fetchone()
    assert row[0] == BEARER


def test_short_secret_fully_masked(env):
    env.ok("rule", "add", "r", "--url", "https://x.example/", "--when", "To~.", "--api-key", "abc123")
    assert env.json("rule", "show", "r", "--json")["api_key"] == "****"


def test_rule_list(populated):
    rows = populated.json("rule", "list", "--json")
    assert [r["name"] for r in rows] == ["invoices", "catchall"]
    text = populated.ok("rule", "list").stdout
    assert text.index("invoices") < text.index("catchall")
    assert "PRIO" in text and "+discard" in text


def test_rule_show_human(populated):
    out = populated.ok("rule", "show", "invoices").stdout
    assert "bearer ****wxyz" in out
    assert "--when 'to~^invoices@'" in out and r"--unless 'from~@spam\.example$'" in out


def test_rule_list_empty(env):
    env.ok("domain", "add", "x.example")
    assert "No rules" in env.ok("rule", "list").stdout
    assert env.json("rule", "list", "--json") == []


def test_rule_add_creates_db_and_hints_at_domains(env):
    res = env.ok("rule", "add", "r", "--url", "https://x.example/", "--when", "To~.")
    assert "Added rule r" in res.stdout and "no permitted domains" in res.stderr
    assert os.path.exists(env.rules_db)


def test_rule_add_disabled(env):
    env.ok("rule", "add", "r", "--url", "https://x.example/", "--when", "To~.", "--disabled")
    assert env.json("rule", "show", "r", "--json")["enabled"] is False


INVALID_ADDS = [
    (["--when", "Subject~("], "invalid regex"),
    (["--when", "Subject"], "HEADER~REGEX"),
    (["--when", "Bad Header~x"], "not a valid header name"),
    (["--when", "Subject~"], "empty regex"),
    (["--unless", "From~[a-"], "invalid regex"),
    (["--when", "To~.", "--retry-interval", "9"], "retry interval must be between 10 and 600"),
    (["--when", "To~.", "--retry-interval", "601"], "retry interval"),
    (["--when", "To~.", "--retry-period", "0"], "retry period must be between 1 and 10"),
    (["--when", "To~.", "--retry-period", "11"], "retry period"),
    (["--when", "To~.", "--timeout", "0"], "timeout must be between 1 and 999"),
    (["--when", "To~.", "--timeout", "1000"], "timeout"),
    (["--when", "To~.", "--basic-auth", "u:p", "--bearer", "t"], "either Basic auth or a Bearer"),
    (["--when", "To~.", "--basic-auth", "nocolon"], "USER:PASSWORD"),
    (["--when", "To~.", "--bearer", ""], "must not be empty"),
    (["--when", "To~.", "--format", "xml"], "xml"),
    (["--when", "To~.", "--priority", "high"], "priority"),
    ([], "at least one condition"),
]


@pytest.mark.parametrize("extra,match", INVALID_ADDS)
def test_rule_add_invalid_writes_nothing(populated, extra, match):
    populated.fails("rule", "add", "new", "--url", "https://x.example/", *extra, match=match)


@pytest.mark.parametrize("extra,match", INVALID_ADDS[:3])
def test_rule_add_invalid_does_not_create_db(env, extra, match):
    env.fails("rule", "add", "new", "--url", "https://x.example/", *extra, match=match)
    assert not os.path.exists(env.rules_db)


def test_rule_add_endpoint_errors(populated):
    populated.fails("rule", "add", "new", "--url", "http://x.example/", "--when", "To~.",
                    match="--allow-http")
    populated.fails("rule", "add", "new", "--url", "ftp://x.example/", "--when", "To~.",
                    match="https://")
    populated.fails("rule", "add", "new", "--url", "https://u:p@x.example/", "--when", "To~.",
                    match="--basic-auth")
    populated.fails("rule", "add", "new", "--when", "To~.", match="--url")  # required
    populated.fails("rule", "add", "bad name", "--url", "https://x.example/", "--when", "To~.",
                    match="rule name")


@pytest.mark.parametrize("url, options", [
    ("http://x.example/in", ()),
    ("https://u:p@x.example/in", ()),
    ("https://x.example/in", ("--basic-auth", "u:p", "--bearer", "tok")),
    ("https://x.example/in", ("--bearer", "tok en")),
    ("https://x.example/in", ("--retry-interval", "9")),
    ("https://x.example/in", ("--retry-period", "11")),
    ("https://x.example/in", ("--timeout", "0")),
])
def test_rule_add_and_endpoint_add_refuse_a_destination_alike(env, url, options):
    """One check of the destination (model.targets.check_destination) for both sides: the same
    input, the same one-line message (endpoint add takes the URL as its argument)."""
    rule = env.fails("rule", "add", "r", "--when", "To~.", "--url", url, *options, match="")
    endpoint = env.fails("endpoint", "add", url, *options, match="")
    assert rule.stderr.startswith("Error: ") and rule.stderr == endpoint.stderr


def test_each_side_names_its_own_formats(env):
    env.fails("rule", "add", "r", "--url", "https://x.example/", "--when", "To~.", "--format", "form",
              match="'form' is not one of 'json', 'multipart', 'raw'")
    env.fails("endpoint", "add", "https://x.example/", "--format", "raw",
              match="'raw' is not one of 'json', 'form'")


def test_endpoint_is_a_hidden_old_name_of_url_on_rule_add_and_edit(env):
    env.ok("rule", "add", "r", "--endpoint", "https://x.example/old", "--when", "To~.")
    assert env.json("rule", "show", "r", "--json")["url"] == "https://x.example/old"
    env.ok("rule", "edit", "r", "--endpoint", "https://x.example/new")
    assert env.json("rule", "show", "r", "--json")["url"] == "https://x.example/new"
    env.fails("rule", "edit", "r", "--url", "https://x.example/a", "--endpoint", "https://x.example/b",
              match="give the URL once")
    for command in ("add", "edit"):
        help_text = env.ok("rule", command, "--help").stdout
        assert "--url" in help_text and "--endpoint" not in help_text


def test_rule_add_duplicate(populated):
    populated.fails("rule", "add", "invoices", "--url", "https://x.example/",
                    "--when", "To~.", match="already exists", code=1)


def test_unknown_rule_names(populated):
    for cmd in ("show", "enable", "disable", "remove"):
        populated.fails("rule", cmd, "nope", match="no rule named 'nope'", code=1)
    populated.fails("rule", "edit", "nope", "--priority", "1", match="no rule named 'nope'", code=1)


def test_rule_read_commands_need_db(env):
    env.fails("rule", "list", match="does not exist", code=1)
    env.fails("rule", "show", "x", match="does not exist", code=1)
    env.fails("rule", "edit", "x", "--priority", "1", match="does not exist", code=1)
    env.fails("rule", "enable", "x", match="does not exist", code=1)
    assert not os.path.exists(env.rules_db)


# -- rules: edit, enable, disable, remove -----------------------------------------------------

def test_rule_edit_settings(populated):
    populated.ok("rule", "edit", "invoices", "--priority", "20", "--format", "multipart",
                 "--timeout", "5", "--retry-interval", "600", "--retry-period", "1", "--discard",
                 "--url", "https://new.example/x")
    shown = populated.json("rule", "show", "invoices", "--json")
    assert (shown["priority"], shown["format"], shown["timeout"]) == (20, "multipart", 5)
    assert (shown["retry_interval"], shown["retry_period"], shown["discard"]) == (600, 1, True)
    assert shown["url"] == "https://new.example/x"
    assert shown["bearer"] == "****wxyz"  # untouched
    assert len(shown["conditions"]) == 3  # untouched
    assert shown["updated"] >= shown["created"]
    populated.ok("rule", "edit", "invoices", "--no-discard", "--disabled")
    shown = populated.json("rule", "show", "invoices", "--json")
    assert shown["discard"] is False and shown["enabled"] is False
    populated.ok("rule", "edit", "invoices", "--enabled")
    assert populated.json("rule", "show", "invoices", "--json")["enabled"] is True


def test_rule_edit_when_replaces_all_conditions(populated):
    populated.ok("rule", "edit", "invoices", "--when", "Subject~^Bill")
    assert populated.json("rule", "show", "invoices", "--json")["conditions"] == [
        {"header": "subject", "pattern": "^Bill", "negate": False}]
    populated.ok("rule", "edit", "invoices", "--when", "To~^a@", "--unless", "Subject~spam")
    assert populated.json("rule", "show", "invoices", "--json")["conditions"] == [
        {"header": "to", "pattern": "^a@", "negate": False},
        {"header": "subject", "pattern": "spam", "negate": True}]


def test_rule_edit_unless_alone_replaces_negated_only(populated):
    populated.ok("rule", "edit", "invoices", "--unless", "X-Spam~yes")
    assert populated.json("rule", "show", "invoices", "--json")["conditions"] == [
        {"header": "to", "pattern": "^invoices@", "negate": False},
        {"header": "subject", "pattern": "invoice", "negate": False},
        {"header": "x-spam", "pattern": "yes", "negate": True}]


def test_rule_edit_rename(populated):
    rule_id = populated.json("rule", "show", "invoices", "--json")["id"]
    res = populated.ok("rule", "edit", "invoices", "--name", "bills")
    assert "renamed from invoices" in res.stdout
    assert populated.json("rule", "show", "bills", "--json")["id"] == rule_id
    populated.fails("rule", "show", "invoices", match="no rule named", code=1)
    populated.fails("rule", "edit", "bills", "--name", "catchall", match="already exists", code=1)


def test_rule_edit_auth(populated):
    populated.ok("rule", "edit", "invoices", "--basic-auth", "ann:pw")  # replaces the bearer
    shown = populated.json("rule", "show", "invoices", "--json")
    assert shown["basic_auth"] == "ann:****" and shown["bearer"] is None
    populated.ok("rule", "edit", "invoices", "--bearer", BEARER)  # replaces basic auth
    shown = populated.json("rule", "show", "invoices", "--json")
    assert shown["basic_auth"] is None and shown["bearer"] == "****wxyz"
    populated.ok("rule", "edit", "catchall", "--clear-auth")
    shown = populated.json("rule", "show", "catchall", "--json")
    assert (shown["basic_auth"], shown["bearer"], shown["api_key"]) == (None, None, None)
    populated.ok("rule", "edit", "catchall", "--clear-auth", "--api-key", API_KEY)
    assert populated.json("rule", "show", "catchall", "--json")["api_key"] == "****9876"


def test_rule_edit_allow_http(populated):
    populated.fails("rule", "edit", "catchall", "--no-allow-http", match="--allow-http")
    populated.fails("rule", "edit", "invoices", "--url", "http://x.example/", match="not HTTPS")
    populated.ok("rule", "edit", "invoices", "--url", "http://x.example/", "--allow-http")
    assert populated.json("rule", "show", "invoices", "--json")["allow_http"] is True


def test_rule_retry_backoff(populated):
    """The fixed interval stays the default; exponential doubles it up to the cap."""
    populated.ok("rule", "add", "backoff", "--url", "https://h.example/b", "--when", "To~^b@",
                 "--retry-backoff", "exponential", "--retry-interval", "30")
    shown = populated.json("rule", "show", "backoff", "--json")
    assert (shown["retry_backoff"], shown["retry_cap"], shown["retry_interval"]) == ("exponential", 3600, 30)
    assert "retry backoff:  exponential up to 3600 s\n" in populated.ok("rule", "show", "backoff").stdout
    populated.ok("rule", "edit", "backoff", "--retry-cap", "600")
    assert populated.json("rule", "show", "backoff", "--json")["retry_cap"] == 600
    populated.ok("rule", "edit", "backoff", "--retry-backoff", "fixed")
    listed = {r["name"]: r for r in populated.json("rule", "list", "--json")}
    assert (listed["backoff"]["retry_backoff"], listed["backoff"]["retry_cap"]) == ("fixed", 600)
    assert "retry backoff:  fixed\n" in populated.ok("rule", "show", "backoff").stdout
    populated.fails("rule", "edit", "backoff", "--retry-cap", "20",
                    match="retry cap (20 s) must not be shorter than the retry interval (30 s)")
    populated.fails("rule", "edit", "backoff", "--retry-backoff", "linear", match="'linear' is not one of")


@pytest.mark.parametrize("extra,match", [
    (["--when", "Subject~("], "invalid regex"),
    (["--unless", "Subject~("], "invalid regex"),
    (["--retry-cap", "5"], "retry cap must be between 10 and 86400 seconds"),
    (["--timeout", "0"], "timeout"),
    (["--retry-interval", "1000"], "retry interval"),
    (["--retry-period", "30"], "retry period"),
    (["--basic-auth", "u:p", "--bearer", "t"], "either Basic auth or a Bearer"),
    (["--api-key", ""], "must not be empty"),
    (["--name", "no spaces"], "rule name"),
    ([], "nothing to change"),
])
def test_rule_edit_invalid_writes_nothing(populated, extra, match):
    populated.fails("rule", "edit", "invoices", *extra, match=match)


def test_rule_enable_disable_remove(populated):
    assert "Disabled rule invoices" in populated.ok("rule", "disable", "invoices").stdout
    assert populated.json("rule", "show", "invoices", "--json")["enabled"] is False
    populated.ok("rule", "enable", "invoices")
    assert populated.json("rule", "show", "invoices", "--json")["enabled"] is True
    populated.ok("rule", "remove", "invoices")
    assert [r["name"] for r in populated.json("rule", "list", "--json")] == ["catchall"]
    assert len(populated.dump()["conditions"]) == 1


# -- rule test ----------------------------------------------------------------------------------

def eml(tmp_path, headers: str, name="m.eml", body="Hello\r\n") -> str:
    path = tmp_path / name
    data = headers.strip("\n").replace("\n", "\r\n").encode("utf-8") + b"\r\n\r\n" + body.encode()
    path.write_bytes(data)
    return str(path)


@pytest.fixture
def sales(env):
    env.ok("domain", "add", "ours.example")
    env.ok("rule", "add", "sales", "--url", "https://app.example.net/sales",
           "--when", "To~^sales@", "--priority", "1")
    env.ok("rule", "add", "invoices", "--url", "https://app.example.net/inv",
           "--when", "Subject~invoice", "--unless", r"From~@spam\.example$", "--priority", "2",
           "--discard")
    return env


def test_rule_test_rule_hit(sales, tmp_path):
    msg = eml(tmp_path, "From: Alice <alice@sender.example>\nTo: someone@ours.example\n"
                        "Subject: Invoice 42\nMessage-ID: <1@sender.example>")
    res = sales.json("rule", "test", msg, "--rcpt", "Someone@Ours.Example", "--mail-from",
                     "<b@sender.example>", "--json")
    assert res["result"] == "accept" and res["smtp"] == "250"
    assert res["mail_from"] == "b@sender.example" and res["header_from"] == "alice@sender.example"
    assert res["subject"] == "Invoice 42"
    (r,) = res["recipients"]
    assert r["recipient"] == "someone@ours.example"
    assert r["outcome"] == "accepted" and r["decided_by"] == "rule:invoices"
    assert r["action"] == "discard" and r["url"] == "https://app.example.net/inv"
    assert [(x["name"], x["matched"]) for x in r["rules"]] == [("sales", False), ("invoices", True)]
    assert r["rules"][0]["reason"] == "to~^sales@: the envelope recipient does not match"
    text = sales.ok("rule", "test", msg, "--rcpt", "someone@ours.example").stdout
    assert "ACCEPT" in text and "accepted by rule invoices" in text and "first match" in text
    assert "(then discarded)" in text


def test_rule_test_to_means_envelope_recipient(sales, tmp_path):
    # The To header says sales@, but the envelope recipient is not sales@: no match...
    msg = eml(tmp_path, "From: a@sender.example\nTo: sales@ours.example\nSubject: hi")
    res = sales.json("rule", "test", msg, "--rcpt", "other@ours.example", "--json")
    assert res["result"] == "reject" and res["decided_by"] == "no_rule"
    assert res["recipients"][0]["outcome"] == "denied"
    # ...and the other way round: the envelope recipient decides.
    msg2 = eml(tmp_path, "From: a@sender.example\nTo: list@elsewhere.example\nSubject: hi", "m2.eml")
    res = sales.json("rule", "test", msg2, "--rcpt", "sales@ours.example", "--json")
    assert res["recipients"][0]["decided_by"] == "rule:sales"


def test_rule_test_no_match(sales, tmp_path):
    msg = eml(tmp_path, "From: x@spam.example\nTo: z@ours.example\nSubject: Invoice")
    res = sales.json("rule", "test", msg, "--rcpt", "z@ours.example", "--json")
    assert res["result"] == "reject" and res["smtp"] == "550 5.7.1"
    assert res["reason"] == "no inbound rule matches <z@ours.example>"
    reasons = {x["name"]: x["reason"] for x in res["recipients"][0]["rules"]}
    assert reasons["invoices"] == "not from~@spam\\.example$: from is 'x@spam.example'"
    text = sales.ok("rule", "test", msg, "--rcpt", "z@ours.example").stdout
    assert "REJECT (550 5.7.1) by no_rule" in text and "✗ invoices" in text


def test_rule_test_exit_code_says_the_verdict(sales, tmp_path):
    refused = eml(tmp_path, "From: x@spam.example\nTo: z@ours.example\nSubject: Invoice")
    taken = eml(tmp_path, "From: a@sender.example\nTo: z@ours.example\nSubject: Invoice", "m2.eml")
    res = sales.run("rule", "test", refused, "--rcpt", "z@ours.example", "--exit-code")
    assert res.exit_code == 1 and "REJECT (550 5.7.1)" in res.stdout and res.stderr == ""
    res = sales.run("rule", "test", refused, "--rcpt", "z@ours.example", "--exit-code", "--json")
    assert res.exit_code == 1 and json.loads(res.stdout)["result"] == "reject"
    assert sales.run("rule", "test", refused, "--rcpt", "z@ours.example").exit_code == 0
    assert sales.run("rule", "test", taken, "--rcpt", "z@ours.example", "--exit-code").exit_code == 0


def test_rule_test_disabled_rule_explained(sales, tmp_path):
    sales.ok("rule", "disable", "sales")
    msg = eml(tmp_path, "From: a@sender.example\nTo: sales@ours.example\nSubject: hi")
    res = sales.json("rule", "test", msg, "--rcpt", "sales@ours.example", "--json")
    assert res["result"] == "reject"
    assert res["recipients"][0]["rules"][0] == {
        "name": "sales", "priority": 1, "enabled": False, "matched": False,
        "reason": "disabled", "conditions": []}


def test_rule_test_heuristic_from_permitted_domain(sales, tmp_path):
    msg = eml(tmp_path, "From: Boss <ceo@OURS.example>\nTo: sales@ours.example\nSubject: Invoice")
    res = sales.json("rule", "test", msg, "--rcpt", "sales@ours.example", "--json")
    assert res["result"] == "reject" and res["decided_by"] == "heuristic:from_permitted_domain"
    assert res["heuristics"]["verdict"]["heuristic"] == "from_permitted_domain"
    r = res["recipients"][0]
    assert r["outcome"] == "denied" and r["decided_by"] == "heuristic:from_permitted_domain"
    assert r["rules"][0]["matched"] is True  # shown for information
    text = sales.ok("rule", "test", msg, "--rcpt", "sales@ours.example").stdout
    assert "heuristic:from_permitted_domain" in text and "for information" in text


def test_rule_test_heuristic_from_equals_to(sales, tmp_path):
    msg = eml(tmp_path, "From: <victim@elsewhere.example>\nTo: Victim <VICTIM@elsewhere.example>\n"
                        "Subject: Invoice")
    res = sales.json("rule", "test", msg, "--rcpt", "sales@ours.example", "--json")
    assert res["decided_by"] == "heuristic:from_equals_to"


def test_rule_test_heuristics_switchable_by_config(sales, tmp_path):
    sales.write_config(heuristic_from_permitted_domain="no")
    msg = eml(tmp_path, "From: ceo@ours.example\nTo: x@y.example\nSubject: hello")
    res = sales.json("rule", "test", msg, "--rcpt", "sales@ours.example", "--json")
    assert res["heuristics"]["enabled"] == ["from_equals_to"]
    assert res["result"] == "accept" and res["recipients"][0]["decided_by"] == "rule:sales"


def test_rule_test_unknown_domain_reject_and_pass(sales, tmp_path):
    msg = eml(tmp_path, "From: a@sender.example\nTo: x@elsewhere.example\nSubject: hi")
    res = sales.json("rule", "test", msg, "--rcpt", "x@elsewhere.example",
                     "--rcpt", "sales@ours.example", "--json")
    first, second = res["recipients"]
    assert first["outcome"] == "rejected" and first["decided_by"] == "unknown_domain"
    assert (first["stage"], first["smtp"]) == ("rcpt", "550 5.7.1")
    assert second["decided_by"] == "rule:sales" and res["result"] == "accept"
    only = sales.json("rule", "test", msg, "--rcpt", "x@elsewhere.example", "--json")
    assert only["result"] == "reject" and only["decided_by"] == "unknown_domain"

    sales.write_config(unknown_domains="pass")
    res = sales.json("rule", "test", msg, "--rcpt", "x@elsewhere.example", "--json")
    assert res["result"] == "pass" and res["recipients"][0]["outcome"] == "passed"
    # a pass-through recipient and one the rules decide are never in one transaction
    res = sales.json("rule", "test", msg, "--rcpt", "x@elsewhere.example",
                     "--rcpt", "nobody@ours.example", "--json")
    assert res["result"] == "pass"
    assert [(r["outcome"], r["stage"], r["smtp"]) for r in res["recipients"]] == [
        ("passed", "rcpt", "250"), ("deferred", "rcpt", "452 4.5.3")]


def test_rule_test_recipient_of_another_outcome_class_is_split_at_rcpt(sales, tmp_path):
    # sales@ is accepted whatever the headers say; nobody@ only if the Subject says invoice:
    # the milter answers nobody@ 452 4.5.3 and the client sends it again alone.
    msg = eml(tmp_path, "From: a@sender.example\nTo: sales@ours.example\nSubject: hi")
    res = sales.json("rule", "test", msg, "--rcpt", "sales@ours.example",
                     "--rcpt", "nobody@ours.example", "--json")
    assert res["result"] == "accept"
    sales_r, nobody = res["recipients"]
    assert (sales_r["outcome"], sales_r["stage"], sales_r["smtp"]) == ("accepted", "eoh", "250")
    assert (nobody["outcome"], nobody["stage"], nobody["smtp"]) == ("deferred", "rcpt", "452 4.5.3")
    assert nobody["decided_by"] == "outcome_class" and "removed" not in nobody["reason"]
    assert [x["name"] for x in nobody["rules"]] == ["sales", "invoices"]  # explained all the same
    text = sales.ok("rule", "test", msg, "--rcpt", "sales@ours.example",
                    "--rcpt", "nobody@ours.example").stdout
    assert "<nobody@ours.example>: 452 4.5.3 at RCPT: deferred" in text
    assert "removed" not in text
    # alone, it is refused at end of headers
    res = sales.json("rule", "test", msg, "--rcpt", "nobody@ours.example", "--json")
    (nobody,) = res["recipients"]
    assert (nobody["outcome"], nobody["stage"], nobody["smtp"]) == ("denied", "eoh", "550 5.7.1")


def test_rule_test_past_the_cap_on_refusals_a_recipient_is_accepted_then_bounced(sales, tmp_path):
    # As the milter: once the transaction has max_rcpt_refusals refusals at RCPT, a recipient of
    # another class gets 250; refused at end of headers, Postfix's error transport bounces it.
    sales.write_config(max_rcpt_refusals="1")
    msg = eml(tmp_path, "From: a@sender.example\nTo: sales@ours.example\nSubject: hi")
    res = sales.json("rule", "test", msg, "--rcpt", "sales@ours.example",
                     "--rcpt", "nobody@ours.example", "--rcpt", "other@ours.example", "--json")
    assert res["result"] == "accept"
    sales_r, nobody, other = res["recipients"]
    assert sales_r["outcome"] == "accepted"
    assert (nobody["outcome"], nobody["smtp"]) == ("deferred", "452 4.5.3")
    assert other["outcome"] == "bounced" and other["smtp"].startswith("250, then a bounce")
    # discard_via = milter: the milter splits without a cap (no error transport to bounce with)
    sales.write_config(max_rcpt_refusals="1", discard_via="milter")
    res = sales.json("rule", "test", msg, "--rcpt", "sales@ours.example",
                     "--rcpt", "nobody@ours.example", "--rcpt", "other@ours.example", "--json")
    assert [r["outcome"] for r in res["recipients"]] == ["accepted", "deferred", "deferred"]


def test_rule_test_no_rule_can_match_the_envelope_is_550_at_rcpt(env, tmp_path):
    env.ok("domain", "add", "ours.example")
    env.ok("rule", "add", "sales", "--url", "https://app.example.net/sales",
           "--when", "To~^sales@")
    msg = eml(tmp_path, "From: a@sender.example\nTo: sales@ours.example\nSubject: hi")
    res = env.json("rule", "test", msg, "--rcpt", "other@ours.example",
                   "--rcpt", "sales@ours.example", "--json")
    other, sales_r = res["recipients"]
    assert (other["outcome"], other["stage"], other["smtp"]) == ("rejected", "rcpt", "550 5.7.1")
    assert other["decided_by"] == "no_rule"
    assert other["reason"] == "no inbound rule matches <other@ours.example>"
    assert other["rules"][0]["reason"] == "to~^sales@: the envelope recipient does not match"
    assert sales_r["outcome"] == "accepted" and res["result"] == "accept"
    text = env.ok("rule", "test", msg, "--rcpt", "other@ours.example").stdout
    assert "<other@ours.example>: 550 5.7.1 at RCPT: rejected by no_rule" in text


def test_rule_test_missing_from_follows_the_config(sales, tmp_path):
    msg = eml(tmp_path, "To: sales@ours.example\nSubject: hi")
    res = sales.json("rule", "test", msg, "--rcpt", "sales@ours.example", "--json")
    assert res["result"] == "reject" and res["decided_by"] == "heuristic:missing_from"
    sales.write_config(missing_from="accept")
    res = sales.json("rule", "test", msg, "--rcpt", "sales@ours.example", "--json")
    assert res["missing_from"] == "accept"
    assert res["result"] == "accept" and res["recipients"][0]["decided_by"] == "rule:sales"


def test_rule_test_raw_headers_8bit_folded_and_mbox(sales, tmp_path):
    path = tmp_path / "raw.eml"
    path.write_bytes(
        b"From MAILER-DAEMON Thu Nov 22 12:00:00 2026\n"
        b"From: =?iso-8859-1?q?J=F6rg?= <j@sender.example>\n"
        b"To: x@ours.example\n"
        b"Subject: caf\xe9 \xff invoice\n"
        b"X-Long: first\n\tsecond\n"
        b"\nbody with Subject: invoice\n")
    res = sales.json("rule", "test", str(path), "--rcpt", "x@ours.example", "--json")
    assert res["recipients"][0]["decided_by"] == "rule:invoices"
    assert res["subject"] == "caf\xe9 \xff invoice"


def test_rule_test_header_section_as_postfix_splits_it(sales, tmp_path):
    # an mbox From line is the header field X-Mailbox-Line, as Postfix hands it to the milter
    sales.ok("rule", "add", "bounces", "--url", "https://app.example.net/b",
             "--when", "X-Mailbox-Line~MAILER-DAEMON", "--priority", "0")
    path = tmp_path / "mbox.eml"
    path.write_bytes(b"From MAILER-DAEMON Thu Nov 22 12:00:00 2026\n"
                     b"From: a@sender.example\nSubject: hi\n\nbody\n")
    res = sales.json("rule", "test", str(path), "--rcpt", "x@ours.example", "--json")
    assert res["recipients"][0]["decided_by"] == "rule:bounces"
    # a first line starting with white space: no header section at all, so no From
    path.write_bytes(b" folded\nFrom: a@sender.example\nSubject: invoice\n\nbody\n")
    res = sales.json("rule", "test", str(path), "--rcpt", "x@ours.example", "--json")
    assert res["decided_by"] == "heuristic:missing_from"
    assert res["header_defects"] and "no header section" in res["header_defects"][0]


def test_rule_test_from_stdin(sales, tmp_path):
    res = sales.run("rule", "test", "-", "--rcpt", "sales@ours.example", "--json",
                    input=b"From: a@sender.example\r\nSubject: x\r\n\r\nhi\r\n")
    assert res.exit_code == 0 and json.loads(res.stdout)["result"] == "accept"


def test_rule_test_errors(env, tmp_path):
    msg = eml(tmp_path, "From: a@sender.example\nSubject: hi")
    env.fails("rule", "test", msg, "--rcpt", "x@ours.example", match="does not exist", code=1)
    assert not os.path.exists(env.rules_db)
    env.ok("domain", "add", "ours.example")
    env.fails("rule", "test", msg, "--rcpt", "not-an-address", match="not an address")
    env.fails("rule", "test", msg, match="--rcpt")
    env.fails("rule", "test", str(tmp_path / "missing.eml"), "--rcpt", "x@ours.example",
              match="missing.eml")


def test_rule_test_no_rules(env, tmp_path):
    env.ok("domain", "add", "ours.example")
    msg = eml(tmp_path, "From: a@sender.example\nSubject: hi")
    res = env.json("rule", "test", msg, "--rcpt", "x@ours.example", "--json")
    assert res["result"] == "reject" and res["smtp"] == "554 5.5.1"
    r = res["recipients"][0]
    assert (r["outcome"], r["stage"], r["smtp"]) == ("rejected", "rcpt", "550 5.7.1")
    assert r["reason"] == "no inbound rule matches <x@ours.example>" and r["rules"] == []


# -- times --------------------------------------------------------------------------------------

NOW = datetime(2026, 11, 22, 12, 0, 0, tzinfo=timezone.utc)


@pytest.mark.parametrize("text,expected", [
    ("30m", "2026-11-22T11:30:00.000000Z"),
    ("2h", "2026-11-22T10:00:00.000000Z"),
    ("7d", "2026-11-15T12:00:00.000000Z"),
    ("1w", "2026-11-15T12:00:00.000000Z"),
    ("45s", "2026-11-22T11:59:15.000000Z"),
    ("2026-11-01", "2026-11-01T00:00:00.000000Z"),
    ("2026-11-01T08:30", "2026-11-01T08:30:00.000000Z"),
    ("2026-11-01 08:30:05", "2026-11-01T08:30:05.000000Z"),
    ("2026-11-01T08:30:00+02:00", "2026-11-01T06:30:00.000000Z"),
    ("2026-11-01T08:30:00Z", "2026-11-01T08:30:00.000000Z"),
])
def test_parse_time(text, expected):
    assert times.parse_time(text, now=NOW) == expected


@pytest.mark.parametrize("bad", ["yesterday", "5y", "2026-13-01", "", "-3h"])
def test_parse_time_invalid(bad):
    with pytest.raises(ValueError):
        times.parse_time(bad, now=NOW)


def test_masks():
    assert targets.mask_basic("user:pa:ss") == "user:****"
    assert targets.mask_secret("abcdefghijkl") == "****ijkl"
    assert targets.mask_secret("short") == "****"
    assert targets.mask_secret(None) is None


# -- inbound log ----------------------------------------------------------------------------------

def _target(name):
    return {"id": 1, "name": name, "endpoint": "https://hooks.example/in", "format": "json",
            "basic_auth": None, "bearer": "tok", "api_key": None, "retry_interval": 60,
            "retry_period": 3, "timeout": 30, "allow_http": False, "discard": False}


@pytest.fixture
def logged(env):
    from mxhook import spool
    from mxhook.store import ingest
    from mxhook.store.statedb import StateStore

    os.makedirs(os.path.dirname(env.state_db), exist_ok=True)
    store = StateStore(env.state_db)
    base = {"queue_id": "4XbQ1", "mail_from": "bounce@x.org", "client_addr": "192.0.2.1",
            "client_name": "mail.x.org", "helo": "mail.x.org", "header_from": "alice@x.org",
            "subject": "Hello", "message_id": "<m1@x.org>", "host_name": "mx1.ours.example"}
    ingest.records(store, [
        spool.Record("a1", "inbound", dict(base, received="2026-11-20T10:00:00.000000Z", deliveries=[
            {"recipients": ["in@ours.example"], "rule": _target("r1")}]), b"Subject: Hello\r\n\r\nx\r\n"),
        spool.Record("a2", "inbound", dict(base, received="2026-11-21T10:00:00.000000Z",
                                           subject="=cmd|' /C calc'!A0", deliveries=[
            {"recipients": ["sales@ours.example"], "rule": _target("sales")}]), b"x"),
        spool.Record("d1", "denied", dict(base, received="2026-11-22T10:00:00.000000Z",
                                          recipients=["nobody@ours.example"], filter="no_rule",
                                          reason="no inbound rule matches <nobody@ours.example>")),
    ])
    store.record_attempt("a1-r1", at="2026-11-20T10:00:01.000000Z", outcome="deferred",
                         status="deferred", status_code=503, error="HTTP 503",
                         duration_ms=12, next_attempt_at="2026-11-20T10:01:01.000000Z")
    store.record_attempt("a1-r1", at="2026-11-20T10:01:02.000000Z", outcome="succeeded",
                         status="succeeded", status_code=200, duration_ms=8)
    store.close()
    return env


def test_log_inbound_json_and_filters(logged):
    listing = logged.json("log", "inbound", "--json")
    assert listing["next_cursor"] is None
    rows = listing["items"]
    assert [r["id"] for r in rows] == ["d1", "a2-sales", "a1-r1"]
    assert set(rows[0]) == {"id", "received", "status", "from", "to", "hostName", "messageId",
                            "filterName", "reason"}
    assert [r["status"] for r in rows] == ["denied", "queued", "succeeded"]
    assert [r["id"] for r in logged.json("log", "inbound", "--status", "denied", "--json")["items"]] == ["d1"]
    assert [r["id"] for r in logged.json("log", "inbound", "--since", "2026-11-21", "--json")["items"]] == [
        "d1", "a2-sales"]
    assert [r["id"] for r in logged.json("log", "inbound", "--since", "2026-11-21T11:00+01:00",
                                         "--until", "2026-11-22", "--json")["items"]] == ["a2-sales"]
    assert [r["id"] for r in logged.json("log", "inbound", "--limit", "1", "--json")["items"]] == ["d1"]
    assert logged.json("log", "inbound", "--since", "1h", "--json")["items"] == []


def test_log_prune_dry_run_then_prune(logged):
    # a retention that ends on 2026-11-23, whenever the test runs: everything is older
    end = to_datetime("2026-11-23T00:00:00Z").timestamp()
    days = (time.time() - end) / 86400
    with open(logged.conf, "a") as fh:
        fh.write(f"[spooler]\ninbound_log_days = {days:.6f}\nevent_log_days = 0\n")
    dry = logged.json("log", "prune", "--dry-run", "--json")
    assert dry["dry_run"] is True and dry["events_before"] is None
    assert abs(to_datetime(dry["inbound_before"]).timestamp() - end) < 60
    rows = {k: n for k, n in dry["rows"].items() if n}
    # a2 is still queued: kept whatever its age
    assert rows == {"messages": 1, "deliveries": 1, "attempts": 2, "inbound_log": 1, "denied": 1}
    assert [r["id"] for r in logged.json("log", "inbound", "--json")["items"]] == ["d1", "a2-sales", "a1-r1"]
    out = logged.ok("log", "prune").stdout
    assert "event log:    kept forever ([spooler] event_log_days = 0)" in out
    assert "deleted:      1 messages, 1 deliveries, 2 attempts, 1 inbound log, 1 denied" in out
    assert [r["id"] for r in logged.json("log", "inbound", "--json")["items"]] == ["a2-sales"]
    assert "deleted:      nothing" in logged.ok("log", "prune").stdout


def test_log_inbound_table(logged):
    out = logged.ok("log", "inbound").stdout
    assert out.splitlines()[0].split() == ["RECEIVED", "STATUS", "FROM", "TO", "FILTER", "REASON", "ID"]
    assert "no_rule" in out and "a1-r1" in out and "succeeded" in out
    assert "No inbound log entries match" in logged.ok("log", "inbound", "--status", "failed").stdout


def test_log_inbound_csv(logged):
    from mxhook import spool
    from mxhook.store import ingest
    from mxhook.store.statedb import StateStore

    store = StateStore(logged.state_db)
    ingest.records(store, [spool.Record("d2", "denied", {
        "received": "2026-11-23T10:00:00.000000Z", "recipients": ["x@ours.example"],
        "header_from": "=HYPERLINK(\"http://evil\")@x", "mail_from": "", "client_name": "h",
        "client_addr": "192.0.2.9", "queue_id": "", "helo": "h", "subject": "s",
        "message_id": "<m@x>", "filter": "no_rule", "reason": "-2+3"})])
    store.close()
    out = logged.ok("log", "inbound", "--csv").stdout
    lines = out.split("\n")
    assert lines[0] == "received,status,from,to,hostName,messageId,filterName,reason"
    assert len([line for line in lines if line]) == 5
    assert "\r" not in out and lines[-1] == ""
    assert lines[1].startswith("2026-11-23T10:00:00.000000Z,denied,\"'=HYPERLINK(")
    assert lines[1].endswith(",'-2+3")
    assert len(logged.ok("log", "inbound", "--csv", "--status", "denied").stdout.splitlines()) == 3


@pytest.mark.parametrize("args,match", [
    (["--status", "bogus"], "bogus"),
    (["--since", "yesterday"], "not a time"),
    (["--until", "5y"], "not a time"),
    (["--limit", "0"], "limit"),
    (["--csv", "--json"], "either --csv or --json"),
])
def test_log_inbound_invalid(logged, args, match):
    logged.fails("log", "inbound", *args, match=match)


def test_log_needs_state_db(env):
    env.fails("log", "inbound", match="state database", code=1)
    env.fails("log", "show", "x", match="state database", code=1)
    assert not os.path.exists(env.state_db)


def test_log_show(logged):
    d = logged.json("log", "show", "a1-r1", "--json")
    assert d["status"] == "succeeded" and d["to"] == "in@ours.example"
    assert d["mail_from"] == "bounce@x.org" and d["client_addr"] == "192.0.2.1"
    assert d["queue_id"] == "4XbQ1"
    assert [(a["status_code"], a["error"], a["duration_ms"]) for a in d["attempts"]] == [
        (503, "HTTP 503", 12), (200, None, 8)]
    out = logged.ok("log", "show", "a1-r1").stdout
    assert "host name:      mx1.ours.example" in out and "attempts:       2" in out
    assert "HTTP 503" in out and "destination:    in@ours.example" in out
    denied_out = logged.ok("log", "show", "d1").stdout
    assert "filter name:    no_rule" in denied_out and "no inbound rule matches" in denied_out
    logged.fails("log", "show", "nope", match="no inbound log entry", code=1)


def test_log_show_next_attempt_of_a_deferred_delivery(logged):
    """The stored time of the next attempt, as the other times of `log show`; none once settled."""
    from mxhook.store.statedb import StateStore

    with StateStore(logged.state_db) as store:
        store.record_attempt("a2-sales", at="2026-11-21T10:00:01.000000Z", outcome="deferred",
                             status="deferred", status_code=503, error="HTTP 503",
                             next_attempt_at="2026-11-21T10:07:41.500000Z")
    assert logged.json("log", "show", "a2-sales", "--json")["next_attempt_at"] == "2026-11-21T10:07:41.500000Z"
    out = logged.ok("log", "show", "a2-sales").stdout
    assert "next attempt:   2026-11-21T10:07:41.500000Z\n" in out and "date:           2026-11-21T10:00:00" in out
    assert "next attempt" not in logged.ok("log", "show", "a1-r1").stdout  # succeeded
    assert logged.json("log", "show", "a1-r1", "--json")["next_attempt_at"] is None


# -- event endpoints ------------------------------------------------------------------------

EP_URL = "https://app.example.net/hooks/events"


@pytest.fixture
def endpoints(env):
    env.ok("endpoint", "add", EP_URL, "--events", "bounces,blocks", "--interval", "30",
           "--max-events", "500", "--timezone", "Europe/Berlin", "--bearer", BEARER,
           "--api-key", API_KEY)
    env.ok("endpoint", "add", "http://10.0.0.5/ev", "--allow-http", "--format", "form",
           "--basic-auth", "hook:pa55word", "--retry-interval", "10", "--retry-period", "1",
           "--timeout", "5", "--disabled")
    return env


def test_endpoint_add_list_show(endpoints):
    out = endpoints.ok("endpoint", "add", "https://third.example/e").stdout
    assert out.splitlines()[1].startswith("Signing secret (shown once, store it now): whsec_")
    assert out.splitlines()[0] == ("Added endpoint 3: bounces, deliveries, blocks events to "
                           "https://third.example/e (version 1, json)")
    rows = endpoints.json("endpoint", "list", "--json")
    assert [r["id"] for r in rows] == [1, 2, 3]
    assert rows[0] == {
        "id": 1, "url": EP_URL, "enabled": True, "events": ["bounces", "blocks"], "interval": 30,
        "max_events": 500, "timeout": 30, "version": 1, "timezone": "Europe/Berlin",
        "format": "json", "basic_auth": None, "bearer": "****wxyz", "api_key": "****9876",
        "retry_interval": 60, "retry_period": 3, "allow_http": False, "dialect": "native",
        "retry_backoff": "fixed", "retry_cap": 3600,
        "signing_key": None, "template": None, "template_versions": [], "custom_headers": [],
        "created": rows[0]["created"], "updated": rows[0]["updated"], "signing": rows[0]["signing"]}
    assert [k["scheme"] for k in rows[0]["signing"]] == ["v1"]
    assert rows[0]["signing"][0]["secret"].startswith("whsec_****")
    assert rows[1]["basic_auth"] == "hook:****" and rows[1]["enabled"] is False
    assert endpoints.json("endpoint", "show", EP_URL, "--json") == rows[0]
    assert endpoints.json("endpoint", "show", "2", "--json") == rows[1]
    table_out = endpoints.ok("endpoint", "list").stdout
    assert table_out.splitlines()[0].split()[:3] == ["ID", "ENABLED", "EVENTS"]
    assert "Europe/Berlin" in table_out and "bounces,blocks" in table_out
    show = endpoints.ok("endpoint", "show", "1").stdout
    assert "auth:           bearer ****wxyz, api key ****9876" in show
    assert "after 30 s or at 500 events" in show and "1 (pinned)" in show
    for out in (table_out, show, json.dumps(rows)):
        assert BEARER not in out and API_KEY not in out and "pa55word" not in out


def test_endpoint_list_empty_and_needs_db(env):
    env.fails("endpoint", "list", match="does not exist yet", code=1)
    env.ok("domain", "add", "ours.example")
    assert "No event endpoints" in env.ok("endpoint", "list").stdout
    assert env.json("endpoint", "list", "--json") == []


@pytest.mark.parametrize("extra, match", [
    (["--interval", "0"], "interval must be between 1 and 600"),
    (["--interval", "601"], "interval must be between 1 and 600"),
    (["--max-events", "99"], "max events must be between 100 and 10000"),
    (["--max-events", "10001"], "max events"),
    (["--timeout", "1000"], "timeout must be between 1 and 999"),
    (["--retry-interval", "5"], "retry interval"),
    (["--retry-period", "0"], "retry period"),
    (["--timezone", "Europe/Nowhere"], "unknown time zone"),
    (["--version", "2"], "payload version 2 does not exist"),
    (["--events", "bounces,opens"], "unknown event category opens"),
    (["--basic-auth", "u:p", "--bearer", "t"], "either Basic auth or a Bearer token"),
    (["--basic-auth", "nocolon"], "USER:PASSWORD"),
    (["--bearer", ""], "must not be empty"),
    (["--format", "xml"], "xml"),
])
def test_endpoint_add_invalid_writes_nothing(endpoints, extra, match):
    endpoints.fails("endpoint", "add", "https://new.example/e", *extra, match=match)


def test_endpoint_add_invalid_does_not_create_db(env):
    env.fails("endpoint", "add", "http://plain.example/e", match="not HTTPS")
    env.fails("endpoint", "add", "https://a.example/e", "--timezone", "Moon/Base", match="time zone")
    assert not os.path.exists(env.rules_db)


def test_endpoint_duplicate_and_unknown(endpoints):
    endpoints.fails("endpoint", "add", EP_URL, match="already exists (id 1", code=1)
    endpoints.fails("endpoint", "show", "9", match="no endpoint '9'", code=1)
    endpoints.fails("endpoint", "edit", "https://nope.example/", "--interval", "5", match="no endpoint", code=1)
    endpoints.fails("endpoint", "remove", "9", match="no endpoint", code=1)


def test_endpoint_edit(endpoints):
    assert endpoints.ok("endpoint", "edit", "1", "--interval", "5", "--events", "deliveries",
                        "--timezone", "UTC", "--format", "form").stdout.strip() == f"Updated endpoint 1 ({EP_URL})"
    d = endpoints.json("endpoint", "show", "1", "--json")
    assert (d["interval"], d["events"], d["timezone"], d["format"], d["max_events"]) == (5, ["deliveries"], "UTC", "form", 500)
    assert d["bearer"] == "****wxyz"  # untouched
    endpoints.ok("endpoint", "edit", "1", "--basic-auth", "u:p")
    d = endpoints.json("endpoint", "show", "1", "--json")
    assert (d["basic_auth"], d["bearer"], d["api_key"]) == ("u:****", None, "****9876")
    endpoints.ok("endpoint", "edit", "1", "--clear-auth")
    d = endpoints.json("endpoint", "show", "1", "--json")
    assert (d["basic_auth"], d["bearer"], d["api_key"]) == (None, None, None)
    endpoints.ok("endpoint", "edit", "2", "--enabled", "--url", "https://moved.example/e", "--no-allow-http")
    d = endpoints.json("endpoint", "show", "https://moved.example/e", "--json")
    assert (d["id"], d["enabled"], d["allow_http"]) == (2, True, False)


def test_endpoint_retry_backoff(endpoints):
    endpoints.ok("endpoint", "add", "https://third.example/e", "--retry-backoff", "exponential",
                 "--retry-cap", "86400")
    d = endpoints.json("endpoint", "show", "3", "--json")
    assert (d["retry_backoff"], d["retry_cap"], d["retry_interval"]) == ("exponential", 86400, 60)
    endpoints.ok("endpoint", "edit", "1", "--retry-backoff", "exponential", "--retry-cap", "900")
    rows = {r["id"]: r for r in endpoints.json("endpoint", "list", "--json")}
    assert [(rows[i]["retry_backoff"], rows[i]["retry_cap"]) for i in (1, 2, 3)] == [
        ("exponential", 900), ("fixed", 3600), ("exponential", 86400)]
    assert "retry backoff:  exponential up to 900 s\n" in endpoints.ok("endpoint", "show", "1").stdout
    endpoints.fails("endpoint", "edit", "1", "--retry-cap", "86401", match="retry cap must be between 10 and 86400")
    assert endpoints.json("endpoint", "show", "1", "--json")["retry_cap"] == 900


def test_endpoint_custom_headers(endpoints):
    endpoints.ok("endpoint", "add", "https://third.example/e", "--dialect", "smtp2go",
                 "--custom-header", "X-Campaign", "--custom-header", "X-Order-Id")
    assert endpoints.json("endpoint", "show", "3", "--json")["custom_headers"] == ["X-Campaign", "X-Order-Id"]
    assert "custom headers: X-Campaign, X-Order-Id" in endpoints.ok("endpoint", "show", "3").stdout
    endpoints.ok("endpoint", "edit", "3", "--custom-header", "X-Tag")  # the whole selection
    assert endpoints.json("endpoint", "show", "3", "--json")["custom_headers"] == ["X-Tag"]
    endpoints.ok("endpoint", "edit", "3", "--interval", "20")  # not given: kept
    assert endpoints.json("endpoint", "show", "3", "--json")["custom_headers"] == ["X-Tag"]
    endpoints.fails("endpoint", "edit", "3", "--custom-header", "X-A", "--no-custom-headers",
                    match="either --custom-header or --no-custom-headers")
    endpoints.fails("endpoint", "edit", "3", "--custom-header", "x-a", "--custom-header", "X-A",
                    match="given twice")
    endpoints.fails("endpoint", "add", "https://fourth.example/e", "--custom-header", "Bad:Name",
                    match="not a header field name")
    out = endpoints.ok("endpoint", "edit", "3", "--custom-header", "Subject", "--custom-header", "X-A")
    assert "Subject: named as a standard field of SMTP2GO's body" in out.stderr
    out = endpoints.ok("endpoint", "add", "https://fifth.example/e", "--dialect", "msndr",
                       "--custom-header", "X-A")
    assert "the msndr dialect's body has no place for custom headers: X-A will not be posted" in out.stderr
    endpoints.ok("endpoint", "edit", "3", "--no-custom-headers")
    assert endpoints.json("endpoint", "show", "3", "--json")["custom_headers"] == []
    assert "custom headers: (none)" in endpoints.ok("endpoint", "show", "3").stdout


@pytest.mark.parametrize("extra, match, code", [
    ([], "nothing to change", 2),
    (["--url", EP_URL], "already has the URL", 1),  # a clash with what is stored
    (["--interval", "9999"], "interval", 2),
    (["--no-allow-http"], "not HTTPS", 2),  # endpoint 2 is http://
    (["--max-events", "5"], "max events", 2),
    (["--api-key", ""], "must not be empty", 2),
])
def test_endpoint_edit_invalid_writes_nothing(endpoints, extra, match, code):
    endpoints.fails("endpoint", "edit", "2", *extra, match=match, code=code)


def test_endpoint_remove(endpoints):
    assert endpoints.ok("endpoint", "remove", EP_URL).stdout.strip() == f"Removed endpoint 1 ({EP_URL})"
    assert [r["id"] for r in endpoints.json("endpoint", "list", "--json")] == [2]


def test_endpoint_test_posts_a_sample_through_the_delivery_client(env):
    from tests.support.receiver import Receiver

    with Receiver() as rx:
        rx.script("/ok", [(200, {}, b'{"received": 1}')])
        rx.script("/down", [(503, {}, b"maintenance")])
        env.ok("endpoint", "add", rx.url + "/ok", "--allow-http", "--timezone", "Asia/Tokyo",
               "--bearer", BEARER)
        env.ok("endpoint", "add", rx.url + "/down", "--allow-http", "--format", "form")
        res = env.ok("endpoint", "test", "1")
        (req,) = rx.wait_for(1, path="/ok")
        assert "HTTP 200 in" in res.stdout and '{"received": 1}' in res.stdout
        doc = req.json()
        assert req.headers["webhook-id"] == doc["batch_id"] and doc["batch_id"].startswith("evb_test_")
        assert req.headers["Authorization"] == f"Bearer {BEARER}"
        (e,) = doc["events"]
        assert e["type"] == "bounced" and e["id"].startswith("test-") and e["at"].endswith("+09:00")
        res = env.run("endpoint", "test", "2", "--type", "queued")
        assert res.exit_code == 1 and "HTTP 503" in res.stdout and "maintenance" in res.stdout
        assert rx.wait_for(1, path="/down")[0].headers["Content-Type"] == "application/x-www-form-urlencoded"


def test_endpoint_test_renders_the_endpoint_dialect(env):
    """The sample goes through the spooler's entry point: the endpoint's dialect, and only a
    type that dialect sends."""
    from tests.support.receiver import Receiver

    with Receiver() as rx:
        env.ok("endpoint", "add", rx.url + "/pm", "--allow-http", "--dialect", "postmark")
        env.ok("endpoint", "test", "1")
        (req,) = rx.wait_for(1, path="/pm")
        assert req.json()["RecordType"] == "Bounce"
        res = env.run("endpoint", "test", "1", "--type", "queued")
        assert res.exit_code == 2 and "the postmark dialect sends no queued events" in res.stderr


# -- block list ------------------------------------------------------------------------------

def spooled_events(env):
    from mxhook import spool

    return [r for p in spool.pending(env.spool_dir) for r in spool.read_all(p)]


@pytest.fixture
def spooldir(env):
    from mxhook import spool

    spool.ensure_dirs(env.spool_dir)
    return env


def test_block_add_list_remove_spool_events(spooldir):
    env = spooldir
    out = env.ok("block", "add", "<Gone@Else.Example>", "--reason", "asked to stop").stdout
    assert out.startswith("Blocked gone@else.example (event registered ")
    (rec,) = spooled_events(env)
    assert rec.kind == "event"
    assert {k: rec.meta[k] for k in ("type", "recipient", "source", "reason")} == {
        "type": "registered", "recipient": "gone@else.example", "source": "cli", "reason": "asked to stop"}
    rows = env.json("block", "list", "--json")
    assert [(r["address"], r["source"], r["reason"]) for r in rows] == [("gone@else.example", "cli", "asked to stop")]
    assert "gone@else.example" in env.ok("block", "list").stdout
    env.fails("block", "add", "gone@else.example", match="already on the block list", code=1)
    assert env.ok("block", "remove", "GONE@else.example").stdout.startswith("Unblocked gone@else.example")
    assert [r.meta["type"] for r in spooled_events(env)] == ["registered", "deleted"]
    env.fails("block", "remove", "gone@else.example", match="not on the block list", code=1)
    assert "The block list is empty" in env.ok("block", "list").stdout


@pytest.mark.parametrize("bad", ["nobody", "a@b@c.example", "two words@x.example", ""])
def test_block_add_invalid_writes_nothing(spooldir, bad):
    spooldir.fails("block", "add", bad, match="not an email address" if bad else "empty")


def test_block_needs_the_spool(env):
    env.ok("domain", "add", "ours.example")
    env.fails("block", "add", "a@b.example", match="spool directory", code=1)


# -- event log -------------------------------------------------------------------------------

@pytest.fixture
def events_logged(env):
    from mxhook import spool
    from mxhook.model.endpoints import Endpoint
    from mxhook.model.targets import Destination
    from mxhook.store import ingest
    from mxhook.store.statedb import AttemptRecord, StateStore

    os.makedirs(os.path.dirname(env.state_db), exist_ok=True)
    eps = [Endpoint(Destination("https://a.example/ev"), id=1),
           Endpoint(Destination("https://b.example/ev"), id=2, categories=("bounces",))]
    store = StateStore(env.state_db)

    def ev(eid, etype, at, **kw):
        meta = {"type": etype, "at": at, "received": at, "queue_id": "Q1", "recipient": "r@x.example",
                "source": "log", "custom_headers": {}, **kw}
        return spool.Record(eid, "event", meta)

    ingest.records(store, [
        ev("q1", "queued", "2026-11-20T10:00:00.000000Z", source="milter", client_addr="192.0.2.7",
           message_id="<m@ours>", subject="=2+3", host_name="mx1.ours.example"),
        ev("b1", "bounced", "2026-11-21T10:00:00.000000Z", remote_host="mx.x.example",
           bounce_type="hard", dsn="5.1.1", reply="550 5.1.1 unknown", host_name="mx2.ours.example"),
    ], endpoints=eps)
    store.sync_endpoints(eps)
    b = store.create_batch(1, 100)
    store.record_attempts([AttemptRecord(b.id, "2026-11-21T10:00:05.000000Z", "failed", "failed",
                                               status_code=400, error="-HTTP 400 Bad Request")])
    store.close()
    return env


def test_log_events_json_and_filters(events_logged):
    rows = events_logged.json("log", "events", "--json")["items"]
    assert [(r["id"], r["endpointId"], r["status"]) for r in rows] == [
        ("b1", 2, "queued"), ("b1", 1, "failed"), ("q1", 1, "failed")]
    assert rows[1]["hostName"] == "mx2.ours.example" and rows[2]["hostName"] == "mx1.ours.example"
    assert rows[1]["messageId"] == "<m@ours>"  # enriched from the queued event
    assert [r["id"] for r in events_logged.json("log", "events", "--status", "queued", "--json")["items"]] == ["b1"]
    assert [r["id"] for r in events_logged.json("log", "events", "--until", "2026-11-21", "--json")["items"]] == ["q1"]
    assert len(events_logged.json("log", "events", "--since", "2026-11-21", "--limit", "1", "--json")["items"]) == 1
    out = events_logged.ok("log", "events").stdout
    assert out.splitlines()[0].split()[:3] == ["RECEIVED", "STATUS", "TYPE"]
    assert "No event log entries match" in events_logged.ok("log", "events", "--status", "deferred").stdout


def test_log_events_csv(events_logged):
    out = events_logged.ok("log", "events", "--csv").stdout
    lines = out.split("\n")
    assert lines[0] == "received,status,hostName,endpointUrl,reason"
    assert lines[1:] == [
        "2026-11-21T10:00:00.000000Z,queued,mx2.ours.example,https://b.example/ev,",
        "2026-11-21T10:00:00.000000Z,failed,mx2.ours.example,https://a.example/ev,'-HTTP 400 Bad Request",
        "2026-11-20T10:00:00.000000Z,failed,mx1.ours.example,https://a.example/ev,'-HTTP 400 Bad Request",
        ""]
    assert "\r" not in out


@pytest.mark.parametrize("args,match", [
    (["--status", "denied"], "denied"),
    (["--since", "later"], "not a time"),
    (["--csv", "--json"], "either --csv or --json"),
])
def test_log_events_invalid(events_logged, args, match):
    events_logged.fails("log", "events", *args, match=match)


def test_log_event_detail(events_logged):
    d = events_logged.json("log", "event", "b1", "--json")
    assert d["event"]["dsn"] == "5.1.1" and d["event"]["subject"] == "=2+3"
    assert [(x["endpointId"], x["status"]) for x in d["deliveries"]] == [(1, "failed"), (2, "queued")]
    assert d["deliveries"][0]["attempts"][0]["status_code"] == 400
    out = events_logged.ok("log", "event", "b1").stdout
    assert "bounce type:    hard" in out and "endpoint 2: https://b.example/ev" in out
    assert "HTTP 400" in out and "message id:     <m@ours>" in out
    events_logged.fails("log", "event", "nope", match="no event with id", code=1)


def test_log_events_need_state_db(env):
    env.fails("log", "events", match="state database", code=1)
    env.fails("log", "event", "x", match="state database", code=1)


# -- signing secrets -------------------------------------------------------------------------

SECRET_LINE = "Signing secret (shown once, store it now): "


def printed_secret(out: str, label: str = SECRET_LINE) -> str:
    (line,) = [line for line in out.splitlines() if line.startswith(label)]
    return line[len(label):]


def stored_keys(env, kind, owner_id):
    from mxhook.store import rulesdb

    with rulesdb.RulesStore(env.rules_db) as store:
        return store.signing_keys(kind, owner_id)


def all_outputs(env, *commands) -> str:
    out = []
    for args in commands:
        res = env.ok(*args)
        out += [res.stdout, res.stderr]
    return "\n".join(out)


def test_rule_add_shows_the_secret_once(env):
    res = env.ok("rule", "add", "r", "--url", "https://x.example/in", "--when", "To~.")
    secret = printed_secret(res.stdout)
    (key,) = stored_keys(env, "rule", 1)
    assert key.secret == secret and signing.decode_secret(secret)
    # it signs: the reference verifier accepts what the stored secret signs
    hdrs = signing.headers("d-1", b"{}", [secret])
    assert signing.verify(secret, hdrs, b"{}") == "d-1"
    later = all_outputs(env, ("rule", "list"), ("rule", "list", "--json"), ("rule", "show", "r"),
                        ("rule", "show", "r", "--json"), ("rule", "edit", "r", "--priority", "3"),
                        ("rule", "disable", "r"), ("rule", "enable", "r"))
    assert secret not in later and secret[len("whsec_"):] not in later
    assert "whsec_****" + secret[-4:] in env.ok("rule", "show", "r").stdout


def test_rule_add_with_ed25519(env):
    res = env.ok("rule", "add", "r", "--url", "https://x.example/in", "--when", "To~.", "--ed25519")
    secret = printed_secret(res.stdout)
    public = printed_secret(res.stdout, "Ed25519 public key (for v1a signatures; `show` prints it again): ")
    v1, v1a = stored_keys(env, "rule", 1)
    assert (v1.secret, v1a.public_key) == (secret, public) and public.startswith("whpk_")
    assert signing.public_key_for(v1a.secret) == public
    shown = env.ok("rule", "show", "r").stdout
    assert public in shown and v1a.secret not in shown
    doc = env.json("rule", "show", "r", "--json")
    assert [(k["scheme"], k["public_key"]) for k in doc["signing"]] == [("v1", None), ("v1a", public)]
    assert doc["signing"][1]["secret"] == "whsk_****"
    everything = res.stdout + res.stderr + all_outputs(env, ("rule", "show", "r"), ("rule", "list", "--json"))
    assert v1a.secret not in everything and v1a.secret[len("whsk_"):] not in everything


def test_rule_rotate_secret_overlap(env):
    from mxhook.store import rulesdb

    old = printed_secret(env.ok("rule", "add", "r", "--url", "https://x.example/in",
                                "--when", "To~.").stdout)
    res = env.ok("rule", "rotate-secret", "r", "--overlap", "2h")
    assert "the previous one keeps signing until" in res.stdout and "(2h overlap)" in res.stdout
    new = printed_secret(res.stdout, "New signing secret (shown once, store it now): ")
    assert new != old
    reader = rulesdb.SigningKeys(env.rules_db)
    try:
        now = __import__("time").time()
        assert reader.active("rule", 1).secrets == (old, new)
        assert reader.active("rule", 1, now=now + 7201).secrets == (new,)
    finally:
        reader.close()
    doc = env.json("rule", "show", "r", "--json")
    assert [k["expires"] is None for k in doc["signing"]] == [False, True]
    shown = env.ok("rule", "show", "r").stdout
    assert "rotated out, signs until" in shown and old not in shown and new not in shown
    # overlap 0: only the newest signs, at once
    res = env.ok("rule", "rotate-secret", "r", "--overlap", "0")
    assert "the previous one no longer signs" in res.stdout
    newest = printed_secret(res.stdout, "New signing secret (shown once, store it now): ")
    assert [k.secret for k in stored_keys(env, "rule", 1)] == [newest]


def test_add_and_rotate_secret_json_carry_the_new_secret_once(env):
    env.ok("domain", "add", "ours.example")
    doc = env.json("rule", "add", "r", "--url", "https://x.example/in", "--when", "To~.", "--json",
                   "--bearer", BEARER)
    v1, = stored_keys(env, "rule", 1)
    assert doc["signing_secret"] == v1.secret and doc["no_domains"] is False
    assert doc["rule"]["name"] == "r" and doc["rule"]["bearer"] != BEARER
    assert doc["rule"]["signing"][0]["secret"] == "whsec_****" + v1.secret[-4:]
    doc = env.json("rule", "rotate-secret", "r", "--overlap", "0", "--json")
    (new,) = stored_keys(env, "rule", 1)
    assert (doc["signing_secret"], doc["scheme"], doc["first"], doc["previous_signs_until"]) == (
        new.secret, "v1", False, None)
    assert doc["rule"]["signing"][0]["secret"] == "whsec_****" + new.secret[-4:]
    doc = env.json("rule", "rotate-secret", "r", "--ed25519", "--json")
    assert doc["first"] is True and "signing_secret" not in doc
    assert doc["ed25519_public_key"] == stored_keys(env, "rule", 1)[1].public_key
    doc = env.json("endpoint", "add", "https://x.example/events", "--json", "--ed25519")
    v1, v1a = stored_keys(env, "endpoint", 1)
    assert (doc["signing_secret"], doc["ed25519_public_key"]) == (v1.secret, v1a.public_key)
    assert doc["endpoint"]["id"] == 1 and v1a.secret not in json.dumps(doc)
    doc = env.json("endpoint", "rotate-secret", "1", "--overlap", "1h", "--json")
    assert doc["signing_secret"] == stored_keys(env, "endpoint", 1)[2].secret
    assert doc["previous_signs_until"] and doc["endpoint"]["id"] == 1


def stored_auth(env, name):
    return sqlite3.connect(env.rules_db).execute(
        "SELECT basic_auth, bearer, api_key FROM rules WHERE name = ?", (name,)).fetchone()


def test_secrets_from_a_file_stdin_or_the_environment(env, tmp_path, monkeypatch):
    env.ok("domain", "add", "ours.example")
    token = tmp_path / "token"
    token.write_text(BEARER + "\n")
    add = ("rule", "add", "r", "--url", "https://x.example/in", "--when", "To~.")
    res = env.run(*add, "--bearer-file", str(token), "--api-key-file", "-", input=API_KEY + "\r\n")
    assert res.exit_code == 0, res.stderr
    assert stored_auth(env, "r") == (None, BEARER, API_KEY)  # one line end dropped
    monkeypatch.setenv("MXHOOK_BASIC_AUTH", "bob:s3cret-pass")
    env.ok("rule", "edit", "r", "--clear-auth")
    assert stored_auth(env, "r") == ("bob:s3cret-pass", None, None)
    monkeypatch.setenv("MXHOOK_BASIC_AUTH", "")  # empty: not given
    env.ok("rule", "edit", "r", "--bearer", BEARER)
    assert stored_auth(env, "r") == (None, BEARER, None)


def test_a_secret_is_given_one_way(env, tmp_path, monkeypatch):
    env.ok("domain", "add", "ours.example")
    token = tmp_path / "token"
    token.write_text(BEARER)
    add = ("rule", "add", "r", "--url", "https://x.example/in", "--when", "To~.")
    env.fails(*add, "--bearer", BEARER, "--bearer-file", str(token),
              match="give --bearer, --bearer-file or $MXHOOK_BEARER, not two of them")
    env.fails(*add, "--bearer-file", "-", "--api-key-file", "-", input="a\nb\n",
              match="only one secret can be read from stdin")
    env.fails(*add, "--bearer-file", str(tmp_path / "missing"), match="does not exist")
    token.write_text("two\nlines\n")
    env.fails(*add, "--bearer-file", str(token), match="control character")
    token.write_bytes(b"caf\xe9\n")
    env.fails(*add, "--bearer-file", str(token), match="is not UTF-8 text (byte 4)")
    monkeypatch.setenv("MXHOOK_BEARER", BEARER)
    env.fails(*add, "--bearer", BEARER, match="not two of them")
    env.fails(*add, "--basic-auth", "bob:pw", match="not both")  # the token from the environment


def test_rotate_secret_errors(populated):
    populated.fails("rule", "rotate-secret", "nope", match="no rule named 'nope'", code=1)
    populated.fails("rule", "rotate-secret", "invoices", "--overlap", "soon", match="not a duration")
    populated.fails("rule", "rotate-secret", "invoices", "--overlap", "31d", match="between 0 and 30 days")
    populated.fails("endpoint", "rotate-secret", "9", match="no endpoint '9'", code=1)


def test_rotate_ed25519_adds_then_rotates_a_pair(populated):
    res = populated.ok("rule", "rotate-secret", "invoices", "--ed25519")
    assert res.stdout.startswith("Added an ed25519 key pair to rule invoices")
    first = printed_secret(res.stdout, "Ed25519 public key (for v1a signatures; `show` prints it again): ")
    res = populated.ok("rule", "rotate-secret", "invoices", "--ed25519", "--overlap", "1h")
    second = printed_secret(res.stdout, "New ed25519 public key (for v1a signatures; `show` prints it again): ")
    assert first != second
    keys = stored_keys(populated, "rule", 1)
    assert [k.scheme for k in keys] == ["v1", "v1a", "v1a"]  # the HMAC secret is untouched
    assert [k.current for k in keys] == [True, False, True]


def test_endpoint_secret_and_rotation(endpoints):
    res = endpoints.ok("endpoint", "add", "https://third.example/e", "--ed25519")
    secret = printed_secret(res.stdout)
    assert "Ed25519 public key" in res.stdout
    assert stored_keys(endpoints, "endpoint", 3)[0].secret == secret
    res = endpoints.ok("endpoint", "rotate-secret", "https://third.example/e")
    assert res.stdout.startswith("Rotated the signing secret of endpoint 3 (https://third.example/e)")
    new = printed_secret(res.stdout, "New signing secret (shown once, store it now): ")
    later = all_outputs(endpoints, ("endpoint", "list"), ("endpoint", "list", "--json"),
                        ("endpoint", "show", "3"), ("endpoint", "show", "3", "--json"))
    for value in (secret, new, stored_keys(endpoints, "endpoint", 3)[1].secret):
        assert value not in later
    assert len(endpoints.json("endpoint", "show", "3", "--json")["signing"]) == 3


def test_endpoint_test_request_is_signed(env):
    from tests.support.receiver import Receiver

    with Receiver() as rx:
        secret = printed_secret(env.ok("endpoint", "add", rx.url + "/ok", "--allow-http").stdout)
        env.ok("endpoint", "test", "1")
        (req,) = rx.wait_for(1, path="/ok")
        assert signing.verify(secret, req.headers, req.body) == req.headers["webhook-id"]


# -- the SSRF guard and regex warnings at add/edit -------------------------------------------

def test_blocked_endpoint_refused_naming_address_and_key(tmp_path):
    env = Env(tmp_path)
    env.write_config(allow_networks="")
    res = env.fails("rule", "add", "r", "--url", "http://127.0.0.1:9/in", "--allow-http",
                    "--when", "To~.", match="127.0.0.1")
    assert "[http] allow_networks" in res.stderr and "loopback" in res.stderr
    assert res.stderr.count("\n") == 1
    res = env.fails("rule", "add", "r", "--url", "https://lan.example/in", "--when", "To~.",
                    match="lan.example resolves to 192.168.7.7, a private address")
    assert "[http] allow_networks" in res.stderr
    env.fails("endpoint", "add", "https://meta.example/ev", match="169.254.169.254")
    env.fails("endpoint", "add", "https://mixed.example/ev", match="10.9.9.9")
    env.ok("rule", "add", "ok", "--url", "https://fine.example/in", "--when", "To~.")
    env.fails("rule", "edit", "ok", "--url", "https://lan.example/in", match="192.168.7.7")
    env.ok("endpoint", "add", "https://fine.example/ev")
    env.fails("endpoint", "edit", "1", "--url", "http://10.0.0.5/ev", "--allow-http", match="10.0.0.5")
    # the allowlist admits them
    env.write_config(allow_networks="192.168.7.0/24, 10.0.0.0/8")
    env.ok("rule", "edit", "ok", "--url", "https://lan.example/in")
    env.ok("endpoint", "edit", "1", "--url", "http://10.0.0.5/ev", "--allow-http")


def test_unresolvable_endpoint_is_a_warning(env):
    res = env.ok("rule", "add", "r", "--url", "https://gone.invalid/in", "--when", "To~.")
    assert "warning: endpoint host gone.invalid does not resolve" in res.stderr
    assert "Added rule r" in res.stdout
    res = env.ok("endpoint", "add", "https://gone.invalid/ev")
    assert "does not resolve" in res.stderr and "Added endpoint 1" in res.stdout


def test_catastrophic_regex_warns(env):
    res = env.ok("rule", "add", "r", "--url", "https://x.example/in",
                 "--when", "Subject~(a+)+$", "--when", "To~^x@", "--unless", r"From~(\w+)\1")
    warnings = [line for line in res.stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 2
    assert "subject~(a+)+$" in warnings[0] and "repeats" in warnings[0]
    assert "backreference" in warnings[1] and "regex_timeout (0.05 s)" in warnings[1]
    assert "Added rule r" in res.stdout
    res = env.ok("rule", "edit", "r", "--when", "Subject~.*a.*b.*c")
    assert "warning: condition 'subject~.*a.*b.*c' has 3 repeats" in res.stderr
    assert "warning" not in env.ok("rule", "edit", "r", "--when", "Subject~^Invoice \\d+").stderr


def test_arguments_that_are_not_utf8_are_one_line_errors(sales):
    # the shell hands Python undecodable bytes as surrogate escapes
    sales.fails("rule", "add", "r9", "--url", "https://app.example.net/x", "--when", "Subject~\udcff",
                match="valid UTF-8")
    sales.fails("rule", "edit", "sales", "--api-key", "key\udcff", match="valid UTF-8")


def test_numbers_out_of_range_are_one_line_errors(sales):
    sales.fails("rule", "edit", "sales", "--priority", "9223372036854775808", match="out of range")
    sales.fails("rule", "add", "r9", "--url", "https://app.example.net/x", "--when", "To~x",
                "--priority", "9223372036854775808", match="out of range")


def test_an_empty_config_path_is_an_error_not_the_default(env):
    res = env.runner.invoke(climod.cli, ["--config", "", "domain", "list"])
    assert res.exit_code == 2 and "--config needs a path" in res.stderr


def test_mail_text_cannot_drive_the_terminal():
    assert output.printable("Hi\x1b[2J\x1b]0;owned\x07 there\x9b") == "Hi\ufffd[2J\ufffd]0;owned\ufffd there\ufffd"
