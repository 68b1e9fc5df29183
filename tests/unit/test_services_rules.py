"""services.domains, services.rules and services.endpoints called directly: plain values in,
dataclasses and dicts out, services.errors raised with a stable code."""
from __future__ import annotations

import pytest
from tests.support.services import make_config, use_static_dns

from mxhook.model.targets import Destination
from mxhook.services import domains, endpoints, rules, targets
from mxhook.services.errors import Conflict, Invalid, NotFound, ServiceError, Unavailable


@pytest.fixture(autouse=True)
def static_dns(monkeypatch):
    use_static_dns(monkeypatch)


@pytest.fixture
def cfg(tmp_path):
    return make_config(tmp_path)


def test_domains_round_trip(cfg):
    with pytest.raises(Unavailable) as exc:
        domains.list_all(cfg)
    assert exc.value.code == "rules_db_missing"
    added = domains.add(cfg, "Bücher.Example.")
    assert added["name"] == "xn--bcher-kva.example" and added["log_denied"] is True
    with pytest.raises(Conflict, match="already permitted"):
        domains.add(cfg, "xn--bcher-kva.example")
    assert domains.edit(cfg, "bücher.example", log_denied=False)["log_denied"] is False
    assert [d["name"] for d in domains.list_all(cfg)] == ["xn--bcher-kva.example"]
    assert domains.remove(cfg, "BÜCHER.example") == "xn--bcher-kva.example"
    with pytest.raises(NotFound, match="not in the permitted domains"):
        domains.remove(cfg, "bücher.example")
    with pytest.raises(Invalid, match="give the domain only"):
        domains.add(cfg, "someone@example.com")


def test_rule_add_show_edit_move_remove(cfg):
    warnings = []
    added = rules.add(cfg, name="invoices",
                      destination=Destination("https://hooks.example/in",
                                              bearer="tok-abcdefghijklmnop"),
                      when=["To~^invoices@"], unless=[r"From~@spam\.example$"], warn=warnings.append)
    assert added.rule.name == "invoices" and added.no_domains and not warnings
    assert [k.scheme for k in added.keys] == ["v1"] and added.keys[0].secret
    with pytest.raises(Conflict):
        rules.add(cfg, name="invoices", destination=Destination("https://hooks.example/other"),
                  when=["To~."])

    view = rules.show(cfg, "invoices")
    d = view.as_dict()
    assert d["bearer"] == "****mnop" and d["signing"][0]["scheme"] == "v1"
    assert [c["negate"] for c in d["conditions"]] == [False, True]
    assert set(d) >= {"created", "updated"}

    # --unless alone replaces only the negated conditions
    edited = rules.edit(cfg, "invoices", unless=["Subject~spam"], destination={"basic_auth": "bob:pw"})
    assert [(c.pattern, c.negate) for c in edited.conditions] == [("^invoices@", False), ("spam", True)]
    assert (edited.destination.basic_auth, edited.destination.bearer) == ("bob:pw", None)
    assert rules.move(cfg, "invoices", 7).priority == 7
    assert not rules.set_enabled(cfg, "invoices", False).enabled
    assert [v.rule.name for v in rules.list_all(cfg)] == ["invoices"]
    assert rules.list_all(cfg)[0].keys is None and rules.list_all(cfg, with_keys=True)[0].keys

    rule, rotation = rules.rotate_secret(cfg, "invoices", overlap=3600)
    assert rule.name == "invoices" and not rotation.first and rotation.until
    # the time shown is the one stored: when the previous key really stops signing
    [previous] = [k for k in rules.show(cfg, "invoices").keys if k.expires]
    assert previous.expires.startswith(rotation.until[:-1])
    rules.remove(cfg, "invoices")
    for call in (lambda: rules.show(cfg, "invoices"), lambda: rules.remove(cfg, "invoices"),
                 lambda: rules.edit(cfg, "invoices", priority=1)):
        with pytest.raises(NotFound, match="no rule named 'invoices'"):
            call()


def test_rule_input_errors_write_nothing(cfg, tmp_path):
    with pytest.raises(Invalid, match="--bearer must not be empty"):
        rules.add(cfg, name="r", destination=Destination("https://hooks.example/in", bearer=""),
                  when=["To~."])
    with pytest.raises(Invalid):
        rules.add(cfg, name="r", destination=Destination("https://hooks.example/in"), when=["no tilde"])
    with pytest.raises(Invalid, match="SSRF guard") as exc:
        rules.add(cfg, name="r", destination=Destination("https://lan.example/in"), when=["To~."])
    assert exc.value.code == "egress_refused"
    assert not (tmp_path / "rules.db").exists()
    rules.add(cfg, name="r", destination=Destination("https://hooks.example/in"), when=["To~."])
    with pytest.raises(Invalid, match="nothing to change") as exc:
        rules.edit(cfg, "r")
    assert exc.value.code == "nothing_to_change"


def test_rule_warnings_go_to_the_callback(cfg):
    warnings = []
    rules.add(cfg, name="slow", destination=Destination("https://unknown.invalid/in"),
              when=["Subject~(a+)+$"],
              warn=warnings.append)
    assert len(warnings) == 2
    assert "stored anyway" in warnings[0] and "regex_timeout" in warnings[1]


def test_endpoints_round_trip(cfg):
    view = endpoints.add(cfg, destination=Destination("https://app.example.net/events",
                                                      bearer="tok-abcdefghijklmnop"),
                         categories=["bounces", "blocks"], interval=30, ed25519=True)
    ep = view.endpoint
    assert ep.categories == ("bounces", "blocks") and ep.interval == 30
    assert sorted(k.scheme for k in view.keys) == ["v1", "v1a"]
    with pytest.raises(Conflict, match="already exists"):
        endpoints.add(cfg, destination=Destination("https://app.example.net/events"))
    shown = endpoints.show(cfg, str(ep.id)).as_dict()
    assert shown["bearer"] == "****mnop" and shown["events"] == ["bounces", "blocks"]
    assert endpoints.show(cfg, ep.destination.url).endpoint.id == ep.id

    edited = endpoints.edit(cfg, ep.id, categories="deliveries", enabled=False, clear_auth=True)
    assert edited.categories == ("deliveries",) and not edited.enabled and edited.destination.bearer is None
    with pytest.raises(Invalid, match="nothing to change"):
        endpoints.edit(cfg, ep.id)
    _, rotation = endpoints.rotate_secret(cfg, ep.id, overlap=0)
    assert rotation.until is None and not rotation.first
    assert [v.endpoint.id for v in endpoints.list_all(cfg)] == [ep.id]
    assert endpoints.remove(cfg, ep.destination.url).id == ep.id
    with pytest.raises(NotFound, match="no endpoint"):
        endpoints.show(cfg, ep.destination.url)
    with pytest.raises(NotFound):
        endpoints.remove(cfg, ep.destination.url)


def test_one_error_hierarchy():
    for cls in (Invalid, NotFound, Conflict, Unavailable):
        assert issubclass(cls, ServiceError)
    err = Invalid("bad", "bad_thing")
    assert (err.code, err.message, Invalid("x").code) == ("bad_thing", "bad", "invalid")


def test_masking():
    assert targets.mask_basic("user:pa:ss") == "user:****"
    assert targets.mask_secret("abcdefghijkl") == "****ijkl"
    assert targets.mask_secret("short") == "****"
    assert targets.mask_secret(None) is None
    dest = Destination("https://h.example/", bearer="tok", api_key="k")
    assert dest.edited({"basic_auth": "u:p"}) == Destination("https://h.example/", basic_auth="u:p",
                                                             api_key="k")
    assert dest.edited({"bearer": "t2"}, clear_auth=True) == Destination("https://h.example/", bearer="t2")
    assert targets.as_dict(dest)["bearer"] == "****"


def test_the_store_says_missing_or_exists_and_every_operation_maps_it_alike(cfg, monkeypatch):
    """NotFound and Conflict come from what the store found, not from which call raised: a
    rule removed between an edit's read and its write is NotFound, not Conflict."""
    from mxhook.store import rulesdb

    rules.add(cfg, name="a", destination=Destination("https://hooks.example/a"), when=["To~^a@"])
    replace = rulesdb.RulesStore.replace_rule

    def removed_meanwhile(store, name, rule, **kwargs):
        store.remove_rule(name)  # another admin, between edit's read and its write
        return replace(store, name, rule, **kwargs)

    monkeypatch.setattr(rulesdb.RulesStore, "replace_rule", removed_meanwhile)
    with pytest.raises(NotFound, match="no rule named 'a'"):
        rules.edit(cfg, "a", destination={"url": "https://hooks.example/a2"})
    monkeypatch.undo()
    rules.add(cfg, name="a", destination=Destination("https://hooks.example/a"), when=["To~^a@"])
    with pytest.raises(Conflict, match="already exists"):
        rules.add(cfg, name="a", destination=Destination("https://hooks.example/a2"), when=["To~."])
    with pytest.raises(NotFound, match="no rule named 'b'"):
        rules.set_enabled(cfg, "b", True)


def test_dialects_and_templates_through_the_services(cfg):
    tpl = targets.TemplateGiven('{"s": "{{ message.subject }}"}', name="in.j2")
    added = rules.add(cfg, name="a", destination=Destination("https://hooks.example/a"),
                      when=["To~."], template=tpl)
    assert added.rule.destination.template == 1
    with pytest.raises(Invalid, match=r"^in\.j2 line 2: ") as exc:
        rules.edit(cfg, "a", template=targets.TemplateGiven("{}\n{{ 1 +  }}", name="in.j2"))
    assert exc.value.code == "template_invalid"
    assert rules.edit(cfg, "a", no_template=True).destination.template is None  # a change alone
    view = rules.show(cfg, "a")
    assert view.template["current"] is None and [t.version for t in view.template["versions"]] == [1]
    with pytest.raises(Invalid, match="posts events, not inbound mail"):
        rules.edit(cfg, "a", destination={"dialect": "msndr"})

    warnings = []
    ep = endpoints.add(cfg, destination=Destination("https://u:p%21@hooks.example/ev", dialect="smtp2go"),
                       categories="blocks,bounces", warn=warnings.append)
    assert (ep.endpoint.destination.url, ep.endpoint.destination.basic_auth) == (
        "https://hooks.example/ev", "u:p!")
    assert not warnings  # smtp2go posts blocked and bounce events
    endpoints.edit(cfg, ep.endpoint.id, destination={"dialect": "paubox"}, categories="blocks",
                   warn=warnings.append)
    assert warnings and "posts none of the events selected" in warnings[0]
    assert {d["name"] for d in targets.dialect_list()} >= {"native", "smtp2go", "sendgrid-raw"}
