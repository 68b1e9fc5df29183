"""`mxhook check`'s milter order: a DKIM signer before mxhook's milter signs the body before
tracking rewrites it (services/check.py)."""
import pytest

from mxhook import config
from mxhook.services import check

QUEUE = "/var/spool/postfix"
OURS = "unix:/var/spool/postfix/mxhook/milter.sock"
MXHOOK = "{ unix:mxhook/milter.sock, default_action=tempfail }"


@pytest.mark.parametrize("entry,name", [
    ("inet:localhost:8891", "opendkim"),
    ("{ inet:127.0.0.1:11332, default_action=accept }", "rspamd"),
    ("unix:opendkim/opendkim.sock", "opendkim"),
    ("local:/run/dkimpy-milter/dkimpy-milter.sock", "dkimpy"),
    ("inet:localhost:8893", None),  # opendmarc verifies only
    ("unix:spamass/spamass.sock", None),
])
def test_signers_are_told_by_name_and_port(entry, name):
    assert check.dkim_signer(entry, QUEUE, {}) == name


def test_signers_are_told_by_their_configured_socket(tmp_path, monkeypatch):
    (tmp_path / "dkimpy.conf").write_text("Syslog yes\nSocket  inet:8892@localhost\n")
    (tmp_path / "opendkim.conf").write_text("Socket local:/var/spool/postfix/sign/s.sock\n")
    (tmp_path / "proxy.inc").write_text('bind_socket = "localhost:11999";\n')
    monkeypatch.setattr(check, "SIGNER_CONFIGS", (
        ("dkimpy-milter", str(tmp_path / "dkimpy.conf"), r"^\s*Socket\s+(\S+)"),
        ("opendkim", str(tmp_path / "opendkim.conf"), r"^\s*Socket\s+(\S+)"),
        ("rspamd", str(tmp_path / "proxy.inc"), r'^\s*bind_socket\s*=\s*"([^"\s]+)'),
        ("rspamd", str(tmp_path / "absent.inc"), r'^\s*bind_socket\s*=\s*"([^"\s]+)')))
    known = check.configured_signers(QUEUE)
    assert check.dkim_signer("inet:127.0.0.1:8892", QUEUE, known) == "dkimpy-milter"
    assert check.dkim_signer("unix:sign/s.sock", QUEUE, known) == "opendkim"  # relative, chrooted
    assert check.dkim_signer("inet:[::1]:11999", QUEUE, known) == "rspamd"
    assert check.dkim_signer("inet:127.0.0.1:9999", QUEUE, known) is None


def test_the_fix_moves_mxhook_in_front_of_the_first_signer():
    milters = f"unix:spamass/s.sock, inet:localhost:8891, inet:localhost:8893, {MXHOOK}, inet:localhost:11332"
    signers, fixed = check.signers_before_mxhook(milters, OURS, QUEUE, {})
    assert signers == ["opendkim (inet:localhost:8891)"]
    assert fixed == f"unix:spamass/s.sock, {MXHOOK}, inet:localhost:8891, inet:localhost:8893, inet:localhost:11332"
    assert check.signers_before_mxhook(fixed, OURS, QUEUE, {}) is None
    assert check.signers_before_mxhook("inet:localhost:8891", OURS, QUEUE, {}) is None  # not ours


class FakePostfix:
    def __init__(self, main, overrides=None):
        self.main, self.overrides = main, overrides or {}

    def get(self, name):
        return self.main.get(name, "")

    def master_overrides(self):
        return self.overrides


def test_check_is_a_problem_with_tracking_on_and_a_note_without(monkeypatch):
    monkeypatch.setattr(check, "SIGNER_CONFIGS", ())
    postfix = FakePostfix({"smtpd_milters": f"inet:localhost:8891, {MXHOOK}",
                           "non_smtpd_milters": "$smtpd_milters", "dkim": "x"},
                          {"submission/inet": {"smtpd_milters": f"inet:localhost:8891,{MXHOOK}"}})
    values = {"queue_directory": QUEUE}
    on = config.from_dict({"milter": {"socket": OURS}, "tracking": {"public_url": "https://t.example.com"}})
    results = check.check_dkim_order(on, postfix, values)
    assert [r["message"].split(":")[0] for r in results] == [
        "main.cf smtpd_milters", "main.cf non_smtpd_milters", "master.cf submission/inet -o smtpd_milters"]
    assert all(not r["ok"] and r["code"] == "dkim_before_mxhook" for r in results)
    assert f"postconf -e 'smtpd_milters = {MXHOOK}, inet:localhost:8891'" in results[0]["message"]
    assert f"-o {{ smtpd_milters = {MXHOOK}, inet:localhost:8891 }}" in results[2]["message"]
    off = config.from_dict({"milter": {"socket": OURS}})
    assert all(r["ok"] and "harmless" in r["message"] for r in check.check_dkim_order(off, postfix, values))
    good = FakePostfix({"smtpd_milters": f"{MXHOOK}, inet:localhost:8891"})
    assert check.check_dkim_order(on, good, values) == []
