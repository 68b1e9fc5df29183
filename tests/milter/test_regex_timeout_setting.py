"""[milter] regex_timeout must be a real bound: the regex module takes a negative timeout as
none at all, so the milter refuses to start with one, in one line."""
from __future__ import annotations

import signal

import pytest

from mxhook import config
from mxhook.daemons import milter as miltermod


@pytest.mark.parametrize("value", ["-1", "0"])
def test_milter_refuses_to_start_without_a_real_regex_bound(tmp_path, capsys, value):
    conf = tmp_path / "mxhook.conf"
    conf.write_text(config.render({
        "paths": {"rules_db": str(tmp_path / "rules.db"), "state_db": str(tmp_path / "state.db"),
                  "spool_dir": str(tmp_path / "spool")},
        "milter": {"regex_timeout": value, "log": "stderr"},
    }))
    before = signal.pthread_sigmask(signal.SIG_BLOCK, set())
    assert miltermod.main(["--config", str(conf)]) == 2
    # its children must not inherit SIGTERM blocked
    assert signal.pthread_sigmask(signal.SIG_BLOCK, set()) == before
    err = capsys.readouterr().err
    assert err.splitlines() == [f"mxhook-milter: {conf}: [milter] regex_timeout must be above 0, "
                                f"got {float(value)!r}"]
