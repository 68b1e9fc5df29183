"""The CLI as a shell pipeline's first command: a reader that stops early (`| head -1`)."""
from __future__ import annotations

import os
import subprocess
import sys


from tests.support.nobody import reachable_dir, run_cli_as_nobody  # noqa: F401 (a fixture)


def test_a_closed_pipe_ends_the_command_quietly(tmp_path):
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before the first line is written
    try:
        proc = subprocess.run([sys.executable, "-m", "mxhook.cli", "dialect", "list"],
                              stdout=write_end, stderr=subprocess.PIPE, timeout=60,
                              env={**os.environ, "MXHOOK_CONFIG": str(tmp_path / "none.conf")})
    finally:
        os.close(write_end)
    assert proc.stderr.decode() == ""  # not "Error: [Errno 32] Broken pipe"
    assert proc.returncode == 1


def test_a_database_out_of_reach_is_not_called_missing(reachable_dir):
    """As a user who may not enter the data directory, `status` says so (EACCES), not that the
    database does not exist yet."""
    tmp_path = reachable_dir
    data = tmp_path / "lib"
    data.mkdir(mode=0o700)
    (data / "rules.db").write_bytes(b"")
    (data / "state.db").write_bytes(b"")
    conf = tmp_path / "mxhook.conf"
    conf.write_text(f"[paths]\nstate_db = {data}/state.db\nrules_db = {data}/rules.db\n")
    os.chmod(conf, 0o644)
    proc = run_cli_as_nobody("--config", str(conf), "status")
    assert proc.returncode != 0
    assert "cannot be reached by this user (Permission denied)" in proc.stderr, proc.stderr
    assert "does not exist yet" not in proc.stderr + proc.stdout


def test_a_config_file_out_of_reach_is_not_replaced_by_the_defaults(reachable_dir):
    etc = reachable_dir / "etc"
    etc.mkdir(mode=0o700)
    (etc / "mxhook.conf").write_text("[paths]\n")
    proc = run_cli_as_nobody("--config", f"{etc}/mxhook.conf", "status")
    assert "cannot be read by this user (Permission denied)" in proc.stderr, proc.stderr
