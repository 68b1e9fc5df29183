#!/usr/bin/env bash
# package-test.sh: the Debian package, proven on this machine (Debian 12 or 13, root).
#
#   1-3. packaging/build-deb.sh: install the build dependencies and lintian (apt-get, no
#      prompts), build the .deb from a clean copy of the tree (tracked and
#      untracked-but-not-ignored files, as a fresh clone plus your uncommitted edits would
#      have them: no .venv, no build leftovers), lintian: any E: or W: fails;
#   4. apt-get install ./mxhook_*.deb, then check the user, group, directories and modes,
#      conffile, units, man pages, completion, and that Debian's /usr/bin/python3 imports
#      the installed code with Debian's modules only;
#   5. start mxhook-milter, mxhook-spooler, mxhook-web and mxhook-track the way their systemd
#      units would (User, Group, supplementary groups, UMask, NoNewPrivileges, empty capability
#      bounding set, clean environment, and MemoryDenyWriteExecute through the kernel's
#      PR_SET_MDWE), all read from the installed unit files; check the socket is 0660 group
#      postfix and that the postfix user can connect and negotiate the milter protocol, and a
#      user outside group postfix cannot; run the CLI as root and check the daemons can read
#      what it wrote; the
#      API answers GET /v1/status with a read-only token root made, /metrics sees the spooler;
#      mxhook-track reads the key `mxhook tracking rotate-key` made, answers /healthz, a forged
#      token 404 and a signed one with the pixel;
#   6. end to end through a private Postfix (scripts/package-e2e.py): its main.cf wired by the
#      packaged `mxhook postfix-config --apply`, `mxhook check` passing, a rule added with the
#      packaged CLI, a message sent over SMTP and its webhook received on loopback; `check`
#      and `postfix-config` on the system Postfix (only read) say it is not wired, or not
#      configured at all when it has no main.cf (a fresh machine); then the
#      optional MXHOOK_PACKAGE_TEST_HOOK (see run_hook);
#   7. apt-get remove keeps data and config; reinstalling respects an admin's
#      dpkg-statoverride; apt-get purge leaves nothing (user, group, directories, /etc/mxhook,
#      /usr/bin scripts, units, python module).
#
# Never touches the system Postfix: no main.cf/master.cf edits, no `postfix start`, no port 25
# (its configuration is only read, by `mxhook check`). Everything it starts, installs or adds is
# undone by the EXIT trap, also on failure.
#
# Environment:
#   MXHOOK_PACKAGE_TEST_DEB=X    test the package X instead of building one (steps 1-3 skipped;
#                                `make package-test-trixie` builds it on this host, tests it in
#                                a Debian 13 root)
#   MXHOOK_PACKAGE_TEST_KEEP=1   keep the work directory (build tree, .deb, logs)
#   MXHOOK_PACKAGE_TEST_HOOK=X   run executable X at step 6 (see run_hook)
set -euo pipefail

# Debian's own tools and python3, whatever the caller's PATH (a pyenv python3 must not build
# or run the package).
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
unset PYTHONPATH PYTHONHOME VIRTUAL_ENV PYENV_VERSION PYTHONSTARTUP
export LC_ALL=C.UTF-8 DEBIAN_FRONTEND=noninteractive

SRC=$(cd "$(dirname "$0")/.." && pwd)
PKG=mxhook
CONF=/etc/mxhook/mxhook.conf
SOCKET=/var/spool/postfix/mxhook/milter.sock
UNITDIR=/lib/systemd/system

PASSED=0
WORK=""
INSTALLED_BY_US=0
POLICY_RC_D_BY_US=0
STATOVERRIDE_BY_US=0
declare -A DAEMON_PID=()

say() { printf '\n== %s\n' "$*"; }
ok() { PASSED=$((PASSED + 1)); printf 'ok   %s\n' "$*"; }
fail() {
    printf 'FAIL %s\n' "$*" >&2
    show_logs
    printf 'package-test: %d passed, 1 failed\n' "$PASSED"
    exit 1
}
# check DESCRIPTION COMMAND...: ok when COMMAND succeeds, else fail.
check() {
    local what=$1
    shift
    if "$@" >>"$WORK/checks.log"; then ok "$what"; else fail "$what"; fi
}
show_logs() {
    [ -n "$WORK" ] || return 0
    local f
    for f in "$WORK"/*.log; do
        [ -s "$f" ] || continue
        printf -- '--- %s (last 40 lines)\n' "$(basename "$f")" >&2
        tail -n 40 "$f" >&2
    done
}

cleanup() {
    local rc=$?
    set +e
    stop_private_postfix
    for name in "${!DAEMON_PID[@]}"; do stop_daemon "$name"; done
    if [ "$STATOVERRIDE_BY_US" = 1 ]; then
        dpkg-statoverride --remove /var/spool/mxhook >/dev/null 2>&1
    fi
    if [ "$INSTALLED_BY_US" = 1 ] && dpkg-query -W -f='${Status}' "$PKG" 2>/dev/null | grep -qv 'not-installed'; then
        echo "cleanup: purging $PKG" >&2
        apt-get purge -y -q "$PKG" >/dev/null 2>&1 || dpkg --purge "$PKG" >/dev/null 2>&1
    fi
    if [ "$POLICY_RC_D_BY_US" = 1 ]; then rm -f /usr/sbin/policy-rc.d; fi
    if [ -n "$WORK" ]; then
        if [ "${MXHOOK_PACKAGE_TEST_KEEP:-}" = 1 ]; then
            echo "work directory kept: $WORK" >&2
        else
            rm -rf "$WORK"
        fi
    fi
    exit "$rc"
}
# The private Postfix of step 6 and its smtp-sink, should package-e2e.py not have stopped them
# itself (killed): the master by `postfix -c DIR stop`, the sink by the pid it wrote down.
stop_private_postfix() {
    [ -n "$WORK" ] || return 0
    local etc=$WORK/postfix/etc pidfile=$WORK/postfix/queue/pid/master.pid pid
    if [ -f "$pidfile" ] && kill -0 "$(awk '{print $1; exit}' "$pidfile")" 2>/dev/null; then
        postfix -c "$etc" stop >/dev/null 2>&1
    fi
    if [ -f "$WORK/e2e.pids" ]; then
        while read -r pid; do
            [ -n "$pid" ] && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = smtp-sink ] && kill -TERM "$pid"
        done <"$WORK/e2e.pids"
        rm -f "$WORK/e2e.pids"
    fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --------------------------------------------------------------------------------------------
say "preconditions"
[ "$(id -u)" = 0 ] || fail "run as root (installs packages and users)"
[ -r /etc/debian_version ] || fail "needs Debian"
status=$(dpkg-query -W -f='${Status}' "$PKG" 2>/dev/null || true)
case "$status" in
    ""|*not-installed) ok "$PKG is not installed yet" ;;
    *) fail "$PKG is already installed here ($status); this test installs and purges it, so it \
refuses to touch an existing installation: apt-get purge $PKG first" ;;
esac
if getent passwd mxhook >/dev/null || getent group mxhook >/dev/null; then
    fail "a user or group 'mxhook' exists without the package; the purge step would delete it"
fi
ok "no stray mxhook user or group"
WORK=$(mktemp -d /tmp/mxhook-package-test.XXXXXX)
# The private Postfix of step 6 lives in $WORK/postfix: the postfix user must traverse $WORK.
chmod 0711 "$WORK"

# Package maintainer scripts must not start services here (there is no systemd; invoke-rc.d
# would start init scripts, e.g. Postfix's if apt has to install or configure it). Debian's
# standard switch is a policy-rc.d that says "no" (exit 101); an existing one is left alone.
if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\n# temporary, scripts/package-test.sh\nexit 101\n' >/usr/sbin/policy-rc.d
    chmod 0755 /usr/sbin/policy-rc.d
    POLICY_RC_D_BY_US=1
fi

APT_UPDATED=0
apt_install() { # PACKAGE...: install those that are missing (others are left as they are)
    local p missing=()
    for p in "$@"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' \
            || missing+=("$p")
    done
    [ "${#missing[@]}" -gt 0 ] || return 0
    if [ "$APT_UPDATED" = 0 ]; then apt-get update -q >>"$WORK/apt.log" 2>&1; APT_UPDATED=1; fi
    # If apt has to install postfix, leave it unconfigured (never a running system Postfix).
    echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
    apt-get install -y -q --no-install-recommends "${missing[@]}" >>"$WORK/apt.log" 2>&1 \
        || fail "apt-get install ${missing[*]}"
}

# --------------------------------------------------------------------------------------------
if [ -n "${MXHOOK_PACKAGE_TEST_DEB:-}" ]; then
    say "the given package"
    [ -f "$MXHOOK_PACKAGE_TEST_DEB" ] || fail "MXHOOK_PACKAGE_TEST_DEB=$MXHOOK_PACKAGE_TEST_DEB: no such file"
    cp "$MXHOOK_PACKAGE_TEST_DEB" "$WORK/"
    DEB=$WORK/$(basename "$MXHOOK_PACKAGE_TEST_DEB")
    check "$(basename "$DEB") is a Debian package of $PKG" \
        test "$(dpkg-deb -f "$DEB" Package)" = "$PKG"
else
say "build from a clean copy of the tree, lintian"
# packaging/build-deb.sh installs the build dependencies, builds from a clean copy (tracked and
# untracked-but-not-ignored files: no .venv, no build leftovers) and fails on any lintian E:/W:.
"$SRC/packaging/build-deb.sh" "$WORK" >"$WORK/build-deb.out" 2>&1 || {
    cat "$WORK/build-deb.out" >&2
    fail "packaging/build-deb.sh (build.log, lintian.log)"
}
DEB=$(tail -n 1 "$WORK/build-deb.out")
ok "built $(basename "$DEB") with dpkg-buildpackage -us -uc -b"
sed 's/^/     /' "$WORK/lintian.log"
ok "lintian: no errors, no warnings$([ -s "$WORK/lintian.log" ] || echo ', no info tags')"
fi

# --------------------------------------------------------------------------------------------
say "install"
# The runtime dependencies first (Postfix among them, left unconfigured if apt installs it), so
# that the postfix user's groups can be compared before and after.
mapfile -t RUNTIME_DEPS < <(dpkg-deb -f "$DEB" Depends | tr ',' '\n' \
    | sed -e 's/|.*//' -e 's/(.*)//' -e 's/:any//' -e 's/[[:space:]]//g' | grep -v '^$')
apt_install "${RUNTIME_DEPS[@]}"
ok "runtime dependencies installed: ${RUNTIME_DEPS[*]}"
POSTFIX_GROUPS=$(id -nG postfix)
INSTALLED_BY_US=1
(cd "$WORK" && apt-get install -y -q "./$(basename "$DEB")") >"$WORK/install.log" 2>&1 \
    || fail "apt-get install ./$(basename "$DEB") (see install.log)"
ok "apt-get install ./$(basename "$DEB")"
# What the package ships: console scripts and units (mxhook-logfollow joins them once setup.cfg
# has its console script).
mapfile -t SCRIPTS < <(dpkg -L "$PKG" | grep -E '^/usr/bin/mxhook[^/]*$' | xargs -n1 basename | sort)
# Debian 13's debhelper installs units under /usr/lib (the same directory where /lib is /usr/lib).
mapfile -t UNITS < <(dpkg -L "$PKG" | grep -E "^(/usr)?$UNITDIR/mxhook-[^/]*\.service\$" | xargs -n1 basename \
    | sed 's/\.service$//' | sort)
check "console scripts mxhook, mxhook-milter, mxhook-spooler installed (${SCRIPTS[*]})" \
    sh -c 'for b in mxhook mxhook-milter mxhook-spooler; do echo " $* " | grep -q " $b " || exit 1; done' _ "${SCRIPTS[@]}"
check "units mxhook-milter, mxhook-spooler installed (${UNITS[*]})" \
    sh -c 'for u in mxhook-milter mxhook-spooler; do echo " $* " | grep -q " $u " || exit 1; done' _ "${UNITS[@]}"
for b in "${SCRIPTS[@]}"; do
    [ "$b" = mxhook ] || [ "$b" = mxhook-milter ] || [ "$b" = mxhook-spooler ] \
        || check "$b has its unit" test -s "$UNITDIR/$b.service"
done

mode_of() { stat -c '%U:%G %a' "$1" 2>/dev/null; }
expect_mode() { # path "user:group mode"
    local got
    got=$(mode_of "$1")
    if [ "$got" = "$2" ]; then ok "$1 is $2"; else fail "$1 is '$got', expected '$2'"; fi
}

pw=$(getent passwd mxhook) || fail "user mxhook missing"
IFS=: read -r _ _ MX_UID MX_GID _ MX_HOME MX_SHELL <<<"$pw"
check "user mxhook is a system user (uid $MX_UID)" test "$MX_UID" -lt 1000
check "user mxhook has no home ($MX_HOME) and no login shell ($MX_SHELL)" \
    test "$MX_HOME" = /nonexistent -a "$MX_SHELL" = /usr/sbin/nologin -a ! -e /nonexistent
check "group mxhook is the user's primary group" test "$(getent group mxhook | cut -d: -f3)" = "$MX_GID"
check "the postfix user is unchanged (groups: $(id -nG postfix))" test "$(id -nG postfix)" = "$POSTFIX_GROUPS"
expect_mode /var/lib/mxhook "mxhook:mxhook 750"
expect_mode /var/spool/mxhook "mxhook:mxhook 750"
expect_mode /var/spool/postfix/mxhook "mxhook:postfix 2750"
expect_mode "$CONF" "root:root 644"
check "$CONF is a conffile" sh -c "dpkg-query -W -f='\${Conffiles}' $PKG | grep -q ' $CONF '"
check "$CONF parses and gives the built-in defaults" /usr/bin/python3 -I -c "
from mxhook import config
assert config.load('$CONF').raw == config.DEFAULTS"
for b in "${SCRIPTS[@]}"; do
    check "/usr/bin/$b runs on /usr/bin/python3" sh -c "head -1 /usr/bin/$b | grep -qx '#! */usr/bin/python3'"
    check "man page $b(1)" test -s "/usr/share/man/man1/$b.1.gz"
done
check "man page mxhook.conf(5) names every section of the schema" /usr/bin/python3 -c "
import gzip, sys
sys.path.insert(0, '/usr/lib/python3/dist-packages')
from mxhook import config
page = gzip.open('/usr/share/man/man5/mxhook.conf.5.gz', 'rt').read()
missing = [s for s in config.SECTIONS if '.SS [' + s + ']' not in page]
assert not missing, missing"
IMPORT_ALL='
import importlib, pkgutil, mxhook
assert mxhook.__file__.startswith("/usr/lib/python3/dist-packages/"), mxhook.__file__
names = [m.name for m in pkgutil.walk_packages(mxhook.__path__, "mxhook.")]
for name in names:
    importlib.import_module(name)
print(len(names), "modules")
'
check "Debian's python3 imports every installed module with Debian's modules only" \
    /usr/bin/python3 -I -c "$IMPORT_ALL"
check "mxhook --version" sh -c "mxhook --version | grep -q '0\.1\.0'"
check "bash completion for mxhook" grep -q '_MXHOOK_COMPLETE=bash_complete' /usr/share/bash-completion/completions/mxhook
for u in "${UNITS[@]}"; do
    check "$u.service enabled (multi-user.target.wants)" test -L "/etc/systemd/system/multi-user.target.wants/$u.service"
    if command -v systemd-analyze >/dev/null; then
        check "systemd-analyze verify $u.service" systemd-analyze verify "$UNITDIR/$u.service"
    fi
    # Type=notify: started means ready (the milter's socket exists before Postfix starts).
    check "$u.service is Type=notify with an ExecReload" \
        sh -c "grep -qx 'Type=notify' '$UNITDIR/$u.service' && grep -q '^ExecReload=/bin/kill -[A-Z0-9]* \\\$MAINPID\$' '$UNITDIR/$u.service'"
    [ "$u" = mxhook-milter ] || check "$u.service cannot write in Postfix's chroot" \
        sh -c "! grep '^ReadWritePaths=' '$UNITDIR/$u.service' | grep -q /var/spool/postfix"
done

# Step 6 posts to a receiver on 127.0.0.1, which the SSRF guard refuses unless allowlisted: set
# it as an admin would (uncomment the key in the conffile), before the daemons start.
sed -i 's|^#allow_networks =.*$|allow_networks = 127.0.0.1/32|' "$CONF"
check "$CONF: [http] allow_networks = 127.0.0.1/32 for step 6's loopback receiver" \
    /usr/bin/python3 -I -c "
from mxhook import config
assert [str(n) for n in config.load('$CONF').value('http', 'allow_networks')] == ['127.0.0.1/32']"

# --------------------------------------------------------------------------------------------
say "run the daemons as their units would"
unit_value() { # UNIT KEY: the last KEY= line of the installed unit
    sed -n "s/^$2=//p" "$UNITDIR/$1.service" | tail -n 1
}
# Runs in the target process after setpriv: the unit's UMask, then MemoryDenyWriteExecute as the
# kernel's PR_SET_MDWE (refuses writable+executable mappings, inherited across execve; a kernel
# without it only gets a warning), then exec the ExecStart command.
LAUNCHER='
import ctypes, os, sys
umask, mdwe, argv = sys.argv[1], sys.argv[2], sys.argv[3:]
os.umask(int(umask, 8))
if mdwe == "yes":
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(65, 1, 0, 0, 0) != 0:  # PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN
        print("package-test: kernel lacks PR_SET_MDWE; MemoryDenyWriteExecute not emulated",
              file=sys.stderr)
os.execv(argv[0], argv)
'
unit_exec() { # UNIT COMMAND...: exec COMMAND in the unit's execution environment
    local unit=$1 user group umask mdwe groups g
    shift
    user=$(unit_value "$unit" User)
    group=$(unit_value "$unit" Group)
    umask=$(unit_value "$unit" UMask)
    mdwe=$(unit_value "$unit" MemoryDenyWriteExecute)
    [ -n "$user" ] && [ -n "$group" ] && [ -n "$umask" ] || fail "$unit.service lacks User/Group/UMask"
    # The user's groups (initgroups, as systemd does for User=) plus SupplementaryGroups=.
    groups=$(id -G "$user" | tr ' ' ',')
    for g in $(unit_value "$unit" SupplementaryGroups); do
        groups="$groups,$(getent group "$g" | cut -d: -f3)"
    done
    cd /
    exec env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 \
        setpriv --reuid="$user" --regid="$group" --groups="$groups" --no-new-privs \
            --inh-caps=-all --bounding-set=-all \
            /usr/bin/python3 -I -c "$LAUNCHER" "$umask" "${mdwe:-no}" "$@"
}
start_daemon() { # UNIT: its ExecStart in the background, like systemctl start
    local unit=$1 exec
    exec=$(unit_value "$unit" ExecStart)
    [ -n "$exec" ] || fail "$unit.service lacks ExecStart"
    # shellcheck disable=SC2086  # ExecStart is split into words, as systemd does
    (unit_exec "$unit" $exec </dev/null >"$WORK/$unit.log" 2>&1) &
    DAEMON_PID[$unit]=$!
    ok "started $unit as $(unit_value "$unit" User):$(unit_value "$unit" Group), umask $(unit_value "$unit" UMask), MemoryDenyWriteExecute=$(unit_value "$unit" MemoryDenyWriteExecute): $exec (pid $!)"
}
stop_daemon() { # UNIT: SIGTERM as systemctl stop does, SIGKILL after 15 s
    local unit=$1 pid=${DAEMON_PID[$1]:-} i
    [ -n "$pid" ] || return 0
    kill -TERM "$pid" 2>/dev/null || true
    for i in $(seq 150); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    unset "DAEMON_PID[$unit]"
}
alive() { kill -0 "${DAEMON_PID[$1]}" 2>/dev/null; }

# Every module, and the cryptography bindings the signing code uses, under the units' limits.
MDWE_PROBE="$IMPORT_ALL"'
import mmap
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives import hashes, hmac
Ed25519PrivateKey.generate().sign(b"x")
h = hmac.HMAC(b"k" * 32, hashes.SHA256()); h.update(b"x"); h.finalize()
try:
    mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
except PermissionError:
    print("writable+executable memory refused, as under MemoryDenyWriteExecute=yes")
else:
    raise SystemExit("MemoryDenyWriteExecute is not in force: the probe proves nothing")
'
for u in "${UNITS[@]}"; do
    if (unit_exec "$u" /usr/bin/python3 -I -c "$MDWE_PROBE") >>"$WORK/probe.log" 2>&1; then
        ok "$u's environment: every module imports, cryptography signs, W+X memory is refused"
    else
        fail "$u's environment: imports or cryptography fail under the unit's limits (see probe.log)"
    fi
done

start_daemon mxhook-milter
for i in $(seq 100); do [ -S "$SOCKET" ] && break; alive mxhook-milter || break; sleep 0.1; done
alive mxhook-milter || fail "mxhook-milter exited (see mxhook-milter.log)"
check "milter socket $SOCKET exists" test -S "$SOCKET"
sleep 0.5  # the milter sets mode and group right after libmilter creates the socket
expect_mode "$SOCKET" "mxhook:postfix 660"

# What smtpd does first: connect as user postfix and negotiate (SMFIC_OPTNEG, protocol 6).
NEGOTIATE='
import socket, struct, sys
s = socket.socket(socket.AF_UNIX)
s.settimeout(10)
s.connect(sys.argv[1])
body = b"O" + struct.pack(">III", 6, 0x1FF, 0x1FFFFF)
s.sendall(struct.pack(">I", len(body)) + body)
def read(n):
    data = b""
    while len(data) < n:
        chunk = s.recv(n - len(data))
        if not chunk:
            raise SystemExit("milter closed the connection")
        data += chunk
    return data
reply = read(struct.unpack(">I", read(4))[0])
assert reply[:1] == b"O", reply[:1]
version = struct.unpack(">I", reply[1:5])[0]
s.sendall(struct.pack(">I", 1) + b"Q")
print("milter protocol version", version)
'
check "user postfix connects and negotiates the milter protocol" \
    runuser -u postfix -- /usr/bin/python3 -I -c "$NEGOTIATE" "$SOCKET"
check "user nobody (not in group postfix) cannot connect" \
    sh -c "! runuser -u nobody -- /usr/bin/python3 -I -c \"\$1\" '$SOCKET' 2>/dev/null" _ "$NEGOTIATE"

start_daemon mxhook-spooler
sleep 3
alive mxhook-spooler || fail "mxhook-spooler exited (see mxhook-spooler.log)"
ok "mxhook-spooler is running after 3 s"
alive mxhook-milter || fail "mxhook-milter exited (see mxhook-milter.log)"
ok "mxhook-milter is running"
for d in tmp new bad; do expect_mode "/var/spool/mxhook/$d" "mxhook:mxhook 750"; done
check "state.db belongs to mxhook and is not world-readable" \
    sh -c "stat -c '%U:%G %a' /var/lib/mxhook/state.db | grep -Eq '^mxhook:mxhook 6[46]0$'"

# The admin runs the CLI as root; the daemons (user mxhook) must be able to use what it wrote.
check "mxhook domain add (as root)" sh -c "mxhook --config $CONF domain add package-test.example >/dev/null"
check "rules.db written by root is readable by the milter's user" \
    runuser -u mxhook -- /usr/bin/python3 -I -c "
import sqlite3
conn = sqlite3.connect('file:/var/lib/mxhook/rules.db?mode=rw', uri=True)
assert [r[0] for r in conn.execute('SELECT name FROM domains')] == ['package-test.example']"

# mxhook-web: the API answers a read-only token made by root's CLI, and /metrics sees the
# spooler's heartbeat. It stays up for the end-to-end step (`mxhook check` asks it).
WEB_LISTEN=$(/usr/bin/python3 -I -c "from mxhook import config; print(config.load('$CONF').get('web', 'listen'))")
start_daemon mxhook-web
API_GET='
import sys, urllib.error, urllib.request
url, token = sys.argv[1], sys.argv[2]
req = urllib.request.Request(url, headers={"Authorization": "Bearer " + token} if token else {})
try:
    with urllib.request.urlopen(req, timeout=10) as resp:
        print(resp.status)
        sys.stdout.write(resp.read().decode("utf-8", "replace"))  # a GIF, too
except urllib.error.HTTPError as exc:
    print(exc.code)
except OSError as exc:
    print(0, exc)
'
for i in $(seq 100); do
    [ "$(/usr/bin/python3 -I -c "$API_GET" "http://$WEB_LISTEN/v1/status" "" | head -n 1)" = 401 ] && break
    alive mxhook-web || break
    sleep 0.1
done
alive mxhook-web || fail "mxhook-web exited (see mxhook-web.log)"
ok "mxhook-web answers on http://$WEB_LISTEN/ (401 without a token)"
WEB_TOKEN=$(mxhook --config "$CONF" token add package-test --read-only 2>>"$WORK/checks.log") \
    || fail "mxhook token add (as root)"
check "GET /v1/status with a read-only token made by root: 200" \
    sh -c "/usr/bin/python3 -I -c \"\$1\" 'http://$WEB_LISTEN/v1/status' '$WEB_TOKEN' | head -n 1 | grep -qx 200" _ "$API_GET"
check "GET /metrics: the spooler is up" \
    sh -c "/usr/bin/python3 -I -c \"\$1\" 'http://$WEB_LISTEN/metrics' '$WEB_TOKEN' | grep -qx 'mxhook_daemon_up{daemon=\"spooler\"} 1.0'" _ "$API_GET"
check "access.db belongs to mxhook and is not world-readable" \
    sh -c "stat -c '%U:%G %a' /var/lib/mxhook/access.db | grep -Eq '^mxhook:mxhook 6[46]0$'"

# mxhook-track: the signing key made by root's CLI, read by the daemon (user mxhook); /healthz,
# a forged token's 404, and a token signed with the new key answered with the pixel (its event
# written into the spool under the unit's limits). [tracking] public_url stays empty: `mxhook
# check` in the end-to-end step then expects no mxhook-track.
KEY_FILE=$(/usr/bin/python3 -I -c "from mxhook import config; print(config.load('$CONF').get('tracking', 'key_file'))")
TRACK_LISTEN=$(/usr/bin/python3 -I -c "from mxhook import config; print(config.load('$CONF').get('tracking', 'listen'))")
check "mxhook tracking rotate-key (as root)" sh -c "mxhook --config $CONF tracking rotate-key >/dev/null"
expect_mode "$KEY_FILE" "root:mxhook 640"
start_daemon mxhook-track
for i in $(seq 100); do
    [ "$(/usr/bin/python3 -I -c "$API_GET" "http://$TRACK_LISTEN/healthz" "" | head -n 1)" = 200 ] && break
    alive mxhook-track || break
    sleep 0.1
done
alive mxhook-track || fail "mxhook-track exited (see mxhook-track.log)"
check "mxhook-track: GET /healthz answers 200 ok" \
    sh -c "/usr/bin/python3 -I -c \"\$1\" 'http://$TRACK_LISTEN/healthz' '' | tr '\n' ' ' | grep -qx '200 ok '" _ "$API_GET"
check "mxhook-track: a forged token (GET /o/x) answers 404" \
    sh -c "/usr/bin/python3 -I -c \"\$1\" 'http://$TRACK_LISTEN/o/x' '' | head -n 1 | grep -qx 404" _ "$API_GET"
TRACK_TOKEN=$(/usr/bin/python3 -I -c "
import time
from mxhook.model import keyring, tracktokens as tt
keys = keyring.parse_keys(open('$KEY_FILE').read())
print(tt.make_token(keys, tt.Track(tt.OPEN, 'PKGTEST1', 'reader@package-test.example',
                                   'package-test.example', int(time.time()))))") \
    || fail "a tracking token signed with $KEY_FILE"
check "mxhook-track (user mxhook) read the key: a pixel signed with it answers 200 (its event spooled)" \
    sh -c "/usr/bin/python3 -I -c \"\$1\" 'http://$TRACK_LISTEN/o/$TRACK_TOKEN' '' | head -n 1 | grep -qx 200" _ "$API_GET"

# --------------------------------------------------------------------------------------------
say "end to end: a private Postfix wired by mxhook postfix-config, mail in, webhook out"
# scripts/package-e2e.py (Debian's python3, the packaged /usr/bin/mxhook, the repository's
# stdlib-only Postfix and receiver harness). The private instance's queue directory is not
# /var/spool/postfix, so postfix-config names the packaged socket by its absolute path; the
# harness runs that instance's smtpd unchrooted, so it reaches the socket the package made.
E2E_START=$SECONDS
if MXHOOK_SRC=$SRC MXHOOK_PACKAGE_TEST_WORK=$WORK MXHOOK_SOCKET=$SOCKET \
        MXHOOK_DOMAIN=package-test.example \
        /usr/bin/python3 -I "$SRC/scripts/package-e2e.py" >"$WORK/e2e.out" 2>"$WORK/e2e.log"; then
    while read -r line; do ok "${line#ok   }"; done < <(grep '^ok ' "$WORK/e2e.out")
    ok "end to end in $((SECONDS - E2E_START)) s"
else
    rc=$?
    { grep '^ok ' "$WORK/e2e.out" || true; } | sed 's/^/     /'
    why=$(grep '^FAIL ' "$WORK/e2e.out" | head -n 1 | cut -c6- || true)
    fail "end to end: ${why:-scripts/package-e2e.py exited with status $rc} (see e2e.log)"
fi
alive mxhook-milter || fail "mxhook-milter exited during the end-to-end step (see mxhook-milter.log)"
alive mxhook-spooler || fail "mxhook-spooler exited during the end-to-end step (see mxhook-spooler.log)"
alive mxhook-web || fail "mxhook-web exited during the end-to-end step (see mxhook-web.log)"
alive mxhook-track || fail "mxhook-track exited during the end-to-end step (see mxhook-track.log)"

# HOOK: further checks against the installed package, with both daemons still running.
# Set MXHOOK_PACKAGE_TEST_HOOK to an executable: it runs as root with MXHOOK_CONFIG,
# MXHOOK_SOCKET, MXHOOK_MILTER_PID, MXHOOK_SPOOLER_PID and MXHOOK_PACKAGE_TEST_WORK exported, and
# must exit 0.
run_hook() {
    local hook=${MXHOOK_PACKAGE_TEST_HOOK:-}
    [ -n "$hook" ] || return 0
    say "hook: $hook"
    MXHOOK_CONFIG=$CONF MXHOOK_SOCKET=$SOCKET MXHOOK_PACKAGE_TEST_WORK=$WORK \
        MXHOOK_MILTER_PID=${DAEMON_PID[mxhook-milter]} MXHOOK_SPOOLER_PID=${DAEMON_PID[mxhook-spooler]} \
        "$hook" >"$WORK/hook.log" 2>&1 || fail "hook $hook (see hook.log)"
    ok "hook $hook"
}
run_hook

# `systemctl reload`: each running daemon takes its unit's ExecReload signal (the milter's is
# not SIGHUP, libmilter's stop) and keeps running.
for u in mxhook-milter mxhook-spooler mxhook-web mxhook-track; do
    sig=$(unit_value "$u" ExecReload | sed -n 's/^\/bin\/kill -\([A-Z0-9]*\) .*/\1/p')
    [ -n "$sig" ] || fail "$u.service: no ExecReload=/bin/kill -SIGNAL \$MAINPID"
    kill -s "$sig" "${DAEMON_PID[$u]}"
    sleep 1
    alive "$u" || fail "$u exited on SIG$sig, its unit's reload (see $u.log)"
    ok "$u reloads on SIG$sig and keeps running"
done

# --------------------------------------------------------------------------------------------
say "stop, remove, reinstall, purge"
stop_daemon mxhook-track
stop_daemon mxhook-web
stop_daemon mxhook-spooler
stop_daemon mxhook-milter
ok "daemons stopped with SIGTERM"

# prerm warns when main.cf still names the milter: a Postfix configuration of our own that
# does (MAIL_CONFIG reaches postconf through dpkg; the system Postfix is never touched)
WIRED=$WORK/wired-postfix
mkdir -p "$WIRED"
printf 'smtpd_milters = { unix:mxhook/milter.sock, default_action=tempfail }\n' >"$WIRED/main.cf"
cp /usr/share/postfix/master.cf.dist "$WIRED/master.cf"
MAIL_CONFIG=$WIRED apt-get remove -y -q "$PKG" >"$WORK/remove.log" 2>&1 || fail "apt-get remove $PKG"
ok "apt-get remove $PKG"
check "remove: prerm warned that main.cf still names the milter, with the unwiring command" \
    grep -q "^    postconf -e 'smtpd_milters = ' && postfix reload" "$WORK/remove.log"
for b in "${SCRIPTS[@]}"; do
    check "remove: /usr/bin/$b is gone" test ! -e "/usr/bin/$b"
done
check "remove: user mxhook kept" getent passwd mxhook
check "remove: rules.db kept" test -s /var/lib/mxhook/rules.db
check "remove: $CONF kept" test -f "$CONF"
expect_mode /var/spool/postfix/mxhook "mxhook:postfix 2750"

# An admin's dpkg-statoverride wins over the package's owner and mode.
dpkg-statoverride --update --add mxhook mxhook 0700 /var/spool/mxhook
STATOVERRIDE_BY_US=1
(cd "$WORK" && apt-get install -y -q "./$(basename "$DEB")") >"$WORK/reinstall.log" 2>&1 \
    || fail "reinstall (see reinstall.log)"
ok "reinstalled over the kept data"
expect_mode /var/spool/mxhook "mxhook:mxhook 700"
check "reinstall: the domain added before is still there" \
    sh -c "mxhook --config $CONF domain list --json | grep -q package-test.example"
dpkg-statoverride --remove /var/spool/mxhook
STATOVERRIDE_BY_US=0

apt-get purge -y -q "$PKG" >"$WORK/purge.log" 2>&1 || fail "apt-get purge $PKG (see purge.log)"
INSTALLED_BY_US=0
ok "apt-get purge $PKG"
check "purge: dpkg no longer knows $PKG" \
    sh -c "! dpkg-query -W -f='\${Status}' $PKG 2>/dev/null | grep -qv not-installed"
check "purge: user mxhook removed" sh -c "! getent passwd mxhook"
check "purge: group mxhook removed" sh -c "! getent group mxhook"
GONE=(/var/lib/mxhook /var/spool/mxhook /var/spool/postfix/mxhook /etc/mxhook
      /usr/lib/python3/dist-packages/mxhook /usr/share/doc/mxhook
      /usr/share/bash-completion/completions/mxhook)
for b in "${SCRIPTS[@]}"; do GONE+=("/usr/bin/$b" "/usr/share/man/man1/$b.1.gz"); done
GONE+=("/usr/share/man/man5/mxhook.conf.5.gz")
for u in "${UNITS[@]}"; do
    GONE+=("$UNITDIR/$u.service" "/etc/systemd/system/multi-user.target.wants/$u.service")
done
for p in "${GONE[@]}"; do
    check "purge: $p is gone" test ! -e "$p" -a ! -L "$p"
done
# find exits non-zero when files vanish under it (other processes' temp files): not our failure
left=$(find /etc /var /usr /run /tmp -xdev \( -uid "$MX_UID" -o -gid "$MX_GID" \) -print 2>/dev/null | head -n 5 || true)
check "purge: no file owned by the old uid $MX_UID or gid $MX_GID is left${left:+: $left}" test -z "$left"

printf '\npackage-test: %d passed, 0 failed\n' "$PASSED"
