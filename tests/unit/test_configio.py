"""`mxhook config export` / `import` (services/configio.py, cli/configio.py): the document
round-trips every kind of object and field, imports are idempotent, --prune and --dry-run,
secrets in and out, and a bad document writes nothing."""
from __future__ import annotations

import copy
import json
import os
import stat

import pytest
from click.testing import CliRunner
from tests.support.services import make_config, use_static_dns

from mxhook.cli import cli
from mxhook.model.targets import Destination
from mxhook.services import configio, domains, endpoints, rules, targets, tracking
from mxhook.services.errors import Invalid
from mxhook.store.rulesdb import RulesStore

INBOUND_TEMPLATE = '{"s": "{{ message.subject }}"}'
EVENTS_TEMPLATE = '{"n": {{ count }}}'
MAILGUN_KEY = "key-0123456789abcdef0123456789abcdef"


@pytest.fixture(autouse=True)
def static_dns(monkeypatch):
    use_static_dns(monkeypatch)


@pytest.fixture
def cfg(tmp_path):
    return make_config(tmp_path / "a")


@pytest.fixture
def other(tmp_path):
    """A second host's config (its own rules.db)."""
    return make_config(tmp_path / "b")


def populate(cfg) -> None:
    """Every kind of object, with every field the CLI can set given a value besides its default."""
    domains.add(cfg, "ours.example")
    domains.add(cfg, "Bücher.example", log_denied=False, unmatched="pass", reject_text="no such user")
    rules.add(cfg, name="invoices", destination=Destination(
        "http://hooks.example/in", bearer="tok-abcdefghijklmnop",
        retry_interval=120, retry_period=5, timeout=20, allow_http=True, retry_backoff="exponential",
        retry_cap=7200),
        when=["To~^invoices@"], unless=[r"Subject~spam"], priority=5, continue_matching=True,
        include_raw=True, reject_text="go away", ed25519=True,
        template=targets.TemplateGiven(INBOUND_TEMPLATE))
    rules.add(cfg, name="drop", destination=Destination("https://hooks.example/drop", format="multipart",
                                                        basic_auth="bob:pw", api_key="k-123"),
              when=["From~@spam\\.example$"], discard=True, enabled=False)
    rules.add(cfg, name="grid", destination=Destination("https://hooks.example/grid", dialect="sendgrid"),
              when=["To~."], priority=9)
    endpoints.add(cfg, destination=Destination("https://app.example.net/ev", basic_auth="ev:pw",
                                               retry_interval=30, retry_period=2, timeout=10,
                                               retry_backoff="exponential", retry_cap=900),
                  categories="all", interval=30, max_events=500, timezone="Europe/Berlin",
                  enabled=False, custom_headers=["X-Campaign", "X-Tenant"],
                  template=targets.TemplateGiven(EVENTS_TEMPLATE), ed25519=True)
    endpoints.add(cfg, destination=Destination("https://hooks.example/mg", dialect="mailgun",
                                               signing_key=MAILGUN_KEY), categories="bounces")
    with RulesStore(cfg.rules_db) as store:
        store.block_add("bounced@else.example", reason="550 5.1.1 no such user", source="bounce")
        store.block_add("Left@Else.example", reason=None, source="unsubscribe", scope="ours.example")
    tracking.set_domain(cfg, "mail.ours.example", opens=False, text_links=True, unsubscribe=True,
                        honeypot=True)


def portable(doc: dict) -> dict:
    """`doc` without the mailgun endpoint, which cannot be made without its signing key."""
    return {**doc, "endpoints": [e for e in doc["endpoints"] if e["dialect"] != "mailgun"]}


def imported(cfg, doc, **kw):
    return configio.import_document(cfg, copy.deepcopy(doc), **kw)


def test_export_holds_every_field_and_no_secret_unless_asked(cfg):
    populate(cfg)
    doc = configio.export(cfg)
    assert doc["version"] == configio.FORMAT_VERSION
    assert [d["name"] for d in doc["domains"]] == ["ours.example", "xn--bcher-kva.example"]
    [inv] = [r for r in doc["rules"] if r["name"] == "invoices"]
    assert inv["template"] == {"content_type": "application/json", "source": INBOUND_TEMPLATE}
    assert (inv["priority"], inv["continue"], inv["include_raw"], inv["ed25519"], inv["allow_http"]) == (
        5, True, True, True, True)
    assert [c["negate"] for c in inv["conditions"]] == [False, True]
    assert (inv["retry_interval"], inv["retry_backoff"], inv["retry_cap"]) == (120, "exponential", 7200)
    [drop] = [r for r in doc["rules"] if r["name"] == "drop"]
    assert (drop["retry_backoff"], drop["retry_cap"]) == ("fixed", 3600)
    [ev] = [e for e in doc["endpoints"] if e["url"].endswith("/ev")]
    assert (ev["retry_backoff"], ev["retry_cap"]) == ("exponential", 900)
    text = json.dumps(doc)
    for secret in ("tok-abcdefghijklmnop", "bob:pw", "k-123", "ev:pw", MAILGUN_KEY, "whsec_", "whsk_"):
        assert secret not in text
    assert not any(k in r for r in doc["rules"] + doc["endpoints"] for k in configio.SECRET_KEYS)
    full = configio.export(cfg, include_secrets=True)
    [inv] = [r for r in full["rules"] if r["name"] == "invoices"]
    assert inv["bearer"] == "tok-abcdefghijklmnop" and inv["basic_auth"] is None
    assert inv["signing_secrets"]["v1"].startswith("whsec_")
    assert inv["signing_secrets"]["v1a"].startswith("whsk_")
    assert [b["source"] for b in full["blocklist"]] == ["bounce", "unsubscribe"]


@pytest.mark.parametrize("secrets", [True, False])
def test_round_trip_into_an_empty_rules_db_gives_the_same_document(cfg, other, secrets):
    populate(cfg)
    doc = configio.export(cfg, include_secrets=secrets)
    if not secrets:
        doc = portable(doc)
    done = imported(other, doc)
    assert done.plan.count == 2 + 3 + len(doc["endpoints"]) + 2 + 1
    assert configio.export(other, include_secrets=secrets) == doc
    again = imported(other, doc)
    assert again.plan.count == 0 and again.new_keys == []
    # the same secrets sign on both hosts
    if secrets:
        for kind, name in (("rule", "invoices"), ("endpoint", "https://app.example.net/ev")):
            keys = []
            for c in (cfg, other):
                with RulesStore(c.rules_db) as store:
                    owner = store.get_rule(name) if kind == "rule" else store.get_endpoint(name)
                    keys.append(sorted((k.scheme, k.secret, k.public_key)
                                       for k in store.signing_keys(kind, owner.id) if k.current))
            assert keys[0] == keys[1]


def test_a_new_object_without_secrets_gets_keys_shown_once(cfg, other):
    populate(cfg)
    done = imported(other, portable(configio.export(cfg)))
    shown = {(kind, name): sorted(k.scheme for k in keys) for kind, name, keys in done.new_keys}
    assert shown[("rule", "invoices")] == ["v1", "v1a"]
    assert shown[("rule", "grid")] == ["v1"]
    assert shown[("endpoint", "https://app.example.net/ev")] == ["v1", "v1a"]


def test_mailgun_without_its_signing_key_is_refused_for_a_new_endpoint(cfg, other):
    populate(cfg)
    doc = configio.export(cfg)
    with pytest.raises(Invalid, match=r"endpoints\[1\]: .*signing"):
        imported(other, {"version": 1, "endpoints": doc["endpoints"]})


def test_secrets_left_out_keep_the_stored_ones_and_null_removes_them(cfg):
    populate(cfg)
    before = configio.export(cfg, include_secrets=True)
    doc = configio.export(cfg)
    assert imported(cfg, doc).plan.count == 0
    assert configio.export(cfg, include_secrets=True) == before
    [drop] = [r for r in doc["rules"] if r["name"] == "drop"]
    drop["basic_auth"] = None
    done = imported(cfg, doc)
    assert done.plan.changed["rules"] == ["drop"]
    after = configio.export(cfg, include_secrets=True)
    [drop] = [r for r in after["rules"] if r["name"] == "drop"]
    assert drop["basic_auth"] is None and drop["api_key"] == "k-123"


def test_credentials_in_an_smtp2go_url_are_taken_out_as_add_takes_them(cfg):
    doc = {"version": 1, "endpoints": [
        {"url": "https://user:pw@hooks.example/s2g", "dialect": "smtp2go", "events": ["bounces"]}]}
    assert imported(cfg, doc).plan.count == 1
    assert imported(cfg, doc).plan.count == 0
    [ep] = configio.export(cfg, include_secrets=True)["endpoints"]
    assert (ep["url"], ep["basic_auth"]) == ("https://hooks.example/s2g", "user:pw")


def test_given_signing_secret_replaces_the_current_one(cfg):
    populate(cfg)
    doc = configio.export(cfg, include_secrets=True)
    [inv] = [r for r in doc["rules"] if r["name"] == "invoices"]
    inv["signing_secrets"] = {"v1": "whsec_" + "QUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUE="}
    inv["ed25519"] = False
    assert imported(cfg, doc).plan.changed["rules"] == ["invoices"]
    [inv2] = [r for r in configio.export(cfg, include_secrets=True)["rules"] if r["name"] == "invoices"]
    assert inv2["signing_secrets"] == inv["signing_secrets"] and inv2["ed25519"] is False


def test_changes_are_found_per_kind_and_applied(cfg):
    populate(cfg)
    doc = configio.export(cfg)
    doc["domains"][0]["unmatched"] = "pass"
    doc["rules"][0]["conditions"].append({"header": "From", "pattern": "@x\\.example$"})
    [ep] = [e for e in doc["endpoints"] if e["url"].endswith("/ev")]
    ep["template"]["source"] = '{"count": {{ count }}}'
    ep["events"] = ["bounces"]
    doc["blocklist"][0]["reason"] = "by hand"
    doc["tracking"][0]["opens"] = True
    done = imported(cfg, doc)
    assert done.plan.count == 5
    again = configio.export(cfg)
    assert again["domains"][0]["unmatched"] == "pass"
    [ep2] = [e for e in again["endpoints"] if e["url"].endswith("/ev")]
    assert ep2["template"]["source"] == '{"count": {{ count }}}' and ep2["events"] == ["bounces"]
    assert again["blocklist"][0]["reason"] == "by hand" and again["tracking"][0]["opens"] is True
    assert imported(cfg, doc).plan.count == 0


def test_a_hand_written_document_in_other_spellings_imports_once(cfg):
    doc = {"version": 1,
           "domains": [{"name": "Bücher.Example."}],
           "rules": [{"name": "r", "url": "https://hooks.example/r",
                      "conditions": [{"header": " Subject ", "pattern": "^Invoice"}]}],
           "endpoints": [{"url": "https://hooks.example/e", "events": ["blocks", "bounces"],
                          "custom_headers": [" X-Tenant"]}],
           "blocklist": [{"address": "<Someone@Customer.Example>", "scope": "all"}],
           "tracking": [{"domain": "MAIL.ours.example"}]}
    assert imported(cfg, doc).plan.count == 5
    assert imported(cfg, doc).plan.count == 0
    again = configio.export(cfg)
    assert again["rules"][0]["conditions"] == [{"header": "subject", "pattern": "^Invoice", "negate": False}]
    assert again["blocklist"] == [{"address": "someone@customer.example", "scope": "*", "source": "cli",
                                   "reason": None}]


def test_a_document_without_backoff_keys_keeps_the_fixed_interval(cfg):
    """A document written before the backoff existed: what it leaves out is the default."""
    doc = {"version": 1, "rules": [{"name": "r", "url": "https://hooks.example/r", "retry_interval": 30,
                                    "conditions": [{"header": "To", "pattern": "."}]}],
           "endpoints": [{"url": "https://hooks.example/e"}]}
    assert imported(cfg, doc).plan.count == 2
    again = configio.export(cfg)
    assert [(o["retry_backoff"], o["retry_cap"]) for o in again["rules"] + again["endpoints"]] == [
        ("fixed", 3600)] * 2
    again["rules"][0]["retry_backoff"] = "exponential"
    assert imported(cfg, again).plan.count == 1
    assert configio.export(cfg)["rules"][0]["retry_backoff"] == "exponential"


def test_prune_removes_what_the_document_does_not_name_of_the_kinds_it_gives(cfg):
    populate(cfg)
    doc = configio.export(cfg)
    doc["rules"] = [r for r in doc["rules"] if r["name"] != "drop"]
    doc["endpoints"] = []
    del doc["blocklist"]  # not managed: kept even with --prune
    assert imported(cfg, doc).plan.count == 0  # without --prune nothing goes
    done = imported(cfg, doc, prune=True)
    assert done.plan.removed["rules"] == ["drop"]
    assert sorted(done.plan.removed["endpoints"]) == ["https://app.example.net/ev", "https://hooks.example/mg"]
    after = configio.export(cfg)
    assert [r["name"] for r in after["rules"]] == [r["name"] for r in doc["rules"]]
    assert after["endpoints"] == [] and len(after["blocklist"]) == 2


def test_dry_run_writes_nothing(cfg, other):
    populate(cfg)
    doc = configio.export(cfg)
    done = imported(other, portable(doc), dry_run=True)
    assert done.dry_run and done.plan.added["rules"] == ["drop", "invoices", "grid"]
    assert not os.path.exists(other.rules_db)
    before = configio.export(cfg, include_secrets=True)
    doc["rules"] = doc["rules"][:1]
    done = imported(cfg, doc, dry_run=True, prune=True)
    assert done.plan.removed["rules"] == ["invoices", "grid"]
    assert configio.export(cfg, include_secrets=True) == before


BAD = [
    (lambda d: d.update(version=2), r"^version: must be 1"),
    (lambda d: d.update(rule=[]), r"^rule: unknown key"),
    (lambda d: d["rules"][1].update(url="ftp://x"), r"rules\[1\]: URL 'ftp://x'"),
    (lambda d: d["rules"][0].update(bearr="x"), r"rules\[0\]\.bearr: unknown key"),
    (lambda d: d["rules"][2].update(conditions=[]), r"rules\[2\]: a rule needs at least one condition"),
    (lambda d: d["rules"][0]["conditions"][0].update(pattern="("), r"rules\[0\]: "),
    (lambda d: d["rules"][0].update(priority="1"), r"rules\[0\]\.priority: must be a whole number"),
    (lambda d: d["rules"][0].update(template={"source": "{{ 1 + }}"}), r"rules\[0\]\.template"),
    (lambda d: d["rules"].append(dict(d["rules"][0])), r"rules\[3\]\.name: rule 'drop' is given twice"),
    (lambda d: d["endpoints"][0].update(timezone="Mars/Base"), r"endpoints\[0\]: unknown time zone"),
    (lambda d: d["endpoints"][0].update(events=["nope"]), r"endpoints\[0\]: "),
    (lambda d: d["endpoints"][0].update(bearer=""), r"endpoints\[0\]\.bearer: must not be empty"),
    (lambda d: d["domains"][1].update(name="a@b.example"), r"domains\[1\]: .*give the domain only"),
    (lambda d: d["domains"][0].update(unmatched="drop"), r"domains\[0\]: unmatched must be"),
    (lambda d: d["blocklist"][0].update(address="nobody"), r"blocklist\[0\]: .*not an email address"),
    (lambda d: d["blocklist"][0].update(source="robot"), r"blocklist\[0\]\.source: must be one of"),
    (lambda d: d["tracking"][0].update(opens="yes"), r"tracking\[0\]\.opens: must be true or false"),
    (lambda d: d["rules"][0].update(signing_secrets={"v1": "whsec_short"}), r"rules\[0\]\.signing_secrets\.v1"),
    (lambda d: d.update(rules={}), r"^rules: must be a list"),
    (lambda d: d["endpoints"][0].update(retry_interval="60"), r"endpoints\[0\]\.retry_interval: must be a number"),
    (lambda d: d["endpoints"][0].update(retry_period=99), r"endpoints\[0\]: retry period must be between"),
    (lambda d: d["endpoints"][0].update(retry_backoff="linear"), r"endpoints\[0\]: retry backoff must be one of"),
    (lambda d: d["endpoints"][0].update(retry_backoff=None), r"endpoints\[0\]\.retry_backoff: must be text"),
    (lambda d: d["rules"][0].update(retry_cap="1h"), r"rules\[0\]\.retry_cap: must be a number"),
    (lambda d: d["rules"][0].update(retry_cap=90000), r"rules\[0\]: retry cap must be between 10 and 86400"),
    (lambda d: d["endpoints"][0].update(template={"source": "{}", "content_type": 1}),
     r"endpoints\[0\]\.template\.content_type: must be text"),
    (lambda d: d["endpoints"][0].update(version=7), r"endpoints\[0\]: payload version 7 does not exist"),
]


@pytest.mark.parametrize("mutate, message", BAD, ids=[m for _, m in BAD])
def test_a_bad_document_names_the_item_and_writes_nothing(cfg, mutate, message):
    populate(cfg)
    before = configio.export(cfg, include_secrets=True)
    doc = copy.deepcopy(before)
    doc["rules"][1]["name"] = "drop2"  # something to write, were the document applied
    mutate(doc)
    with pytest.raises(Invalid, match=message) as exc:
        imported(cfg, doc, prune=True)
    assert exc.value.code == "document_invalid" and "nothing imported" in str(exc.value)
    assert configio.export(cfg, include_secrets=True) == before


def test_a_bad_document_for_a_new_host_creates_no_rules_db(other):
    with pytest.raises(Invalid, match=r"domains\[0\]"):
        imported(other, {"version": 1, "rules": [], "domains": [{"name": "-bad-"}]})
    assert not os.path.exists(other.rules_db)


def test_a_write_that_fails_part_way_leaves_rules_db_as_it_was(cfg, other, monkeypatch):
    populate(cfg)
    doc = portable(configio.export(cfg))
    imported(other, {"version": 1, "domains": [{"name": "kept.example"}]})
    before = configio.export(other, include_secrets=True)

    def fail(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(RulesStore, "set_tracking", fail)  # the last kind written
    with pytest.raises(OSError):
        imported(other, doc, prune=True)
    assert configio.export(other, include_secrets=True) == before


def test_text_that_does_not_parse_is_refused():
    with pytest.raises(Invalid, match="not valid JSON"):
        configio.loads('{"version": 1,')
    with pytest.raises(Invalid, match="not valid YAML"):
        configio.loads("version: [1")
    with pytest.raises(Invalid, match="must be a mapping"):
        configio.loads("- 1\n- 2\n")


def test_yaml_and_json_carry_the_same_document(cfg):
    populate(cfg)
    doc = configio.export(cfg, include_secrets=True)
    for fmt in configio.FORMATS:
        text = configio.dumps(doc, fmt)
        assert configio.loads(text) == doc == configio.loads(text, fmt)
    assert configio.dumps(doc, "yaml").startswith("version: 1\n")


def test_the_commands(cfg, tmp_path):
    populate(cfg)
    runner = CliRunner()
    env = {"MXHOOK_CONFIG": str(tmp_path / "mxhook.conf")}
    (tmp_path / "mxhook.conf").write_text(
        "[paths]\n" + "".join(f"{k} = {getattr(cfg, k)}\n" for k in ("rules_db", "state_db", "spool_dir"))
        + "[http]\nallow_networks = 127.0.0.0/8\n")
    out = tmp_path / "mx.yaml"
    result = runner.invoke(cli, ["config", "export", "--format", "yaml", "--include-secrets", "-o", str(out)],
                           env=env)
    assert result.exit_code == 0, result.output
    assert stat.S_IMODE(os.stat(out).st_mode) == 0o600 and "whsec_" in out.read_text()
    result = runner.invoke(cli, ["config", "import", str(out)], env=env)
    assert result.exit_code == 0, result.output
    assert result.output == "0 changed\n"
    result = runner.invoke(cli, ["config", "export"], env=env)
    doc = json.loads(result.output)
    doc["rules"] = doc["rules"][:1]
    result = runner.invoke(cli, ["config", "import", "--dry-run", "--prune", "-"], input=json.dumps(doc), env=env)
    assert result.exit_code == 0, result.output
    assert "would remove rule invoices\n" in result.output and result.output.endswith(
        "2 would change (dry run: nothing written)\n")
    result = runner.invoke(cli, ["config", "import", "--json", "-"], input='{"version": 1, "domains": [{"name": "new.example"}]}', env=env)
    assert json.loads(result.output)["domains"]["added"] == ["new.example"]
    result = runner.invoke(cli, ["config", "import", "-"], input='{"version": 1, "domains": [{}]}', env=env)
    assert result.exit_code != 0 and "domains[0].name: must be a domain name" in result.output
