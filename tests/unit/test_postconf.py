import os
import socket

from mxhook.postfix import postconf as pc

DEFAULTS = {
    "queue_directory": "/var/spool/postfix",
    "smtpd_milters": "",
    "milter_protocol": "6",
    "enable_long_queue_ids": "no",
    "milter_connect_macros": "j {daemon_name} {daemon_addr} v _",
    "milter_mail_macros": "i {auth_type} {auth_authen} {auth_author} {mail_addr} {mail_host} {mail_mailer}",
    "milter_end_of_header_macros": "i",
    "milter_end_of_data_macros": "i",
    "transport_maps": "",
}


def test_socket_under_the_queue_dir_is_named_relative_to_the_chroot():
    assert pc.postfix_socket("unix:/var/spool/postfix/mxhook/milter.sock", "/var/spool/postfix") == "unix:mxhook/milter.sock"
    assert pc.postfix_socket("unix:/run/mxhook.sock", "/var/spool/postfix") == "unix:/run/mxhook.sock"


def test_fresh_postfix_gets_our_milter_long_queue_ids_and_the_discard_transport_only():
    want = pc.desired(DEFAULTS, "unix:/var/spool/postfix/mxhook/milter.sock")
    diff = pc.changes(DEFAULTS, want)
    assert [d[0] for d in diff] == ["smtpd_milters", "enable_long_queue_ids", "transport_maps"]
    assert diff[0][2] == "{ unix:mxhook/milter.sock, " + pc.MILTER_OPTIONS + " }"
    assert diff[2][2] == ("inline:{ discard.mxhook.invalid=discard:webhook-only, { reject.mxhook.invalid"
                          " = error:5.7.1 mxhook: no inbound rule accepts this recipient } }")


def test_discard_transport_goes_first_in_the_admins_transport_maps_once():
    current = "hash:/etc/postfix/transport, inline:{ a.example=smtp:[x], b.example=smtp:[y] }"
    merged = pc.merge_transport_maps(current)
    assert merged == pc.ROUTES_TABLE + ", " + current
    assert pc.merge_transport_maps(merged) == merged
    assert pc.DISCARD_RECIPIENT.endswith("@" + pc.DISCARD_DOMAIN)


def test_other_milters_are_kept_and_ours_is_not_added_twice():
    current = dict(DEFAULTS, smtpd_milters="inet:localhost:8891, { unix:opendmarc/s.sock, default_action=accept }")
    want = pc.desired(current, "unix:/var/spool/postfix/mxhook/milter.sock")
    entries = pc.split_milters(want["smtpd_milters"])
    assert entries[:2] == ["inet:localhost:8891", "{ unix:opendmarc/s.sock, default_action=accept }"]
    assert pc.entry_socket(entries[2]) == "unix:mxhook/milter.sock"
    again = pc.desired(dict(current, **want), "unix:/var/spool/postfix/mxhook/milter.sock")
    assert pc.changes(dict(current, **want), again) == []


def test_missing_macros_are_added_without_dropping_the_admins():
    current = dict(DEFAULTS, milter_connect_macros="j v", milter_mail_macros="")
    want = pc.desired(current, "unix:/x.sock")
    assert want["milter_connect_macros"] == "j v {daemon_name}"
    assert want["milter_mail_macros"] == "{auth_authen}"


def test_postconf_commands_target_the_given_instance():
    cmds = pc.postconf_commands([("enable_long_queue_ids", "no", "yes")], "/tmp/pf/etc")
    assert cmds == [["postconf", "-c", "/tmp/pf/etc", "-e", "enable_long_queue_ids = yes"]]


def test_socket_problems(tmp_path):
    assert "does not exist" in pc.socket_problems(f"unix:{tmp_path}/none.sock", None)[0]
    assert "inet:" in pc.socket_problems("inet:127.0.0.1:9", None)[0]
    path = str(tmp_path / "s.sock")
    s = socket.socket(socket.AF_UNIX)
    s.bind(path)
    try:
        os.chmod(path, 0o666)
        assert any("others must have no access" in p for p in pc.socket_problems("unix:" + path, None))
        os.chmod(path, 0o660)
        assert pc.socket_problems("unix:" + path, os.stat(path).st_gid) == []
        assert "not in the postfix group" in pc.socket_problems("unix:" + path, os.stat(path).st_gid + 1)[0]
    finally:
        s.close()


def test_an_older_discard_only_table_is_replaced_by_both_routes():
    old = "inline:{ discard.mxhook.invalid=discard:webhook-only }, hash:/etc/postfix/transport"
    assert pc.route_problems(old, MASTER_WITH_ROUTES) == [
        "transport_maps lacks mxhook's entries for discard.mxhook.invalid and reject.mxhook.invalid"]
    merged = pc.merge_transport_maps(old)
    assert merged == pc.ROUTES_TABLE + ", hash:/etc/postfix/transport"
    assert pc.route_problems(merged, MASTER_WITH_ROUTES) == []


MASTER_WITH_ROUTES = pc.parse_master("discard/unix/command = discard\nerror/unix/command = error\n")


def test_route_problems_name_missing_master_services():
    master = pc.parse_master("discard/unix/command = discard\nerror/unix/command = smtp\n")
    problems = pc.route_problems(pc.ROUTES_TABLE, master)
    assert len(problems) == 1 and problems[0].startswith("master.cf has no error service running error(8)")
    assert len(pc.route_problems("", {})) == 3


def test_reject_address_keeps_plain_addresses_readable_and_orcpt_is_xtext():
    assert pc.reject_address("u7@ours.example") == "u7=ours.example@reject.mxhook.invalid"
    assert pc.reject_address('"a b"@ours.example') == "x-" + '"a b"@ours.example'.encode().hex() + "@reject.mxhook.invalid"
    assert pc.reject_address("jürgen@ours.example").startswith("x-6ac3bc")
    assert pc.orcpt("a+b=c@ours.example") == "ORCPT=rfc822;a+2Bb+3Dc@ours.example"
    assert pc.orcpt("ü@x.example") == "ORCPT=rfc822;+C3+BC@x.example"


def test_unwired_takes_out_only_our_entry_under_any_name():
    ours = "{ unix:mxhook/milter.sock, " + pc.MILTER_OPTIONS + " }"
    current = {
        "queue_directory": "/var/spool/postfix",
        "smtpd_milters": f"inet:127.0.0.1:8891, {ours}",
        "non_smtpd_milters": "{ unix:/var/spool/postfix/mxhook/milter.sock, default_action=accept }",
        "transport_maps": pc.ROUTES_TABLE,
    }
    want = pc.unwired(current, "unix:/var/spool/postfix/mxhook/milter.sock")
    assert want == {"smtpd_milters": "inet:127.0.0.1:8891", "non_smtpd_milters": ""}
    assert pc.changes(current, want) == [
        ("smtpd_milters", current["smtpd_milters"], "inet:127.0.0.1:8891"),
        ("non_smtpd_milters", current["non_smtpd_milters"], "")]
    after = {**current, **want}
    assert pc.unwired(after, "unix:/var/spool/postfix/mxhook/milter.sock") == {}  # idempotent
    assert pc.desired(after, "unix:/var/spool/postfix/mxhook/milter.sock")["smtpd_milters"].endswith(ours)
