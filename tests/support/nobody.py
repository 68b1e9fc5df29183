"""The mxhook CLI run as user nobody (65534) by tests that run as root. The source tree may be
where nobody cannot read (a fresh root's /root), and so may the venv: a copy of the package goes
to a directory every user may read, run by Debian's python3 with Debian's modules."""
from __future__ import annotations

import atexit
import functools
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

SOURCE = Path(__file__).resolve().parents[2] / "milter" / "mxhook"
PYTHON = "/usr/bin/python3"


@functools.lru_cache(maxsize=None)
def _package_copy() -> str:
    root = tempfile.mkdtemp(prefix="mxhook-as-nobody-")
    shutil.copytree(SOURCE, os.path.join(root, "mxhook"), ignore=shutil.ignore_patterns("__pycache__"))
    for path, dirs, files in os.walk(root):
        os.chmod(path, 0o755)
        for name in files:
            os.chmod(os.path.join(path, name), 0o644)
    atexit.register(shutil.rmtree, root, True)
    return root


def run_cli_as_nobody(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """`mxhook ARGS` as nobody:nogroup without supplementary groups, from /."""
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C.UTF-8", "PYTHONPATH": _package_copy()}
    return subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                           PYTHON, "-m", "mxhook.cli", *args],
                          capture_output=True, text=True, timeout=timeout, cwd="/", env=env)


@pytest.fixture
def reachable_dir():
    """A directory every user may enter (pytest's own tmp_path is under a 0700 one); skips
    unless the test can run a command as another user."""
    if os.geteuid() != 0 or not shutil.which("setpriv"):
        pytest.skip("needs root and setpriv to run the command as another user")
    path = Path(tempfile.mkdtemp(prefix="mxhook-as-nobody-dir-"))
    os.chmod(path, 0o755)
    yield path
    shutil.rmtree(path)
