"""A key rotation reaches the next attempt: the spooler caches the signing keys (its workers
never query rules.db), and its loop refreshes them before it hands the retry out. Real
rules.db, real receiver on loopback, the spooler on the test's clock."""
from __future__ import annotations

from mxhook.delivery import signing
from mxhook.model.rules import Rule, parse_condition
from mxhook.model.targets import Destination
from mxhook.store import ingest, rulesdb
from tests.spooler.test_spooler import Stepped, delivery, make_cfg, rx, target, write_inbound  # noqa: F401
from tests.support.receiver import Response


def verifies(secret: str, req) -> bool:
    try:
        signing.verify(secret, req.headers, req.body)
        return True
    except signing.VerificationError:
        return False


def test_a_retry_is_signed_with_the_key_rotated_in_after_the_first_attempt(rx, tmp_path):
    cfg = make_cfg(tmp_path)
    with rulesdb.RulesStore(cfg.rules_db) as store:
        rule = store.add_rule(Rule(name="r1", destination=Destination(rx.url + "/k", allow_http=True),
                                   conditions=(parse_condition("To~@ours\\.example$"),)))
        (old,) = store.signing_keys("rule", rule.id)
    rx.script("/k", [Response(503), Response(200)])
    did = ingest.delivery_id(write_inbound(cfg, target(rx, "/k", id=rule.id)), "r1")
    with Stepped(cfg) as sp:
        sp.step()
        (first,) = rx.wait_for(1, path="/k")
        assert verifies(old.secret, first)
        assert delivery(cfg, did)["status"] == "deferred"
        with rulesdb.RulesStore(cfg.rules_db) as store:
            new = store.rotate_key("rule", rule.id, overlap=0)
        sp.step(advance=1.0)  # the retry is due (10 s at retry_time_scale 0.01)
        first, retry = rx.wait_for(2, path="/k")
    assert retry.headers["webhook-id"] == first.headers["webhook-id"] == did
    assert verifies(new.secret, retry) and not verifies(old.secret, retry)
    assert len(retry.headers["webhook-signature"].split()) == 1
    assert delivery(cfg, did)["status"] == "succeeded"
