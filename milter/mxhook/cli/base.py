"""What every command module shares: the context object (App), the group class that turns
errors into exit statuses, and the parameter types."""
from __future__ import annotations

import dataclasses
import functools
import os
import sqlite3
import sys

import click

from mxhook import config as configmod
from mxhook.model import retry, targets
from mxhook.model.rules import RuleError
from mxhook.payloads import templates
from mxhook.payloads.dialects import catalogue
from mxhook.services import times
from mxhook.services.errors import Invalid, ServiceError
from mxhook.services.targets import MAX_TEMPLATE_BYTES, TemplateGiven

CONTEXT_SETTINGS = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


class InputError(click.UsageError):
    """Input given on the command line that is wrong, found after parsing (a bad rule, two
    options that exclude each other): exit status 2 like every usage error, shown as one line
    without the usage text."""

    def show(self, file=None) -> None:
        self.ctx = None
        super().show(file)


NOT_USAGE = frozenset({
    "config_invalid",  # the config file is wrong, not the command line
    "bad_key_file",  # [tracking] key_file has a bad line
    "not_sent_yet",  # replay: the event named is in no batch yet
})
"""Codes of services.errors.Invalid that are runtime errors (exit status 1)."""


class MxhookGroup(click.Group):
    """Turns errors into exit statuses (docs/cli.md, "Exit status"), wherever in the command
    they are raised, as click, postconf and sqlite-utils do: 2 for wrong input on the command
    line (a usage error), 1 for everything else that went wrong (a name not found, a clash
    with what is stored, a config file, database or directory that is missing or broken, an
    operation that failed part way). Either way one line on stderr."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except Invalid as exc:
            if exc.code in NOT_USAGE:
                raise click.ClickException(exc.message) from None
            raise InputError(exc.message) from None
        except ServiceError as exc:
            raise click.ClickException(exc.message) from None
        except (RuleError, targets.DestinationError) as exc:
            raise InputError(str(exc)) from None
        except configmod.ConfigError as exc:
            raise click.ClickException(str(exc)) from None
        except sqlite3.Error as exc:
            raise click.ClickException(f"database error: {exc}") from None
        except UnicodeError as exc:
            raise InputError(f"text that cannot be handled ({exc.reason}): arguments must be valid "
                             "UTF-8, and output needs a UTF-8 locale (e.g. LC_ALL=C.UTF-8)") from None
        except OverflowError as exc:
            raise InputError(f"a number is out of range ({exc})") from None
        except BrokenPipeError:  # `mxhook ... | head`: click ends quietly, as other tools do
            raise
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


def app_of(ctx: click.Context) -> App:
    """The group's App, or one for $MXHOOK_CONFIG / the default when a command runs outside
    the group."""
    obj = ctx.obj
    if isinstance(obj, App):
        return obj
    return App(getattr(obj, "config_path", None))


pass_app = click.make_pass_decorator(App)


def warn(message: str) -> None:
    click.echo(message, err=True)


class TimeType(click.ParamType):
    name = "TIME"

    def convert(self, value, param, ctx):
        try:
            return times.parse_time(value)
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


class DurationType(click.ParamType):
    """'24h', '30m', '90s', '2d', '1w' or plain seconds -> seconds (float)."""

    name = "DURATION"

    def convert(self, value, param, ctx):
        try:
            return times.parse_duration(value)
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


DEFAULT_OVERLAP = "24h"


def rotate_options(command):
    """--overlap and --ed25519, the same for `rule rotate-secret` and `endpoint rotate-secret`."""
    command = click.option("--ed25519", is_flag=True,
                           help="Rotate (or add) the ed25519 key pair instead of the HMAC secret.")(command)
    return click.option("--overlap", type=DurationType(), default=DEFAULT_OVERLAP, show_default=True,
                        help="How long the previous secret keeps signing too (0: stop at once; "
                             "at most 30d).")(command)


def destination_options(edit: bool, formats: tuple[str, ...], side: str, *, url_option: bool = True,
                        endpoint_alias: bool = False, unencrypted: str = "content"):
    """The destination's options, the same for `rule add|edit` and `endpoint add|edit` but the
    payload `formats` and the dialects of `side` (catalogue.INBOUND | EVENTS). The command
    receives them as one `destination`: a Destination for add (its defaults for options not
    given), for edit the fields to change (None: keep) and `clear_auth`; and `template`, a
    TemplateGiven or None (for edit `no_template` too). `url_option`: False when the command
    takes the URL as its argument `url`; `endpoint_alias`: `--endpoint` as a hidden alias of
    `--url` (for existing rule scripts)."""

    def dflt(name):
        return "." if edit else f" [default: {targets.default(name)}]."

    opts = [
        click.option("--dialect", metavar="NAME",
                     help=f"Whose request bodies: {', '.join(catalogue.names(side))} "
                          f"(`mxhook dialect list`)" + dflt("dialect")),
        click.option("--format", "format", type=click.Choice(formats),
                     help="Payload format of the native dialect" + dflt("format")),
        *secret_options("--basic-auth", "USER:PASS", "HTTP Basic auth."),
        *secret_options("--bearer", "TOKEN", "Bearer token (not with --basic-auth)."),
        *secret_options("--api-key", "KEY", "API key, sent in the payload body."),
        *secret_options("--signing-key", "KEY", "The dialect's signing key (mailgun: the webhook "
                                                "signing key the receiver checks)."),
        click.option("--template", "template_file", type=click.File("rb"), metavar="FILE",
                     help="jinja2 template of the body (docs/payloads.md, \"Custom templates\"), "
                          "tried on a sample, then stored as a new version."),
        click.option("--template-type", type=click.Choice(tuple(templates.CONTENT_TYPES)),
                     help=f"Content type the template writes [default: {templates.JSON}]."),
        click.option("--retry-interval", type=int, metavar="10..600",
                     help="Seconds between retries" + dflt("retry_interval")),
        click.option("--retry-period", type=int, metavar="1..10",
                     help="Days to keep retrying" + dflt("retry_period")),
        click.option("--retry-backoff", type=click.Choice(retry.BACKOFFS),
                     help="fixed: every retry after --retry-interval; exponential: the wait doubles "
                          "from --retry-interval up to --retry-cap" + dflt("retry_backoff")),
        click.option("--retry-cap", type=int, metavar="10..86400",
                     help="Seconds an exponential backoff grows to at most" + dflt("retry_cap")),
        click.option("--timeout", type=int, metavar="1..999",
                     help="Request timeout in seconds" + dflt("timeout")),
    ]
    if url_option:
        opts.insert(0, click.option("--url", metavar="URL", help=(
            "Change the webhook URL." if edit
            else "Webhook URL (https:// unless --allow-http).  [required]")))
    if endpoint_alias:
        opts.insert(1, click.option("--endpoint", "endpoint_url", metavar="URL", hidden=True))
    if edit:
        opts += [
            click.option("--allow-http/--no-allow-http", default=None,
                         help="Allow (or stop allowing) a plain http:// URL."),
            click.option("--clear-auth", is_flag=True,
                         help="Remove Basic auth, Bearer token, API key and signing key (before "
                              "applying any new ones given)."),
            click.option("--no-template", is_flag=True,
                         help="Back to the dialect's own body (stored template versions are "
                              "kept: mail accepted under one still renders with it)."),
        ]
    else:
        opts.append(click.option(
            "--allow-http", is_flag=True,
            help=f"Allow a plain http:// URL ({unencrypted} travels unencrypted)."))

    def deco(f):
        @functools.wraps(f)
        def command(**kwargs):
            values = {f.name: kwargs.pop(f.name, None) for f in dataclasses.fields(targets.Destination)}
            alias = kwargs.pop("endpoint_url", None)
            if alias is not None:
                if values["url"] not in (None, alias):
                    raise click.UsageError("give the URL once: --url (--endpoint is its old name)")
                values["url"] = alias
            files = {flag: kwargs.pop(flag[2:].replace("-", "_") + "_file", None) for flag in SECRETS}
            if list(files.values()).count("-") > 1:
                raise InputError("only one secret can be read from stdin ('-')")
            for flag, path in files.items():
                name = flag[2:].replace("-", "_")
                values[name] = secret_given(flag, values[name], path)
            kwargs["template"] = _template_given(kwargs.pop("template_file", None),
                                                 kwargs.pop("template_type", None))
            if edit:
                return f(destination=values, **kwargs)
            if values["url"] is None:
                raise click.UsageError("Missing option '--url'.")
            return f(destination=targets.destination(**values), **kwargs)

        for opt in reversed(opts):
            command = opt(command)
        return command

    return deco


SECRETS = ("--basic-auth", "--bearer", "--api-key", "--signing-key")
"""The destination's options that take a secret: each has --X-file and $MXHOOK_X forms too."""

MAX_SECRET_BYTES = 65536


def secret_env(flag: str) -> str:
    """'--bearer' -> 'MXHOOK_BEARER'."""
    return "MXHOOK_" + flag[2:].replace("-", "_").upper()


def secret_options(flag: str, metavar: str, text: str) -> list:
    """--X SECRET and --X-file FILE; the command reads $MXHOOK_X through secret_given."""
    return [
        click.option(flag, metavar=metavar,
                     help=f"{text} Visible in ps and the shell history: prefer {flag}-file or "
                          f"${secret_env(flag)}."),
        click.option(f"{flag}-file", type=click.Path(exists=True, dir_okay=False, allow_dash=True),
                     metavar="FILE", help=f"Read {flag} from FILE ('-': stdin; one trailing line "
                                          "end dropped)."),
    ]


def secret_given(flag: str, value: str | None, path: str | None) -> str | None:
    """The secret of `flag` from the command line, the file named by its -file option, or its
    environment variable (an empty one counts as unset): at most one of them, so a secret is
    never taken from a place the admin did not mean."""
    env = os.environ.get(secret_env(flag)) or None
    if sum(x is not None for x in (value, path, env)) > 1:
        raise InputError(f"give {flag}, {flag}-file or ${secret_env(flag)}, not two of them")
    if path is not None:
        return read_secret(path)
    return value if value is not None else env


def read_secret(path: str) -> str:
    """A secret file ('-': stdin) without one trailing line end, so `echo TOKEN >FILE` works."""
    if path == "-":
        data = sys.stdin.buffer.read(MAX_SECRET_BYTES + 1)
    else:
        with open(path, "rb") as fh:
            data = fh.read(MAX_SECRET_BYTES + 1)
    name = "stdin" if path == "-" else path
    if len(data) > MAX_SECRET_BYTES:
        raise InputError(f"{name} is larger than {MAX_SECRET_BYTES} bytes: not a secret")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(f"{name} is not UTF-8 text (byte {exc.start + 1})") from None
    for end in ("\r\n", "\n"):
        if text.endswith(end):
            return text[:-len(end)]
    return text


def _template_given(file, content_type: str | None) -> TemplateGiven | None:
    if file is None:
        if content_type is not None:
            raise InputError("--template-type goes with --template FILE")
        return None
    return TemplateGiven(file.read(MAX_TEMPLATE_BYTES + 1), content_type or templates.JSON,
                         name=file.name)


ED25519_OPTION = click.option(
    "--ed25519", is_flag=True, help="Also sign with an ed25519 key pair (v1a); prints its public key.")

JSON_ADDED = click.option(
    "--json", "as_json", is_flag=True,
    help="Print JSON: the object (secrets masked) and, this once, the new signing secret.")
