"""mxhook-web: the HTTP API (and the console) served by waitress.

Waitress, because it is a production WSGI server in Debian 12 and 13 (python3-waitress) that is
pure Python and runs as one process with a thread pool: no fork model, no worker processes to
supervise or harden, no C extension (MemoryDenyWriteExecute holds), and the unit's sandbox is
that of the other daemons. It speaks plain HTTP: it listens on loopback by default, and TLS
is a reverse proxy's job (docs/api.md has an nginx snippet; `[web] trusted_proxy` names the
proxy whose X-Forwarded-For/-Proto are believed).
"""
from __future__ import annotations

import argparse
import logging
import signal
import sys
from dataclasses import dataclass

from mxhook import config
from mxhook.daemons import logsetup, systemd

log = logging.getLogger("mxhook-web")


@dataclass(frozen=True)
class WebSettings(config.FromConfig):
    SECTION = "web"

    listen: str
    access_db: str
    threads: int
    trusted_proxy: str
    max_request_size: int


def serve_options(settings: WebSettings) -> dict:
    """waitress.create_server's keyword arguments for `settings`."""
    options = {"listen": settings.listen, "threads": settings.threads, "ident": "mxhook-web",
               "max_request_body_size": settings.max_request_size,
               "clear_untrusted_proxy_headers": True}
    if settings.trusted_proxy:
        options.update(trusted_proxy=settings.trusted_proxy,
                       trusted_proxy_headers={"x-forwarded-for", "x-forwarded-proto"})
    return options


def main(argv: list[str] | None = None) -> int:
    with systemd.SignalThread(signal.SIGHUP) as reload:  # before waitress starts its threads
        return _run(argv, reload)


def _run(argv: list[str] | None, reload: systemd.SignalThread) -> int:
    parser = argparse.ArgumentParser(prog="mxhook-web",
                                     description="Serve mxhook's HTTP API (docs/api.md).")
    parser.add_argument("--config", help=f"config file (default {config.DEFAULT_PATH} or $MXHOOK_CONFIG)")
    args = parser.parse_args(argv)
    try:
        cfg = config.load(args.config)
        settings = WebSettings.from_config(cfg)
    except config.ConfigError as exc:
        print(f"mxhook-web: {exc}", file=sys.stderr)
        return 2
    logsetup.setup("mxhook-web", cfg.get("web", "log"), cfg.get("web", "log_level"))
    import waitress

    from mxhook.services import access
    from mxhook.web import create_app

    try:
        access.access_store(cfg).close()  # created (0640) and migrated before the first request
    except OSError as exc:
        log.error("cannot open the access database %s: %s", settings.access_db, exc)
        return 1
    app = create_app(cfg)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    log.info("listening on http://%s/v1 (waitress, %d threads)", settings.listen, settings.threads)
    try:
        server = waitress.create_server(app, **serve_options(settings))
    except OSError as exc:  # e.g. the address is in use
        log.error("cannot listen on %s: %s", settings.listen, exc)
        return 1
    # A reload applies [web] log and log_level; the rest (and what the API's services read)
    # is read at start.
    reload.action = systemd.Reload(
        "mxhook-web", "web", cfg, (WebSettings,), frozenset(), path=args.config,
        also_reads=(*((s, k) for s in ("web", "paths") for k in config.SECTIONS[s]),
                    ("http", "allow_networks")))
    systemd.ready(f"listening on {settings.listen}")
    try:
        server.run()
    finally:
        systemd.stopping()
    return 0


if __name__ == "__main__":
    sys.exit(main())
