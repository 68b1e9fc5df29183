#!/usr/bin/env bash
# fresh-root.sh: run a command in a throw-away Debian root, as on a freshly installed machine.
#
#   scripts/fresh-root.sh [--dist bookworm|trixie] [--keep] [--copy FILE]...
#                         [--postfix 'Local only'|'Internet Site'|...] -- COMMAND...
#
# 1. mmdebstrap builds a minimal Debian root (variant minbase plus make and ca-certificates)
#    under /var/tmp from Debian's archive, with what this host needs to reach it and PyPI: its
#    apt mirror, its own apt.conf.d files (no package's) that set Acquire:: options (proxy,
#    date checks), its local CA certificates (/usr/local/share/ca-certificates) and resolv.conf/hosts;
# 2. copies a clean tree into /root/mxhook: `git archive HEAD` (committed files only: no
#    .venv, no build leftovers, no uncommitted edits), and each --copy FILE into /root/in/;
#    With --postfix TYPE, Postfix is installed there first with that debconf main_mailer_type
#    (a configured system Postfix, main.cf and all; without it, the root has no Postfix);
# 3. runs `cd /root/mxhook && COMMAND` as root in the root, chrooted, in its own mount and PID
#    namespaces (unshare) with /proc, /sys, a small /dev (null, zero, full, random, urandom,
#    tty, a private devpts, /dev/shm) and tmpfs /run mounted. Everything mounted or started
#    there ends with the namespaces, on any exit (also on SIGINT/SIGTERM to this script), so
#    nothing is left mounted or running.
#    A policy-rc.d in the root keeps package scripts from starting services (the root shares
#    this host's network: a system Postfix started there would take this host's port 25).
# 4. deletes the root (--keep: leaves it and prints where).
#
# Prints the time of each phase ("fresh-root: ... in N s"); exits with COMMAND's status.
# Needs root, mmdebstrap (apt-get install mmdebstrap; installed if missing) and git.
set -euo pipefail
export LC_ALL=C.UTF-8

SRC=$(cd "$(dirname "$0")/.." && pwd)
DIST=bookworm
KEEP=0
COPIES=()
POSTFIX_TYPE=""
while [ $# -gt 0 ]; do
    case $1 in
        --dist) DIST=$2; shift 2 ;;
        --keep) KEEP=1; shift ;;
        --copy) COPIES+=("$2"); shift 2 ;;
        --postfix) POSTFIX_TYPE=$2; shift 2 ;;
        --) shift; break ;;
        *) echo "fresh-root: unknown option $1 (see the head of $0)" >&2; exit 2 ;;
    esac
done
[ $# -gt 0 ] || { echo "fresh-root: no command (… -- COMMAND)" >&2; exit 2; }
[ "$(id -u)" = 0 ] || { echo "fresh-root: run as root (mmdebstrap, chroot, mounts)" >&2; exit 2; }
case $DIST in bookworm|trixie) ;; *) echo "fresh-root: --dist bookworm or trixie" >&2; exit 2 ;; esac
for f in "${COPIES[@]}"; do [ -f "$f" ] || { echo "fresh-root: --copy $f: no such file" >&2; exit 2; }; done

ROOT=""
cleanup() {
    local rc=$?
    set +e
    if [ -n "$ROOT" ] && [ -d "$ROOT" ]; then
        # The namespaces took their mounts with them; refuse to delete through a mount anyway.
        if grep -q " $ROOT/" /proc/self/mounts; then
            echo "fresh-root: $ROOT still has mounts; not deleting it" >&2
        elif [ "$KEEP" = 1 ]; then
            echo "fresh-root: root kept: $ROOT (chroot $ROOT/root; rm -rf $ROOT)" >&2
        else
            rm -rf --one-file-system "$ROOT"
        fi
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

command -v mmdebstrap >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -q mmdebstrap >/dev/null
ROOT=$(mktemp -d "/var/tmp/mxhook-fresh-$DIST.XXXXXX")
chmod 0755 "$ROOT"
TARGET=$ROOT/root

# This host's Debian mirror (deb822 or one-line sources), else Debian's own name for it.
MIRROR=$(sed -n 's/^URIs:[[:space:]]*\([^[:space:]]*\/debian\)[[:space:]]*$/\1/p' \
    /etc/apt/sources.list.d/*.sources 2>/dev/null | head -n 1)
[ -n "$MIRROR" ] || MIRROR=$(sed -n 's/^deb[[:space:]]\+\(\[[^]]*\][[:space:]]\+\)\?\([^[:space:]]*\/debian\)[[:space:]].*/\2/p' \
    /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null | head -n 1)
MIRROR=${MIRROR:-http://deb.debian.org/debian}
SECURITY=${MIRROR%/debian}/debian-security
# apt settings of this host that concern reaching the archive (proxy, Check-Valid-Until, ...):
# the admin's own files only (a package's conffile copied in would make that package's
# installation stop at a conffile prompt).
APT_CONF=()
for f in /etc/apt/apt.conf.d/*; do
    [ -f "$f" ] && grep -q '^[[:space:]]*Acquire' "$f" || continue
    dpkg -S "$f" >/dev/null 2>&1 || APT_CONF+=("$f")
done
HOOKS=()
for f in "${APT_CONF[@]}"; do
    HOOKS+=(--setup-hook "cp $f \"\$1/etc/apt/apt.conf.d/\"")
done

START=$SECONDS
echo "fresh-root: building a Debian $DIST root in $TARGET from $MIRROR"
mmdebstrap --quiet --variant=minbase --include=make,ca-certificates \
    "${HOOKS[@]}" "$DIST" "$TARGET" \
    "deb $MIRROR $DIST main" "deb $MIRROR $DIST-updates main" "deb $SECURITY $DIST-security main" \
    >"$ROOT/mmdebstrap.log" 2>&1 || { tail -n 30 "$ROOT/mmdebstrap.log" >&2; echo "fresh-root: mmdebstrap failed" >&2; exit 1; }
cp /etc/resolv.conf /etc/hosts "$TARGET/etc/"
if compgen -G "/usr/local/share/ca-certificates/*.crt" >/dev/null; then
    cp /usr/local/share/ca-certificates/*.crt "$TARGET/usr/local/share/ca-certificates/"
    chroot "$TARGET" update-ca-certificates >/dev/null 2>&1
fi
printf '#!/bin/sh\n# scripts/fresh-root.sh: no services in this root\nexit 101\n' >"$TARGET/usr/sbin/policy-rc.d"
chmod 0755 "$TARGET/usr/sbin/policy-rc.d"
mkdir -p "$TARGET/root/mxhook" "$TARGET/root/in"
git -C "$SRC" archive --format=tar HEAD | tar -x -C "$TARGET/root/mxhook"
for f in "${COPIES[@]}"; do cp "$f" "$TARGET/root/in/"; done
if [ -n "$POSTFIX_TYPE" ]; then
    echo "postfix postfix/main_mailer_type select $POSTFIX_TYPE" | chroot "$TARGET" debconf-set-selections
    chroot "$TARGET" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin DEBIAN_FRONTEND=noninteractive \
        sh -c 'apt-get update -q && apt-get install -y -q --no-install-recommends postfix' \
        >"$ROOT/postfix.log" 2>&1 || { tail -n 30 "$ROOT/postfix.log" >&2; echo "fresh-root: installing postfix failed" >&2; exit 1; }
    echo "fresh-root: system Postfix installed in the root ($POSTFIX_TYPE; main.cf: $(test -e "$TARGET/etc/postfix/main.cf" && echo yes || echo no))"
fi
echo "fresh-root: root built in $((SECONDS - START)) s (HEAD $(git -C "$SRC" rev-parse --short HEAD))"

# Inside new mount and PID namespaces: mount, chroot, run. Mounts are private to the namespace
# and vanish with it, and so does every process the command left behind.
INNER='
set -e
T=$1; shift
mount -t proc proc "$T/proc"
mount -t sysfs -o ro sysfs "$T/sys"
mount -t tmpfs -o mode=0755,size=16m tmpfs "$T/dev"
for d in null zero full random urandom tty; do
    touch "$T/dev/$d"
    mount --bind "/dev/$d" "$T/dev/$d"
done
mkdir -p "$T/dev/pts" "$T/dev/shm"
mount -t devpts -o newinstance,ptmxmode=0666,mode=0620 devpts "$T/dev/pts"
ln -s pts/ptmx "$T/dev/ptmx"
ln -s /proc/self/fd "$T/dev/fd"
ln -s /proc/self/fd/0 "$T/dev/stdin"
ln -s /proc/self/fd/1 "$T/dev/stdout"
ln -s /proc/self/fd/2 "$T/dev/stderr"
mount -t tmpfs -o mode=1777 tmpfs "$T/dev/shm"
mount -t tmpfs -o mode=0755 tmpfs "$T/run"
mkdir -p "$T/run/lock"
exec chroot "$T" /usr/bin/env -i HOME=/root TERM=dumb LANG=C.UTF-8 \
    PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    ${http_proxy:+http_proxy=$http_proxy} ${https_proxy:+https_proxy=$https_proxy} \
    ${no_proxy:+no_proxy=$no_proxy} \
    /bin/bash -c "cd /root/mxhook && \"\$@\"" fresh-root "$@"
'
START=$SECONDS
echo "fresh-root: running in the $DIST root: $*"
# In the background, so that a signal to this script is handled at once (bash runs traps only
# after a foreground command ends). SIGKILL to unshare: --kill-child then kills the namespace's
# init, and the kernel everything else in it (its init ignores SIGTERM, like any PID 1).
stop_namespace() {
    kill -KILL "$NS_PID" 2>/dev/null
    wait "$NS_PID" 2>/dev/null
    exit "$1"
}
set +e
unshare --mount --propagation private --pid --fork --kill-child -- \
    /bin/bash -c "$INNER" inner "$TARGET" "$@" </dev/null &
NS_PID=$!
trap 'stop_namespace 130' INT
trap 'stop_namespace 143' TERM
wait "$NS_PID"
RC=$?
set -e
echo "fresh-root: '$*' exited $RC after $((SECONDS - START)) s"
exit "$RC"
