"""mxhook's daemons as real subprocesses, for end-to-end tests, the demo and the benchmark.

    with PrivatePostfix(milters=MILTER_SOCKET_SPEC) as pf, Receiver() as rx:
        cfg = MxhookConfig(workdir, queue_dir=pf.queue_dir)
        with MilterProcess(cfg) as milter, SpoolerProcess(cfg) as spooler:
            cli = Cli(cfg); cli("domain", "add", "ours.example")
            ...
            spooler.kill(signal.SIGKILL); spooler.start()   # crash and restart

`MxhookStack` ties Postfix, both daemons, a receiver and the CLI together (the `mxhook_stack`
fixture in tests/conftest.py); with `logfollow=True` it also runs `mxhook-logfollow` on the
private instance's `maillog_file` (`LogfollowProcess`), for delivery events. `WebProcess` is
mxhook-web (tests/web, the demo).

Daemons are started from the same environment as the caller: `<bin>/mxhook-milter` next to
`sys.executable` (the dev venv), else `python -m`-style fallbacks. Their stderr goes to a file in
the work dir (`.stderr_text()`), which failing tests print.
"""
from __future__ import annotations

import grp
import http.client
import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import time

from mxhook import config as configmod

from .ports import wait_port
from .postfix import PrivatePostfix, PostfixError
from .receiver import Receiver

# Postfix resolves a relative milter socket against its queue directory (smtpd's cwd).
MILTER_SOCKET_SPEC = "unix:mxhook/milter.sock"

BIN_DIR = os.path.dirname(sys.executable)


def _program(name: str, module: str) -> list[str]:
    """argv prefix for a console script: the installed script next to sys.executable, else the
    module's main() run by this interpreter (works in an un-installed checkout too)."""
    script = os.path.join(BIN_DIR, name)
    if os.path.exists(script):
        return [script]
    return [sys.executable, "-c", f"import sys; from {module} import main; sys.exit(main())"]


class MxhookConfig:
    """An mxhook config file with every path in `workdir`.

    The milter socket is `<queue_dir>/mxhook/milter.sock` (absolute for the milter; Postfix is
    given the relative `unix:mxhook/milter.sock`). `overrides` = {section: {key: value}}, merged
    over the test defaults below.
    """

    def __init__(self, workdir: str, queue_dir: str | None = None, socket: str | None = None,
                 overrides: dict[str, dict[str, str]] | None = None):
        self.workdir = workdir
        os.makedirs(workdir, exist_ok=True)
        os.chmod(workdir, 0o755)
        self.path = os.path.join(workdir, "mxhook.conf")
        self.rules_db = os.path.join(workdir, "rules.db")
        self.state_db = os.path.join(workdir, "state.db")
        self.spool_dir = os.path.join(workdir, "spool")
        if socket is None:
            if queue_dir is None:
                raise ValueError("give queue_dir (Postfix's) or an explicit milter socket spec")
            socket = "unix:" + os.path.join(queue_dir, "mxhook", "milter.sock")
        self.socket = socket
        self.values: dict[str, dict[str, str]] = {
            "paths": {"rules_db": self.rules_db, "state_db": self.state_db, "spool_dir": self.spool_dir},
            "milter": {
                "socket": socket,
                "socket_group": "postfix",
                "log": "stderr",
                "log_level": "info",
                "rules_reload_interval": "0.2",
            },
            "spooler": {"log": "stderr", "log_level": "info", "poll_interval": "0.1"},
            # not the system's: `mxhook check` looks for mxhook-web once access.db exists
            "web": {"access_db": os.path.join(workdir, "access.db")},
        }
        # The receiver is on loopback, which the SSRF guard refuses unless allowlisted.
        if "allow_networks" in configmod.DEFAULTS.get("http", {}):
            self.values["http"] = {"allow_networks": "127.0.0.1/32"}
        self.update(overrides or {})

    def update(self, overrides: dict[str, dict[str, str]]) -> None:
        """Change settings and rewrite the file (daemons see it when (re)started)."""
        for section, kv in overrides.items():
            self.values.setdefault(section, {}).update({k: str(v) for k, v in kv.items()})
        # validate against config.DEFAULTS before writing: a typo fails here, not in a daemon
        configmod.from_dict(self.values)
        with open(self.path, "w", encoding="utf-8") as fh:
            fh.write(configmod.render(self.values))

    @property
    def socket_path(self) -> str | None:
        for prefix in ("unix:", "local:"):
            if self.socket.startswith(prefix):
                return self.socket[len(prefix):]
        return None

    def spooled_records(self) -> list:
        """Records durably handed over and not yet ingested (new/ files and open segments)."""
        from mxhook import spool
        try:
            return spool.handed_over(self.spool_dir)
        except FileNotFoundError:
            return []

    def spool_files(self, sub: str = "new") -> list[str]:
        try:
            return sorted(os.listdir(os.path.join(self.spool_dir, sub)))
        except (FileNotFoundError, NotADirectoryError):
            return []


class DaemonError(RuntimeError):
    pass


class Daemon:
    """A subprocess with its stderr captured to `<workdir>/<name>.stderr` (appended across
    restarts), started in its own session so a kill reaches only it and its children."""

    name = "daemon"
    argv: list[str] = []

    def __init__(self, argv: list[str], workdir: str, name: str | None = None,
                 env: dict[str, str] | None = None, ready_timeout: float = 10.0):
        self.argv = list(argv)
        self.name = name or self.name
        self.workdir = workdir
        self.env = env
        self.ready_timeout = ready_timeout
        self.stderr_path = os.path.join(workdir, f"{self.name}.stderr")
        self.proc: subprocess.Popen | None = None
        self._stderr = None

    # -- lifecycle -----------------------------------------------------------------------------
    def start(self) -> "Daemon":
        if self.running():
            raise DaemonError(f"{self.name} already running (pid {self.proc.pid})")
        self._stderr = open(self.stderr_path, "ab")
        self._stderr.write(f"--- start {time.strftime('%H:%M:%S')}: {shlex.join(self.argv)}\n".encode())
        self._stderr.flush()
        self.proc = subprocess.Popen(
            self.argv, stdin=subprocess.DEVNULL, stdout=self._stderr, stderr=self._stderr,
            env=self.env, start_new_session=True, cwd=self.workdir,
        )
        try:
            self.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def wait_ready(self) -> None:
        """Subclasses wait until the daemon is usable; here: still alive after a moment."""
        time.sleep(0.05)
        self._check_alive()

    def _check_alive(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            code = None if self.proc is None else self.proc.returncode
            raise DaemonError(f"{self.name} exited (status {code}):\n{self.stderr_text()}")

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def kill(self, sig: int = signal.SIGKILL, wait: float = 10.0) -> int | None:
        """Send `sig` to the daemon (the whole session: pymilter threads share the pid anyway)
        and wait for it to exit; returns the exit status."""
        if not self.running():
            return self.proc.returncode if self.proc else None
        try:
            os.killpg(self.proc.pid, sig)
        except ProcessLookupError:
            pass
        try:
            return self.proc.wait(wait)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            return self.proc.wait(5)

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM, then SIGKILL after `timeout`."""
        status = None
        if self.proc is not None:
            if self.proc.poll() is None:
                try:
                    os.killpg(self.proc.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
                try:
                    status = self.proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    try:
                        os.killpg(self.proc.pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                    status = self.proc.wait(5)
            else:
                status = self.proc.returncode
        if self._stderr is not None:
            self._stderr.close()
            self._stderr = None
        return status

    def restart(self) -> "Daemon":
        self.stop()
        return self.start()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def stderr_text(self) -> str:
        try:
            with open(self.stderr_path, "rb") as fh:
                return fh.read().decode("utf-8", "replace")
        except OSError:
            return ""


class MilterProcess(Daemon):
    """`mxhook-milter --config PATH`; ready when its unix socket exists with the group and mode
    Postfix needs (the milter fixes them right after libmilter creates the socket)."""

    name = "milter"

    def __init__(self, cfg: MxhookConfig, **kw):
        super().__init__(_program("mxhook-milter", "mxhook.daemons.milter") + ["--config", cfg.path],
                         cfg.workdir, **kw)
        self.cfg = cfg

    def start(self) -> "Daemon":
        path = self.cfg.socket_path
        if path and os.path.exists(path):
            os.unlink(path)  # a stale socket of a killed milter would look ready
        return super().start()

    def stop(self, timeout: float = 10.0) -> int | None:
        # libmilter's listener sees a stop only when its select() returns, every 5 s: after the
        # SIGTERM, connections wake it (a test suite stops a milter per stack)
        path = self.cfg.socket_path
        if self.running() and path:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            deadline = time.monotonic() + 2
            while self.proc.poll() is None and time.monotonic() < deadline:
                with socket.socket(socket.AF_UNIX) as poke:
                    poke.settimeout(0.2)
                    try:
                        poke.connect(path)
                    except OSError:
                        pass
                time.sleep(0.05)
        return super().stop(timeout)

    def wait_ready(self) -> None:
        # libmilter creates the socket root-owned; the milter then gives it the group. Until
        # the group is right, Postfix gets EACCES (and tempfails), so wait for both.
        path = self.cfg.socket_path
        group = self.cfg.values["milter"].get("socket_group") or ""
        gid = grp.getgrnam(group).gr_gid if group else None
        deadline = time.monotonic() + self.ready_timeout
        while time.monotonic() < deadline:
            self._check_alive()
            if path is None:
                time.sleep(0.3)
                return
            try:
                st = os.stat(path)
                if (st.st_mode & 0o777) == 0o660 and (gid is None or st.st_gid == gid):
                    return
            except FileNotFoundError:
                pass
            time.sleep(0.01)
        raise DaemonError(f"milter socket {path} not ready after {self.ready_timeout}s:\n{self.stderr_text()}")


class SpoolerProcess(Daemon):
    """`mxhook-spooler --config PATH` (add `--once` via `extra`)."""

    name = "spooler"

    def __init__(self, cfg: MxhookConfig, extra: list[str] = (), **kw):
        super().__init__(_program("mxhook-spooler", "mxhook.daemons.spooler") + ["--config", cfg.path, *extra],
                         cfg.workdir, **kw)
        self.cfg = cfg

    def wait_ready(self) -> None:
        time.sleep(0.1)
        self._check_alive()


class WebProcess(Daemon):
    """`mxhook-web --config PATH` (the HTTP API and the console; the config's `[web] listen`
    names a loopback port); ready when it accepts a connection."""

    name = "web"

    def __init__(self, cfg: MxhookConfig, **kw):
        super().__init__(_program("mxhook-web", "mxhook.daemons.web") + ["--config", cfg.path],
                         cfg.workdir, **kw)
        self.cfg = cfg
        self.port = int(cfg.values["web"]["listen"].rsplit(":", 1)[1])

    def wait_ready(self) -> None:
        if not wait_port(self.port, self.ready_timeout, self.proc):
            self._check_alive()
            raise DaemonError(f"mxhook-web not listening after {self.ready_timeout}s:\n{self.stderr_text()}")


class TrackProcess(Daemon):
    """`mxhook-track --config PATH`; ready when `/healthz` on `[tracking] listen` answers."""

    name = "track"

    def __init__(self, cfg: MxhookConfig, **kw):
        super().__init__(_program("mxhook-track", "mxhook.daemons.track") + ["--config", cfg.path],
                         cfg.workdir, **kw)
        self.cfg = cfg

    @property
    def url(self) -> str:
        return "http://" + self.cfg.values["tracking"]["listen"]

    def wait_ready(self) -> None:
        host, _, port = self.cfg.values["tracking"]["listen"].rpartition(":")
        deadline = time.monotonic() + self.ready_timeout
        while time.monotonic() < deadline:
            self._check_alive()
            conn = http.client.HTTPConnection(host, int(port), timeout=0.5)
            try:
                conn.request("GET", "/healthz")
                if conn.getresponse().status == 200:
                    return
            except OSError:
                pass
            finally:
                conn.close()
            time.sleep(0.05)
        raise DaemonError(f"{self.name} not ready after {self.ready_timeout}s:\n{self.stderr_text()}")


def logfollow_settings(workdir: str, maillog: str, **extra: str) -> dict[str, dict[str, str]]:
    """The `[logfollow]` section for following a private Postfix's `maillog_file` from its
    first line, with the position file in `workdir` and quick polling."""
    values = {
        "source": "file", "path": maillog, "start_at": "beginning",
        "state_file": os.path.join(workdir, "logfollow.state"), "poll_interval": "0.1",
        "log": "stderr", "log_level": "info",
    }
    values.update({k: str(v) for k, v in extra.items()})
    return {"logfollow": values}


class LogfollowProcess(Daemon):
    """`mxhook-logfollow --config PATH`; the config needs a `[logfollow]` section
    (`logfollow_settings`). Ready when it logged that it is following (its position file, if
    any, has been read by then)."""

    name = "logfollow"

    def __init__(self, cfg: MxhookConfig, extra: list[str] = (), **kw):
        super().__init__(_program("mxhook-logfollow", "mxhook.daemons.logfollow") + ["--config", cfg.path, *extra],
                         cfg.workdir, **kw)
        self.cfg = cfg
        self._mark = 0

    @property
    def state_file(self) -> str:
        return self.cfg.values.get("logfollow", {}).get("state_file", "")

    def start(self) -> "Daemon":
        self._mark = len(self.stderr_text())
        return super().start()

    def wait_ready(self) -> None:
        deadline = time.monotonic() + self.ready_timeout
        while time.monotonic() < deadline:
            self._check_alive()
            if "following " in self.stderr_text()[self._mark:]:
                return
            time.sleep(0.02)
        raise DaemonError(f"{self.name} not ready after {self.ready_timeout}s:\n{self.stderr_text()}")

    def position(self) -> dict | None:
        """The saved position (the state file), or None."""
        try:
            with open(self.state_file, encoding="utf-8") as fh:
                return json.load(fh)
        except (OSError, ValueError):
            return None


class Cli:
    """Runs the real `mxhook --config PATH ...` as a subprocess."""

    def __init__(self, cfg: MxhookConfig):
        self.cfg = cfg
        self.argv = _program("mxhook", "mxhook.cli") + ["--config", cfg.path]

    def run(self, *args: str, check: bool = True, input: str | None = None,
            timeout: float = 60) -> subprocess.CompletedProcess:
        proc = subprocess.run(self.argv + [str(a) for a in args], capture_output=True, text=True,
                              input=input, timeout=timeout)
        if check and proc.returncode != 0:
            raise AssertionError(
                f"mxhook {shlex.join(map(str, args))} exited {proc.returncode}\n"
                f"stdout: {proc.stdout}\nstderr: {proc.stderr}"
            )
        return proc

    __call__ = run

    def json(self, *args: str):
        """Run a command with `--json` appended and parse its output."""
        return json.loads(self.run(*args, "--json").stdout)


class MxhookStack:
    """Private Postfix + mxhook-milter + mxhook-spooler + loopback receiver + CLI.

    domains: the relay domains given to Postfix (permitting them in rules.db is the test's job,
        via `stack.cli("domain", "add", ...)`, or `permit=` here).
    config: overrides for the mxhook config ({section: {key: value}}).
    spooler: start the spooler (tests of the spool itself may not want it).
    logfollow: also run mxhook-logfollow on Postfix's maillog (`logfollow_settings`).
    track: also run mxhook-track (`config` sets `[tracking] listen`, a free loopback port).
    listeners, sinks, transport: passed to PrivatePostfix (extra smtpd services; extra sinks
        and the transport_maps routing recipients to them).
    """

    def __init__(self, domains=("ours.example",), *, permit=(), config=None, spooler: bool = True,
                 postfix_main_cf=None, base_dir: str | None = None, keep: bool = False,
                 logfollow: bool = False, track: bool = False, listeners=None, sinks=None,
                 transport=None):
        self.domains = list(domains)
        self.permit = list(permit)
        self.config_overrides = config or {}
        self.with_spooler = spooler
        self.postfix_main_cf = postfix_main_cf
        self.keep = keep
        self._base_dir = base_dir
        self.workdir: str | None = None
        self.postfix: PrivatePostfix | None = None
        self.milter: MilterProcess | None = None
        self.spooler: SpoolerProcess | None = None
        self.receiver: Receiver | None = None
        self.cfg: MxhookConfig | None = None
        self.cli: Cli | None = None
        self.with_logfollow = logfollow
        self.logfollow: LogfollowProcess | None = None
        self.with_track = track
        self.track: TrackProcess | None = None
        self.listeners = listeners
        self.sinks = sinks
        self.transport = transport

    def start(self) -> "MxhookStack":
        if self._base_dir:
            self.workdir = self._base_dir
            os.makedirs(self.workdir, exist_ok=True)
        else:
            self.workdir = tempfile.mkdtemp(prefix="mxhook-e2e-")
        os.chmod(self.workdir, 0o755)
        try:
            self.receiver = Receiver().start()
            self.postfix = PrivatePostfix(
                relay_domains=self.domains, milters=MILTER_SOCKET_SPEC,
                main_cf=self.postfix_main_cf, base_dir=os.path.join(self.workdir, "postfix"),
                listeners=self.listeners, sinks=self.sinks, transport=self.transport,
            ).start()
            mxdir = os.path.join(self.workdir, "mxhook")
            overrides = dict(self.config_overrides)
            # the milter looks at this Postfix's transport_maps and master.cf (discard_via auto)
            overrides["milter"] = {"postfix_config_dir": self.postfix.config_dir,
                                   **overrides.get("milter", {})}
            if self.with_track:
                overrides["tracking"] = {"log": "stderr", **overrides.get("tracking", {})}
            if self.with_logfollow:
                section = logfollow_settings(mxdir, self.postfix.log_path)["logfollow"]
                section.update(overrides.get("logfollow", {}))
                overrides["logfollow"] = section
            self.cfg = MxhookConfig(mxdir, queue_dir=self.postfix.queue_dir, overrides=overrides)
            self.cli = Cli(self.cfg)
            for domain in self.permit:
                self.cli("domain", "add", domain)
            self.milter = MilterProcess(self.cfg).start()
            self.spooler = SpoolerProcess(self.cfg)
            if self.with_spooler:
                self.spooler.start()
            if self.with_logfollow:
                self.logfollow = LogfollowProcess(self.cfg).start()
            if self.with_track:
                self.track = TrackProcess(self.cfg).start()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        for part in (self.track, self.logfollow, self.spooler, self.milter, self.postfix, self.receiver):
            if part is not None:
                try:
                    part.stop()
                except Exception as exc:  # keep stopping the others
                    print(f"stopping {part!r}: {exc}", file=sys.stderr)
        if self.workdir and not self._base_dir and not self.keep:
            import shutil
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> "MxhookStack":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- conveniences --------------------------------------------------------------------------
    def send(self, *args, **kw):
        return self.postfix.send(*args, **kw)

    def endpoint(self, path: str = "/hook") -> str:
        return self.receiver.url.rstrip("/") + path

    def add_rule(self, name: str, path: str = "/hook", *args: str) -> None:
        """`mxhook rule add NAME --url <receiver>/path --allow-http ARGS...`"""
        self.cli("rule", "add", name, "--url", self.endpoint(path), "--allow-http", *args)

    def inbound_log(self, *args: str) -> list[dict]:
        return self.cli.json("log", "inbound", *args)["items"]

    def wait_status(self, predicate, timeout: float = 15.0, *args: str) -> list[dict]:
        """Poll `mxhook log inbound --json` until `predicate(rows)` holds; returns the rows."""
        deadline = time.monotonic() + timeout
        rows: list[dict] = []
        while time.monotonic() < deadline:
            rows = self.inbound_log(*args)
            if predicate(rows):
                return rows
            time.sleep(0.2)
        raise TimeoutError(f"inbound log condition not met after {timeout}s; rows: {rows}\n{self.diagnostics()}")

    def wait_milter_snapshot(self, delay: float | None = None) -> None:
        """Give the milter time to see a rules.db change (it polls every
        rules_reload_interval)."""
        interval = float(self.cfg.values["milter"].get("rules_reload_interval", "1.0"))
        time.sleep(delay if delay is not None else interval * 2 + 0.1)

    def diagnostics(self) -> str:
        parts = []
        if self.milter:
            parts.append("--- milter stderr ---\n" + self.milter.stderr_text()[-6000:])
        if self.spooler:
            parts.append("--- spooler stderr ---\n" + self.spooler.stderr_text()[-6000:])
        if self.logfollow:
            parts.append("--- logfollow stderr ---\n" + self.logfollow.stderr_text()[-6000:])
        if self.track:
            parts.append("--- track stderr ---\n" + self.track.stderr_text()[-6000:])
        if self.postfix:
            parts.append("--- maillog ---\n" + self.postfix.log_text()[-6000:])
        return "\n".join(parts)


__all__ = [
    "MILTER_SOCKET_SPEC", "MxhookConfig", "Daemon", "DaemonError", "MilterProcess",
    "SpoolerProcess", "LogfollowProcess", "TrackProcess", "logfollow_settings", "Cli", "MxhookStack", "PrivatePostfix", "PostfixError", "Receiver",
]
