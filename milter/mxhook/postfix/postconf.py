"""What mxhook needs in Postfix's main.cf, as pure functions (the CLI runs postconf).

Postfix's smtpd runs chrooted in its queue directory, so a socket under that directory is named
relative to it (`unix:mxhook/milter.sock`). Other milters already listed (opendkim, ...) are
kept; ours is appended once. `non_smtpd_milters` is left alone on purpose: locally submitted
mail (sendmail/pickup) carries neither SASL login nor a daemon name, so mxhook would treat it
as inbound and refuse it.

Webhook-only mail (`--discard` rules) is not discarded by the milter: smtpd counts a milter
DISCARD as an error, and after `smtpd_soft_error_limit` (10) of them every command of the
session waits `smtpd_error_sleep_time` (1 s). The milter gives such a message one recipient
in DISCARD_DOMAIN instead, and a transport_maps entry hands that domain to discard(8).

A recipient refused at end of headers while others of the message are accepted (past the
RCPT stage's cap on 452 splits) gets a bounce from Postfix itself: the milter replaces it by
`<encoded original>@REJECT_DOMAIN` with ORCPT naming the original, and the same table hands
REJECT_DOMAIN to error(8), so the sender gets a standard DSN naming the original recipient.
"""
from __future__ import annotations

import os
import re

DISCARD_DOMAIN = "discard.mxhook.invalid"  # .invalid (RFC 2606): never a real destination
DISCARD_RECIPIENT = f"webhook-only@{DISCARD_DOMAIN}"
DISCARD_TRANSPORT = "discard:webhook-only"  # discard(8) logs the next hop as the reason
REJECT_DOMAIN = "reject.mxhook.invalid"
REJECT_TRANSPORT = "error:5.7.1 mxhook: no inbound rule accepts this recipient"
# One inline table for both; a value with spaces needs the { key = value } form.
ROUTES_TABLE = (f"inline:{{ {DISCARD_DOMAIN}={DISCARD_TRANSPORT}, "
                f"{{ {REJECT_DOMAIN} = {REJECT_TRANSPORT} }} }}")
# master.cf services the routes name: service name -> the program it must run
ROUTE_SERVICES = {"discard": "discard", "error": "error"}

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

# The milter lists mxhook's entry may be in (`unwired` takes it out of both).
MILTER_LISTS = ("smtpd_milters", "non_smtpd_milters")

_ENTRY = re.compile(r"\{[^}]*\}|[^\s,{}]+")
_TABLE = re.compile(r"[^\s,{}]*\{[^}]*\}|[^\s,{}]+")  # a lookup table, inline:{ ... } kept whole


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


def entry_options(entry: str) -> dict[str, str]:
    """'{ unix:x, default_action=tempfail, connect_timeout=10s }' -> {'default_action':
    'tempfail', 'connect_timeout': '10s'} (a bare socket has none)."""
    inner = entry.strip()
    if not inner.startswith("{"):
        return {}
    options = {}
    for part in inner.strip("{} ").split(",")[1:]:
        name, sep, value = part.partition("=")
        if sep:
            options[name.strip()] = value.strip()
    return options


def socket_file(spec: str, queue_dir: str) -> str | None:
    """The file a unix socket name means to Postfix: a relative name is resolved against
    queue_directory (smtpd's working directory, chrooted or not). None for inet: sockets."""
    if not spec.startswith(("unix:", "local:")):
        return None
    path = spec.split(":", 1)[1]
    return os.path.normpath(path if path.startswith("/") else os.path.join(queue_dir, path))


def same_socket(a: str, b: str, queue_dir: str) -> bool:
    """Do two milter names reach the same socket (`unix:mxhook/milter.sock` and
    `unix:/var/spool/postfix/mxhook/milter.sock` do, with the default queue_directory)?"""
    if a == b:
        return True
    fa, fb = socket_file(a, queue_dir), socket_file(b, queue_dir)
    return fa is not None and fa == fb


def find_entry(milters: str, socket_spec: str, queue_dir: str) -> str | None:
    """The entry of a milter list that reaches mxhook's socket (`socket_spec` as in
    mxhook.conf or as Postfix names it), or None."""
    ours = postfix_socket(socket_spec, queue_dir)
    for entry in split_milters(milters):
        if same_socket(entry_socket(entry), ours, queue_dir):
            return entry
    return None


def merge_milters(current: str, our_socket: str, queue_dir: str | None = None) -> str:
    """Append our entry; an entry for the same socket under another name (absolute instead
    of relative) is replaced, so smtpd never asks mxhook twice."""
    entries = [
        e for e in split_milters(current)
        if not (entry_socket(e) == our_socket
                or (queue_dir is not None and same_socket(entry_socket(e), our_socket, queue_dir)))
    ]
    entries.append(f"{{ {our_socket}, {MILTER_OPTIONS} }}")
    return ", ".join(entries)


def has_routes(transport_maps: str) -> bool:
    """Does transport_maps hold mxhook's discard and reject entries?"""
    tables = _TABLE.findall(transport_maps or "")
    return (any(DISCARD_DOMAIN in t for t in tables) and any(REJECT_DOMAIN in t for t in tables))


def merge_transport_maps(current: str) -> str:
    """transport_maps with mxhook's table first (lookups stop at the first table that knows the
    domain; no other table knows an .invalid domain). Kept as it is when it has both entries;
    an older inline table of mxhook's (discard only) is replaced."""
    if has_routes(current):
        return current
    tables = [t for t in _TABLE.findall(current or "")
              if not (t.startswith("inline:") and DISCARD_DOMAIN in t)]
    return ", ".join([ROUTES_TABLE] + tables)


def route_problems(transport_maps: str, master: dict[str, dict[str, str]]) -> list[str]:
    """Why Postfix would not route mxhook's discard and reject addresses as meant (one line
    each). master: `postconf -F` parsed. Without them, webhook-only mail would take the normal
    route (relayhost, or a bounce to a possibly forged sender)."""
    problems = []
    if not has_routes(transport_maps):
        problems.append(f"transport_maps lacks mxhook's entries for {DISCARD_DOMAIN} and "
                        f"{REJECT_DOMAIN}")
    for service, program in ROUTE_SERVICES.items():
        fields = master.get(f"{service}/unix")
        if fields is None or (fields.get("command", "").split() or [""])[0] != program:
            problems.append(f"master.cf has no {service} service running {program}(8) "
                            f"(the line `{service} unix - - n - - {program}` of Postfix's "
                            "default master.cf)")
    return problems


_PLAIN_LOCAL = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*")


def reject_address(recipient: str) -> str:
    """The stand-in address of a recipient Postfix is to bounce: its address, with `@` as `=`,
    as the local part when that is a plain dot-atom (readable in the log), else a hex form."""
    local = recipient.replace("@", "=")
    if not (_PLAIN_LOCAL.fullmatch(local) and local.isascii()):
        local = "x-" + recipient.encode("utf-8").hex()
    return f"{local}@{REJECT_DOMAIN}"


def xtext(text: str) -> str:
    """RFC 3461 xtext (ORCPT's address): "+", "=", controls and non-ASCII bytes as +HH."""
    return "".join(chr(b) if 33 <= b <= 126 and b not in (43, 61) else f"+{b:02X}"
                   for b in text.encode("utf-8"))


def orcpt(recipient: str) -> str:
    """The ESMTP ORCPT parameter naming `recipient` (RFC 3461), for addrcpt."""
    return f"ORCPT=rfc822;{xtext(recipient)}"


def merge_macros(current: str, required: tuple[str, ...]) -> str:
    have = (current or "").split()
    return " ".join(have + [m for m in required if m not in have])


def desired(current: dict[str, str], socket_spec: str) -> dict[str, str]:
    """main.cf parameter -> value mxhook wants, given the current values (postconf -h)."""
    queue_dir = current.get("queue_directory", "/var/spool/postfix")
    our = postfix_socket(socket_spec, queue_dir)
    want = {"smtpd_milters": current.get("smtpd_milters", "")}
    if our not in [entry_socket(e) for e in split_milters(want["smtpd_milters"])]:
        want["smtpd_milters"] = merge_milters(want["smtpd_milters"], our, queue_dir)
    for name, (value, _why) in FIXED.items():
        want[name] = value
    want["transport_maps"] = merge_transport_maps(current.get("transport_maps", ""))
    for name, macros in REQUIRED_MACROS.items():
        want[name] = merge_macros(current.get(name, ""), macros)
    return want


def unwired(current: dict[str, str], socket_spec: str) -> dict[str, str]:
    """main.cf parameter -> value without mxhook's milter (`postfix-config --remove`, before
    the package goes: a milter list naming a socket nobody answers makes every message 4xx).
    The discard/reject routes stay: mail already queued for those addresses still needs them,
    and they name nothing outside Postfix."""
    queue_dir = current.get("queue_directory", "/var/spool/postfix")
    our = postfix_socket(socket_spec, queue_dir)
    want = {}
    for name in MILTER_LISTS:
        entries = split_milters(current.get(name, ""))
        kept = [e for e in entries if not same_socket(entry_socket(e), our, queue_dir)]
        if len(kept) != len(entries):
            want[name] = ", ".join(kept)
    return want


def changes(current: dict[str, str], want: dict[str, str]) -> list[tuple[str, str, str]]:
    """(name, old, new) for every parameter that differs."""
    return [(k, current.get(k, ""), v) for k, v in want.items() if current.get(k, "") != v]


def parameters() -> list[str]:
    """Every main.cf parameter `desired` reads."""
    return ["queue_directory", *MILTER_LISTS, "transport_maps", *FIXED, *REQUIRED_MACROS]


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


# ---------------------------------------------------------------------------------------------
# Reading what Postfix has (for `mxhook check` and the check after `postfix-config --apply`)

def parse_master(text: str) -> dict[str, dict[str, str]]:
    """`postconf -F` or `postconf -P` output -> {"smtp/inet": {"chroot": "y", ...}}."""
    services: dict[str, dict[str, str]] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(" = ")
        if not sep:
            continue
        parts = key.strip().rsplit("/", 2)
        if len(parts) != 3:
            continue
        name, kind, field = parts
        services.setdefault(f"{name}/{kind}", {})[field] = value.strip()
    return services


def smtpd_services(fields: dict[str, dict[str, str]]) -> list[str]:
    """master.cf services that run smtpd (from `postconf -F`)."""
    return [svc for svc, f in fields.items() if (f.get("command", "").split() or [""])[0] == "smtpd"]


def chrooted_smtpd(fields: dict[str, dict[str, str]]) -> list[str]:
    """smtpd services with chroot y in master.cf ("-" is n since Postfix 3.0)."""
    return [svc for svc in smtpd_services(fields) if fields[svc].get("chroot") == "y"]


def milter_wiring(main_milters: str, overrides: dict[str, dict[str, str]], socket_spec: str,
                  queue_dir: str, default_action: str, chrooted: list[str]) -> tuple[list[str], list[str]]:
    """Does Postfix hand mail to mxhook's milter? -> (problems, notes), one line each.

    main_milters: main.cf smtpd_milters; overrides: `postconf -P` parsed (master.cf -o, e.g. the
    port-25-only alternative); default_action: main.cf milter_default_action; chrooted: smtpd
    services running chrooted (their absolute socket names resolve inside queue_directory).
    """
    ours = postfix_socket(socket_spec, queue_dir)
    problems: list[str] = []
    notes: list[str] = []
    found: list[tuple[str, str]] = []  # (where, entry)
    entry = find_entry(main_milters, socket_spec, queue_dir)
    if entry is not None:
        found.append(("main.cf", entry))
    for svc, params in sorted(overrides.items()):
        if "smtpd_milters" not in params:
            continue
        e = find_entry(params["smtpd_milters"], socket_spec, queue_dir)
        if e is not None:
            found.append((f"master.cf {svc}", e))
        elif entry is not None:
            notes.append(f"master.cf service {svc} overrides smtpd_milters without mxhook: "
                         "its mail does not meet mxhook")
    if not found:
        problems.append(
            f"Postfix's smtpd_milters does not name mxhook's socket {ours}: run `mxhook "
            "postfix-config --apply`, then `postfix reload`"
        )
        return problems, notes
    for where, e in found:
        action = entry_options(e).get("default_action", default_action)
        if action != "tempfail":
            problems.append(
                f"{where}: the mxhook milter's default_action is {action}: while mxhook is down "
                "Postfix would accept mail that was never spooled; set default_action=tempfail "
                f"(`mxhook postfix-config` prints the entry)"
            )
        name = entry_socket(e)
        if name.startswith(("unix:/", "local:/")) and chrooted:
            problems.append(
                f"{where}: smtpd runs chrooted in {queue_dir} ({', '.join(chrooted)} in master.cf) "
                f"and cannot reach the absolute socket {name}: put [milter] socket under "
                f"{queue_dir} (Postfix then names it relative) or set chroot n for those services"
            )
    notes.insert(0, "mxhook's milter is in smtpd_milters of " + ", ".join(w for w, _ in found))
    return problems, notes


def backup_path(main_cf: str, when) -> str:
    """Where `postfix-config --apply` keeps the old main.cf: main.cf.mxhook-YYYYmmddHHMMSS."""
    return f"{main_cf}.mxhook-{when:%Y%m%d%H%M%S}"
