"""What mxhook needs in Postfix's main.cf, as pure functions (the CLI runs postconf).

Postfix's smtpd runs chrooted in its queue directory, so a socket under that directory is named
relative to it (`unix:mxhook/milter.sock`). Other milters already listed (opendkim, ...) are
kept; ours is appended once. `non_smtpd_milters` is left alone on purpose: locally submitted
mail (sendmail/pickup) carries neither SASL login nor a daemon name, so mxhook would treat it
as inbound and refuse it.
"""
from __future__ import annotations

import os
import re

MILTER_OPTIONS = "default_action=tempfail, connect_timeout=10s, command_timeout=30s, content_timeout=300s"

# Settings besides smtpd_milters: name -> (value, why)
FIXED: dict[str, tuple[str, str]] = {
    "milter_protocol": ("6", "milter protocol version with protocol negotiation (skipped callbacks)"),
    "enable_long_queue_ids": ("yes", "queue ids unique over time, so delivery log lines join the right message"),
}
# Macros the milter reads, and the main.cf parameter that must send each.
REQUIRED_MACROS = {
    "milter_connect_macros": ("{daemon_name}",),
    "milter_mail_macros": ("{auth_authen}",),
    "milter_end_of_header_macros": ("i",),
    "milter_end_of_data_macros": ("i",),
}

_ENTRY = re.compile(r"\{[^}]*\}|[^\s,{}]+")


def postfix_socket(socket_spec: str, queue_dir: str) -> str:
    """The name Postfix should use for the milter's socket."""
    if socket_spec.startswith(("unix:", "local:")):
        path = socket_spec.split(":", 1)[1]
        queue = queue_dir.rstrip("/") + "/"
        if path.startswith(queue):
            return "unix:" + path[len(queue):]
        return "unix:" + path
    return socket_spec


def split_milters(value: str) -> list[str]:
    """main.cf milter list -> entries ('{ unix:x, default_action=... }' kept whole)."""
    return [m.group(0) for m in _ENTRY.finditer(value or "")]


def entry_socket(entry: str) -> str:
    """'{ unix:x, default_action=tempfail }' -> 'unix:x'."""
    inner = entry.strip()
    if inner.startswith("{"):
        inner = inner.strip("{} ").split(",")[0]
    return inner.strip()


def merge_milters(current: str, our_socket: str) -> str:
    entries = [e for e in split_milters(current) if entry_socket(e) != our_socket]
    entries.append(f"{{ {our_socket}, {MILTER_OPTIONS} }}")
    return ", ".join(entries)


def merge_macros(current: str, required: tuple[str, ...]) -> str:
    have = (current or "").split()
    return " ".join(have + [m for m in required if m not in have])


def desired(current: dict[str, str], socket_spec: str) -> dict[str, str]:
    """main.cf parameter -> value mxhook wants, given the current values (postconf -h)."""
    our = postfix_socket(socket_spec, current.get("queue_directory", "/var/spool/postfix"))
    want = {"smtpd_milters": current.get("smtpd_milters", "")}
    if our not in [entry_socket(e) for e in split_milters(want["smtpd_milters"])]:
        want["smtpd_milters"] = merge_milters(want["smtpd_milters"], our)
    for name, (value, _why) in FIXED.items():
        want[name] = value
    for name, macros in REQUIRED_MACROS.items():
        want[name] = merge_macros(current.get(name, ""), macros)
    return want


def changes(current: dict[str, str], want: dict[str, str]) -> list[tuple[str, str, str]]:
    """(name, old, new) for every parameter that differs."""
    return [(k, current.get(k, ""), v) for k, v in want.items() if current.get(k, "") != v]


def parameters() -> list[str]:
    """Every main.cf parameter `desired` reads."""
    return ["queue_directory", "smtpd_milters", *FIXED, *REQUIRED_MACROS]


def postconf_commands(diff: list[tuple[str, str, str]], config_dir: str | None = None) -> list[list[str]]:
    base = ["postconf"] + (["-c", config_dir] if config_dir else [])
    return [base + ["-e", f"{name} = {new}"] for name, _old, new in diff]


def socket_problems(socket_spec: str, postfix_gid: int | None) -> list[str]:
    """Why Postfix could not reach the milter socket, as far as the file system tells."""
    if not socket_spec.startswith(("unix:", "local:")):
        return [f"milter socket {socket_spec!r} is not a unix socket (inet: stalls ~40 ms per message)"]
    path = socket_spec.split(":", 1)[1]
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return [f"milter socket {path} does not exist: is mxhook-milter running?"]
    problems = []
    mode = st.st_mode & 0o777
    if mode & 0o060 != 0o060:
        problems.append(f"milter socket {path} has mode {mode:04o}; the group needs read and write (0660)")
    if mode & 0o007:
        problems.append(f"milter socket {path} has mode {mode:04o}; others must have no access (0660)")
    if postfix_gid is not None and st.st_gid != postfix_gid:
        problems.append(f"milter socket {path} is not in the postfix group; smtpd cannot connect")
    return problems
