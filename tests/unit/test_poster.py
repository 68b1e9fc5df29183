"""mxhook.delivery.poster: the posting process, against a real loopback receiver -- outcomes in
order, what arrives, signatures, concurrent callers, the child's crash, wedge and close, the SSRF
guard in the child, and the child's end when its parent dies."""
from __future__ import annotations

import os
import pickle
import signal
import subprocess
import sys
import threading
import time

import pytest

from mxhook.delivery import poster as poster_mod
from mxhook.delivery import signing, webhook
from mxhook.delivery.poster import PostingProcess
from mxhook.model.targets import Destination, Target
from tests.support.receiver import Receiver, Response

LOOPBACK = "127.0.0.0/8"  # the receiver's network, allowlisted as [http] allow_networks would
MILTER = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(poster_mod.__file__))))  # .../milter
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def target(url, **kw) -> Target:
    return Target.of("rule", 7, "r1", Destination(**{"url": url, "timeout": 5, "allow_http": True, **kw}))


def requests_for(prefix: str, n: int) -> list[tuple[bytes, str, str]]:
    return [(f'{{"n":{i},"p":"{prefix}"}}'.encode(), "application/json", f"{prefix}-{i}") for i in range(n)]


def post(pp, tgt, reqs, keys=None):
    return pp.post_many(tgt, reqs, keys=keys, user_agent="mxhook-test/1", max_response_bytes=4096)


def gone(pid: int) -> bool:
    """The process has ended (a zombie counts: nothing runs any more)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except OSError:  # ENOENT before the open, ESRCH if reaped between open and read
        return True


def wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if gone(pid):
            return True
        time.sleep(0.05)
    return gone(pid)


# The answer of each request decided by its webhook-id (the child posts concurrently, so the
# arrival order is not the list's order): n % 3 -> 200, 500 (Retry-After 7), 410.
ANSWERS = {0: (200, {}, b'{"ok":1}'), 1: (503, {"Retry-After": "7"}, b"busy"), 2: (410, {}, b"gone")}
EXPECTED = {0: ("succeeded", 200), 1: ("deferred", 503), 2: ("failed", 410)}


def by_id(request):
    return ANSWERS[int(request.headers["webhook-id"].rsplit("-", 1)[1]) % 3]


@pytest.fixture()
def rx():
    with Receiver() as r:
        yield r


@pytest.fixture()
def pp():
    p = PostingProcess(allow_networks=LOOPBACK, connections=4)
    yield p
    p.close()


def test_pickling_keeps_what_crosses_the_pipe():
    tgt = target("https://hooks.example/in?token=t", bearer="tok-secret")
    keys = signing.KeySet((signing.generate_secret(),), ())
    out = webhook.Outcome("deferred", 503, "HTTP 503", 7.0, 12, "busy")
    for value in (tgt, keys, out):
        assert pickle.loads(pickle.dumps(value, pickle.HIGHEST_PROTOCOL)) == value
    assert pickle.loads(pickle.dumps(tgt)).bearer == "tok-secret"


def test_fifty_requests_outcomes_in_order_signed(rx, pp):
    rx.script("/hook", by_id)
    secret = signing.generate_secret()
    reqs = requests_for("wh", 50)
    outcomes = post(pp, target(rx.url + "/hook"), reqs, keys=signing.KeySet((secret,)))
    assert len(outcomes) == 50
    for i, out in enumerate(outcomes):
        assert (out.status, out.status_code) == EXPECTED[i % 3], (i, out)
        assert out.response_excerpt == ANSWERS[i % 3][2].decode()
    assert outcomes[1].retry_after == 7.0
    got = {r.headers["webhook-id"]: r for r in rx.wait_for(50, path="/hook")}
    assert sorted(got) == sorted(wid for _, _, wid in reqs)
    for body, ctype, wid in reqs:
        req = got[wid]
        assert req.body == body and req.headers["Content-Type"] == ctype
        assert req.headers["User-Agent"] == "mxhook-test/1"
        assert "webhook-signature" in req.headers
        assert signing.verify(secret, req.headers, req.body) == wid


def test_no_keys_no_signature_and_auth_sent(rx, pp):
    outcomes = post(pp, target(rx.url + "/plain", bearer="tok-1"), requests_for("p", 3))
    assert [o.status for o in outcomes] == ["succeeded"] * 3
    for req in rx.wait_for(3, path="/plain"):
        assert "webhook-signature" not in req.headers and "webhook-timestamp" in req.headers
        assert req.headers["Authorization"] == "Bearer tok-1"


def test_empty_call_starts_nothing(pp):
    assert post(pp, target("http://127.0.0.1:9/x"), []) == []
    assert pp.pid is None


def test_concurrent_calls_from_eight_threads(rx, pp):
    rx.script("/hook", by_id)
    tgt = target(rx.url + "/hook")
    results: dict[int, list] = {}

    def caller(t):
        results[t] = [post(pp, tgt, requests_for(f"t{t}", 20)) for _ in range(2)]

    threads = [threading.Thread(target=caller, args=(t,)) for t in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(60)
    assert sorted(results) == list(range(8))
    for t, calls in results.items():
        for outcomes in calls:
            assert [(o.status, o.status_code) for o in outcomes] == [EXPECTED[i % 3] for i in range(20)]
    received = rx.wait_for(8 * 2 * 20, path="/hook")
    ids = [r.headers["webhook-id"] for r in received]
    assert sorted(set(ids)) == sorted({f"t{t}-{i}" for t in range(8) for i in range(20)})
    assert len(ids) == 320  # each call posted each of its requests once


def test_child_killed_mid_job_defers_and_the_next_call_restarts(rx, pp):
    rx.script("/slow", [Response(200, delay=3.0)])
    tgt = target(rx.url + "/slow")
    assert [o.status for o in post(pp, target(rx.url + "/fast"), requests_for("a", 2))] == ["succeeded"] * 2
    first = pp.pid
    result = {}
    caller = threading.Thread(target=lambda: result.setdefault("out", post(pp, tgt, requests_for("k", 8))))
    caller.start()
    rx.wait_for(1, path="/slow")  # the child is sending the job
    os.kill(first, signal.SIGKILL)
    caller.join(10)
    assert not caller.is_alive()
    outcomes = result["out"]
    assert len(outcomes) == 8
    for out in outcomes:
        assert out.status == "deferred" and out.status_code is None
        assert out.error.startswith("posting process killed by signal 9 (SIGKILL)"), out.error
    again = post(pp, target(rx.url + "/fast"), requests_for("b", 3))
    assert [o.status for o in again] == ["succeeded"] * 3
    assert pp.pid not in (None, first)


def test_wedged_child_is_bounded_killed_and_replaced(rx, pp, monkeypatch):
    monkeypatch.setattr(poster_mod, "SAFETY_MARGIN", 0.5)
    tgt = target(rx.url + "/hook", timeout=1)
    assert post(pp, tgt, requests_for("a", 1))[0].status == "succeeded"
    first = pp.pid
    os.kill(first, signal.SIGSTOP)  # alive, reading nothing, answering nothing
    try:
        started = time.monotonic()
        outcomes = post(pp, tgt, requests_for("w", 4))  # bound: 1 round * (1 + 1 grace) + 0.5 s
        took = time.monotonic() - started
    finally:
        try:
            os.kill(first, signal.SIGCONT)
        except ProcessLookupError:
            pass
    assert 2.0 <= took < 10, took
    for out in outcomes:
        assert out.status == "deferred"
        assert out.error.startswith("posting process gave no answer within 2 s; killed"), out.error
    assert wait_gone(first, 5)
    assert [o.status for o in post(pp, tgt, requests_for("b", 2))] == ["succeeded"] * 2
    assert pp.pid not in (None, first)


def test_close_ends_the_child_and_later_calls_are_deferred(rx):
    pp = PostingProcess(allow_networks=LOOPBACK)
    assert post(pp, target(rx.url + "/hook"), requests_for("a", 2))[1].status == "succeeded"
    pid = pp.pid
    pp.close()
    assert wait_gone(pid, 5)
    assert pp.pid is None
    out = post(pp, target(rx.url + "/hook"), requests_for("b", 2))
    assert [o.error for o in out] == ["posting process closed"] * 2
    pp.close()  # twice is harmless


def post_in_background(pp, url: str, count: int) -> tuple[threading.Thread, dict]:
    """A caller posting `count` requests to `url` on a thread of its own; its outcomes come
    in the dict under "out"."""
    result: dict = {}
    caller = threading.Thread(target=lambda: result.setdefault(
        "out", post(pp, target(url), requests_for("c", count))))
    caller.start()
    return caller, result


def test_close_finishes_what_is_being_sent_and_defers_the_rest(rx):
    """connections=1: the child sends one request at a time; close() comes while the first is
    being answered: it gets its real answer, the rest were never sent."""
    pp = PostingProcess(allow_networks=LOOPBACK, connections=1)
    rx.script("/slow", [Response(200, delay=1.0)])
    caller, result = post_in_background(pp, rx.url + "/slow", 4)
    rx.wait_for(1, path="/slow")
    pid = pp.pid
    pp.close(wait=5)
    caller.join(10)
    outcomes = result["out"]
    assert (outcomes[0].status, outcomes[0].status_code) == ("succeeded", 200)
    assert [o.error for o in outcomes[1:]] == ["posting process closing: not sent"] * 3
    assert len(rx.requests) == 1
    assert gone(pid)


def test_close_kills_a_child_still_sending_after_the_wait(rx):
    pp = PostingProcess(allow_networks=LOOPBACK)
    rx.script("/slow", [Response(200, delay=4.0)])
    caller, result = post_in_background(pp, rx.url + "/slow", 2)
    rx.wait_for(2, path="/slow")
    pid = pp.pid
    started = time.monotonic()
    pp.close(wait=0.5)
    assert time.monotonic() - started < 3
    caller.join(5)
    assert [o.status for o in result["out"]] == ["deferred"] * 2
    assert [o.error for o in result["out"]] == ["posting process closed"] * 2
    assert wait_gone(pid, 2)


def test_ssrf_guard_applies_in_the_child(rx):
    with PostingProcess(allow_networks=()) as pp:
        outcomes = post(pp, target(rx.url + "/hook?token=SECRET", bearer="tok-secret"), requests_for("s", 2))
    for out in outcomes:
        assert out.status == "deferred" and out.status_code is None
        assert out.error.startswith("egress refused: endpoint address 127.0.0.1"), out.error
        assert "SECRET" not in out.error and "tok-secret" not in out.error
    time.sleep(0.1)
    assert rx.requests == [] and rx.incomplete == []


def test_child_ignores_sigterm(rx, pp):
    assert post(pp, target(rx.url + "/hook"), requests_for("a", 1))[0].status == "succeeded"
    pid = pp.pid
    os.kill(pid, signal.SIGTERM)
    os.kill(pid, signal.SIGINT)
    time.sleep(0.3)
    assert not gone(pid)
    assert post(pp, target(rx.url + "/hook"), requests_for("b", 2))[1].status == "succeeded"
    assert pp.pid == pid


PARENT = """
import sys, time
from mxhook.delivery.poster import PostingProcess
from mxhook.model.targets import Target
pp = PostingProcess(allow_networks="127.0.0.0/8")
tgt = Target(kind="rule", id=None, name="r", url=sys.argv[1], timeout=5, allow_http=True)
out = pp.post_many(tgt, [(b"{}", "application/json", "parent-1")], keys=None, user_agent="t",
                   max_response_bytes=100)
print(pp.pid, out[0].status, flush=True)
time.sleep(60)
"""


def test_child_exits_when_its_parent_dies(rx):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([MILTER, os.environ.get("PYTHONPATH", "")]))
    parent = subprocess.Popen([sys.executable, "-c", PARENT, rx.url + "/hook"], stdout=subprocess.PIPE,
                              env=env, cwd="/", text=True)
    try:
        line = parent.stdout.readline().split()
        assert line[1:] == ["succeeded"], line
        child = int(line[0])
        assert not gone(child)
        parent.kill()
        parent.wait()
        assert wait_gone(child, 5), "the posting process outlived its parent"
    finally:
        parent.kill()
        parent.wait()
        parent.stdout.close()


def test_the_child_imports_the_parents_mxhook():
    """With the parent's mxhook found only through sys.path tricks (not PYTHONPATH), the child
    still finds it: PostingProcess puts its directory on the child's PYTHONPATH."""
    pp = PostingProcess()
    env = pp._env()
    assert env["PYTHONPATH"].split(os.pathsep)[0] == MILTER
    assert os.path.isfile(os.path.join(MILTER, "mxhook", "delivery", "poster.py"))


def test_a_child_that_cannot_start_defers_and_is_not_restarted_at_once(rx, monkeypatch):
    pp = PostingProcess(allow_networks=LOOPBACK)
    monkeypatch.setattr(pp, "_argv", [sys.executable, "-c", "import sys; sys.exit(3)"])
    out = post(pp, target(rx.url + "/hook"), requests_for("a", 2))
    assert [o.error for o in out] == ["posting process exited with status 3"] * 2
    started = time.monotonic()
    out = post(pp, target(rx.url + "/hook"), requests_for("b", 1))
    assert time.monotonic() - started < 0.5  # no new child: a pause after a failed start
    assert out[0].error == "posting process exited with status 3 at its start (see the log)"
    monkeypatch.setattr(pp, "_argv", ["/nonexistent/python3"])
    monkeypatch.setattr(pp, "_not_before", 0.0)
    out = post(pp, target(rx.url + "/hook"), requests_for("c", 1))
    assert out[0].status == "deferred"
    assert out[0].error.startswith("posting process could not be started: [Errno 2]"), out[0].error
    pp.close()
    assert rx.requests == []


class _BrokenPipe:
    def write(self, data):
        raise BrokenPipeError(32, "Broken pipe")

    flush = close = lambda self: None


def test_a_child_not_reading_its_jobs_is_killed_and_replaced(rx, pp):
    assert post(pp, target(rx.url + "/hook"), requests_for("a", 1))[0].status == "succeeded"
    first = pp.pid
    real_stdin = pp._child.proc.stdin  # kept open: the child must not see EOF
    pp._child.proc.stdin = _BrokenPipe()  # as if the child had closed its stdin, still running
    out = post(pp, target(rx.url + "/hook"), requests_for("b", 2))
    assert [o.error for o in out] == ["posting process does not read its jobs (BrokenPipeError); killed"] * 2
    assert wait_gone(first, 5)
    assert [o.status for o in post(pp, target(rx.url + "/hook"), requests_for("c", 2))] == ["succeeded"] * 2
    assert pp.pid not in (None, first)
    real_stdin.close()
