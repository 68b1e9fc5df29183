"""The one config schema and parser for every mxhook daemon and the CLI.

`/etc/mxhook/mxhook.conf` (or `--config`, or `MXHOOK_CONFIG`) holds daemon settings only, as
`key = value` lines in sections. SCHEMA below lists every key with its type, default, check and
a one-line meaning; from it come each daemon's typed settings (`FromConfig`), `mxhook check`
(`Config.problems`), the packaged conffile (packaging/gen-conf.py) and the key tables of
docs/configuration.md (tests/unit/test_config.py fails when they disagree). An unknown key or a
bad value is a ConfigError naming the file, section and key, never a silent fallback.

Stdlib only: packaging/gen-conf.py imports this at package build time.
"""
from __future__ import annotations

import configparser
import dataclasses
import grp
import ipaddress
import os
import re
from dataclasses import dataclass, field
from typing import Any, Callable

DEFAULT_PATH = "/etc/mxhook/mxhook.conf"

SIZE_SUFFIXES = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3}


class ConfigError(Exception):
    """A config file or value that cannot be used; the message says where and why."""


def parse_size(text: str) -> int:
    """'50M' -> 52428800; plain numbers are bytes."""
    t = text.strip().upper().removesuffix("B")
    suffix = t[-1:] if t[-1:] in ("K", "M", "G") else ""
    number = t[: len(t) - len(suffix)]
    try:
        value = int(number) * SIZE_SUFFIXES[suffix]
    except ValueError:
        raise ValueError(f"not a size: {text!r} (use bytes or a K/M/G suffix)") from None
    if value < 0:
        raise ValueError(f"size must not be negative: {text!r}")
    return value


def parse_list(text: str) -> tuple[str, ...]:
    """'a, b,,c' -> ('a', 'b', 'c')."""
    return tuple(item.strip() for item in text.split(",") if item.strip())


def parse_networks(text) -> list:
    """'127.0.0.0/8, 192.168.1.0/24' (commas and/or whitespace, or a list) -> ip_network
    objects. A bare address means that one host. Host bits set (192.168.1.5/24) are an error
    naming the intended network rather than a silent widening."""
    items = text.replace(",", " ").split() if isinstance(text, str) else [str(t).strip() for t in text]
    nets = []
    for item in filter(None, items):
        try:
            nets.append(ipaddress.ip_network(item, strict=True))
        except ValueError as exc:
            try:
                loose = ipaddress.ip_network(item, strict=False)
            except ValueError:
                raise ValueError(f"{item!r} is not an IP network in CIDR form ({exc})") from None
            raise ValueError(f"{item!r} has host bits set; did you mean {loose}?") from None
    return nets


def parse_bool(text: str) -> bool:
    t = text.strip().lower()
    if t in ("yes", "true", "on", "1"):
        return True
    if t in ("no", "false", "off", "0"):
        return False
    raise ValueError(f"not a yes/no value: {text!r}")


def parse_socket(text: str) -> str:
    if not text.startswith(("unix:", "local:", "inet:", "inet6:")):
        raise ValueError("use unix:/path")
    return text


def parse_nameserver(text: str) -> tuple[str, int]:
    """'192.0.2.53', '192.0.2.53:5353', '2001:db8::53' or '[2001:db8::53]:5353' -> (address,
    port)."""
    text = text.strip()
    host, port = text, "53"
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise ValueError(f"{text!r} is not [address]:port")
        port = rest[1:] or "53"
    elif text.count(":") == 1:
        host, _, port = text.partition(":")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"{host!r} is not an IP address") from None
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{text!r}: the port must be 1-65535")
    return host, int(port)


def parse_nameservers(text: str) -> tuple[str, ...]:
    """'192.0.2.53, 127.0.0.1:5353' -> the entries, each checked by parse_nameserver."""
    items = parse_list(text)
    for item in items:
        parse_nameserver(item)
    return items


def parse_delimiters(text: str) -> str:
    """A set of recipient delimiter characters, as Postfix's recipient_delimiter: visible
    ASCII, not '@'; empty: none."""
    bad = [c for c in text if not "!" <= c <= "~" or c in '@"\\']
    if bad:
        raise ValueError(f"{bad[0]!r} cannot separate an address's tag (visible ASCII "
                         "characters other than @, \" and \\)")
    return text


def parse_listen(text: str) -> str:
    """'127.0.0.1:8025' or '[::1]:8025' (a host and a port)."""
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError("use HOST:PORT, e.g. 127.0.0.1:8025 or [::1]:8025")
    return text


def parse_base_url(text: str) -> str:
    """Empty, or an http(s) URL with a host and no query or fragment (a path is kept)."""
    if text and not re.fullmatch(r"https?://[^/?#\s@]+(/[^?#\s]*)?", text):
        raise ValueError("use https://HOST[:PORT][/PATH] (or empty)")
    return text


def parse_group(text: str) -> str:
    """A group name that exists here, or empty."""
    if text:
        try:
            grp.getgrnam(text)
        except KeyError:
            raise ValueError("no such group") from None
    return text


# ---------------------------------------------------------------------------------------------
# The schema

@dataclass(frozen=True)
class Type:
    """How a value is written (`name`, as docs/configuration.md shows it) and read (`parse`:
    the file's text -> the value, ValueError saying why not)."""

    name: str
    parse: Callable[[str], Any]


def _text(value: str) -> str:
    return value


TEXT = Type("text", _text)
PATH = Type("path", _text)
INT = Type("integer", int)
WHOLE_SECONDS = Type("whole seconds", int)
SECONDS = Type("seconds", float)
DAYS = Type("days", float)
NUMBER = Type("number", float)
SIZE = Type("size", parse_size)
BOOL = Type("yes/no", parse_bool)
LIST = Type("list", parse_list)
NETWORKS = Type("CIDR list", parse_networks)
SOCKET = Type("milter socket", parse_socket)
NAMESERVERS = Type("address list", parse_nameservers)
DELIMITERS = Type("characters", parse_delimiters)
GROUP = Type("group", parse_group)
LISTEN = Type("host:port", parse_listen)
BASE_URL = Type("URL", parse_base_url)


def choice(*options: str) -> Type:
    def parse(value: str) -> str:
        if value not in options:
            raise ValueError(f"must be one of {', '.join(options)}")
        return value

    quoted = [f"`{o}`" for o in options]
    return Type(f"{', '.join(quoted[:-1])} or {quoted[-1]}", parse)


@dataclass(frozen=True)
class Check:
    """A condition on the parsed value; `rule` completes "must be ..." in the error."""

    test: Callable[[Any], bool]
    rule: str


AT_LEAST_1 = Check(lambda v: v >= 1, "at least 1")
ABOVE_0 = Check(lambda v: v > 0, "above 0")
NOT_NEGATIVE = Check(lambda v: v >= 0, "0 or more")

RETENTION = Check(lambda v: v == 0 or v >= 1, "0 (keep forever) or at least 1")

LOG = choice("syslog", "journal", "stderr")
LOG_LEVEL = choice("debug", "info", "warning", "error")


@dataclass(frozen=True)
class Key:
    section: str
    name: str
    type: Type
    default: str  # as the config file would hold it
    doc: str  # one line: the conffile's comment, the first sentence of the docs' meaning
    check: Check | None = None

    def describe(self) -> str:
        """The type as docs/configuration.md shows it, e.g. 'seconds, above 0'."""
        return f"{self.type.name}, {self.check.rule}" if self.check else self.type.name

    def read(self, text: str, where: str) -> Any:
        try:
            value = self.type.parse(text)
        except ValueError as exc:
            raise ConfigError(f"{where}: [{self.section}] {self.name} = {text!r}: {exc}") from None
        if self.check is not None and not self.check.test(value):
            raise ConfigError(f"{where}: [{self.section}] {self.name} must be {self.check.rule}, "
                              f"got {value}")
        return value


def _section(section: str, *rows: tuple) -> tuple[Key, ...]:
    return tuple(Key(section, *row) for row in rows)


AS_FOR_THE_MILTER = "as for the milter."

# Section by section in the order of the packaged conffile; each row: name, type, default,
# one-line meaning, check.
SCHEMA: tuple[Key, ...] = (
    *_section(
        "paths",
        ("rules_db", PATH, "/var/lib/mxhook/rules.db",
         "rules, permitted domains (written by the CLI, read by the milter)."),
        ("state_db", PATH, "/var/lib/mxhook/state.db",
         "spooler state: jobs, attempts, inbound log (owned by the spooler)."),
        ("spool_dir", PATH, "/var/spool/mxhook",
         "durable handoff from the milter to the spooler (tmp/, new/, bad/)."),
    ),
    *_section(
        "milter",
        ("socket", SOCKET, "unix:/var/spool/postfix/mxhook/milter.sock", "where the milter listens."),
        ("socket_group", GROUP, "", "group given to the socket (mode is always 0660)."),
        ("timeout", WHOLE_SECONDS, "600", "libmilter's I/O timeout towards Postfix, seconds.", ABOVE_0),
        ("unknown_domains", choice("reject", "pass"), "reject",
         "what to do with a RCPT whose domain is not permitted: reject answers 550 5.7.1 at RCPT "
         "and logs denied (see [spooler] log_unknown_domains); pass leaves such recipients alone."),
        ("trusted_networks", NETWORKS, "",
         "CIDRs whose clients are applications sending outbound mail (like Postfix's mynetworks)."),
        ("outbound_daemon_names", LIST, "ORIGINATING",
         "values of the {daemon_name} macro that mark outbound mail: give the submission service "
         "-o milter_macro_daemon_name=ORIGINATING in master.cf (see postfix/master.cf.snippet)."),
        ("event_headers", LIST, "",
         "comma-separated header names whose values are copied into queued events (and every "
         "later event of that message), e.g. X-App-Id, X-Campaign."),
        ("blocklist", BOOL, "yes",
         "refuse outbound RCPT to addresses on the block list (550 5.1.1) and report blocked."),
        ("heuristic_from_permitted_domain", BOOL, "yes",
         "reject inbound mail whose header From address is in one of our own permitted domains "
         "(spoofing)."),
        ("heuristic_from_equals_to", BOOL, "yes",
         "reject inbound mail addressed to its own sender: a header From address equals the "
         "envelope recipient, or every To header address is a From address (with "
         "heuristic_from_permitted_domain off, each envelope recipient then gets "
         "its own SMTP transaction: see ARCHITECTURE.md, \"Recipients\")."),
        ("recipient_delimiter", DELIMITERS, "+",
         "the characters that separate a recipient's tag from its name, as Postfix's "
         "recipient_delimiter: the local part is cut at the first of them (support+ticket-4711@ "
         "-> tag ticket-4711, which payloads carry as recipient_tag; Recipient rule "
         "conditions test the address without it); empty: no tags."),
        ("missing_from", choice("reject", "accept"), "reject",
         "a message without a From header field: reject refuses it for every inbound recipient "
         "(550 5.7.1 mxhook: the message has no From header field ..., logged denied with filter "
         "heuristic:missing_from); accept lets the rules decide."),
        ("discard_via", choice("auto", "transport", "milter"), "auto",
         "how mail that only --discard rules take (webhook only) leaves Postfix after it was "
         "spooled: through Postfix's discard(8) transport (transport), with a milter DISCARD "
         "(milter), or the first while Postfix is seen to route it (auto)."),
        ("max_rcpt_refusals", INT, "5",
         "refusals at RCPT (452 4.5.3 splits and 550) one transaction may get; past them a "
         "recipient whose outcome may differ is accepted, and if end of headers refuses it while "
         "others are accepted, Postfix bounces it to the sender (a standard DSN naming it, 5.7.1).",
         NOT_NEGATIVE),
        ("postfix_config_dir", PATH, "",
         "Postfix configuration directory the milter checks for mxhook's routes (postconf -c); "
         "empty: Postfix's default (/etc/postfix)."),
        ("postfix_check_interval", SECONDS, "60",
         "seconds between those checks; postconf runs only when main.cf or master.cf changed."),
        ("max_message_size", SIZE, "50M",
         "larger accepted messages are refused with 552 5.3.4 (keep it ≤ Postfix's "
         "message_size_limit)."),
        ("rules_reload_interval", SECONDS, "1.0",
         "seconds between checks for rule changes (the milter swaps in a new snapshot without "
         "restart).", ABOVE_0),
        # the regex module takes a negative timeout as no bound at all
        ("regex_timeout", SECONDS, "0.05",
         "seconds one rule regex may run against one header value; a pattern that times out "
         "counts as no match and is logged (once per message).", ABOVE_0),
        ("log", LOG, "syslog",
         "syslog (facility mail; stderr when /dev/log is absent), journal or stderr."),
        ("log_level", LOG_LEVEL, "info", "debug, info, warning, error."),
    ),
    *_section(
        "authentication",
        ("mode", choice("off", "verify", "upstream"), "off",
         "SPF, DKIM, DMARC and ARC verdicts of inbound mail in the SMTP session: off; verify "
         "(mxhook looks them up itself, through DNS); upstream (taken from the topmost "
         "Authentication-Results field of a trusted_authserv_ids verifier, no DNS)."),
        ("authserv_id", TEXT, "",
         "the authserv-id of the Authentication-Results mxhook writes; empty: this host's name."),
        ("trusted_authserv_ids", LIST, "",
         "authserv-ids of verifiers in front of this host whose Authentication-Results fields are "
         "believed (each must remove fields with its id that arrive from outside); any other "
         "such field is reported as untrusted and never used."),
        ("nameservers", NAMESERVERS, "",
         "comma-separated resolver addresses (address or address:port) for the checks' DNS "
         "lookups; empty: the system's (/etc/resolv.conf)."),
        ("dns_timeout", SECONDS, "2", "seconds one DNS lookup may take.", ABOVE_0),
        ("dns_budget", SECONDS, "5",
         "seconds all the DNS lookups of one message may take together; a check still waiting "
         "then is temperror.", ABOVE_0),
        ("dmarc_reject", BOOL, "no",
         "refuse in the session (550 5.7.1) inbound mail whose DMARC result is fail under a "
         "p=reject policy (sampled by the record's pct)."),
    ),
    *_section(
        "http",
        ("allow_networks", NETWORKS, "",
         "comma-separated CIDRs (IPv4/IPv6) that webhook endpoints may resolve to although the "
         "SSRF guard refuses them otherwise (loopback, private, link-local, CGNAT, ...), e.g. "
         "192.168.1.0/24 for a receiver on the LAN."),
    ),
    *_section(
        "logfollow",
        ("source", choice("auto", "file", "journald"), "auto",
         "auto, file (follow a log file, with rotation and truncation) or journald; auto "
         "follows Postfix's maillog_file when it sets one, else path when it exists, else the "
         "journal when journald runs (a stock Debian 12 logs mail there only), else path."),
        ("path", PATH, "/var/log/mail.log", "the log file to follow when source = file (or auto chooses it)."),
        ("state_file", PATH, "/var/lib/mxhook/logfollow.state",
         "saved position (inode, offset and a fingerprint of the file's first 1,024 bytes or "
         "fewer if it is shorter, or journal cursor), written only after the events of those "
         "lines are in the spool."),
        ("start_at", choice("end", "beginning"), "end",
         "where to start when there is no saved position: end or beginning."),
        ("poll_interval", SECONDS, "0.5", "seconds between looks at the log when idle.", ABOVE_0),
        ("batch_lines", INT, "1000", "lines per chunk (spool write, then position save).",
         AT_LEAST_1),
        ("journalctl", TEXT, "journalctl", "the journalctl command when source = journald."),
        ("journal_match", TEXT, "SYSLOG_FACILITY=2", "journalctl field matches, space-separated."),
        ("max_tracked_messages", INT, "100000",
         "queue ids kept in memory to enrich delivery events (oldest forgotten first).", AT_LEAST_1),
        ("ignore_null_sender", BOOL, "yes",
         "skip events for Postfix's own bounces and notifications (null sender)."),
        ("stats_interval", SECONDS, "300",
         "seconds between summary log lines (lines read, events, unparsed lines).", ABOVE_0),
        ("log", LOG, "syslog", AS_FOR_THE_MILTER),
        ("log_level", LOG_LEVEL, "info", AS_FOR_THE_MILTER),
    ),
    *_section(
        "spooler",
        ("workers", INT, "8", "concurrent HTTP deliveries.", AT_LEAST_1),
        ("poll_interval", SECONDS, "0.5",
         "seconds between looks at the spool when idle (a file coming into new/ is noticed within 20 ms).",
         ABOVE_0),
        ("ingest_batch", INT, "500",
         "spool files ingested per transaction (a transaction also ends after 4 MiB read: files "
         "can hold many records).", AT_LEAST_1),
        ("max_attachment_size", SIZE, "10M",
         "attachments larger than this are omitted from JSON/multipart payloads (marked with the "
         "reason)."),
        ("max_payload_size", SIZE, "25M",
         "JSON payloads are shrunk below this by omitting the largest attachments first."),
        ("max_response_bytes", SIZE, "4096", "bytes of each endpoint response kept in the attempt log."),
        ("user_agent", TEXT, "mxhook/0.1", "User-Agent header of webhook requests."),
        ("retry_time_scale", NUMBER, "1.0",
         "multiplies the retry waits (interval, exponential cap) and retry period of every rule and "
         "endpoint (never Retry-After).", ABOVE_0),
        ("disable_after_days", DAYS, "5",
         "a rule or event endpoint whose delivery attempts have all failed for this many days (no "
         "successful attempt since its first failure that long ago) is disabled in rules.db at "
         "its next failed attempt, logged as a warning, and shown as disabled by mxhook status; "
         "its pending deliveries wait and its failed ones stay replayable (mxhook replay).",
         Check(lambda v: v >= 0, "0 (never) or more")),
        ("log_unknown_domains", BOOL, "no",
         "keep the denials of recipients in domains that are not permitted ([milter] "
         "unknown_domains = reject) in the inbound log; no: only counted (mxhook status), as spam "
         "to such domains can flood the log; turn it on while setting up."),
        ("inbound_log_days", DAYS, "30",
         "days the inbound log is kept: older messages (with their deliveries, attempts and "
         "bodies) and denied rows are deleted in the background, but never a message with a "
         "delivery still queued or deferred; 0 keeps them forever.", RETENTION),
        ("event_log_days", DAYS, "30",
         "days the event log is kept: older events (with their deliveries, batches and attempts) "
         "are deleted in the background, but never one still waiting to be posted; keep it above "
         "Postfix's maximal_queue_lifetime (5 days), as later events are matched to their queued "
         "one; 0 keeps them forever.", RETENTION),
        ("log", LOG, "syslog", AS_FOR_THE_MILTER),
        ("log_level", LOG_LEVEL, "info", AS_FOR_THE_MILTER),
    ),
    *_section(
        "web",
        ("listen", LISTEN, "127.0.0.1:8025",
         "where mxhook-web (the HTTP API) listens; TLS and any other address go through a "
         "reverse proxy (docs/api.md)."),
        ("access_db", PATH, "/var/lib/mxhook/access.db",
         "API tokens, console users and the audit log (written by mxhook token/user and "
         "mxhook-web)."),
        ("threads", INT, "4", "requests mxhook-web serves at once.", AT_LEAST_1),
        ("trusted_proxy", TEXT, "",
         "address of the reverse proxy whose X-Forwarded-For and X-Forwarded-Proto are "
         "believed (empty: none)."),
        ("max_request_size", SIZE, "1M", "larger request bodies are refused (413)."),
        ("public_url", BASE_URL, "",
         "where the application reaches mxhook-web (through the reverse proxy), e.g. "
         "https://mx.example.com: payloads then give each attachment whose content the size cap "
         "omitted a signed, expiring url to fetch it from (GET /v1/attachments/TOKEN, "
         "docs/api.md); empty: no such URLs."),
        ("attachment_key_file", PATH, "/var/lib/mxhook/attachment.key",
         "the keys fetch URLs are signed with (HMAC-SHA256), one a line (base64), oldest first: "
         "the last signs, every one listed verifies. mxhook-spooler creates it (0640, one key) "
         "when public_url is set and it is missing; to rotate, append a key and remove the old "
         "one after attachment_url_ttl."),
        ("attachment_url_ttl", DAYS, "7",
         "days a fetch URL is valid from the message's arrival (never longer than [spooler] "
         "inbound_log_days keeps the message).", ABOVE_0),
        ("log", LOG, "syslog", AS_FOR_THE_MILTER),
        ("log_level", LOG_LEVEL, "info", AS_FOR_THE_MILTER),
    ),
    *_section(
        "tracking",
        ("public_url", BASE_URL, "",
         "where recipients reach mxhook-track (open pixel, clicks, unsubscribe), e.g. "
         "https://t.example.com: the milter rewrites outbound mail of sending domains with "
         "tracking settings (mxhook tracking set) to point there (docs/tracking.md); empty: "
         "no tracking."),
        ("key_file", PATH, "/etc/mxhook/tracking.key",
         "the keys tracking tokens are signed with (HMAC-SHA256), one a line (base64), oldest "
         "first: the last signs, every one listed verifies; mxhook tracking rotate-key adds "
         "one (the file is made 0640, group mxhook)."),
        ("max_message_size", SIZE, "10M",
         "larger outbound messages are sent untouched (their queued events say why)."),
        ("feedback_address", TEXT, "",
         "the address ARF spam complaint reports (feedback loops) are sent to: the milter accepts "
         "mail to it whatever the rules say, and the spooler turns a report about mail we sent "
         "into a complained event and a suppression (docs/feedback.md); empty: none."),
        ("unsubscribe_address", TEXT, "",
         "the address of the mailto: unsubscribe (subject: unsubscribe TOKEN), answered like "
         "feedback_address with an unsubscribed event and a suppression; empty: none."),
        ("listen", LISTEN, "127.0.0.1:8026",
         "where mxhook-track (the public tracking endpoint: pixels, clicks, unsubscribes) "
         "listens; TLS goes through a reverse proxy (docs/tracking-endpoint.md)."),
        ("threads", INT, "32", "requests mxhook-track serves at once.", AT_LEAST_1),
        ("trusted_proxy", TEXT, "127.0.0.1",
         "address of the reverse proxy whose X-Forwarded-For and X-Forwarded-Proto are believed "
         "(empty: none)."),
        ("geoip_database", PATH, "",
         "a MaxMind-format City (or Country) database (.mmdb) that gives engagement events "
         "continent, country and city; empty, missing or unreadable: those fields stay empty."),
        ("privacy", choice("full", "aggregate"), "full",
         "full keeps the reader's IP address and user agent in engagement events; aggregate "
         "drops both once the bot verdict, client and place are made from them."),
        ("machine_click_seconds", SECONDS, "5",
         "a click this many seconds or less after the message was sent is a machine's "
         "(click_after_sending); 0: off.", NOT_NEGATIVE),
        ("machine_burst_links", INT, "3",
         "this many different links of one message clicked within machine_burst_seconds are "
         "a machine's (click_burst); 0: off.", NOT_NEGATIVE),
        ("machine_burst_seconds", SECONDS, "1", "the window of machine_burst_links.", ABOVE_0),
        ("machine_rules_file", PATH, "",
         "extra bot rules, one a line: KIND REASON SCOPE VALUE (agent: a user agent regex; "
         "network: CIDRs), checked before the built-in ones; empty: none."),
        ("machine_rules_off", LIST, "",
         "comma-separated machine_reason names not to report, e.g. gmail_image_proxy."),
        ("log", LOG, "syslog", AS_FOR_THE_MILTER),
        ("log_level", LOG_LEVEL, "info", AS_FOR_THE_MILTER),
    ),
)

SECTIONS: dict[str, dict[str, Key]] = {}
for _key in SCHEMA:
    SECTIONS.setdefault(_key.section, {})[_key.name] = _key
del _key

# section -> key -> default (as the string a config file would hold)
DEFAULTS: dict[str, dict[str, str]] = {
    section: {name: key.default for name, key in keys.items()} for section, keys in SECTIONS.items()
}


@dataclass
class Config:
    """The config file's text over the defaults. `source` is the file read, or None for
    built-in defaults."""

    raw: dict[str, dict[str, str]] = field(default_factory=dict)
    source: str | None = None

    def get(self, section: str, key: str) -> str:
        """The text as written (the defaults' where the file does not set it)."""
        return self.raw[section][key]

    def value(self, section: str, key: str) -> Any:
        """The value as its schema type reads it, checked (ConfigError naming the key)."""
        return SECTIONS[section][key].read(self.raw[section][key], self.source or "built-in defaults")

    def problems(self) -> list[str]:
        """Every key through its type and check: a message each for the bad ones."""
        found = []
        for key in SCHEMA:
            try:
                self.value(key.section, key.name)
            except ConfigError as exc:
                found.append(str(exc))
        return found

    @property
    def rules_db(self) -> str:
        return self.get("paths", "rules_db")

    @property
    def state_db(self) -> str:
        return self.get("paths", "state_db")

    @property
    def spool_dir(self) -> str:
        return self.get("paths", "spool_dir")


def from_section(section: str):
    """A `FromConfig` field read from `section` rather than the class's SECTION."""
    return field(metadata={"section": section})


class FromConfig:
    """Base of a daemon's settings dataclass: each field is the config key of the same name in
    the class's SECTION (or the section `from_section()` names), typed and checked by the schema."""

    SECTION: str

    @classmethod
    def from_config(cls, cfg: Config):
        """Raises one ConfigError naming every bad key (a line each)."""
        values: dict[str, Any] = {}
        problems: list[str] = []
        for f in dataclasses.fields(cls):
            if not f.init:
                continue
            try:
                values[f.name] = cfg.value(f.metadata.get("section", cls.SECTION), f.name)
            except ConfigError as exc:
                problems.append(str(exc))
        if problems:
            raise ConfigError("\n".join(problems))
        return cls(**values)


def config_path(explicit: str | None = None) -> str:
    return explicit or os.environ.get("MXHOOK_CONFIG") or DEFAULT_PATH


def load(path: str | None = None, *, required: bool | None = None) -> Config:
    """Read the config file over the defaults.

    A path given explicitly (argument or MXHOOK_CONFIG) must exist; the default path may be
    missing, in which case the built-in defaults apply.
    """
    explicit = path or os.environ.get("MXHOOK_CONFIG")
    path = config_path(path)
    if required is None:
        required = bool(explicit)
    raw = {section: dict(values) for section, values in DEFAULTS.items()}
    try:
        os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        if required:
            raise ConfigError(f"{path}: config file not found") from None
        return Config(raw=raw, source=None)
    except PermissionError as exc:  # not "absent": the defaults would silently stand in for it
        raise ConfigError(f"{path}: cannot be read by this user ({exc.strerror}): run as root or "
                          "as a member of group mxhook") from None
    parser = configparser.ConfigParser(interpolation=None, inline_comment_prefixes=None)
    text = ""
    try:
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
        parser.read_string(text, source=path)
    # configparser's own messages run over three lines with reprs: one line each instead
    except configparser.MissingSectionHeaderError as exc:
        raise ConfigError(f"{path}, line {exc.lineno}: a setting before the first [section]: "
                          f"{exc.line.strip()!r}") from None
    except configparser.ParsingError as exc:
        lineno = exc.errors[0][0]
        raise ConfigError(f"{path}, line {lineno}: not `key = value`, a [section] or a comment: "
                          f"{text.split(chr(10))[lineno - 1].strip()!r}") from None
    except configparser.DuplicateOptionError as exc:
        raise ConfigError(f"{path}, line {exc.lineno}: [{exc.section}] {exc.option} is set twice") from None
    except configparser.DuplicateSectionError as exc:
        raise ConfigError(f"{path}, line {exc.lineno}: section [{exc.section}] appears twice") from None
    except (OSError, UnicodeDecodeError, configparser.Error) as exc:
        raise ConfigError(f"{path}: {exc}") from None
    for section in parser.sections():
        if section not in DEFAULTS:
            raise ConfigError(f"{path}: unknown section [{section}] (known: {', '.join(DEFAULTS)})")
        for key, value in parser.items(section):
            if key not in DEFAULTS[section]:
                raise ConfigError(
                    f"{path}: [{section}] unknown key {key!r} (known: {', '.join(DEFAULTS[section])})"
                )
            raw[section][key] = value.strip()
    return Config(raw=raw, source=path)


def from_dict(values: dict[str, dict[str, str]]) -> Config:
    """A Config from defaults plus overrides, for tests and the demo (same validation as files)."""
    raw = {section: dict(v) for section, v in DEFAULTS.items()}
    for section, kv in values.items():
        if section not in DEFAULTS:
            raise ConfigError(f"unknown section [{section}]")
        for key, value in kv.items():
            if key not in DEFAULTS[section]:
                raise ConfigError(f"[{section}] unknown key {key!r}")
            raw[section][key] = str(value)
    return Config(raw=raw, source=None)


def render(values: dict[str, dict[str, str]]) -> str:
    """Config file text for the given overrides (used by the demo and test harness)."""
    lines = []
    for section, kv in values.items():
        lines.append(f"[{section}]")
        lines.extend(f"{k} = {v}" for k, v in kv.items())
        lines.append("")
    return "\n".join(lines)
