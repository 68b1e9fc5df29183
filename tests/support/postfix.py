"""A private Postfix instance on loopback, for end-to-end tests, the demo and the benchmark.

    with PrivatePostfix(relay_domains=["ours.example"],
                        milters="unix:mxhook/milter.sock") as pf:
        result = pf.send("a@x.org", ["in@ours.example"], raw_bytes)
        assert result.accepted, result

The instance lives in a temp dir (config in `etc/`, queue in `queue/`, data in `data/`, log in
`log/maillog`) and is started with `postfix -c DIR start-fg` in the background, because
`postfix start` fails silently without syslog on these machines. It listens on 127.0.0.1 on a
free port and relays everything to an `smtp-sink` it starts on another free loopback port, so
nothing ever leaves the machine and the system instance (port 25) is never touched.

Extra `listeners` give more smtpd services on their own ports with their own `-o` overrides
(the benchmark uses one listener per milter configuration in the same instance; the event tests
use one with `milter_macro_daemon_name=ORIGINATING` for outbound mail).

Extra `sinks` (name -> smtp-sink options) run beside the default sink, and `transport` (a
recipient address or domain -> sink name) routes mail to them through `transport_maps`, so one
message can have a recipient the sink accepts, one it hard-rejects at RCPT (`-f RCPT`: 500 5.3.0)
and one it tempfails (`-r RCPT`: 450 4.3.0):

    PrivatePostfix(sinks={"hard": ["-f", "RCPT"], "soft": ["-r", "RCPT"]},
                   transport={"hard.example": "hard", "soft.example": "soft"})
"""
from __future__ import annotations

import grp
import os
import pwd
import re
import shutil
import signal
import smtplib
import subprocess
import tempfile
import time
from dataclasses import dataclass, field

from .ports import free_port, wait_port

POSTFIX = shutil.which("postfix") or "/usr/sbin/postfix"
POSTCONF = shutil.which("postconf") or "/usr/sbin/postconf"
POSTQUEUE = shutil.which("postqueue") or "/usr/sbin/postqueue"
SMTP_SINK = shutil.which("smtp-sink") or "/usr/sbin/smtp-sink"

# Services of Debian's master.cf that a relay-only instance needs, all unchrooted (a chroot would
# need copies of /etc files inside the private queue directory).
MASTER_CF_SERVICES = """\
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
proxywrite unix -       -       n       -       1       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
        -o syslog_name=${multi_instance_name?{$multi_instance_name}:{postfix}}/$service_name
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
"""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie is not alive
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _terminate(pid: int, timeout: float = 5.0) -> None:
    """SIGTERM, wait, SIGKILL: for processes that are not our children (master(8))."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not _alive(pid):
                return
            time.sleep(0.02)


class PostfixError(RuntimeError):
    """Postfix (or the sink) did not come up; the message carries the maillog."""


def listening(port: int) -> bool:
    """Is something listening on 127.0.0.1:port? Read from /proc/net/tcp, without connecting
    (a connection would make master(8) spawn an smtpd that talks to milters not yet up)."""
    want = f"0100007F:{port:04X}"
    try:
        with open("/proc/net/tcp") as fh:
            next(fh)
            for line in fh:
                fields = line.split()
                if fields[1] == want and fields[3] == "0A":
                    return True
    except OSError:
        pass
    return False


def wait_listen(port: int, timeout: float, proc: subprocess.Popen | None = None) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            return False
        if listening(port):
            return True
        time.sleep(0.01)
    return False


@dataclass
class Reply:
    code: int
    message: str

    def __str__(self) -> str:
        return f"{self.code} {self.message}"


@dataclass
class SendResult:
    """Every SMTP reply of one transaction, so tests can say *where* mail was refused."""

    banner: Reply | None = None
    helo: Reply | None = None
    mail: Reply | None = None
    rcpt: dict[str, Reply] = field(default_factory=dict)
    data: Reply | None = None  # reply to the DATA command when it was not 354
    final: Reply | None = None  # reply after the final dot
    error: str | None = None  # connection-level trouble (disconnect, timeout)

    @property
    def accepted(self) -> bool:
        return self.final is not None and self.final.code == 250

    @property
    def stage(self) -> str | None:
        """Where the transaction was refused: 'CONNECT', 'HELO', 'MAIL', 'RCPT', 'DATA'
        (the DATA command or the reply after the message) or None when accepted."""
        if self.accepted:
            return None
        if self.banner is None or self.banner.code >= 400:
            return "CONNECT"
        if self.helo is None or self.helo.code >= 400:
            return "HELO"
        if self.mail is None or self.mail.code >= 400:
            return "MAIL"
        if not any(r.code < 400 for r in self.rcpt.values()):
            return "RCPT"
        return "DATA"

    @property
    def reply(self) -> Reply | None:
        """The deciding reply: the final one, or the refusal that ended the transaction."""
        if self.final is not None:
            return self.final
        if self.data is not None:
            return self.data
        if self.rcpt and not any(r.code < 400 for r in self.rcpt.values()):
            return list(self.rcpt.values())[-1]
        for r in (self.mail, self.helo, self.banner):
            if r is not None and r.code >= 400:
                return r
        return None

    @property
    def code(self) -> int | None:
        r = self.reply
        return r.code if r else None

    @property
    def queue_id(self) -> str | None:
        if self.accepted:
            m = re.search(r"queued as (\S+)", self.final.message)
            return m.group(1) if m else None
        return None

    def lines(self) -> list[str]:
        """Human-readable transcript of the replies (for the demo and assertion messages)."""
        out = []
        if self.mail:
            out.append(f"MAIL FROM -> {self.mail}")
        for rcpt, r in self.rcpt.items():
            out.append(f"RCPT TO:<{rcpt}> -> {r}")
        if self.data:
            out.append(f"DATA -> {self.data}")
        if self.final:
            out.append(f"end of data -> {self.final}")
        if self.error:
            out.append(f"error: {self.error}")
        return out

    def __str__(self) -> str:
        return "; ".join(self.lines()) or "(no replies)"


class PrivatePostfix:
    """Context manager for a private Postfix instance relaying to a private smtp-sink.

    relay_domains: domains Postfix accepts mail for (from anywhere); loopback clients may relay
        to any domain anyway (mynetworks = 127.0.0.0/8), so the milter sees unknown domains.
    milters: `smtpd_milters` of the main listener, e.g. "unix:mxhook/milter.sock" (relative to
        the queue directory, which is smtpd's working directory).
    listeners: name -> dict of extra `-o` overrides, each an extra smtpd on its own free port
        (`ports[name]`); the main listener is `ports["main"]` == `.port`.
    main_cf: extra main.cf settings (override the defaults below).
    sink_args: extra smtp-sink options, e.g. ["-f", "RCPT"] to hard-reject every recipient or
        ["-r", "RCPT"] to tempfail them; set sink=False to deliver nowhere (mail stays queued).
    sinks: extra named sinks, name -> smtp-sink options, each on its own free port
        (`sink_ports[name]`; the default sink is `sink_ports["default"]` == `.sink_port`).
    transport: recipient address or domain -> sink name ("default" or one of `sinks`), written
        as a `texthash:` transport_maps table; everything else goes to the default sink.
    """

    def __init__(
        self,
        relay_domains=("ours.example",),
        milters: str = "",
        *,
        listeners: dict[str, dict[str, str]] | None = None,
        main_cf: dict[str, str] | None = None,
        sink: bool = True,
        sink_args=(),
        base_dir: str | None = None,
        keep: bool = False,
        startup_timeout: float = 10.0,
        sinks: dict[str, list[str]] | None = None,
        transport: dict[str, str] | None = None,
    ):
        self.relay_domains = list(relay_domains)
        self.milters = milters
        self.listeners = dict(listeners or {})
        self.extra_main_cf = dict(main_cf or {})
        self.use_sink = sink
        self.sink_args = list(sink_args)
        self.keep = keep
        self.startup_timeout = startup_timeout
        self._base_dir = base_dir
        self.root: str | None = None
        self.ports: dict[str, int] = {}
        self.sink_port: int | None = None
        self._master: subprocess.Popen | None = None
        self._sink: subprocess.Popen | None = None
        self._sink_log = None
        self._master_log = None
        self._owns_root = False
        self._master_daemon_pid: int | None = None
        self.extra_sinks = {name: list(args) for name, args in (sinks or {}).items()}
        self.transport = dict(transport or {})
        for target in self.transport.values():
            if target != "default" and target not in self.extra_sinks:
                raise ValueError(f"transport names an unknown sink {target!r}")
        self.sink_ports: dict[str, int] = {}
        self._extra_sink_procs: dict[str, subprocess.Popen] = {}

    # -- paths ---------------------------------------------------------------------------------
    @property
    def port(self) -> int:
        return self.ports["main"]

    @property
    def config_dir(self) -> str:
        return os.path.join(self.root, "etc")

    @property
    def queue_dir(self) -> str:
        return os.path.join(self.root, "queue")

    @property
    def data_dir(self) -> str:
        return os.path.join(self.root, "data")

    @property
    def log_path(self) -> str:
        return os.path.join(self.root, "log", "maillog")

    @property
    def transport_path(self) -> str:
        return os.path.join(self.config_dir, "transport")

    # -- configuration -------------------------------------------------------------------------
    def main_cf_settings(self) -> dict[str, str]:
        relay_to = f"[127.0.0.1]:{self.sink_port}" if self.sink_port else "[127.0.0.1]:9"
        settings = {
            "compatibility_level": "3.6",
            "queue_directory": self.queue_dir,
            "data_directory": self.data_dir,
            "maillog_file": self.log_path,
            "maillog_file_prefixes": os.path.join(self.root, "log"),
            "myhostname": "mx.mxhook.test",
            "mydomain": "mxhook.test",
            "myorigin": "$myhostname",
            "mydestination": "",
            "local_recipient_maps": "",
            "local_transport": "error:local delivery disabled",
            "alias_maps": "",
            "alias_database": "",
            "biff": "no",
            "inet_interfaces": "127.0.0.1",
            "inet_protocols": "ipv4",
            "mynetworks": "127.0.0.0/8",
            "relay_domains": " ".join(self.relay_domains),
            "relayhost": relay_to,
            "relay_transport": f"relay:{relay_to}",
            "default_transport": f"smtp:{relay_to}",
            "smtpd_relay_restrictions": "permit_mynetworks, reject_unauth_destination",
            "smtpd_recipient_restrictions": "",
            "smtpd_milters": self.milters,
            "non_smtpd_milters": "",
            "milter_default_action": "tempfail",
            "milter_protocol": "6",
            "smtpd_tls_security_level": "none",
            "smtp_tls_security_level": "none",
            "smtp_dns_support_level": "disabled",
            "smtpd_banner": "$myhostname ESMTP mxhook-test",
            # Quick retries, so tests that make the sink fail do not wait minutes.
            "queue_run_delay": "5s",
            "minimal_backoff_time": "5s",
            "maximal_backoff_time": "30s",
            "smtpd_client_connection_count_limit": "0",
            "smtpd_client_connection_rate_limit": "0",
            "smtpd_client_message_rate_limit": "0",
            "smtpd_client_recipient_rate_limit": "0",
            "default_process_limit": "100",
        }
        # mxhook's discard(8) entry, as `mxhook postfix-config` sets it (webhook-only mail)
        from mxhook.postfix.postconf import merge_transport_maps
        settings["transport_maps"] = merge_transport_maps(
            "texthash:" + self.transport_path if self.transport else "")
        settings.update(self.extra_main_cf)
        return settings

    def master_cf_text(self) -> str:
        lines = ["# written by tests/support/postfix.py"]
        for name, port in self.ports.items():
            lines.append(f"127.0.0.1:{port} inet n - n - - smtpd")
            if name != "main":
                lines.append(f"  -o syslog_name=postfix/{name}")
                for k, v in self.listeners[name].items():
                    # master.cf -o values with spaces or commas need the { name = value } form
                    if v == "" or " " in v or "," in v:
                        lines.append(f"  -o {{ {k} = {v} }}")
                    else:
                        lines.append(f"  -o {k}={v}")
        return "\n".join(lines) + "\n" + MASTER_CF_SERVICES

    def transport_text(self) -> str:
        lines = []
        for key, target in self.transport.items():
            port = self.sink_ports.get(target)
            lines.append(f"{key} smtp:[127.0.0.1]:{port if port else 9}")
        return "".join(line + "\n" for line in lines)

    def _write_config(self) -> None:
        if self.transport:
            with open(self.transport_path, "w") as fh:
                fh.write(self.transport_text())
        with open(os.path.join(self.config_dir, "main.cf"), "w") as fh:
            for k, v in self.main_cf_settings().items():
                fh.write(f"{k} = {v}\n")
        with open(os.path.join(self.config_dir, "master.cf"), "w") as fh:
            fh.write(self.master_cf_text())
        # Postfix programs wait (in 0.3 s steps) until main.cf is a few seconds old, in case an
        # editor is still writing it; backdate the files so start-up takes 0.1 s, not 2.5 s.
        past = time.time() - 60
        for name in ("main.cf", "master.cf") + (("transport",) if self.transport else ()):
            os.utime(os.path.join(self.config_dir, name), (past, past))

    def postconf(self, settings: dict[str, str], reload: bool = True) -> None:
        """Change main.cf settings of the running instance (and `postfix reload`)."""
        self.extra_main_cf.update(settings)
        self._write_config()
        if reload and self.running():
            self._postfix("reload")

    # -- lifecycle -----------------------------------------------------------------------------
    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["MAIL_CONFIG"] = self.config_dir
        return env

    def _postfix(self, *args: str, check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess:
        proc = subprocess.run(
            [POSTFIX, "-c", self.config_dir, *args],
            capture_output=True, text=True, timeout=timeout, env=self._env(),
        )
        if check and proc.returncode != 0:
            raise PostfixError(
                f"postfix {' '.join(args)} failed ({proc.returncode}): {proc.stdout}{proc.stderr}\n"
                f"--- maillog ---\n{self.log_text()}"
            )
        return proc

    def running(self) -> bool:
        return self._master is not None and self._master.poll() is None

    def start(self) -> "PrivatePostfix":
        if not os.path.exists(POSTFIX) or not os.path.exists(SMTP_SINK):
            raise PostfixError(
                "Postfix is not installed (need /usr/sbin/postfix and smtp-sink): "
                "run `make setup` (apt-get install postfix)"
            )
        if os.geteuid() != 0:
            raise PostfixError("a private Postfix instance needs root (postfix -c DIR start-fg)")
        if self._base_dir:
            self.root = self._base_dir
            os.makedirs(self.root, exist_ok=True)
        else:
            self.root = tempfile.mkdtemp(prefix="mxpf-")
            self._owns_root = True
        # The postfix user must traverse everything down to the queue directory.
        os.chmod(self.root, 0o755)
        for sub in ("etc", "queue", "data", "log"):
            os.makedirs(os.path.join(self.root, sub), exist_ok=True)
            os.chmod(os.path.join(self.root, sub), 0o755)
        # data_directory belongs to the mail owner (master.lock, caches); the rest to root.
        pw = pwd.getpwnam("postfix")
        os.chown(self.data_dir, pw.pw_uid, pw.pw_gid)
        os.chmod(self.data_dir, 0o700)
        try:
            if self.use_sink:
                self._start_sink()
            for name, args in self.extra_sinks.items():
                self._start_extra_sink(name, args)
            self.ports["main"] = free_port()
            for name in self.listeners:
                self.ports[name] = free_port()
            self._write_config()
            # We create the queue directories as /etc/postfix/postfix-files lists them and set
            # the quick-start marker, so start-fg skips postfix-script's check-fatal/check-warn
            # (about 2 s of postconf calls and finds; nothing to check in a fresh queue).
            self._make_queue_dirs()
            open(os.path.join(self.queue_dir, "quick-start"), "w").close()
            self._master_log = open(os.path.join(self.root, "log", "start-fg.out"), "wb")
            self._master = subprocess.Popen(
                [POSTFIX, "-c", self.config_dir, "start-fg"],
                stdout=self._master_log, stderr=subprocess.STDOUT, env=self._env(),
                start_new_session=True,
            )
            deadline = time.monotonic() + self.startup_timeout
            for port in self.ports.values():
                if not wait_listen(port, max(0.1, deadline - time.monotonic()), self._master):
                    raise PostfixError(
                        f"private Postfix did not listen on 127.0.0.1:{port} within "
                        f"{self.startup_timeout}s (start-fg exit: {self._master.poll()})\n"
                        f"--- start-fg output ---\n{self._read(os.path.join(self.root, 'log', 'start-fg.out'))}"
                        f"--- maillog ---\n{self.log_text()}"
                    )
            for _ in range(100):
                self._master_daemon_pid = self._master_pid()
                if self._master_daemon_pid:
                    break
                time.sleep(0.01)
        except BaseException:
            self.stop()
            raise
        return self

    QUEUE_DIRS = {  # name -> (owner is postfix, group is postdrop, mode)
        "active": (True, False, 0o700), "bounce": (True, False, 0o700),
        "corrupt": (True, False, 0o700), "defer": (True, False, 0o700),
        "deferred": (True, False, 0o700), "flush": (True, False, 0o700),
        "hold": (True, False, 0o700), "incoming": (True, False, 0o700),
        "private": (True, False, 0o700), "maildrop": (True, True, 0o730),
        "public": (True, True, 0o710), "pid": (False, False, 0o755),
        "saved": (True, False, 0o700), "trace": (True, False, 0o700),
    }

    def _make_queue_dirs(self) -> None:
        pw = pwd.getpwnam("postfix")
        postdrop = grp.getgrnam("postdrop").gr_gid
        for name, (owned, setgid, mode) in self.QUEUE_DIRS.items():
            path = os.path.join(self.queue_dir, name)
            os.makedirs(path, exist_ok=True)
            os.chown(path, pw.pw_uid if owned else 0, postdrop if setgid else (pw.pw_gid if owned else 0))
            os.chmod(path, mode)

    def _start_sink(self) -> None:
        self.sink_port = free_port()
        self.sink_ports["default"] = self.sink_port
        self._sink_log = open(os.path.join(self.root, "log", "smtp-sink.out"), "wb")
        self._sink = subprocess.Popen(
            [SMTP_SINK, "-u", "postfix", "-4", *self.sink_args, f"127.0.0.1:{self.sink_port}", "256"],
            stdout=self._sink_log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        if not wait_port(self.sink_port, 5, self._sink):
            raise PostfixError(
                f"smtp-sink did not listen on 127.0.0.1:{self.sink_port}: "
                f"{self._read(os.path.join(self.root, 'log', 'smtp-sink.out'))}"
            )

    def _spawn_sink(self, port: int, args, label: str) -> subprocess.Popen:
        proc = subprocess.Popen(
            [SMTP_SINK, "-u", "postfix", "-4", *args, f"127.0.0.1:{port}", "256"],
            stdout=self._sink_log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        if not wait_port(port, 5, proc):
            self._stop_proc(proc)
            raise PostfixError(
                f"smtp-sink {label} did not listen on 127.0.0.1:{port}: "
                f"{self._read(os.path.join(self.root, 'log', 'smtp-sink.out'))}"
            )
        return proc

    def _start_extra_sink(self, name: str, args) -> None:
        if self._sink_log is None:
            self._sink_log = open(os.path.join(self.root, "log", "smtp-sink.out"), "ab")
        port = free_port()
        self.sink_ports[name] = port
        self._extra_sink_procs[name] = self._spawn_sink(port, args, name)

    def restart_sink(self, sink_args=(), name: str | None = None) -> None:
        """Replace the sink with one using other options (same port), e.g. to make it
        tempfail (["-r", "RCPT"]) or hard-fail (["-f", "RCPT"]) deliveries. `name`: one of the
        extra `sinks` instead of the default one."""
        if name is not None and name != "default":
            self._stop_proc(self._extra_sink_procs.get(name))
            self.extra_sinks[name] = list(sink_args)
            self._extra_sink_procs[name] = self._spawn_sink(self.sink_ports[name], sink_args, name)
            return
        self._stop_proc(self._sink)
        self.sink_args = list(sink_args)
        port = self.sink_port
        self._sink = subprocess.Popen(
            [SMTP_SINK, "-u", "postfix", "-4", *self.sink_args, f"127.0.0.1:{port}", "256"],
            stdout=self._sink_log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        if not wait_port(port, 5, self._sink):
            raise PostfixError("smtp-sink did not come back")

    @staticmethod
    def _stop_proc(proc: subprocess.Popen | None, timeout: float = 5) -> None:
        if proc is None or proc.poll() is not None:
            return
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait(5)

    def _master_pid(self) -> int | None:
        try:
            with open(os.path.join(self.queue_dir, "pid", "master.pid")) as fh:
                return int(fh.read().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def _leftover_pids(self) -> list[int]:
        """Postfix programs still running in this instance's queue directory (their cwd)."""
        found = []
        queue = self.queue_dir.rstrip("/")
        for entry in os.listdir("/proc"):
            if not entry.isdigit() or int(entry) == os.getpid():
                continue
            try:
                cwd = os.readlink(f"/proc/{entry}/cwd")
                exe = os.readlink(f"/proc/{entry}/exe")
            except OSError:
                continue
            cwd = cwd.removesuffix(" (deleted)")
            if (cwd == queue or cwd.startswith(queue + "/")) and exe.startswith(("/usr/lib/postfix/", "/usr/sbin/")):
                found.append(int(entry))
        return found

    def stop(self) -> None:
        if self._master is not None:
            if self._master.poll() is None:
                stopped = False
                if os.path.exists(self.config_dir):
                    stopped = self._postfix("stop", check=False, timeout=30).returncode == 0
                if not stopped and self._master_daemon_pid:
                    _terminate(self._master_daemon_pid)
                try:
                    self._master.wait(10)
                except subprocess.TimeoutExpired:
                    self._stop_proc(self._master)
            self._master = None
        # master(8) runs in its own session, so killing start-fg's group does not reach it; if
        # `postfix stop` could not (config gone, say), end it by the pid noted at start-up.
        if self._master_daemon_pid and _alive(self._master_daemon_pid):
            _terminate(self._master_daemon_pid)
        self._master_daemon_pid = None
        self._stop_proc(self._sink)
        self._sink = None
        for proc in self._extra_sink_procs.values():
            self._stop_proc(proc)
        self._extra_sink_procs.clear()
        if self.root:
            # Daemons of this instance that outlived the master (should not happen): end them.
            for pid in self._leftover_pids():
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        for fh in (self._sink_log, self._master_log):
            if fh is not None:
                fh.close()
        self._sink_log = self._master_log = None
        if self.root and self._owns_root and not self.keep:
            shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> "PrivatePostfix":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- logs and queue ------------------------------------------------------------------------
    @staticmethod
    def _read(path: str) -> str:
        try:
            with open(path, "rb") as fh:
                return fh.read().decode("utf-8", "replace")
        except OSError:
            return ""

    def log_text(self) -> str:
        return self._read(self.log_path) if self.root else ""

    def wait_log(self, pattern: str, timeout: float = 10.0, start: int = 0) -> re.Match:
        """Wait until `pattern` (a regex, multiline) matches the maillog from offset `start`."""
        rx = re.compile(pattern, re.M)
        deadline = time.monotonic() + timeout
        while True:
            m = rx.search(self.log_text(), start)
            if m:
                return m
            if time.monotonic() > deadline:
                raise TimeoutError(f"{pattern!r} not in maillog after {timeout}s:\n{self.log_text()[-4000:]}")
            time.sleep(0.05)

    def queue_ids(self) -> list[str]:
        """Queue ids of every message still in the queue (any queue: active, deferred, ...)."""
        ids = []
        for sub in ("incoming", "active", "deferred", "hold", "maildrop"):
            d = os.path.join(self.queue_dir, sub)
            for dirpath, _dirs, files in os.walk(d):
                ids.extend(files)
        return ids

    def queue_empty(self) -> bool:
        return not self.queue_ids()

    def wait_queue_empty(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while not self.queue_empty():
            if time.monotonic() > deadline:
                raise TimeoutError(f"queue not empty after {timeout}s: {self.queue_ids()}")
            time.sleep(0.1)

    def flush(self) -> None:
        subprocess.run([POSTQUEUE, "-c", self.config_dir, "-f"], capture_output=True, timeout=30)

    # -- SMTP ----------------------------------------------------------------------------------
    def send(
        self,
        mail_from: str,
        rcpts,
        data: bytes | str,
        *,
        helo: str = "client.example.org",
        port: int | None = None,
        timeout: float = 60.0,
        source_address: str | None = None,
    ) -> SendResult:
        """One SMTP transaction; returns every reply (never raises for SMTP refusals).
        `source_address`: connect from this loopback address (e.g. "127.0.0.2", to be a
        client of a milter `trusted_networks` entry)."""
        if isinstance(rcpts, str):
            rcpts = [rcpts]
        if isinstance(data, str):
            data = data.encode("utf-8")
        res = SendResult()
        smtp = smtplib.SMTP(timeout=timeout,
                            source_address=(source_address, 0) if source_address else None)
        try:
            code, msg = smtp.connect("127.0.0.1", port or self.port)
            res.banner = Reply(code, msg.decode("utf-8", "replace"))
            if code != 220:
                return res
            code, msg = smtp.ehlo(helo)
            res.helo = Reply(code, msg.decode("utf-8", "replace"))
            if code != 250:
                return res
            code, msg = smtp.mail(mail_from)
            res.mail = Reply(code, msg.decode("utf-8", "replace"))
            if code != 250:
                return res
            for rcpt in rcpts:
                code, msg = smtp.rcpt(rcpt)
                res.rcpt[rcpt] = Reply(code, msg.decode("utf-8", "replace"))
            if not any(r.code in (250, 251) for r in res.rcpt.values()):
                return res
            try:
                code, msg = smtp.data(data)
                res.final = Reply(code, msg.decode("utf-8", "replace"))
            except smtplib.SMTPDataError as exc:
                res.data = Reply(exc.smtp_code, exc.smtp_error.decode("utf-8", "replace"))
        except (smtplib.SMTPException, OSError) as exc:
            res.error = f"{type(exc).__name__}: {exc}"
        finally:
            try:
                smtp.quit()
            except (smtplib.SMTPException, OSError):
                smtp.close()
        return res


def make_message(
    *,
    from_: str = "Alice <alice@sender.example>",
    to: str = "in@ours.example",
    subject: str = "Hello",
    text: str = "Hello world.\n",
    headers: dict[str, str] | None = None,
    attachments: list[tuple[str, str, bytes]] | None = None,
    size: int | None = None,
) -> bytes:
    """A small RFC 5322 message as bytes (CRLF); `size` pads the text to about that many bytes."""
    from email.message import EmailMessage
    from email.utils import formatdate, make_msgid

    msg = EmailMessage()
    msg["From"] = from_
    msg["To"] = to
    msg["Subject"] = subject
    msg["Date"] = formatdate(localtime=False)
    msg["Message-ID"] = make_msgid(domain="sender.example")
    for k, v in (headers or {}).items():
        msg[k] = v
    if size is not None and size > len(text):
        line = "The quick brown fox jumps over the lazy dog. 0123456789\n"
        text = text + line * ((size - len(text)) // len(line) + 1)
    msg.set_content(text)
    for filename, ctype, content in attachments or []:
        maintype, subtype = ctype.split("/", 1)
        msg.add_attachment(content, maintype=maintype, subtype=subtype, filename=filename)
    return msg.as_bytes(policy=msg.policy.clone(linesep="\r\n"))
