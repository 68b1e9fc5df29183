"""The fault suite: a few hundred inbound messages through a real private Postfix while the
receiver misbehaves and kill -9 hits the milter and the spooler at random moments.

The run (seeded: MXHOOK_FAULT_SEED=N repeats a run's random choices — message sizes, kill
targets and pauses, the receiver's fault plans — though not the machine's timing; the seed is
printed):

- SENDERS concurrent smtplib clients send MESSAGES messages (unique token per message, unique
  Message-ID per SMTP attempt). A message refused with 4xx (or a broken connection) is retried
  up to MAX_TRIES times with a pause, as an MTA would; 5xx is final. The sender keeps a ledger
  of every attempt: when it started and ended and how it ended.
- The receiver answers each delivery (webhook-id) with a seeded plan of 0..3 faults — 500,
  503 with a slow body, a timeout (answer later than the rule's `--timeout 1`), a connection
  reset, 429 with Retry-After, 408 — and then 200 (sometimes with a slow body).
- A chaos thread kill -9s the milter or the spooler at random moments and restarts it after a
  random pause (bounded number of kills).

Then, with both daemons up, the test waits until every delivery settled and checks:

1. every attempt Postfix accepted (250) reached the receiver, and all requests for one accepted
   attempt carry one webhook-id (duplicates only with the same webhook-id);
2. no attempt Postfix refused reached the receiver — except in the one legitimate window: the
   milter was killed after it spooled the message and before it answered (Postfix then answers
   4xx: milter_default_action = tempfail). Such an arrival is allowed only if a milter kill
   happened during that very attempt's SMTP transaction at the DATA stage; it is counted and
   printed (and it means a duplicate under a second webhook-id when the sender's retry is
   accepted, which receivers cannot deduplicate by webhook-id);
3. no spool file is left in new/ or bad/; a file in tmp/ is allowed only as the remains of a
   milter killed mid-write (a per-record temp file never renamed, so never acknowledged, which
   the spooler removes after an hour), holding no accepted message, and is counted (append-only
   segments of a dead milter are recovered by the spooler within seconds: none may remain);
4. every delivery the receiver saw is `succeeded` in `mxhook log inbound --json`, and nothing
   is left queued, deferred or failed.

The figures (accepted, refused, delivered, duplicates, kills, seed, duration) are printed.

A 410 from the receiver is tested separately (it disables the rule).
"""
from __future__ import annotations

import json
import os
import queue
import random
import signal
import threading
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field

import pytest

from mxhook.delivery import webhook
from mxhook.model.targets import Target
from tests.support.receiver import Response

pytestmark = pytest.mark.e2e

MESSAGES = int(os.environ.get("MXHOOK_FAULT_MESSAGES", "240"))
SENDERS = 4
MAX_TRIES = 8  # SMTP attempts per message (4xx and broken connections are retried)
RETRY_PAUSE = (0.3, 1.0)  # seconds between attempts of one message
PACE = (0.1, 0.6)  # seconds a sender waits between messages: spreads the run over the kills
SEND_BUDGET = 110.0  # seconds: senders take no new message after this (bounded in time)
SETTLE_TIMEOUT = 90.0  # seconds for every delivery to settle once sending ended
MAX_KILLS = 16
KILL_GAP = (0.6, 2.5)  # seconds between kills
DOWN_TIME = (0.05, 0.8)  # seconds a killed daemon stays down

RCPT = "fault@ours.example"
SENDER = "chaos@sender.example"
RULE_TIMEOUT = 1  # seconds (--timeout 1)


# ---------------------------------------------------------------------------------------------
# Ledger

@dataclass
class Attempt:
    token: str
    try_no: int
    message_id: str  # without angle brackets
    start: float
    end: float = 0.0
    code: int | None = None
    stage: str | None = None
    reply: str = ""
    error: str | None = None

    @property
    def accepted(self) -> bool:
        return self.code == 250 and self.stage is None


@dataclass
class Kill:
    target: str
    at: float
    back_at: float = 0.0


@dataclass
class Ledger:
    attempts: list[Attempt] = field(default_factory=list)
    kills: list[Kill] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    unsent: int = 0
    restart_errors: list[str] = field(default_factory=list)

    def add(self, attempt: Attempt) -> None:
        with self.lock:
            self.attempts.append(attempt)


def build_message(token: str, try_no: int, message_id: str, size: int) -> bytes:
    body = f"token {token} try {try_no}\r\n".encode()
    filler = (b"0123456789abcdefghijklmnopqrstuvwxyz" * 3 + b"\r\n") * (size // 110 + 1)
    return (
        f"From: Chaos <{SENDER}>\r\n"
        f"To: {RCPT}\r\n"
        f"Subject: fault {token} try {try_no}\r\n"
        f"Message-ID: <{message_id}>\r\n"
        f"X-Fault-Token: {token}\r\n"
        f"Date: Thu, 01 Jan 2026 00:00:00 +0000\r\n"
        "\r\n"
    ).encode() + body + filler[:size]


def sender(stack, work: "queue.Queue[tuple[str, int]]", ledger: Ledger, seed: int, deadline: float,
           stop: threading.Event) -> None:
    rng = random.Random(f"{seed}:sender:{threading.get_ident()}")
    while not stop.is_set():
        try:
            token, size = work.get_nowait()
        except queue.Empty:
            return
        if time.monotonic() > deadline:
            with ledger.lock:
                ledger.unsent += 1
            continue
        for try_no in range(1, MAX_TRIES + 1):
            mid = f"{token}.{try_no}.{seed}@fault.test"
            att = Attempt(token, try_no, mid, start=time.time())
            res = stack.send(SENDER, [RCPT], build_message(token, try_no, mid, size), timeout=30)
            att.end = time.time()
            att.code, att.stage, att.error = res.code, res.stage, res.error
            att.reply = str(res.reply) if res.reply else ""
            ledger.add(att)
            if att.accepted:
                break
            if att.code is not None and 500 <= att.code < 600:
                break  # permanent: a real MTA bounces, it does not retry
            time.sleep(rng.uniform(*RETRY_PAUSE))
        time.sleep(rng.uniform(*PACE))


def chaos(stack, ledger: Ledger, seed: int, stop: threading.Event) -> None:
    rng = random.Random(f"{seed}:chaos")
    daemons = {"milter": stack.milter, "spooler": stack.spooler}
    while not stop.wait(rng.uniform(*KILL_GAP)):
        if len(ledger.kills) >= MAX_KILLS:
            return
        target = rng.choice(["milter", "spooler"])
        daemon = daemons[target]
        kill = Kill(target, time.time())
        daemon.kill(signal.SIGKILL)
        ledger.kills.append(kill)
        time.sleep(rng.uniform(*DOWN_TIME))
        for _ in range(2):  # a loaded machine may need a second go (ready_timeout)
            try:
                daemon.start()
                break
            except Exception as exc:  # noted; the settling phase starts it again
                ledger.restart_errors.append(f"{target}: {exc}")
                daemon.kill(signal.SIGKILL)
        kill.back_at = time.time()


# ---------------------------------------------------------------------------------------------
# Receiver plan

FAULTS = {
    "500": lambda: Response(500, {}, b"internal error"),
    "503-slow": lambda: Response(503, {}, b"x" * 24, trickle=0.12, trickle_piece=4),  # ~0.7 s body
    "timeout": lambda: Response(200, {}, b"too late", delay=RULE_TIMEOUT + 0.6),
    "reset": lambda: Response(drop=True),
    "429": lambda: Response(429, {"Retry-After": "1"}, b"slow down"),
    "408": lambda: Response(408, {}, b"request timeout"),
}
SUCCESS = {
    "ok": lambda: Response(200, {}, b'{"ok":true}'),
    "ok-slow": lambda: Response(200, {}, b'{"ok":true,"pad":"............"}', trickle=0.05, trickle_piece=6),
}
DELIVERED_KINDS = {"ok", "ok-slow", "timeout"}  # the receiver took the payload (answered 200)


class Plan:
    """Per webhook-id, a seeded list of faults followed by a success."""

    def __init__(self, seed: int):
        self.seed = seed
        self.lock = threading.Lock()
        self.served: dict[str, int] = defaultdict(int)
        self.log: list[tuple[str, str | None, str]] = []  # (webhook-id, message-id, kind)

    def kinds(self, wid: str) -> list[str]:
        rng = random.Random(f"{self.seed}:plan:{wid}")
        faults = [rng.choice(sorted(FAULTS)) for _ in range(rng.choice([0, 1, 1, 2, 2, 3]))]
        return faults + [rng.choice(["ok", "ok", "ok-slow"])]

    def __call__(self, request):
        wid = request.headers.get("webhook-id") or "-"
        try:
            mid = (request.json().get("message") or {}).get("message_id")
            mid = mid.strip().strip("<>") if isinstance(mid, str) else None
        except ValueError:
            mid = None
        with self.lock:
            n = self.served[wid]
            self.served[wid] = n + 1
            kinds = self.kinds(wid)
            kind = kinds[min(n, len(kinds) - 1)]
            self.log.append((wid, mid, kind))
        return (FAULTS.get(kind) or SUCCESS[kind])()


# ---------------------------------------------------------------------------------------------

def spool_files(stack, sub: str) -> list[str]:
    return stack.cfg.spool_files(sub)


def inbound_rows(stack) -> list[dict]:
    return stack.cli.json("log", "inbound", "--limit", "1000000")["items"]


def settle(stack, accepted_mids: set[str], timeout: float) -> list[dict]:
    deadline = time.monotonic() + timeout
    rows: list[dict] = []
    while time.monotonic() < deadline:
        rows = inbound_rows(stack)
        pending = [r for r in rows if r.get("status") in ("queued", "deferred")]
        seen = {(r.get("messageId") or "").strip().strip("<>") for r in rows if r.get("status") == "succeeded"}
        if not pending and not spool_files(stack, "new") and accepted_mids <= seen:
            return rows
        time.sleep(1.0)
    return rows


def test_fault_suite(make_stack, capsys):
    seed = int(os.environ.get("MXHOOK_FAULT_SEED") or random.SystemRandom().randrange(1, 10**6))
    with capsys.disabled():
        print(f"\nfault suite: seed {seed} (MXHOOK_FAULT_SEED={seed} repeats it), "
              f"{MESSAGES} messages, {SENDERS} senders", flush=True)
    started = time.monotonic()
    stack = make_stack()
    stack.add_rule("fault", "/hook", "--when", rf"To~^{RCPT.replace('.', '[.]')}$",
                   "--timeout", str(RULE_TIMEOUT), "--retry-interval", "10", "--discard")
    stack.wait_milter_snapshot()
    plan = Plan(seed)
    stack.receiver.script("/hook", plan)

    rng = random.Random(f"{seed}:messages")
    work: queue.Queue = queue.Queue()
    for i in range(MESSAGES):
        work.put((f"fm{seed}x{i:04d}", rng.choice([200, 2_000, 20_000, 120_000])))
    ledger = Ledger()
    stop_chaos = threading.Event()
    stop_senders = threading.Event()
    chaos_thread = threading.Thread(target=chaos, args=(stack, ledger, seed, stop_chaos), daemon=True)
    deadline = time.monotonic() + SEND_BUDGET
    senders = [threading.Thread(target=sender, args=(stack, work, ledger, seed, deadline, stop_senders),
                                daemon=True) for _ in range(SENDERS)]
    chaos_thread.start()
    for t in senders:
        t.start()
    try:
        for t in senders:
            t.join(SEND_BUDGET + MAX_TRIES * 35)
    finally:
        stop_senders.set()
        stop_chaos.set()
        chaos_thread.join(30)
    sending_done = time.monotonic()
    # both daemons up for the settling phase (a chaos step may have been cut short)
    for daemon in (stack.milter, stack.spooler):
        if not daemon.running():
            daemon.start()

    attempts = list(ledger.attempts)
    accepted = [a for a in attempts if a.accepted]
    refused_attempts = [a for a in attempts if not a.accepted]
    by_token: dict[str, list[Attempt]] = defaultdict(list)
    for a in attempts:
        by_token[a.token].append(a)
    accepted_tokens = {t for t, atts in by_token.items() if any(a.accepted for a in atts)}
    refused_tokens = set(by_token) - accepted_tokens
    accepted_mids = {a.message_id for a in accepted}

    rows = settle(stack, accepted_mids, SETTLE_TIMEOUT)
    settled = time.monotonic()
    time.sleep(1.5)  # late duplicates (a post the spooler retried just now) still get counted
    with plan.lock:
        log = list(plan.log)
    aborted = stack.receiver.incomplete  # uploads cut off (spooler killed mid-request)

    problems: list[str] = []
    # requests by message-id and webhook-id
    wids_by_mid: dict[str | None, set[str]] = defaultdict(set)
    delivered_answers: Counter = Counter()
    for wid, mid, kind in log:
        wids_by_mid[mid].add(wid)
        if kind in DELIVERED_KINDS:
            delivered_answers[wid] += 1
    if None in wids_by_mid:
        problems.append(f"{len(wids_by_mid[None])} request(s) whose body had no readable message id "
                        f"(half-written payload?): {sorted(wids_by_mid[None])[:5]}")
    all_wids = {wid for wid, _, _ in log}

    # 1. every accepted attempt arrived, under one webhook-id
    for a in accepted:
        wids = wids_by_mid.get(a.message_id, set())
        if not wids:
            problems.append(f"accepted (250) but never posted: {a.message_id} ({a.reply})")
        elif len(wids) > 1:
            problems.append(f"accepted attempt {a.message_id} posted under {len(wids)} webhook-ids: {sorted(wids)}")
        elif not any(delivered_answers[w] for w in wids):
            problems.append(f"accepted attempt {a.message_id} never answered 200 by the receiver")

    # 2. refused attempts: never posted, except the kill-after-spool window
    window: list[Attempt] = []
    milter_kills = [k for k in ledger.kills if k.target == "milter"]
    for a in refused_attempts:
        if a.message_id not in wids_by_mid:
            continue
        killed_during = [k for k in milter_kills if a.start <= k.at <= a.end]
        if killed_during and a.stage in ("DATA", None):
            window.append(a)
        else:
            problems.append(
                f"REFUSED attempt {a.message_id} (stage {a.stage}, {a.reply or a.error}) was posted, and no "
                f"milter kill happened during its transaction [{a.start:.3f}, {a.end:.3f}]")

    # 3. spool leftovers (the spooler recovers a dead milter's segments every few seconds)
    wait_until = time.monotonic() + 8
    while (spool_files(stack, "tmp") or spool_files(stack, "new")) and time.monotonic() < wait_until:
        time.sleep(0.3)
    new_left, bad_left, tmp_left = (spool_files(stack, s) for s in ("new", "bad", "tmp"))
    if new_left:
        problems.append(f"{len(new_left)} file(s) left in spool new/: {new_left[:5]}")
    if bad_left:
        problems.append(f"{len(bad_left)} file(s) in spool bad/: {bad_left[:5]}")
    tmp_ok = len(tmp_left) <= len(milter_kills)
    segments_left = [n for n in tmp_left if n.endswith(".seg")]
    if segments_left:
        problems.append(f"segment(s) still in spool tmp/ after settling: {segments_left[:5]}")
    for name in tmp_left:
        try:
            with open(os.path.join(stack.cfg.spool_dir, "tmp", name), "rb") as fh:
                head = fh.read()
        except OSError:
            continue
        for a in accepted:
            if a.message_id.encode() in head:
                problems.append(f"spool tmp/{name} holds ACCEPTED attempt {a.message_id}")
    if not tmp_ok:
        problems.append(f"{len(tmp_left)} file(s) in spool tmp/ but only {len(milter_kills)} milter kill(s)")

    # uploads the receiver saw cut off mid-body: only a killed spooler does that, and the
    # delivery must then have been posted again in full
    spooler_kills = sum(1 for k in ledger.kills if k.target == "spooler")
    for req in aborted:
        wid = req.headers.get("webhook-id")
        if wid not in all_wids:
            problems.append(f"upload of {wid} was cut off mid-body and never posted again in full")
    if aborted and not spooler_kills:
        problems.append(f"{len(aborted)} upload(s) cut off mid-body, but the spooler was never killed")

    # 4. the inbound log: every delivery succeeded, nothing pending
    statuses = Counter(r.get("status") for r in rows)
    row_by_id = {r["id"]: r for r in rows if r.get("status") != "denied"}
    for wid in sorted(all_wids):
        row = row_by_id.get(wid)
        if row is None:
            problems.append(f"webhook-id {wid} is not in `mxhook log inbound`")
        elif row.get("status") != "succeeded":
            problems.append(f"delivery {wid} is {row.get('status')} in the inbound log: {row.get('reason')}")
    for rid, row in row_by_id.items():
        if rid not in all_wids:
            problems.append(f"inbound log row {rid} ({row.get('status')}) never reached the receiver")
    for status in ("queued", "deferred", "failed"):
        if statuses.get(status):
            problems.append(f"{statuses[status]} inbound log row(s) still {status}")

    duplicates = sum(n - 1 for n in delivered_answers.values() if n > 1)
    tokens_multi = [t for t in accepted_tokens | refused_tokens
                    if len({w for a in by_token[t] for w in wids_by_mid.get(a.message_id, ())}) > 1]
    kills = Counter(k.target for k in ledger.kills)
    codes = Counter(a.code if a.code is not None else "conn-error" for a in attempts)
    faults_served = Counter(kind for _, _, kind in log)
    figures = {
        "seed": seed,
        "messages": MESSAGES, "unsent (time budget)": ledger.unsent,
        "accepted (250)": len(accepted_tokens), "refused (final)": len(refused_tokens),
        "smtp attempts": len(attempts), "smtp codes": dict(sorted(codes.items(), key=str)),
        "delivered (webhook-ids, succeeded)": len(all_wids),
        "requests": len(log), "receiver answers": dict(sorted(faults_served.items())),
        "uploads cut off mid-body": len(aborted),
        "duplicates (same webhook-id)": duplicates,
        "refused-but-posted (kill after spool, before answer)": len(window),
        "messages posted under >1 webhook-id": len(tokens_multi),
        "kills": dict(kills), "restart retries": len(ledger.restart_errors),
        "spool tmp/ leftovers": len(tmp_left),
        "inbound log": dict(statuses),
        "duration s": {"send": round(sending_done - started, 1), "settle": round(settled - sending_done, 1),
                       "total": round(time.monotonic() - started, 1)},
    }
    with capsys.disabled():
        print("fault suite figures: " + json.dumps(figures, indent=1), flush=True)
        for a in window:
            print(f"  window: {a.message_id} stage={a.stage} reply={a.reply!r}", flush=True)
    assert len(accepted_tokens) >= MESSAGES // 2, f"too few messages got through: {figures}"
    assert ledger.kills, "the chaos thread killed nothing"
    assert not problems, f"{len(problems)} problem(s):\n" + "\n".join(problems[:40])


# ---------------------------------------------------------------------------------------------
# 410

def test_410_disables_the_rule(make_stack):
    """The spooler disables the rule on a 410 Gone (http.classify says `failed`, status 410)."""
    st = make_stack()
    st.add_rule("gone", "/gone", "--when", r"To~^gone@ours\.example$")
    st.wait_milter_snapshot()
    st.receiver.script("/gone", [(410, {}, b"gone")])
    res = st.send(SENDER, ["gone@ours.example"], build_message("g1", 1, "g1.1@fault.test", 10))
    assert res.accepted, res
    st.receiver.wait_for(1, timeout=20, path="/gone")
    deadline = time.monotonic() + 20
    while True:
        rule = st.cli.json("rule", "show", "gone")
        if not rule.get("enabled", True) or time.monotonic() > deadline:
            break
        time.sleep(0.3)
    assert rule.get("enabled") is False, rule
    rows = st.wait_status(lambda rows: any(r.get("status") == "failed" for r in rows), timeout=15)
    assert any("410" in (r.get("reason") or "") for r in rows), rows
    st.wait_milter_snapshot()
    res = st.send(SENDER, ["gone@ours.example"], build_message("g2", 1, "g2.1@fault.test", 10))
    assert res.code == 550, res  # a disabled rule matches nothing


# ---------------------------------------------------------------------------------------------
# Slow bodies: is the rule's timeout a bound on the whole attempt?

def test_slow_response_body_is_bounded_by_the_rule_timeout():
    from tests.support.receiver import Receiver

    with Receiver() as rx:
        rx.script("/slow", [Response(200, {}, b"x" * 16, trickle=0.5, trickle_piece=2)])  # ~3.5 s
        start = time.monotonic()
        outcome = webhook.deliver(
            webhook.make_session("127.0.0.1/32"),
            Target(kind="rule", id=None, name="slow", url=rx.url + "/slow", allow_http=True, timeout=1),
            b"{}", "application/json", "wid-slow", user_agent="mxhook-test", max_response_bytes=4096,
        )
        elapsed = time.monotonic() - start
    assert elapsed < 2.5, f"attempt with timeout=1 took {elapsed:.1f}s ({outcome.status})"
    assert outcome.status_code == 200, outcome  # it reached the receiver (not refused early)
