"""The one error hierarchy of the services: every front-end (the CLI, the HTTP API, the web
console) catches ServiceError and shows its message; `code` is stable, so a front-end can map
it (the API to an HTTP status, the CLI to an exit status) without parsing messages."""
from __future__ import annotations

import contextlib

from mxhook import config as configmod
from mxhook.model.rules import RuleError
from mxhook.model.targets import DestinationError
from mxhook.store import rulesdb


class ServiceError(Exception):
    """An operation refused or failed; the message says why and what to do."""

    code = "error"

    def __init__(self, message: str, code: str | None = None, detail: dict | None = None):
        super().__init__(message)
        if code is not None:
            self.code = code
        self.detail = detail  # what was done before it went wrong, for the front-end to show

    @property
    def message(self) -> str:
        return str(self)


class Invalid(ServiceError):
    """The input is wrong (a bad rule, an empty secret, nothing to change); nothing was written."""

    code = "invalid"


class NotFound(ServiceError):
    """The rule, endpoint, log entry or block list entry named does not exist."""

    code = "not_found"


class Conflict(ServiceError):
    """The operation clashes with what is stored (a name taken, an address already blocked)."""

    code = "conflict"


class Unavailable(ServiceError):
    """Something the operation needs is not there yet (a database, the spool directory)."""

    code = "unavailable"


class Failed(ServiceError):
    """The operation went wrong part way (the change may be made, the message says what is)."""

    code = "failed"


@contextlib.contextmanager
def translated():
    """The store's "not there" and "already there" as NotFound and Conflict, the model's and
    the config's own input errors as Invalid; messages unchanged."""
    try:
        yield
    except rulesdb.Missing as exc:
        raise NotFound(str(exc)) from None
    except rulesdb.Exists as exc:
        raise Conflict(str(exc)) from None
    except (RuleError, DestinationError) as exc:
        raise Invalid(str(exc)) from None
    except configmod.ConfigError as exc:
        raise Invalid(str(exc), "config_invalid") from None
