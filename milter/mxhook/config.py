"""The one config parser for every mxhook daemon and the CLI.

`/etc/mxhook/mxhook.conf` (or `--config`, or `MXHOOK_CONFIG`) holds daemon settings only, as
`key = value` lines in sections. Every key and its default is listed in DEFAULTS below and
documented in docs/configuration.md; an unknown key or a bad value is a ConfigError naming the
file, section and key, never a silent fallback.
"""
from __future__ import annotations

import configparser
import os
from dataclasses import dataclass, field

DEFAULT_PATH = "/etc/mxhook/mxhook.conf"

# section -> key -> default (as the string a config file would hold)
DEFAULTS: dict[str, dict[str, str]] = {
    "paths": {
        "rules_db": "/var/lib/mxhook/rules.db",
        "state_db": "/var/lib/mxhook/state.db",
        "spool_dir": "/var/spool/mxhook",
    },
    "milter": {
        "socket": "unix:/var/spool/postfix/mxhook/milter.sock",
        "socket_group": "",
        "timeout": "600",
        "unknown_domains": "reject",
        "trusted_networks": "",
        "outbound_daemon_names": "ORIGINATING",
        "event_headers": "",
        "blocklist": "yes",
        "heuristic_from_permitted_domain": "yes",
        "heuristic_from_equals_to": "yes",
        "missing_from": "reject",
        "discard_via": "auto",
        "max_rcpt_refusals": "5",
        "postfix_config_dir": "",
        "postfix_check_interval": "60",
        "max_message_size": "50M",
        "rules_reload_interval": "1.0",
        "regex_timeout": "0.05",
        "log": "syslog",
        "log_level": "info",
    },
    "http": {
        "allow_networks": "",
    },
    "logfollow": {
        "source": "file",
        "path": "/var/log/mail.log",
        "state_file": "/var/lib/mxhook/logfollow.state",
        "start_at": "end",
        "poll_interval": "0.5",
        "batch_lines": "1000",
        "journalctl": "journalctl",
        "journal_match": "SYSLOG_FACILITY=2",
        "max_tracked_messages": "100000",
        "ignore_null_sender": "yes",
        "stats_interval": "300",
        "log": "syslog",
        "log_level": "info",
    },
    "spooler": {
        "workers": "8",
        "poll_interval": "0.5",
        "ingest_batch": "500",
        "max_attachment_size": "10M",
        "max_payload_size": "25M",
        "max_response_bytes": "4096",
        "user_agent": "mxhook/0.1",
        # multiplies every rule's retry interval and retry period (tests/demo run the real
        # schedule in seconds); leave 1 in production. Retry-After is never scaled.
        "retry_time_scale": "1.0",
        # a rule/endpoint with no successful delivery for this many days is disabled (0 = never)
        "disable_after_days": "5",
        "log": "syslog",
        "log_level": "info",
    },
}

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


def parse_list(text: str) -> list[str]:
    """'a, b,,c' -> ['a', 'b', 'c']."""
    return [item.strip() for item in text.split(",") if item.strip()]


def parse_networks(text) -> list:
    """'127.0.0.0/8, 192.168.1.0/24' (commas and/or whitespace, or a list) -> ip_network
    objects. A bare address means that one host. Host bits set (192.168.1.5/24) are an error
    naming the intended network rather than a silent widening."""
    import ipaddress

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


@dataclass
class Config:
    """Typed view of the config file. `source` is the file read, or None for built-in defaults."""

    raw: dict[str, dict[str, str]] = field(default_factory=dict)
    source: str | None = None

    def get(self, section: str, key: str) -> str:
        return self.raw[section][key]

    def _typed(self, section: str, key: str, convert):
        value = self.get(section, key)
        try:
            return convert(value)
        except ValueError as exc:
            where = self.source or "built-in defaults"
            raise ConfigError(f"{where}: [{section}] {key} = {value!r}: {exc}") from None

    def int(self, section: str, key: str) -> int:
        return self._typed(section, key, int)

    def float(self, section: str, key: str) -> float:
        return self._typed(section, key, float)

    def bool(self, section: str, key: str) -> bool:
        return self._typed(section, key, parse_bool)

    def list(self, section: str, key: str) -> list[str]:
        return self._typed(section, key, parse_list)

    def networks(self, section: str, key: str) -> list:
        return self._typed(section, key, parse_networks)

    def size(self, section: str, key: str) -> int:
        return self._typed(section, key, parse_size)

    def choice(self, section: str, key: str, choices: tuple[str, ...]) -> str:
        def check(v: str) -> str:
            if v not in choices:
                raise ValueError(f"must be one of {', '.join(choices)}")
            return v

        return self._typed(section, key, check)

    # Frequently used paths.
    @property
    def rules_db(self) -> str:
        return self.get("paths", "rules_db")

    @property
    def state_db(self) -> str:
        return self.get("paths", "state_db")

    @property
    def spool_dir(self) -> str:
        return self.get("paths", "spool_dir")


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
    if not os.path.exists(path):
        if required:
            raise ConfigError(f"{path}: config file not found")
        return Config(raw=raw, source=None)
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
