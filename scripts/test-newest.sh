#!/usr/bin/env bash
# test-newest.sh: the test suite against the newest PyPI release of every dependency.
#
# The dev venv (.venv) runs on Debian 12's own modules (--system-site-packages). This script
# makes a second venv WITHOUT system site packages, installs the project with the newest
# release of every install_requires and test dependency (pip --upgrade --upgrade-strategy
# eager), prints the versions it got, and runs pytest on the suites named in SUITES.
#
# pymilter has no wheel: it is built from source against libmilter, so libmilter-dev, a C
# compiler and the Python headers are installed with apt-get when missing (needs root).
#
# Environment:
#   NEWEST_VENV=DIR   where the venv goes (default build/venv-newest; rebuilt on every run)
#   SUITES="..."      test paths (default: tests/unit tests/milter tests/spooler
#                     tests/logfollow tests/e2e)
#   PYTEST_ARGS="..." extra pytest arguments
set -euo pipefail

SRC=$(cd "$(dirname "$0")/.." && pwd)
VENV=${NEWEST_VENV:-$SRC/build/venv-newest}
SUITES=${SUITES:-tests/unit tests/milter tests/spooler tests/logfollow tests/e2e}
export DEBIAN_FRONTEND=noninteractive PIP_DISABLE_PIP_VERSION_CHECK=1
start=$(date +%s)

BUILD_PACKAGES=(libmilter-dev libsystemd-dev pkg-config gcc python3-dev python3-venv)
if ! dpkg -s "${BUILD_PACKAGES[@]}" >/dev/null 2>&1; then
    echo "test-newest: installing ${BUILD_PACKAGES[*]} (to build pymilter and systemd-python)"
    apt-get update -q
    apt-get install -y -q --no-install-recommends "${BUILD_PACKAGES[@]}"
fi

rm -rf "$VENV"
/usr/bin/python3 -m venv "$VENV"
PY=$VENV/bin/python
"$PY" -m pip install -q --upgrade pip setuptools wheel
# Eager upgrade: every dependency (and theirs) is the newest release, not whatever satisfied a
# bound. Editable, as in .venv: the tests import the source tree (tests/conftest.py) and the
# e2e daemons run the venv's console scripts, so both run the same code.
"$PY" -m pip install -q --upgrade --upgrade-strategy eager -e "$SRC[test,systemd]"

echo "test-newest: versions used"
"$PY" - <<'EOF'
from importlib.metadata import version
import sys
print(f"  python {sys.version.split()[0]}")
for name in ("pymilter", "requests", "urllib3", "idna", "certifi", "charset-normalizer",
             "sqlite-utils", "jinja2", "click", "regex", "cryptography", "pytest", "hypothesis"):
    print(f"  {name} {version(name)}")
EOF

cd "$SRC"
rc=0
"$PY" -m pytest -q -p no:cacheprovider ${PYTEST_ARGS:-} $SUITES || rc=$?
echo "test-newest: pytest exit $rc after $(( $(date +%s) - start ))s (suites: $SUITES)"
exit $rc
