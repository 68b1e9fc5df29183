"""The packaged systemd units (packaging/debian/mxhook.mxhook-*.service) say what the daemons
do: Type=notify (each sends READY=1, daemons/systemd.py), ExecReload with the signal each takes
as a reload, and write access to Postfix's chroot for the milter alone."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys

import pytest

from mxhook.daemons import milter

DEBIAN = os.path.join(os.path.dirname(__file__), "..", "..", "packaging", "debian")
DAEMONS = ("milter", "spooler", "logfollow", "web", "track")
POSTFIX_CHROOT = "/var/spool/postfix"


def unit_path(daemon: str) -> str:
    return os.path.join(DEBIAN, f"mxhook.mxhook-{daemon}.service")


def parse(path: str) -> dict[str, dict[str, list[str]]]:
    """section -> key -> values, in order (systemd keys may repeat)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current = None
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            line = line.strip()
            if not line or line.startswith(("#", ";")):
                continue
            if line.startswith("["):
                current = sections.setdefault(line.strip("[]"), {})
                continue
            key, _, value = line.partition("=")
            current.setdefault(key.strip(), []).append(value.strip())
    return sections


def test_every_daemon_has_a_unit():
    shipped = sorted(f[len("mxhook.mxhook-"):-len(".service")] for f in os.listdir(DEBIAN)
                     if f.startswith("mxhook.mxhook-") and f.endswith(".service"))
    assert shipped == sorted(DAEMONS)


@pytest.mark.parametrize("daemon", DAEMONS)
def test_units_wait_for_readiness_and_reload(daemon):
    service = parse(unit_path(daemon))["Service"]
    assert service["Type"] == ["notify"]
    assert "NotifyAccess" not in service  # main: only the daemon itself, not journalctl or postconf
    sig = milter.RELOAD_SIGNAL if daemon == "milter" else signal.SIGHUP
    assert service["ExecReload"] == [f"/bin/kill -{sig.name.removeprefix('SIG')} $MAINPID"]


def test_the_milter_signal_is_not_the_one_libmilter_stops_on():
    assert milter.RELOAD_SIGNAL not in (signal.SIGHUP, signal.SIGTERM, signal.SIGINT)


def test_postfix_starts_after_the_milter_is_ready():
    unit = parse(unit_path("milter"))["Unit"]
    before = " ".join(unit["Before"]).split()
    assert "postfix.service" in before and "postfix@-.service" in before


@pytest.mark.parametrize("daemon", DAEMONS)
def test_only_the_milter_may_write_in_postfixs_chroot(daemon):
    service = parse(unit_path(daemon))["Service"]
    assert service["ProtectSystem"] == ["strict"]
    writable = " ".join(service.get("ReadWritePaths", [])).split()
    in_chroot = [p for p in writable if p.lstrip("-") == POSTFIX_CHROOT
                 or p.lstrip("-").startswith(POSTFIX_CHROOT + "/")]
    assert in_chroot == (["/var/spool/postfix/mxhook"] if daemon == "milter" else [])


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze here")
def test_systemd_analyze_verify(tmp_path):
    """As installed, but with the console scripts of this environment (verify wants ExecStart
    to exist)."""
    bindir = os.path.dirname(sys.executable)
    names = []
    for daemon in DAEMONS:
        script = os.path.join(bindir, f"mxhook-{daemon}")
        if not os.path.exists(script):
            pytest.skip(f"{script} is not installed (pip install -e .)")
        with open(unit_path(daemon), encoding="utf-8") as fh:
            text = fh.read().replace(f"/usr/bin/mxhook-{daemon} ", f"{script} ")
        names.append(str(tmp_path / f"mxhook-{daemon}.service"))
        with open(names[-1], "w", encoding="utf-8") as fh:
            fh.write(text)
    proc = subprocess.run(["systemd-analyze", "verify", "--man=no", *names],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and not proc.stderr.strip(), proc.stderr + proc.stdout
