#!/usr/bin/env bash
# build-deb.sh [OUTDIR]: build the mxhook .deb from a clean copy of this tree and lint it.
#
#   - installs the build dependencies and lintian when missing (apt-get, no prompts; root);
#   - copies the tree without .venv, build leftovers or anything git ignores (tracked files plus
#     untracked-but-not-ignored ones, so local edits are included) to a temporary directory;
#   - cp -r packaging/debian debian && dpkg-buildpackage -us -uc -b, with Debian's own tools
#     and python3 first on PATH whatever the caller's environment (a pyenv python3 must not
#     build the package);
#   - lintian (as user nobody): any E: or W: fails (overrides of tags that the installed
#     lintian no longer knows are left out first);
#   - copies mxhook_*.deb into OUTDIR (default: dist/ in the tree) and prints its path last.
# Logs: OUTDIR/build.log, OUTDIR/lintian.log.
set -euo pipefail

export PATH=/usr/sbin:/usr/bin:/sbin:/bin
unset PYTHONPATH PYTHONHOME VIRTUAL_ENV PYENV_VERSION PYTHONSTARTUP
export LC_ALL=C.UTF-8 DEBIAN_FRONTEND=noninteractive

SRC=$(cd "$(dirname "$0")/.." && pwd)
OUT=${1:-$SRC/dist}
# build-essential: dpkg-checkbuilddeps requires it for every build, also of an _all package.
BUILD_DEPS=(build-essential dpkg-dev debhelper dh-python python3-all python3-setuptools pybuild-plugin-pyproject
            bash-completion python3-click lintian)

die() { echo "build-deb: $*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || die "run as root (installs build dependencies)"
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
TMP=$(mktemp -d /tmp/mxhook-build-deb.XXXXXX)
trap 'rm -rf "$TMP"' EXIT

missing=()
for p in "${BUILD_DEPS[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
    echo "build-deb: installing ${missing[*]}" >&2
    { apt-get update -q && apt-get install -y -q --no-install-recommends "${missing[@]}"; } \
        >"$OUT/apt.log" 2>&1 || { tail -n 20 "$OUT/apt.log" >&2; die "apt-get install failed"; }
fi

mkdir "$TMP/src"
if git -C "$SRC" rev-parse --is-inside-work-tree >/dev/null 2>&1; then
    (cd "$SRC" && git ls-files -z --cached --others --exclude-standard \
        | while IFS= read -r -d '' f; do [ -e "$f" ] && printf '%s\0' "$f"; done \
        | tar --null -T - -cf -) | tar -x -C "$TMP/src"
else
    tar -C "$SRC" --exclude=./.venv --exclude=./.git --exclude=./debian --exclude=./build \
        --exclude=./dist --exclude='*.egg-info' --exclude=__pycache__ \
        --exclude=./.pytest_cache --exclude=./.hypothesis -cf - . | tar -x -C "$TMP/src"
fi
[ ! -e "$TMP/src/debian" ] || die "the tree has a debian/ directory; the package is built from packaging/debian"
cp -r "$TMP/src/packaging/debian" "$TMP/src/debian"
# An override of a tag this lintian does not know is an error (alien-tag): Debian 13's lintian
# dropped package-supports-alternative-init-but-no-init.d-script, which Debian 12's still
# reports. Keep only the overrides of tags the installed lintian has.
for f in "$TMP/src/debian/"*.lintian-overrides; do
    [ -e "$f" ] || continue
    while read -r tag; do
        if ! lintian-explain-tags "$tag" >/dev/null 2>&1; then
            echo "build-deb: lintian $(lintian --print-version) does not know $tag: override dropped" >&2
            grep -v -E "^([a-z0-9.+-]+: )?$tag( |\$)" "$f" >"$f.new" || true
            mv "$f.new" "$f"
        fi
    done < <(grep -v -E '^[[:space:]]*(#|$)' "$f" | awk '{print ($1 ~ /:$/) ? $2 : $1}' | sort -u)
done

if ! (cd "$TMP/src" && dpkg-checkbuilddeps && env -i PATH="$PATH" HOME=/root LC_ALL=C.UTF-8 \
        dpkg-buildpackage -us -uc -b) >"$OUT/build.log" 2>&1; then
    tail -n 30 "$OUT/build.log" >&2
    die "dpkg-buildpackage failed (log: $OUT/build.log)"
fi
deb=$(cd "$TMP" && ls mxhook_*_all.deb)

# Lintian as an unprivileged user, as it recommends; from $TMP, since nobody cannot enter the
# caller's directory when the checkout is in /root.
chmod 0755 "$TMP"
if ! (cd "$TMP" && runuser -u nobody -- env HOME=/tmp TMPDIR=/tmp lintian -I --fail-on error,warning \
        "$TMP/$deb") >"$OUT/lintian.log" 2>&1; then
    cat "$OUT/lintian.log" >&2
    die "lintian reports errors or warnings (log: $OUT/lintian.log)"
fi
cp "$TMP/$deb" "$OUT/"
echo "$OUT/$deb"
