"""The spooler's side of fetch URLs: with [web] public_url it creates the key file, posts the
url of an omitted attachment, keeps large bodies after delivery, and signs with a key appended
to the file from the next round on (a bad line: warned once, the keys read before kept)."""
from __future__ import annotations

import base64
import logging

from mxhook import config
from mxhook.model.fetchurls import verify
from mxhook.store import ingest
from mxhook.store.statedb import StateStore
from tests.spooler.test_spooler import Stepped, delivery, rx, settings, target, write_inbound  # noqa: F401

NEW_KEY = b"\x07" * 32


def cfg_with_urls(tmp_path):
    values = settings(tmp_path, max_attachment_size="5")  # order.bin has 10 bytes
    values["web"] = {"public_url": "https://mx.example.com", "attachment_key_file": str(tmp_path / "a.key")}
    return config.from_dict(values)


def test_url_posted_body_kept_and_a_rotated_key_signs(rx, tmp_path, caplog):
    cfg = cfg_with_urls(tmp_path)
    rid = write_inbound(cfg, target(rx, "/f"))
    with Stepped(cfg) as sp:
        (first_key,) = sp.spooler.fetch_urls.keys
        assert (tmp_path / "a.key").exists()
        assert sp.spooler.state.keep_bodies_over == 5
        sp.step()
        (req,) = rx.wait_for(1, path="/f")
        (att,) = req.json()["message"]["attachments"]
        token = att["url"].removeprefix("https://mx.example.com/v1/attachments/")
        claim = verify((first_key,), token, sp.clock())
        assert claim.message_id == rid and claim.part == "0"
        assert delivery(cfg, ingest.delivery_id(rid, "r1"))["status"] == "succeeded"
        with StateStore(cfg.state_db) as st:  # kept for the URL
            assert st.conn.execute("SELECT raw IS NOT NULL FROM messages WHERE id = ?", (rid,)).fetchone()[0]

        with open(tmp_path / "a.key", "a") as f:
            f.write(base64.b64encode(NEW_KEY).decode() + "\n")
        sp.spooler._refresh_fetch_urls()
        assert sp.spooler.fetch_urls.keys == (first_key, NEW_KEY)
        with open(tmp_path / "a.key", "a") as f:
            f.write("garbage\n")
        with caplog.at_level(logging.WARNING, logger="mxhook.daemons.spooler"):
            sp.spooler._refresh_fetch_urls()
            sp.spooler._refresh_fetch_urls()
        assert sp.spooler.fetch_urls.keys == (first_key, NEW_KEY)
        assert len([r for r in caplog.records if "fetch URLs' keys" in r.getMessage()]) == 1
