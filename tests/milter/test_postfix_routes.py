"""The milter's look at Postfix's discard and reject routes, with the real postconf on a
private configuration directory."""
import logging
import os
import shutil

import pytest

from mxhook.postfix import postconf as pc
from mxhook.daemons.milter import POSTCONF, PostfixRoutes

pytestmark = pytest.mark.skipif(not shutil.which(POSTCONF) and not os.path.exists(POSTCONF),
                                reason="postconf not installed")

MASTER = """\
smtp      inet  n       -       n       -       -       smtpd
error     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
"""


def write(directory, transport_maps, master=MASTER):
    (directory / "main.cf").write_text(f"transport_maps = {transport_maps}\n")
    (directory / "master.cf").write_text(master)


def test_routes_are_used_only_while_postfix_has_them(tmp_path, caplog):
    write(tmp_path, pc.merge_transport_maps("hash:/etc/postfix/transport"))
    routes = PostfixRoutes(str(tmp_path), interval=0)
    assert routes.ready() and routes.problems == []

    caplog.set_level(logging.WARNING, "mxhook.daemons.milter")
    write(tmp_path, "hash:/etc/postfix/transport")  # an upgrade that did not re-run postfix-config
    os.utime(tmp_path / "main.cf", ns=(1, 1))
    assert not routes.ready()
    assert not routes.ready()
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "mxhook postfix-config --apply" in warnings[0], warnings
    assert "transport_maps lacks" in warnings[0]

    write(tmp_path, pc.ROUTES_TABLE, master=MASTER.replace("discard   unix", "#discard  unix"))
    os.utime(tmp_path / "main.cf", ns=(2, 2))
    assert not routes.ready() and routes.problems[0].startswith("master.cf has no discard service")

    write(tmp_path, pc.ROUTES_TABLE)
    os.utime(tmp_path / "master.cf", ns=(3, 3))
    assert routes.ready()


def test_postconf_is_not_run_again_before_the_interval_or_without_a_change(tmp_path):
    write(tmp_path, pc.ROUTES_TABLE)
    routes = PostfixRoutes(str(tmp_path), interval=3600)
    assert routes.ready()
    write(tmp_path, "")
    assert routes.ready()  # not looked at again within the interval
    routes = PostfixRoutes(str(tmp_path), interval=0, postconf="/nonexistent/postconf")
    assert not routes.ready() and "cannot read Postfix's configuration" in routes.problems[0]


def test_missing_configuration_directory_means_no_routes(tmp_path):
    routes = PostfixRoutes(str(tmp_path / "nowhere"), interval=0)
    assert not routes.ready()
