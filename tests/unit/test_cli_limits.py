"""`mxhook rule test` reads at most [milter] max_message_size (+1 byte) of its message, as the
milter does, whatever the input: the real CLI in a subprocess, fed from /dev/zero and a pipe."""
from __future__ import annotations

import os
import resource
import subprocess
import sys

import pytest

from mxhook import config

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CAP = 1 << 20  # max_message_size in these tests
MEMORY_LIMIT = 1 << 30  # address space of the CLI process: far above CAP, far below "unbounded"
ENV = dict(os.environ, PYTHONPATH=os.path.join(ROOT, "milter"))


@pytest.fixture
def conf(tmp_path):
    path = tmp_path / "mxhook.conf"
    path.write_text(config.render({
        "paths": {"rules_db": str(tmp_path / "rules.db"), "state_db": str(tmp_path / "state.db"),
                  "spool_dir": str(tmp_path / "spool")},
        "milter": {"max_message_size": str(CAP)},
    }))
    subprocess.run(command(str(path), "domain", "add", "ours.example"), env=ENV, check=True,
                   capture_output=True, timeout=60)
    return str(path)


def limit_memory():
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))


def command(conf, *args):
    return [sys.executable, "-m", "mxhook.cli", "--config", conf, *args]


def mxhook(conf, *args, stdin):
    """The CLI started with its address space limited; its stdout and stderr are pipes."""
    return subprocess.Popen(command(conf, *args), stdin=stdin, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=ENV, preexec_fn=limit_memory)


def test_rule_test_refuses_dev_zero_in_one_line_without_reading_it_all(conf):
    # unbounded, the read ran into MemoryError (here: the 1 GiB address space limit)
    proc = mxhook(conf, "rule", "test", "/dev/zero", "--rcpt", "a@ours.example", stdin=subprocess.DEVNULL)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 2, err
    lines = err.decode().splitlines()
    assert lines == [f"Error: /dev/zero is larger than [milter] max_message_size ({CAP} bytes): the "
                     "milter refuses such a message (552 5.3.4), so it is not tested"]
    assert out == b""


def test_rule_test_reads_at_most_the_cap_from_a_pipe(conf):
    proc = mxhook(conf, "rule", "test", "-", "--rcpt", "a@ours.example", stdin=subprocess.PIPE)
    chunk = b"X-Filler: " + b"y" * 65_000 + b"\n"
    written = 0
    try:
        while written < 64 * CAP:  # unbounded, all of it was read
            proc.stdin.write(chunk)
            written += len(chunk)
    except BrokenPipeError:  # the CLI stopped reading and exited
        pass
    out, err = proc.communicate(timeout=60)  # closes stdin: the end of the message
    assert proc.returncode == 2, err
    assert b"stdin is larger than [milter] max_message_size" in err and b"Traceback" not in err
    # what the pipe and the reader's buffer hold on top of the cap + 1 bytes read
    assert written < CAP + 2 * len(chunk) + (1 << 20), written


@pytest.mark.parametrize("size,refused", [(CAP, False), (CAP + 1, True)])
def test_rule_test_takes_a_message_of_exactly_the_cap(conf, tmp_path, size, refused):
    head = b"From: a@sender.example\nSubject: big\n\n"
    msg = tmp_path / "big.eml"
    msg.write_bytes(head + b"z" * (size - len(head)))
    proc = mxhook(conf, "rule", "test", str(msg), "--rcpt", "a@ours.example", stdin=subprocess.DEVNULL)
    out, err = proc.communicate(timeout=60)
    if refused:
        assert proc.returncode == 2 and b"larger than [milter] max_message_size" in err
    else:
        assert proc.returncode == 0, err
        assert b"Subject:    big" in out
