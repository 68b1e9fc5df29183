"""mxhook-track: the public tracking endpoint (open pixels, clicked links, one-click
unsubscribe), served by waitress (docs/tracking-endpoint.md).

A process of its own, apart from mxhook-web: it faces the internet, needs no database, and
writes only engagement events into the spool, through the same segment writer as the milter
(group fdatasync: concurrent hits share a flush). Plain HTTP on loopback; TLS is the reverse
proxy's, whose X-Forwarded-For gives the reader's address (`[tracking] trusted_proxy`).
"""
from __future__ import annotations

import argparse
import logging
import signal
import sys
from dataclasses import dataclass

from mxhook import config, spool
from mxhook.daemons import logsetup, systemd
from mxhook.model import keyring, machine

log = logging.getLogger("mxhook-track")


@dataclass(frozen=True)
class TrackSettings(config.FromConfig):
    SECTION = "tracking"

    key_file: str
    listen: str
    threads: int
    trusted_proxy: str
    geoip_database: str
    privacy: str
    machine_click_seconds: float
    machine_burst_links: int
    machine_burst_seconds: float
    machine_rules_file: str
    machine_rules_off: tuple
    spool_dir: str = config.from_section("paths")


def serve_options(settings: TrackSettings) -> dict:
    """waitress.create_server's keyword arguments for `settings`."""
    options = {"listen": settings.listen, "threads": settings.threads, "ident": "mxhook-track",
               "max_request_body_size": 65536, "clear_untrusted_proxy_headers": True}
    if settings.trusted_proxy:
        options.update(trusted_proxy=settings.trusted_proxy,
                       trusted_proxy_headers={"x-forwarded-for", "x-forwarded-proto"})
    return options


# The [tracking] keys `systemctl reload` applies: the app reads its Options at each request
# (machine_burst_seconds sizes its click window: a restart).
RELOADABLE = frozenset(("tracking", k) for k in (
    "privacy", "machine_click_seconds", "machine_burst_links", "machine_rules_off"))


def options(settings: TrackSettings):
    """The app's Options of `settings`."""
    from mxhook.track.app import Options

    return Options(settings.privacy, settings.machine_click_seconds, settings.machine_burst_links,
                   settings.machine_burst_seconds, settings.machine_rules_off)


def build_app(settings: TrackSettings, writer):
    """The WSGI app over `settings`, writing its events with `writer`."""
    from mxhook.track.app import Sources, TrackApp
    from mxhook.track.clients import Watched, open_geoip, read_text

    keys = Watched(settings.key_file, lambda p: keyring.parse_keys(read_text(p)), (),
                   what="tracking key file")
    rules = Watched(settings.machine_rules_file, lambda p: machine.parse_rules(read_text(p)), (),
                    what="bot rules file", interval=5.0)
    geoip = Watched(settings.geoip_database, open_geoip, None, what="GeoIP database", interval=5.0)
    if not keys.value:
        log.warning("no tracking key in %s: every token is answered 404 until one is there",
                    settings.key_file)
    return TrackApp(writer, Sources(keys.get, rules.get, geoip.get), options(settings))


def main(argv: list[str] | None = None) -> int:
    with systemd.SignalThread(signal.SIGHUP) as reload:  # before waitress starts its threads
        return _run(argv, reload)


def _run(argv: list[str] | None, reload: systemd.SignalThread) -> int:
    parser = argparse.ArgumentParser(prog="mxhook-track",
                                     description="Serve mxhook's tracking endpoint "
                                                 "(docs/tracking-endpoint.md).")
    parser.add_argument("--config", help=f"config file (default {config.DEFAULT_PATH} or $MXHOOK_CONFIG)")
    args = parser.parse_args(argv)
    try:
        cfg = config.load(args.config)
        settings = TrackSettings.from_config(cfg)
    except config.ConfigError as exc:
        print(f"mxhook-track: {exc}", file=sys.stderr)
        return 2
    logsetup.setup("mxhook-track", cfg.get("tracking", "log"), cfg.get("tracking", "log_level"))
    import waitress

    try:
        spool.ensure_dirs(settings.spool_dir)
        spool.recover_segments(settings.spool_dir)  # a previous run's, if it died
    except OSError as exc:  # answered 503 until the spool takes events
        log.error("spool %s: %s", settings.spool_dir, exc)
    writer = spool.SegmentWriter(settings.spool_dir)
    app = build_app(settings, writer)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    log.info("listening on http://%s (waitress, %d threads)", settings.listen, settings.threads)
    try:
        server = waitress.create_server(app, **serve_options(settings))
    except OSError as exc:  # e.g. the address is in use
        log.error("cannot listen on %s: %s", settings.listen, exc)
        writer.close()
        return 1

    def apply(merged: config.Config) -> None:
        app.options = options(TrackSettings.from_config(merged))

    reload.action = systemd.Reload("mxhook-track", "tracking", cfg, (TrackSettings,), RELOADABLE,
                                   apply, path=args.config)
    systemd.ready(f"listening on {settings.listen}")
    try:
        server.run()
    finally:
        systemd.stopping()
        writer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
