"""A config for calling mxhook.services directly: databases and spool under a test directory,
and a resolver that never asks DNS (the SSRF guard's check of endpoint URLs)."""
from __future__ import annotations

from mxhook import config
from mxhook.delivery import egress
from mxhook.services import targets

PUBLIC_IP = "93.184.216.34"
DNS = {"hooks.example": [PUBLIC_IP], "app.example.net": [PUBLIC_IP], "lan.example": ["192.168.7.7"]}


def make_config(tmp_path, **sections) -> config.Config:
    values = {"paths": {"rules_db": str(tmp_path / "rules.db"), "state_db": str(tmp_path / "state.db"),
                        "spool_dir": str(tmp_path / "spool")},
              "http": {"allow_networks": "127.0.0.0/8"}}
    for section, kv in sections.items():
        values.setdefault(section, {}).update(kv)
    return config.from_dict(values)


def use_static_dns(monkeypatch) -> None:
    monkeypatch.setattr(targets, "RESOLVER", egress.static_resolver(DNS))
