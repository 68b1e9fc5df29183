"""`mxhook`: the admin's command line for permitted domains, inbound rules, dry runs, event
endpoints, the block list, and the inbound and event logs.

Writes go to rules.db through db.RulesStore (the running milter and spooler pick them up within
about a second); `rule test` runs the very decision the milter runs (decision.decide); the log
commands read state.db through state.StateStore; `block add/remove` hand their `registered` /
`deleted` events to the spooler through the spool, like every other event. Invalid input exits
with status 2 and a one-line message, and writes nothing.
"""
from __future__ import annotations

import dataclasses
import io
import json
import os
import re
import sqlite3
from datetime import datetime, timedelta, timezone

import click

from mxhook import config as configmod
from mxhook.store import rulesdb as dbmod
from mxhook.delivery import egress
from mxhook.model import endpoints as endpointsmod
from mxhook.model import heuristics
from mxhook.model import rules
from mxhook import spool
from mxhook.model import bounces
from mxhook.model import decision as decisionmod
from mxhook.model import message as messagemod
from mxhook.model.decision import decide
from mxhook.model.headers import address_domain, decode_value, first_address, normalize_address
from mxhook.model.rules import RuleError
from mxhook.store.statedb import DELIVERY_STATUSES, EVENT_LOG_KEYS, LOG_STATUSES, StateStore

CONTEXT_SETTINGS = {"help_option_names": ["-h", "--help"], "max_content_width": 100}
# getaddrinfo-compatible resolver for the endpoint check (None: the system's); tests set one
RESOLVER = None
DEFAULT_OVERLAP = "24h"
LOG_COLUMNS = ["received", "status", "from", "to", "hostName", "messageId", "filterName", "reason"]
HEURISTIC_KEYS = (
    (heuristics.FROM_PERMITTED_DOMAIN, "heuristic_from_permitted_domain"),
    (heuristics.FROM_EQUALS_TO, "heuristic_from_equals_to"),
)


class InputError(click.UsageError):
    """Invalid input found after parsing (bad rule, unknown name, missing database): exit
    status 2 like every usage error, shown as one line without the usage text."""

    def show(self, file=None) -> None:
        self.ctx = None
        super().show(file)


class MxhookGroup(click.Group):
    """Turns the project's own input errors into click usage errors (exit status 2, one line
    on stderr), wherever in the command they are raised."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except (RuleError, configmod.ConfigError) as exc:
            raise InputError(str(exc)) from None
        except sqlite3.Error as exc:
            raise click.ClickException(f"database error: {exc}") from None
        except UnicodeError as exc:
            raise InputError(f"text that cannot be handled ({exc.reason}): arguments must be valid "
                             "UTF-8, and output needs a UTF-8 locale (e.g. LC_ALL=C.UTF-8)") from None
        except OverflowError as exc:
            raise InputError(f"a number is out of range ({exc})") from None
        except OSError as exc:  # e.g. a database path in a missing or unwritable directory
            raise click.ClickException(str(exc)) from None


class App:
    """Per-invocation state: the config (loaded on first use, so --help needs none)."""

    def __init__(self, config_path: str | None):
        self.config_path = config_path
        self._cfg: configmod.Config | None = None

    @property
    def cfg(self) -> configmod.Config:
        if self._cfg is None:
            self._cfg = configmod.load(self.config_path)
        return self._cfg

    def rules_store(self, *, create: bool = False) -> dbmod.RulesStore:
        path = self.cfg.rules_db
        if not create and not os.path.exists(path):
            raise InputError(
                f"rules database {path} does not exist yet "
                "(`mxhook domain add` or `mxhook rule add` creates it)"
            )
        return dbmod.RulesStore(path)

    def state_store(self):
        path = self.cfg.state_db
        if not os.path.exists(path):
            raise InputError(
                f"state database {path} does not exist yet (mxhook-spooler creates it)"
            )
        return StateStore(path)


pass_app = click.make_pass_decorator(App)


# ---------------------------------------------------------------------------------------------
# Output helpers

def emit_json(data) -> None:
    click.echo(json.dumps(data, indent=2, ensure_ascii=False))


def table(headers: list[str], rows: list[list], *, max_width: int = 60) -> None:
    def cell(v) -> str:
        if v is None:
            return ""
        if isinstance(v, bool):
            return "yes" if v else "no"
        s = printable(" ".join(str(v).split()))  # one line per row
        return s if len(s) <= max_width else s[: max_width - 1] + "…"

    cells = [[cell(v) for v in row] for row in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]
    line = lambda vals: "  ".join(v.ljust(w) for v, w in zip(vals, widths)).rstrip()  # noqa: E731
    click.echo(line(headers))
    click.echo(line(["-" * w for w in widths]))
    for r in cells:
        click.echo(line(r))


_CONTROL_CHARS = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def printable(text: str) -> str:
    """Text from mail (subjects, reasons) without control characters: an escape sequence in a
    Subject must not drive the admin's terminal."""
    return _CONTROL_CHARS.sub("\ufffd", text)


def mask_secret(secret: str | None) -> str | None:
    """'****' plus the last 4 characters when the secret is long enough that they give little
    away; never the whole secret."""
    if secret is None:
        return None
    return "****" + secret[-4:] if len(secret) >= 12 else "****"


def mask_basic(basic: str | None) -> str | None:
    if basic is None:
        return None
    user, _, _ = basic.partition(":")
    return f"{user}:****"


def short_time(value: str | None) -> str | None:
    """'2026-11-22T12:00:00.123456Z' -> '2026-11-22 12:00:00Z' for tables."""
    if value and len(value) >= 19 and value[10] == "T":
        return value[:10] + " " + value[11:19] + "Z"
    return value


def yes_no(v: bool) -> str:
    return "yes" if v else "no"


def condition_option(cond: rules.Condition) -> str:
    """How the condition is given on the command line."""
    return f"{'--unless' if cond.negate else '--when'} '{cond.header}~{cond.pattern}'"


def rule_dict(rule: rules.Rule, times: dict | None = None, keys: list | None = None) -> dict:
    """A rule as JSON-able data, secrets masked (signing keys too: public keys in full)."""
    d = {
        "id": rule.id,
        "name": rule.name,
        "priority": rule.priority,
        "enabled": rule.enabled,
        "endpoint": rule.endpoint,
        "format": rule.format,
        "basic_auth": mask_basic(rule.basic_auth),
        "bearer": mask_secret(rule.bearer),
        "api_key": mask_secret(rule.api_key),
        "retry_interval": rule.retry_interval,
        "retry_period": rule.retry_period,
        "timeout": rule.timeout,
        "discard": rule.discard,
        "allow_http": rule.allow_http,
        "conditions": [
            {"header": c.header, "pattern": c.pattern, "negate": c.negate} for c in rule.conditions
        ],
    }
    if keys is not None:
        d["signing"] = [k.to_public_dict() for k in keys]
    if times:
        d.update(created=times.get("created"), updated=times.get("updated"))
    return d


def signing_lines(keys: list) -> list[str]:
    """How `show` lists signing keys: masked secrets, public keys in full, expiry."""
    out = []
    for k in keys:
        what = f"v1  {k.masked_secret}" if k.scheme == "v1" else f"v1a ed25519 public key {k.public_key}"
        when = f"rotated out, signs until {k.expires}" if k.expires else f"since {k.created}"
        out.append(f"{what} ({when})")
    return out or ["none (requests are not signed)"]


def print_signing(keys: list | None) -> None:
    if keys is None:
        return
    for i, line in enumerate(signing_lines(keys)):
        click.echo(f"{'signing:' if i == 0 else '':16}{line}")


def auth_summary(rule: rules.Rule) -> str:
    parts = []
    if rule.basic_auth is not None:
        parts.append(f"basic {mask_basic(rule.basic_auth)}")
    if rule.bearer is not None:
        parts.append(f"bearer {mask_secret(rule.bearer)}")
    if rule.api_key is not None:
        parts.append(f"api key {mask_secret(rule.api_key)}")
    return ", ".join(parts) or "none"


def print_rule(rule: rules.Rule, times: dict | None = None, keys: list | None = None) -> None:
    rows = [
        ("name", rule.name),
        ("enabled", yes_no(rule.enabled)),
        ("priority", f"{rule.priority} (lower runs first)"),
        ("endpoint", rule.endpoint),
        ("format", rule.format),
        ("auth", auth_summary(rule)),
        ("retry interval", f"{rule.retry_interval} s"),
        ("retry period", f"{rule.retry_period} days"),
        ("timeout", f"{rule.timeout} s"),
        ("after accept", "discard (webhook only)" if rule.discard else "deliver as usual"),
        ("allow http", yes_no(rule.allow_http)),
    ]
    if times:
        rows += [("created", times.get("created")), ("updated", times.get("updated"))]
    for key, value in rows:
        click.echo(f"{key + ':':16}{value}")
    print_signing(keys)
    click.echo("conditions:      (all must hold; 'to' is the envelope recipient)")
    for cond in rule.conditions:
        click.echo(f"  {condition_option(cond)}")


# ---------------------------------------------------------------------------------------------
# Root

@click.group(cls=MxhookGroup, context_settings=CONTEXT_SETTINGS)
@click.option("--config", "config_path", metavar="PATH", type=click.Path(dir_okay=False),
              help=f"Config file (default: $MXHOOK_CONFIG, else {configmod.DEFAULT_PATH}).")
@click.version_option(package_name="mxhook", message="%(prog)s %(version)s")
@click.pass_context
def cli(ctx, config_path):
    """mxhook: permitted domains, inbound webhook rules, event endpoints, the block list, and
    the logs.

    Changes to domains, rules, endpoints and the block list reach the running daemons within
    about a second.
    """
    if config_path == "":
        raise InputError("--config needs a path (an empty one would mean the default config)")
    ctx.obj = App(config_path)


# ---------------------------------------------------------------------------------------------
# Domains

@cli.group(cls=MxhookGroup)
def domain():
    """Domains this server receives inbound mail for."""


@domain.command("add")
@click.argument("name", metavar="DOMAIN")
@click.option("--log-denied/--no-log-denied", default=True, show_default=True,
              help="Log mail to this domain that is denied by heuristics or rules.")
@pass_app
def domain_add(app, name, log_denied):
    """Permit inbound mail for DOMAIN (internationalized names are stored as A-labels)."""
    normalized = dbmod.normalize_domain(name)  # before the database is created
    with app.rules_store(create=True) as store:
        d = store.add_domain(normalized, log_denied=log_denied)
    given = name.strip().rstrip(".").lower()
    shown = d["name"] if d["name"] == given else f"{d['name']} (given as {name.strip()})"
    click.echo(f"Added domain {shown}; denied mail is {'logged' if log_denied else 'not logged'}")


@domain.command("list")
@click.option("--json", "as_json", is_flag=True, help="Output JSON.")
@pass_app
def domain_list(app, as_json):
    """List the permitted domains."""
    with app.rules_store() as store:
        domains = store.list_domains()
    if as_json:
        emit_json(domains)
    elif not domains:
        click.echo("No permitted domains (add one with: mxhook domain add example.com)")
    else:
        table(["DOMAIN", "LOG DENIED", "CREATED"],
              [[d["name"], d["log_denied"], short_time(d["created"])] for d in domains])


@domain.command("set")
@click.argument("name", metavar="DOMAIN")
@click.option("--log-denied/--no-log-denied", default=None,
              help="Log (or stop logging) mail to this domain that is denied.  [required]")
@pass_app
def domain_set(app, name, log_denied):
    """Change the settings of a permitted DOMAIN."""
    # Checked here, not with required=True: click 8.3 turns an absent flag pair into False.
    if click.get_current_context().get_parameter_source("log_denied") is not click.core.ParameterSource.COMMANDLINE:
        raise click.UsageError("Missing option '--log-denied' / '--no-log-denied'.")
    with app.rules_store() as store:
        d = store.set_domain(name, log_denied)
    click.echo(f"Domain {d['name']}: denied mail is {'logged' if d['log_denied'] else 'not logged'}")


@domain.command("remove")
@click.argument("name", metavar="DOMAIN")
@pass_app
def domain_remove(app, name):
    """Stop receiving inbound mail for DOMAIN."""
    with app.rules_store() as store:
        store.remove_domain(name)
    click.echo(f"Removed domain {dbmod.normalize_domain(name)}")


# ---------------------------------------------------------------------------------------------
# Rules

def rule_options(edit: bool):
    """The options `rule add` and `rule edit` share; for edit every option defaults to None
    (= leave as it is)."""

    def deco(f):
        opts = [
            click.option("--endpoint", metavar="URL", required=not edit,
                         help="Webhook URL (https:// unless --allow-http)."),
            click.option("--when", "when", multiple=True, metavar="'HEADER~REGEX'",
                         help="Condition that must hold; repeatable (all must hold). 'To' means "
                              "the envelope recipient." +
                              (" Replaces all conditions when given." if edit else "")),
            click.option("--unless", "unless", multiple=True, metavar="'HEADER~REGEX'",
                         help="Condition that must NOT hold; repeatable." +
                              (" Without --when, replaces only the --unless conditions." if edit else "")),
            click.option("--priority", type=int, metavar="N",
                         help="Evaluation order, lower first" + ("." if edit else " [default: 0].")),
            click.option("--format", "fmt", type=click.Choice(rules.FORMATS),
                         help="Payload format" + ("." if edit else " [default: json].")),
            click.option("--basic-auth", metavar="USER:PASS", help="HTTP Basic auth."),
            click.option("--bearer", metavar="TOKEN", help="Bearer token (not with --basic-auth)."),
            click.option("--api-key", metavar="KEY", help="API key, sent in the payload body."),
            click.option("--retry-interval", type=int, metavar="10..600",
                         help="Seconds between retries" + ("." if edit else " [default: 60].")),
            click.option("--retry-period", type=int, metavar="1..10",
                         help="Days to keep retrying" + ("." if edit else " [default: 3].")),
            click.option("--timeout", type=int, metavar="1..999",
                         help="Request timeout in seconds" + ("." if edit else " [default: 30].")),
        ]
        if edit:
            opts += [
                click.option("--name", "new_name", metavar="NEW", help="Rename the rule."),
                click.option("--discard/--no-discard", default=None,
                             help="Discard the mail after the webhook is queued (or deliver it)."),
                click.option("--disabled/--enabled", "disabled", default=None,
                             help="Disable or enable the rule."),
                click.option("--allow-http/--no-allow-http", default=None,
                             help="Allow (or stop allowing) a plain http:// endpoint."),
                click.option("--clear-auth", is_flag=True,
                             help="Remove Basic auth, Bearer token and API key (before applying "
                                  "any new ones given)."),
            ]
        else:
            opts += [
                click.option("--discard", is_flag=True,
                             help="Discard the mail after the webhook is queued (default: "
                                  "deliver it as usual)."),
                click.option("--disabled", is_flag=True, help="Add the rule disabled."),
                click.option("--allow-http", is_flag=True,
                             help="Allow a plain http:// endpoint (mail travels unencrypted)."),
                click.option("--ed25519", is_flag=True,
                             help="Also sign with an ed25519 key pair (v1a); prints its public key."),
            ]
        for opt in reversed(opts):
            f = opt(f)
        return f

    return deco


def parse_conditions(when, unless) -> list[rules.Condition]:
    return [rules.parse_condition(w) for w in when] + [
        rules.parse_condition(u, negate=True) for u in unless
    ]


def check_secret_options(*, what: str = "rule", **secrets) -> None:
    for option, value in secrets.items():
        if value is not None and value == "":
            raise InputError(f"--{option.replace('_', '-')} must not be empty "
                             f"({what} edit --clear-auth removes auth)")


def no_domains_hint(store: dbmod.RulesStore) -> None:
    if not store.list_domains():
        click.echo("note: no permitted domains yet; rules apply only to mail for permitted "
                   "domains (mxhook domain add DOMAIN)", err=True)


def check_egress(app, url: str) -> None:
    """The SSRF guard's verdict on an endpoint URL before it is stored: a host that resolves to
    an address the guard refuses (and `[http] allow_networks` does not admit) is an error; a
    host that does not resolve now is only a warning (DNS may be down, and every connection is
    checked again)."""
    allow = app.cfg.networks("http", "allow_networks")
    try:
        egress.check_endpoint_url(url, allow, resolver=RESOLVER)
    except egress.ResolutionError as exc:
        click.echo(f"warning: {exc}; stored anyway (every connection is checked again)", err=True)
    except egress.EgressError as exc:
        raise InputError(f"refused by the SSRF guard: {exc}") from None


def warn_backtracking(app, conditions) -> None:
    """A warning on stderr for each condition whose regex may backtrack catastrophically."""
    timeout = None
    for cond in conditions:
        if rules.is_catastrophic_risk(cond.pattern):
            if timeout is None:
                timeout = app.cfg.float("milter", "regex_timeout")
            click.echo(f"warning: condition '{cond.header}~{cond.pattern}' "
                       f"{rules.backtracking_risk(cond.pattern)}; a header value it takes longer "
                       f"than [milter] regex_timeout ({timeout:g} s) to match counts as no match",
                       err=True)


def print_new_keys(keys: list, *, rotated: bool = False) -> None:
    """The one time a new secret is shown in full."""
    for k in keys:
        if k.scheme == "v1":
            label = "New signing secret" if rotated else "Signing secret"
            click.echo(f"{label} (shown once, store it now): {k.secret}")
        else:
            label = "New ed25519 public key" if rotated else "Ed25519 public key"
            click.echo(f"{label} (for v1a signatures; `show` prints it again): {k.public_key}")


class DurationType(click.ParamType):
    """'24h', '30m', '90s', '2d', '1w' or plain seconds -> seconds (float)."""

    name = "DURATION"

    def convert(self, value, param, ctx):
        if isinstance(value, (int, float)):
            return float(value)
        text = str(value).strip().lower()
        if text.isdigit():
            return float(text)
        m = _RELATIVE.match(text)
        if not m:
            self.fail(f"{value!r} is not a duration: use e.g. 0, 90s, 30m, 24h, 2d", param, ctx)
        return timedelta(**{_UNITS[m.group(2)]: int(m.group(1))}).total_seconds()


def describe_overlap(seconds: float) -> str:
    for unit, size in (("w", 604800), ("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"


def rotate(store: dbmod.RulesStore, kind: str, owner_id: int, label: str, overlap: float,
           ed25519: bool) -> None:
    scheme = "v1a" if ed25519 else "v1"
    had = [k for k in store.signing_keys(kind, owner_id) if k.scheme == scheme]
    new = store.rotate_key(kind, owner_id, overlap=overlap, scheme=scheme)
    what = "ed25519 key pair" if ed25519 else "signing secret"
    if not had:
        click.echo(f"Added an ed25519 key pair to {label}" if ed25519 else f"Added a signing secret to {label}")
    elif overlap > 0:
        until = (datetime.now(timezone.utc) + timedelta(seconds=overlap)).strftime("%Y-%m-%dT%H:%M:%SZ")
        click.echo(f"Rotated the {what} of {label}: the previous one keeps signing until {until} "
                   f"({describe_overlap(overlap)} overlap), so requests carry both signatures until then")
    else:
        click.echo(f"Rotated the {what} of {label}: the previous one no longer signs")
    print_new_keys([new], rotated=bool(had))


@cli.group(cls=MxhookGroup)
def rule():
    """Inbound rules: which mail is posted to which webhook."""


@rule.command("add", short_help="Add a rule.")
@click.argument("name")
@rule_options(edit=False)
@pass_app
def rule_add(app, name, endpoint, when, unless, priority, fmt, basic_auth, bearer, api_key,
             retry_interval, retry_period, timeout, discard, disabled, allow_http, ed25519):
    """Add rule NAME: mail whose headers match all conditions is posted to the endpoint.

    \b
    Example:
      mxhook rule add invoices --endpoint https://app.example.net/hooks/mail \\
          --when 'To~^invoices@' --when 'Subject~invoice|bill' --unless 'From~@spam\\.example$'

    The rule's signing secret is printed once: give it to the receiver (docs/verifying.md).
    """
    check_secret_options(basic_auth=basic_auth, bearer=bearer, api_key=api_key)
    new = rules.with_defaults(
        name=name, endpoint=endpoint, conditions=tuple(parse_conditions(when, unless)),
        priority=priority, format=fmt, basic_auth=basic_auth, bearer=bearer, api_key=api_key,
        retry_interval=retry_interval, retry_period=retry_period, timeout=timeout,
        discard=discard, enabled=not disabled, allow_http=allow_http,
    )
    rules.validate(new)  # before the database is created or opened for writing
    check_egress(app, new.endpoint)
    warn_backtracking(app, new.conditions)
    with app.rules_store(create=True) as store:
        added = store.add_rule(new, ed25519=ed25519)
        keys = store.signing_keys("rule", added.id)
        click.echo(f"Added rule {added.name} (priority {added.priority}"
                   f"{', disabled' if not added.enabled else ''}): "
                   f"{added.format} to {added.endpoint}")
        print_new_keys(keys)
        no_domains_hint(store)


@rule.command("list")
@click.option("--json", "as_json", is_flag=True, help="Output JSON (secrets masked).")
@pass_app
def rule_list(app, as_json):
    """List rules in evaluation order."""
    with app.rules_store() as store:
        all_rules = store.list_rules()
        times = store.rule_times()
        keys = {r.id: store.signing_keys("rule", r.id) for r in all_rules} if as_json else {}
    if as_json:
        emit_json([rule_dict(r, times.get(r.name), keys[r.id]) for r in all_rules])
        return
    if not all_rules:
        click.echo("No rules (add one with: mxhook rule add NAME --endpoint URL --when 'HEADER~REGEX')")
        return
    table(
        ["PRIO", "NAME", "ENABLED", "FORMAT", "ENDPOINT", "CONDITIONS"],
        [[r.priority, r.name, r.enabled, r.format + (" +discard" if r.discard else ""),
          r.endpoint, " AND ".join(str(c) for c in r.conditions)] for r in all_rules],
        max_width=70,
    )


def get_rule_or_fail(store: dbmod.RulesStore, name: str) -> rules.Rule:
    found = store.get_rule(name)
    if found is None:
        raise RuleError(f"no rule named {name!r}")
    return found


@rule.command("show")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="Output JSON (secrets masked).")
@pass_app
def rule_show(app, name, as_json):
    """Show one rule (secrets masked)."""
    with app.rules_store() as store:
        found = get_rule_or_fail(store, name)
        times = store.rule_times().get(found.name)
        keys = store.signing_keys("rule", found.id)
    if as_json:
        emit_json(rule_dict(found, times, keys))
    else:
        print_rule(found, times, keys)


@rule.command("edit", short_help="Change a rule.")
@click.argument("name")
@rule_options(edit=True)
@pass_app
def rule_edit(app, name, endpoint, when, unless, priority, fmt, basic_auth, bearer, api_key,
              retry_interval, retry_period, timeout, new_name, discard, disabled, allow_http,
              clear_auth):
    """Change rule NAME; options not given keep their value.

    --when replaces all conditions (with the --unless ones given alongside); --unless alone
    replaces only the negated conditions. --basic-auth and --bearer exclude each other, so
    giving one removes the other.
    """
    check_secret_options(basic_auth=basic_auth, bearer=bearer, api_key=api_key)
    given = [endpoint, priority, fmt, basic_auth, bearer, api_key, retry_interval, retry_period,
             timeout, new_name, discard, disabled, allow_http]
    if all(v is None for v in given) and not when and not unless and not clear_auth:
        raise InputError("nothing to change: give at least one option (see --help)")
    with app.rules_store() as store:
        old = get_rule_or_fail(store, name)
        changes: dict = {}
        for key, value in (("endpoint", endpoint), ("priority", priority), ("format", fmt),
                           ("retry_interval", retry_interval), ("retry_period", retry_period),
                           ("timeout", timeout), ("name", new_name), ("discard", discard),
                           ("allow_http", allow_http)):
            if value is not None:
                changes[key] = value
        if disabled is not None:
            changes["enabled"] = not disabled
        if when:
            changes["conditions"] = tuple(parse_conditions(when, unless))
        elif unless:
            keep = [c for c in old.conditions if not c.negate]
            changes["conditions"] = tuple(keep + parse_conditions((), unless))
        if clear_auth:
            changes.update(basic_auth=None, bearer=None, api_key=None)
        if basic_auth is not None:
            changes["basic_auth"] = basic_auth
            if bearer is None:
                changes["bearer"] = None
        if bearer is not None:
            changes["bearer"] = bearer
            if basic_auth is None:
                changes["basic_auth"] = None
        if api_key is not None:
            changes["api_key"] = api_key
        candidate = dataclasses.replace(old, **changes)
        rules.validate(candidate)
        if endpoint is not None:
            check_egress(app, candidate.endpoint)
        if when or unless:
            warn_backtracking(app, parse_conditions(when, unless))
        new = store.replace_rule(name, candidate)
    renamed = f" (renamed from {name})" if new.name != name else ""
    click.echo(f"Updated rule {new.name}{renamed}")


def _set_enabled(app, name: str, enabled: bool) -> None:
    with app.rules_store() as store:
        store.set_enabled(name, enabled)
    click.echo(f"{'Enabled' if enabled else 'Disabled'} rule {name}")


@rule.command("enable")
@click.argument("name")
@pass_app
def rule_enable(app, name):
    """Enable rule NAME."""
    _set_enabled(app, name, True)


@rule.command("disable")
@click.argument("name")
@pass_app
def rule_disable(app, name):
    """Disable rule NAME (kept, but never matches)."""
    _set_enabled(app, name, False)


@rule.command("remove")
@click.argument("name")
@pass_app
def rule_remove(app, name):
    """Remove rule NAME."""
    with app.rules_store() as store:
        store.remove_rule(name)
    click.echo(f"Removed rule {name}")


def rotate_options(command):
    """--overlap and --ed25519, the same for `rule rotate-secret` and `endpoint rotate-secret`."""
    command = click.option("--ed25519", is_flag=True,
                           help="Rotate (or add) the ed25519 key pair instead of the HMAC secret.")(command)
    return click.option("--overlap", type=DurationType(), default=DEFAULT_OVERLAP, show_default=True,
                        help="How long the previous secret keeps signing too (0: stop at once; "
                             "at most 30d).")(command)


@rule.command("rotate-secret", short_help="Issue a new signing secret (old one overlaps).")
@click.argument("name")
@rotate_options
@pass_app
def rule_rotate_secret(app, name, overlap, ed25519):
    """Give rule NAME a new signing secret, printed once. During the overlap every request
    carries a signature with the previous secret and one with the new one, so the receiver
    can switch at any time in between."""
    with app.rules_store() as store:
        found = get_rule_or_fail(store, name)
        rotate(store, "rule", found.id, f"rule {found.name}", overlap, ed25519)


# -- rule test ---------------------------------------------------------------------------------

def _rules_explained(m) -> list[dict]:
    return [{
        "name": rr.rule.name, "priority": rr.rule.priority, "enabled": rr.rule.enabled,
        "matched": rr.matched, "reason": rr.reason(),
        "conditions": [{"condition": str(c.condition), "held": c.held,
                        "value": c.matched_value, "timed_out": c.timed_out}
                       for c in rr.conditions],
    } for rr in m.evaluated]


def explain(snapshot: dbmod.Snapshot, cfg: configmod.Config, raw: bytes, recipients: list[str],
            mail_from: str | None) -> dict:
    """What the milter would answer for this message and these recipients (in RCPT order), at
    which stage, and why: the RCPT stage (decision.RcptStage) and end of headers
    (decision.decide) as the milter runs them, on the header section as Postfix splits it."""
    unknown_mode = cfg.choice("milter", "unknown_domains", ("reject", "pass"))
    missing_from = cfg.choice("milter", "missing_from", decisionmod.MISSING_FROM_POLICIES)
    enabled = tuple(h for h, key in HEURISTIC_KEYS if cfg.bool("milter", key))
    raw_headers, header_defects = messagemod.split_headers(raw)

    def header(name):
        return [v for n, v in raw_headers if n.lower() == name]

    sender = normalize_address(mail_from) if mail_from is not None else None
    # Refusals at RCPT are capped where Postfix has mxhook's routes (`mxhook check`); with
    # discard_via = milter the milter never relies on them, so it splits without a cap.
    routes = cfg.get("milter", "discard_via") != "milter"
    stage = decisionmod.RcptStage(snapshot.ruleset, snapshot.domains, unknown_domains=unknown_mode,
                                  null_sender=sender == "", enabled_heuristics=enabled,
                                  max_refusals=cfg.int("milter", "max_rcpt_refusals") if routes else None)
    rcpts = [normalize_address(r) for r in recipients]
    managed, passed, held, entries, candidates, overflow = [], [], [], {}, {}, set()
    for r in rcpts:
        if r in entries:  # the milter answers a repeated RCPT as the first
            continue
        outcome = stage.recipient(r)
        if outcome.overflow:
            overflow.add(r)
        if outcome.kind == decisionmod.MANAGED:
            managed.append(r)
            candidates[r] = outcome.candidates
        elif outcome.kind == decisionmod.PASS:
            passed.append(r)
            entries[r] = {"outcome": "passed", "stage": "rcpt", "smtp": "250",
                          "decided_by": "unknown_domains=pass", "rule": None,
                          "reason": f"domain {address_domain(r) or '(none)'} is not permitted; "
                                    "unknown_domains = pass leaves it to Postfix (no rules)"}
        elif outcome.kind == decisionmod.HOLD:
            held.append(r)
            entries[r] = {"outcome": "denied", "stage": "eoh", "smtp": "550 5.7.1",
                          "decided_by": outcome.filter, "rule": None,
                          "reason": outcome.reason + " (null sender: held until end of headers "
                                    "in case the message is a bounce report)"}
        elif outcome.kind == decisionmod.DENY:
            entries[r] = {"outcome": "rejected", "stage": "rcpt", "smtp": "550 5.7.1",
                          "decided_by": outcome.filter, "rule": None, "reason": outcome.reason}
        else:
            entries[r] = {"outcome": "deferred", "stage": "rcpt", "smtp": "452 4.5.3",
                          "decided_by": "outcome_class", "rule": None,
                          "reason": "its outcome may differ from the recipients accepted before "
                                    "it: the client sends it again in a separate transaction "
                                    "(test it alone to see that one)"}
    content_types = header("content-type")
    dsn = sender == "" and bool(content_types) and bounces.is_dsn_content_type(
        decode_value(content_types[0]))

    result = {
        "mail_from": sender,
        "header_from": first_address(header("from")[0]) if header("from") else "",
        "subject": decode_value(header("subject")[0]) if header("subject") else "",
        "header_defects": header_defects,
        "unknown_domains": unknown_mode,
        "missing_from": missing_from,
        "heuristics": {"enabled": list(enabled), "verdict": None},
        "rule_count": len(snapshot.ruleset),
    }
    # Every rule explained for each recipient in a permitted domain, also past the first match.
    ours = [r for r in entries.keys() | set(managed) if address_domain(r) in snapshot.domains]
    explained = decide(snapshot.ruleset, snapshot.domains, [r for r in rcpts if r in ours],
                       raw_headers, enabled_heuristics=enabled, explain=True,
                       missing_from=missing_from)
    for m in explained.matches:
        entries.setdefault(m.recipient, {})["rules"] = _rules_explained(m)
    if held:
        if dsn:
            for r in held:
                entries[r].update(outcome="consumed", smtp="250", decided_by="dsn",
                                  reason="a bounce report: its events are kept, the recipient "
                                         "is removed from Postfix's delivery")
            result.update(result="accept", smtp="250", decided_by="dsn",
                          reason="a bounce report for mail this server sent")
        else:
            result.update(result="reject", smtp="550 5.7.1", decided_by=entries[held[0]]["decided_by"],
                          reason=entries[held[0]]["reason"])
    elif managed:
        decision = decide(snapshot.ruleset, snapshot.domains, managed, raw_headers,
                          enabled_heuristics=enabled, missing_from=missing_from,
                          candidates=candidates)
        verdict = decision.verdict
        if verdict is not None:
            result["heuristics"]["verdict"] = {"heuristic": verdict.heuristic,
                                               "reason": verdict.reason}
        matched = {m.recipient: m.rule for m in decision.matches}  # none after a verdict
        for r in managed:
            entry, rule = entries.setdefault(r, {}), matched.get(r)
            entry.update(stage="eoh", rule=None)
            if verdict is not None:
                entry.update(outcome="denied", smtp="550 5.7.1",
                             decided_by="heuristic:" + verdict.heuristic, reason=verdict.reason)
            elif rule is not None:
                entry.update(outcome="accepted", smtp="250", decided_by="rule:" + rule.name,
                             rule=rule.name, action="discard" if rule.discard else "deliver",
                             endpoint=rule.endpoint, format=rule.format,
                             reason=f"rule {rule.name}: all conditions hold")
            elif dsn:
                entry.update(outcome="consumed", smtp="250", decided_by="dsn",
                             reason="no rule matches; a bounce report: its events are kept, "
                                    "the recipient is removed from Postfix's delivery")
            elif r in overflow and decision.accepted:
                entry.update(outcome="bounced", smtp="250, then a bounce from Postfix (5.7.1)",
                             decided_by="no_rule",
                             reason=f"no inbound rule matches <{r}>; accepted past the cap on "
                                    "refusals at RCPT (max_rcpt_refusals), so Postfix's error "
                                    "transport bounces it to the sender")
            else:
                entry.update(outcome="denied", smtp="550 5.7.1", decided_by="no_rule",
                             reason=f"no inbound rule matches <{r}>")
        if verdict is not None:
            result.update(result="reject", smtp="550 5.7.1",
                          decided_by="heuristic:" + verdict.heuristic, reason=verdict.reason)
        elif not decision.accepted and not dsn:
            result.update(result="reject", smtp="550 5.7.1", decided_by="no_rule",
                          reason=decision.reason())
        elif (not dsn and any(r not in overflow for r, _ in decision.accepted)
              and any(r not in overflow for r in decision.denied)):  # the milter's guard
            result.update(result="tempfail", smtp="451 4.3.0", decided_by="internal_error",
                          reason="recipients of one outcome class decided apart")
        else:
            names = [rule.name for rule, _ in decision.grouped()]
            result.update(result="accept", smtp="250", decided_by="rules" if names else "dsn",
                          reason=("accepted for " + ", ".join(names)) if names
                          else "a bounce report for mail this server sent")
    elif passed:
        result.update(result="pass", smtp="250", decided_by="unknown_domains=pass",
                      reason="no recipient in a permitted domain: the milter leaves the message "
                             "alone")
    else:
        result.update(result="reject", smtp="554 5.5.1", decided_by=entries[rcpts[0]]["decided_by"],
                      reason="every recipient was rejected at RCPT (no valid recipients)")
    result["recipients"] = [{"recipient": r, **entries[r]} for r in dict.fromkeys(rcpts)]
    return result


def print_explanation(res: dict) -> None:
    click.echo(f"From:       {res['header_from'] or '(none)'}"
               + (f"   MAIL FROM: <{res['mail_from']}>" if res["mail_from"] is not None else ""))
    click.echo(f"Subject:    {res['subject']}")
    h = res["heuristics"]
    click.echo(f"Heuristics: {', '.join(h['enabled']) or 'none'} enabled; "
               f"unknown_domains = {res['unknown_domains']}")
    verdict = res["result"].upper()
    click.echo(f"Result:     {verdict} ({res['smtp']}) by {res['decided_by']}: {res['reason']}")
    for d in res["header_defects"]:
        click.echo(f"Header:     {d}")
    for e in res["recipients"]:
        click.echo("")
        what = e["outcome"]
        if e["outcome"] == "accepted":
            what += f" by rule {e['rule']} → {e['format']} to {e['endpoint']}"
            if e["action"] == "discard":
                what += " (then discarded)"
        else:
            what += f" by {e['decided_by']}"
        stage = "RCPT" if e["stage"] == "rcpt" else "end of headers"
        click.echo(f"<{e['recipient']}>: {e['smtp']} at {stage}: {what}")
        if e["outcome"] != "accepted":
            click.echo(f"  {e['reason']}")
        if e["decided_by"].startswith("heuristic:") and e.get("rules"):
            click.echo("  rules, for information (the milter stops at the heuristic):")
        for rr in e.get("rules", []):
            mark = "✓" if rr["matched"] else "✗"
            first = e["outcome"] == "accepted" and rr["name"] == e["rule"]
            note = "  ← first match" if first else ""
            click.echo(f"  {mark} {rr['name']} (priority {rr['priority']}): {rr['reason']}{note}")


def read_message(stream, limit: int) -> bytes:
    """The message, at most `limit` bytes of it read: a larger one (say /dev/zero) is an
    InputError naming the limit, as the milter answers such a message 552 5.3.4."""
    raw = stream.read(limit + 1)
    if len(raw) > limit:
        name = "stdin" if stream.name in ("<stdin>", "-") else stream.name
        raise InputError(f"{name} is larger than [milter] max_message_size ({limit} bytes): the "
                         "milter refuses such a message (552 5.3.4), so it is not tested")
    return raw


@rule.command("test", short_help="Dry run: which heuristic or rule decides a message.")
@click.argument("message", metavar="MESSAGE.eml", type=click.File("rb"))
@click.option("--rcpt", "recipients", multiple=True, required=True, metavar="ADDR",
              help="Envelope recipient (RCPT TO); repeatable.")
@click.option("--mail-from", metavar="ADDR", help="Envelope sender (MAIL FROM), for display.")
@click.option("--json", "as_json", is_flag=True, help="Output JSON.")
@pass_app
def rule_test(app, message, recipients, mail_from, as_json):
    """Dry run: what the milter would answer for MESSAGE.eml ('-' reads stdin), and why.

    Each recipient, in --rcpt order, gets the milter's answer and its stage: 550 at RCPT (its
    domain is not permitted, or no rule can match its envelope), 452 4.5.3 at RCPT (its
    outcome may differ from the recipients accepted before it: sent again alone), or the
    end-of-headers outcome. Uses the rules and domains in rules.db and the heuristics,
    unknown_domains and missing_from settings of the config; every rule is evaluated and
    explained, also past the first match. A message larger than [milter] max_message_size is
    refused, as the milter refuses it.
    """
    for r in recipients:
        if "@" not in r:
            raise click.BadParameter(f"{r!r} is not an address (local@domain)", param_hint="--rcpt")
    cfg = app.cfg
    raw = read_message(message, cfg.size("milter", "max_message_size"))
    with app.rules_store() as store:
        snapshot = store.snapshot(regex_timeout=cfg.float("milter", "regex_timeout"))
    res = explain(snapshot, cfg, raw, list(recipients), mail_from)
    if as_json:
        emit_json(res)
    else:
        print_explanation(res)


# ---------------------------------------------------------------------------------------------
# Inbound log

_RELATIVE = re.compile(r"^(\d+)\s*([smhdw])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def format_time(dt: datetime) -> str:
    """The time format of spool records and state.db: ISO 8601 UTC with a Z."""
    return dt.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_time(text: str, now: datetime | None = None) -> str:
    """'2026-11-22', '2026-11-22T12:00', '...+02:00' (UTC when no offset), or relative '30m',
    '2h', '7d', '1w' (ago) -> '2026-11-22T12:00:00.000000Z'. ValueError otherwise."""
    t = text.strip()
    m = _RELATIVE.match(t.lower())
    if m:
        now = now or datetime.now(timezone.utc)
        return format_time(now - timedelta(**{_UNITS[m.group(2)]: int(m.group(1))}))
    try:
        dt = datetime.fromisoformat(t[:-1] + "+00:00" if t[-1:] in ("Z", "z") else t)
    except ValueError:
        raise ValueError(
            f"{text!r} is not a time: use an ISO date or date-time (UTC unless an offset is "
            "given), e.g. 2026-11-22 or 2026-11-22T08:00+01:00, or an age like 30m, 2h, 7d"
        ) from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return format_time(dt)


class TimeType(click.ParamType):
    name = "TIME"

    def convert(self, value, param, ctx):
        try:
            return parse_time(value)
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


@cli.group(cls=MxhookGroup)
def log():
    """The inbound log (read from state.db)."""


def log_listing(statuses: tuple[str, ...], status_help: str):
    """The options every `mxhook log` listing takes (status filter, time window, limit, output)."""

    def decorate(fn):
        for option in reversed((
            click.option("--status", type=click.Choice(statuses), help=status_help),
            click.option("--since", type=TimeType(), help="From this time on (ISO, or an age: 30m, 2h, 7d)."),
            click.option("--until", type=TimeType(), help="Up to this time (ISO, or an age)."),
            click.option("--limit", type=click.IntRange(min=1), default=100, show_default=True,
                         help="At most this many entries, newest first."),
            click.option("--csv", "as_csv", is_flag=True, help="Output CSV."),
            click.option("--json", "as_json", is_flag=True, help="Output JSON."),
        )):
            fn = option(fn)
        return fn

    return decorate


def emit_listing(rows: list[dict], *, as_csv: bool, as_json: bool, columns: list[str],
                 what: str, filtered: bool, header: list[str], cells) -> None:
    """JSON, formula-safe CSV with exactly `columns`, or a table for humans."""
    if as_csv and as_json:
        raise InputError("choose either --csv or --json, not both")
    if as_json:
        emit_json(rows)
    elif as_csv:
        from mxhook.services.csvexport import write_csv

        # UTF-8 whatever the locale (the CSV is a file for other programs), LF line ends
        out = io.TextIOWrapper(click.get_binary_stream("stdout"), encoding="utf-8", newline="",
                               write_through=True)
        try:
            write_csv(rows, columns, out)
            out.flush()
        finally:
            out.detach()
    elif not rows:
        click.echo(f"No {what} entries" + (" match" if filtered else ""))
    else:
        table(header, [cells(r) for r in rows], max_width=48)


@log.command("inbound")
@log_listing(LOG_STATUSES, "Only this status.")
@pass_app
def log_inbound(app, status, since, until, limit, as_csv, as_json):
    """List inbound mail: accepted (queued, succeeded, deferred, failed) and denied."""
    rows = app.state_store().inbound_log(status=status, since=since, until=until, limit=limit)
    emit_listing(rows, as_csv=as_csv, as_json=as_json, columns=LOG_COLUMNS, what="inbound log",
                 filtered=bool(status or since or until),
                 header=["RECEIVED", "STATUS", "FROM", "TO", "FILTER", "REASON", "ID"],
                 cells=lambda r: [short_time(r.get("received")), r.get("status"), r.get("from"),
                                  r.get("to"), r.get("filterName"), r.get("reason"), r.get("id")])


@log.command("show")
@click.argument("entry_id", metavar="ID")
@click.option("--json", "as_json", is_flag=True, help="Output JSON.")
@pass_app
def log_show(app, entry_id, as_json):
    """Details of one inbound log entry, with its delivery attempts."""
    store = app.state_store()
    d = store.inbound_detail(entry_id)
    if d is None:
        raise InputError(f"no inbound log entry with id {entry_id!r}")
    if as_json:
        emit_json(d)
        return
    for key, label in (("id", "id"), ("received", "date"), ("status", "status"),
                       ("hostName", "host name"), ("client_addr", "client address"),
                       ("mail_from", "mail from"), ("from", "from"), ("to", "destination"),
                       ("subject", "subject"), ("messageId", "message-id"),
                       ("queue_id", "queue id"), ("filterName", "filter name"),
                       ("reason", "reason"), ("next_attempt_at", "next attempt")):
        if d.get(key) not in (None, ""):
            click.echo(f"{label + ':':16}{printable(str(d[key]))}")
    attempts = d.get("attempts") or []
    if d.get("kind") != "denied":
        click.echo(f"{'attempts:':16}{len(attempts)}")
    if attempts:
        table(["AT", "OUTCOME", "HTTP", "DURATION MS", "ERROR"],
              [[a.get("at"), a.get("outcome"), a.get("status_code"), a.get("duration_ms"),
                a.get("error")] for a in attempts], max_width=70)


# ---------------------------------------------------------------------------------------------
# Event log

def event_time(value: str | None) -> str | None:
    return short_time(value)


@log.command("events")
@log_listing(DELIVERY_STATUSES, "Only this delivery status.")
@pass_app
def log_events(app, status, since, until, limit, as_csv, as_json):
    """List event deliveries: one entry per (event, endpoint), with the webhook status."""
    rows = app.state_store().event_log(status=status, since=since, until=until, limit=limit)
    emit_listing(rows, as_csv=as_csv, as_json=as_json, columns=list(EVENT_LOG_KEYS), what="event log",
                 filtered=bool(status or since or until),
                 header=["RECEIVED", "STATUS", "TYPE", "RECIPIENT", "HOST", "ENDPOINT", "REASON", "ID"],
                 cells=lambda r: [event_time(r["received"]), r["status"], r["type"], r["recipient"],
                                  r["hostName"], r["endpointUrl"] or f"(endpoint {r['endpointId']})",
                                  r["reason"], r["id"]])


@log.command("event")
@click.argument("event_id", metavar="ID")
@click.option("--json", "as_json", is_flag=True, help="Output JSON.")
@pass_app
def log_event(app, event_id, as_json):
    """Details of one event: its fields, and its delivery to each endpoint with attempts."""
    store = app.state_store()
    d = store.event_detail(event_id)
    if d is None:
        raise InputError(f"no event with id {event_id!r}")
    if as_json:
        emit_json(d)
        return
    event = d["event"]
    click.echo(f"{'id:':16}{d['id']}")
    for key in ("type", "at", "recipient", "sender", "header_from", "message_id", "subject",
                "queue_id", "bounce_type", "dsn", "remote_host", "relay", "reply", "reason",
                "client_addr", "auth_user", "source"):
        if event.get(key) not in (None, ""):
            click.echo(f"{key.replace('_', ' ') + ':':16}{event[key]}")
    for name, value in (event.get("custom_headers") or {}).items():
        click.echo(f"{'header:':16}{name}: {value}")
    if not d["deliveries"]:
        click.echo("deliveries:     none (no endpoint takes this event type)")
    for entry in d["deliveries"]:
        click.echo("")
        where = entry["endpointUrl"] or f"(removed endpoint {entry['endpointId']})"
        click.echo(f"endpoint {entry['endpointId']}: {where}")
        click.echo(f"  status:       {entry['status']}")
        if entry["batchId"]:
            click.echo(f"  batch:        {entry['batchId']} ({entry['batchSize']} event(s))")
        if entry["reason"]:
            click.echo(f"  reason:       {entry['reason']}")
        if entry.get("nextAttemptAt"):
            click.echo(f"  next attempt: {entry['nextAttemptAt']}")
        if entry["attempts"]:
            table(["AT", "OUTCOME", "HTTP", "DURATION MS", "ERROR"],
                  [[a["at"], a["outcome"], a["status_code"], a["duration_ms"], a["error"]]
                   for a in entry["attempts"]], max_width=70)


# ---------------------------------------------------------------------------------------------
# Event endpoints

def endpoint_dict(ep: endpointsmod.Endpoint, keys: list | None = None) -> dict:
    """An endpoint as JSON-able data, secrets masked (signing keys too: public keys in full)."""
    d = {
        "id": ep.id, "url": ep.url, "enabled": ep.enabled, "events": list(ep.categories),
        "interval": ep.interval, "max_events": ep.max_events, "timeout": ep.timeout,
        "version": ep.version, "timezone": ep.timezone, "format": ep.format,
        "basic_auth": mask_basic(ep.basic_auth), "bearer": mask_secret(ep.bearer),
        "api_key": mask_secret(ep.api_key), "retry_interval": ep.retry_interval,
        "retry_period": ep.retry_period, "allow_http": ep.allow_http,
        "created": ep.created, "updated": ep.updated,
    }
    if keys is not None:
        d["signing"] = [k.to_public_dict() for k in keys]
    return d


def print_endpoint(ep: endpointsmod.Endpoint, keys: list | None = None) -> None:
    rows = [
        ("id", ep.id), ("url", ep.url), ("enabled", yes_no(ep.enabled)),
        ("events", ", ".join(ep.categories)),
        ("batching", f"after {ep.interval} s or at {ep.max_events} events, whichever comes first"),
        ("version", f"{ep.version} (pinned)"), ("time zone", ep.timezone), ("format", ep.format),
        ("auth", auth_summary(ep)), ("timeout", f"{ep.timeout} s"),
        ("retry interval", f"{ep.retry_interval} s"), ("retry period", f"{ep.retry_period} days"),
        ("allow http", yes_no(ep.allow_http)), ("created", ep.created), ("updated", ep.updated),
    ]
    for key, value in rows:
        click.echo(f"{key + ':':16}{value}")
    print_signing(keys)


def endpoint_options(edit: bool):
    """Options of `endpoint add` and `endpoint edit` (for edit all default to None = keep)."""

    def dflt(key, unit=""):
        return "." if edit else f" [default: {endpointsmod.DEFAULTS[key]}{unit}]."

    def deco(f):
        opts = [
            click.option("--events", "categories", metavar="CATEGORIES",
                         help="Comma-separated: " + ",".join(endpointsmod.CATEGORIES) +
                              ("." if edit else " [default: all].")),
            click.option("--interval", type=int, metavar="1..600",
                         help="Send when the oldest pending event is this many seconds old" + dflt("interval")),
            click.option("--max-events", type=int, metavar="100..10000",
                         help="Send when this many events are pending; never more per POST" + dflt("max_events")),
            click.option("--timeout", type=int, metavar="1..999",
                         help="Request timeout in seconds" + dflt("timeout")),
            click.option("--version", "version", type=int, metavar="N",
                         help="Payload version" + ("." if edit else " [default: the latest; then pinned].")),
            click.option("--timezone", metavar="AREA/CITY",
                         help="Time zone of timestamps in payloads" + dflt("timezone")),
            click.option("--format", "fmt", type=click.Choice(endpointsmod.FORMATS),
                         help="Payload format" + dflt("format")),
            click.option("--basic-auth", metavar="USER:PASS", help="HTTP Basic auth."),
            click.option("--bearer", metavar="TOKEN", help="Bearer token (not with --basic-auth)."),
            click.option("--api-key", metavar="KEY", help="API key, sent in the payload body."),
            click.option("--retry-interval", type=int, metavar="10..600",
                         help="Seconds between retries" + dflt("retry_interval")),
            click.option("--retry-period", type=int, metavar="1..10",
                         help="Days to keep retrying" + dflt("retry_period")),
        ]
        if edit:
            opts += [
                click.option("--url", "new_url", metavar="URL", help="Change the URL."),
                click.option("--disabled/--enabled", "disabled", default=None,
                             help="Disable (events are kept pending) or enable the endpoint."),
                click.option("--allow-http/--no-allow-http", default=None,
                             help="Allow (or stop allowing) a plain http:// URL."),
                click.option("--clear-auth", is_flag=True,
                             help="Remove Basic auth, Bearer token and API key (before applying "
                                  "any new ones given)."),
            ]
        else:
            opts += [
                click.option("--disabled", is_flag=True,
                             help="Add the endpoint disabled (no events are queued for it)."),
                click.option("--allow-http", is_flag=True,
                             help="Allow a plain http:// URL (events travel unencrypted)."),
                click.option("--ed25519", is_flag=True,
                             help="Also sign with an ed25519 key pair (v1a); prints its public key."),
            ]
        for opt in reversed(opts):
            f = opt(f)
        return f

    return deco


def get_endpoint_or_fail(store: dbmod.RulesStore, key: str) -> endpointsmod.Endpoint:
    found = store.get_endpoint(key)
    if found is None:
        raise RuleError(f"no endpoint {key!r} (give its id or URL; see `mxhook endpoint list`)")
    return found


@cli.group(cls=MxhookGroup)
def endpoint():
    """Event webhook endpoints: where delivery events are posted, in batches."""


@endpoint.command("add", short_help="Add an event endpoint.")
@click.argument("url")
@endpoint_options(edit=False)
@pass_app
def endpoint_add(app, url, categories, interval, max_events, timeout, version, timezone, fmt,
                 basic_auth, bearer, api_key, retry_interval, retry_period, disabled, allow_http,
                 ed25519):
    """Add an endpoint at URL for delivery events (bounces, deliveries, blocks).

    \b
    Example:
      mxhook endpoint add https://app.example.net/hooks/events --events bounces,blocks \\
          --interval 30 --timezone Europe/Berlin --bearer tok_...

    The endpoint's signing secret is printed once: give it to the receiver (docs/verifying.md).
    """
    check_secret_options(what="endpoint", basic_auth=basic_auth, bearer=bearer, api_key=api_key)
    new = endpointsmod.with_defaults(
        url=url, categories=endpointsmod.parse_categories(categories or ""), interval=interval,
        max_events=max_events, timeout=timeout, version=version, timezone=timezone, format=fmt,
        basic_auth=basic_auth, bearer=bearer, api_key=api_key, retry_interval=retry_interval,
        retry_period=retry_period, allow_http=allow_http, enabled=not disabled,
    )
    endpointsmod.validate(new)  # before the database is created or opened for writing
    check_egress(app, new.url)
    with app.rules_store(create=True) as store:
        added = store.add_endpoint(new, ed25519=ed25519)
        keys = store.signing_keys("endpoint", added.id)
    click.echo(f"Added endpoint {added.id}{' (disabled)' if not added.enabled else ''}: "
               f"{', '.join(added.categories)} events to {added.url} "
               f"(version {added.version}, {added.format})")
    print_new_keys(keys)


@endpoint.command("list")
@click.option("--json", "as_json", is_flag=True, help="Output JSON (secrets masked).")
@pass_app
def endpoint_list(app, as_json):
    """List event endpoints."""
    with app.rules_store() as store:
        found = store.list_endpoints()
        keys = {ep.id: store.signing_keys("endpoint", ep.id) for ep in found} if as_json else {}
    if as_json:
        emit_json([endpoint_dict(ep, keys[ep.id]) for ep in found])
    elif not found:
        click.echo("No event endpoints (add one with: mxhook endpoint add URL)")
    else:
        table(["ID", "ENABLED", "EVENTS", "INTERVAL", "MAX", "VERSION", "FORMAT", "TIME ZONE", "URL"],
              [[ep.id, ep.enabled, ",".join(ep.categories), f"{ep.interval}s", ep.max_events,
                ep.version, ep.format, ep.timezone, ep.url] for ep in found], max_width=70)


@endpoint.command("show")
@click.argument("key", metavar="ID|URL")
@click.option("--json", "as_json", is_flag=True, help="Output JSON (secrets masked).")
@pass_app
def endpoint_show(app, key, as_json):
    """Show one endpoint (secrets masked)."""
    with app.rules_store() as store:
        ep = get_endpoint_or_fail(store, key)
        keys = store.signing_keys("endpoint", ep.id)
    if as_json:
        emit_json(endpoint_dict(ep, keys))
    else:
        print_endpoint(ep, keys)


@endpoint.command("edit", short_help="Change an endpoint.")
@click.argument("key", metavar="ID|URL")
@endpoint_options(edit=True)
@pass_app
def endpoint_edit(app, key, categories, interval, max_events, timeout, version, timezone, fmt,
                  basic_auth, bearer, api_key, retry_interval, retry_period, new_url, disabled,
                  allow_http, clear_auth):
    """Change endpoint ID|URL; options not given keep their value.

    Changes apply to batches made from now on (a batch already made keeps its events). Giving
    --version moves the endpoint to that payload version.
    """
    check_secret_options(what="endpoint", basic_auth=basic_auth, bearer=bearer, api_key=api_key)
    given = [categories, interval, max_events, timeout, version, timezone, fmt, basic_auth, bearer,
             api_key, retry_interval, retry_period, new_url, disabled, allow_http]
    if all(v is None for v in given) and not clear_auth:
        raise InputError("nothing to change: give at least one option (see --help)")
    with app.rules_store() as store:
        old = get_endpoint_or_fail(store, key)
        changes: dict = {}
        for name, value in (("interval", interval), ("max_events", max_events),
                            ("timeout", timeout), ("version", version), ("timezone", timezone),
                            ("format", fmt), ("retry_interval", retry_interval),
                            ("retry_period", retry_period), ("url", new_url),
                            ("allow_http", allow_http)):
            if value is not None:
                changes[name] = value
        if categories is not None:
            changes["categories"] = endpointsmod.parse_categories(categories)
        if disabled is not None:
            changes["enabled"] = not disabled
        if clear_auth:
            changes.update(basic_auth=None, bearer=None, api_key=None)
        if basic_auth is not None:
            changes["basic_auth"] = basic_auth
            if bearer is None:
                changes["bearer"] = None
        if bearer is not None:
            changes["bearer"] = bearer
            if basic_auth is None:
                changes["basic_auth"] = None
        if api_key is not None:
            changes["api_key"] = api_key
        candidate = endpointsmod.validate(dataclasses.replace(old, **changes))
        if new_url is not None:
            check_egress(app, candidate.url)
        new = store.replace_endpoint(old.id, candidate)
    click.echo(f"Updated endpoint {new.id} ({new.url})")


@endpoint.command("remove")
@click.argument("key", metavar="ID|URL")
@pass_app
def endpoint_remove(app, key):
    """Remove an endpoint. Events still pending for it are marked failed."""
    with app.rules_store() as store:
        ep = store.remove_endpoint(key)
    click.echo(f"Removed endpoint {ep.id} ({ep.url})")


@endpoint.command("rotate-secret", short_help="Issue a new signing secret (old one overlaps).")
@click.argument("key", metavar="ID|URL")
@rotate_options
@pass_app
def endpoint_rotate_secret(app, key, overlap, ed25519):
    """Give endpoint ID|URL a new signing secret, printed once. During the overlap every
    request carries a signature with the previous secret and one with the new one."""
    with app.rules_store() as store:
        ep = get_endpoint_or_fail(store, key)
        rotate(store, "endpoint", ep.id, f"endpoint {ep.id} ({ep.url})", overlap, ed25519)


@endpoint.command("test", short_help="Send one sample event now and show the reply.")
@click.argument("key", metavar="ID|URL")
@click.option("--type", "event_type", default="bounced", show_default=True,
              type=click.Choice(("queued", "succeeded", "deferred", "bounced", "failed", "blocked",
                                 "registered", "deleted")),
              help="Type of the sample event.")
@pass_app
def endpoint_test(app, key, event_type):
    """Post one sample event to endpoint ID|URL now, through the spooler's delivery client
    (same payload version, format, time zone, auth and timeout), and show the reply. The
    sample's id starts with `test-` and its batch id with `evb_test_`. Exit status 1 when the
    endpoint did not answer 2xx."""
    from mxhook.delivery import webhook
    from mxhook.payloads.events import render_events, sample_event

    with app.rules_store() as store:
        ep = get_endpoint_or_fail(store, key)
    cfg = app.cfg
    signing_keys = dbmod.SigningKeys(cfg.rules_db)
    try:
        keys = signing_keys.active("endpoint", ep.id)
    finally:
        signing_keys.close()
    batch_id = "evb_test_" + spool.new_id()
    rendered = render_events(ep.version, [sample_event(event_type)], endpoint_tz=ep.timezone,
                             fmt=ep.format, batch_id=batch_id, endpoint_id=ep.id,
                             api_key=ep.api_key)
    session = webhook.make_session(cfg.networks("http", "allow_networks"))
    outcome = webhook.deliver(session, ep.target, rendered.body,
                           rendered.content_type, batch_id,
                           user_agent=cfg.get("spooler", "user_agent"),
                           max_response_bytes=cfg.size("spooler", "max_response_bytes"), keys=keys)
    code = f"HTTP {outcome.status_code}" if outcome.status_code is not None else "no HTTP answer"
    click.echo(f"POST {ep.url} ({ep.format}, version {ep.version}, webhook-id {batch_id})")
    click.echo(f"{code} in {outcome.duration_ms} ms: {outcome.status}"
               + (f" ({outcome.error})" if outcome.error else ""))
    if outcome.response_excerpt:
        click.echo("reply:")
        click.echo(outcome.response_excerpt.rstrip("\n"))
    if outcome.status != "succeeded":
        raise SystemExit(1)


# ---------------------------------------------------------------------------------------------
# Block list

def spool_event(app, event_type: str, address: str, reason: str | None) -> str:
    """Hand a `registered` / `deleted` event to the spooler through the spool (durably), as
    the milter and the log follower do; returns the event id. Run as root, the file is written
    with the owner of the spool directory (the spooler must be able to read it)."""
    from mxhook.model import events as eventsmod

    event = eventsmod.Event(type=event_type, at=eventsmod.now_iso(), id=spool.new_id(),
                            source="cli", recipient=address, reason=reason)
    record = spool.event_record(event)
    spool_dir = app.cfg.spool_dir
    as_owner(os.path.join(spool_dir, "new"), lambda: spool.write(spool_dir, record, durable=True))
    return event.id


def as_owner(directory: str, fn):
    """Run fn() with the effective uid/gid of `directory`'s owner when running as root."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return fn()
    st = os.stat(directory)
    if st.st_uid == 0:
        return fn()
    os.setegid(st.st_gid)
    try:
        os.seteuid(st.st_uid)
        try:
            return fn()
        finally:
            os.seteuid(0)
    finally:
        os.setegid(0)


def check_spool(app) -> None:
    """Before writing rules.db: the event must be writable afterwards."""
    new_dir = os.path.join(app.cfg.spool_dir, "new")
    if not os.path.isdir(new_dir) or not os.path.isdir(os.path.join(app.cfg.spool_dir, "tmp")):
        raise InputError(f"spool directory {app.cfg.spool_dir} does not exist "
                         "(mxhook-spooler creates it); the block list event could not be sent")


@cli.group(cls=MxhookGroup)
def block():
    """The block list: outbound mail to these addresses is refused (event `blocked`)."""


@block.command("list")
@click.option("--json", "as_json", is_flag=True, help="Output JSON.")
@pass_app
def block_list(app, as_json):
    """List blocked addresses, oldest first."""
    with app.rules_store() as store:
        rows = store.block_list()
    if as_json:
        emit_json(rows)
    elif not rows:
        click.echo("The block list is empty")
    else:
        table(["ADDRESS", "SOURCE", "DSN", "CREATED", "REASON"],
              [[r["address"], r["source"], r["dsn"], short_time(r["created"]), r["reason"]]
               for r in rows], max_width=60)


@block.command("add")
@click.argument("address")
@click.option("--reason", metavar="TEXT", help="Why (shown in the list and the event).")
@pass_app
def block_add(app, address, reason):
    """Put ADDRESS on the block list (emits a `registered` event)."""
    addr = dbmod.normalize_block_address(address)
    check_spool(app)
    with app.rules_store(create=True) as store:
        if not store.block_add(addr, reason=reason, source="cli"):
            raise RuleError(f"{addr} is already on the block list")
    try:
        event_id = spool_event(app, "registered", addr, reason)
    except OSError as exc:
        raise click.ClickException(f"{addr} was added to the block list, but its registered "
                                   f"event could not be spooled: {exc}") from None
    click.echo(f"Blocked {addr} (event registered {event_id})")


@block.command("remove")
@click.argument("address")
@pass_app
def block_remove(app, address):
    """Take ADDRESS off the block list (emits a `deleted` event)."""
    addr = dbmod.normalize_block_address(address)
    check_spool(app)
    with app.rules_store() as store:
        if not store.block_remove(addr):
            raise RuleError(f"{addr} is not on the block list")
    try:
        event_id = spool_event(app, "deleted", addr, "removed by the admin")
    except OSError as exc:
        raise click.ClickException(f"{addr} was removed from the block list, but its deleted "
                                   f"event could not be spooled: {exc}") from None
    click.echo(f"Unblocked {addr} (event deleted {event_id})")


from mxhook.cli import admin  # noqa: E402  (they import cli.py only inside their functions)
from mxhook.cli import ops

cli.add_command(admin.postfix_config)
cli.add_command(admin.check)
cli.add_command(ops.replay)
cli.add_command(ops.status)


def main(argv: list[str] | None = None) -> None:
    cli.main(args=argv, prog_name="mxhook")


if __name__ == "__main__":
    main()
