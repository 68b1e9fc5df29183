"""`mxhook log inbound|events` listings of any length: a CSV export has every row, read a page
at a time; a table says when rows were cut; --page and --cursor walk every row once, also
where many rows share one time stamp (services/logs.py `pages`, `count`; store/logs.py)."""
from __future__ import annotations

import json
import os
import tracemalloc

import pytest

from tests.support.cli import separate_runner

from mxhook import cli as climod
from mxhook import config, spool
from mxhook.model.endpoints import Endpoint
from mxhook.model.targets import Destination
from mxhook.services import logs
from mxhook.store import ingest
from mxhook.store import logs as state_logs
from mxhook.store.statedb import StateStore

ROWS = 2500
SAME_TIME = 100  # rows share each time stamp: the cursor's tie-breaker decides their order


def _time(n: int) -> str:
    return f"2026-11-{20 + n // (SAME_TIME * 10):02d}T{n // SAME_TIME % 10:02d}:00:00.000000Z"


class Env:
    def __init__(self, tmp_path):
        self.state_db = str(tmp_path / "state.db")
        self.conf = str(tmp_path / "mxhook.conf")
        with open(self.conf, "w") as fh:
            fh.write(config.render({"paths": {"rules_db": str(tmp_path / "rules.db"),
                                              "state_db": self.state_db,
                                              "spool_dir": str(tmp_path / "spool")}}))
        self.cfg = config.load(self.conf)
        self.runner = separate_runner()

    def run(self, *args):
        res = self.runner.invoke(climod.cli, ["--config", self.conf, *args])
        assert res.exit_code == 0, (res.stdout, res.stderr, res.exception)
        return res

    def json(self, *args):
        return json.loads(self.run(*args, "--json").stdout)


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    e = Env(tmp_path_factory.mktemp("listing"))
    eps = [Endpoint(Destination("https://a.example/ev"), id=1),
           Endpoint(Destination("https://b.example/ev"), id=2)]
    with StateStore(e.state_db) as st:
        ingest.records(st, [spool.Record(f"d{n:04d}", "denied", {
            "received": _time(n), "recipients": [f"u{n}@ours.example"],
            "header_from": "=1+1@x.example" if n == 7 else f"s{n}@x.example", "mail_from": "",
            "client_name": "h", "client_addr": "192.0.2.9", "queue_id": "", "helo": "h",
            "subject": "s", "message_id": f"<m{n}@x>", "filter": "no_rule", "reason": "no rule"})
            for n in range(ROWS)])
        # half as many events, each to two endpoints: ROWS event log rows
        ingest.records(st, [spool.Record(f"e{n:04d}", "event", {
            "type": "bounced", "at": _time(2 * n), "received": _time(2 * n), "queue_id": "Q",
            "recipient": f"r{n}@x.example", "source": "log", "custom_headers": {}})
            for n in range(ROWS // 2)], endpoints=eps)
        st.sync_endpoints(eps)
    return e


def csv_rows(text: str) -> list[str]:
    assert text.endswith("\n") and "\r" not in text
    return text.split("\n")[1:-1]


@pytest.mark.parametrize("log", ["inbound", "events"])
def test_csv_exports_every_row_without_a_limit(env, log):
    res = env.run("log", log, "--csv")
    rows = csv_rows(res.stdout)
    assert len(rows) == ROWS and res.stderr == ""  # nothing cut, nothing said
    assert res.stdout.split("\n")[0] == ",".join(logs.log_of(log).columns)
    if log == "inbound":
        assert sum(",'=1+1@x.example," in r for r in rows) == 1  # formula-safe still
    # with --limit: that many, and the notice on stderr (the CSV on stdout stays clean)
    cut = env.run("log", log, "--csv", "--limit", "300")
    assert csv_rows(cut.stdout) == rows[:300]
    assert cut.stderr.startswith(f"300 of {ROWS:,} rows shown; --limit N, --page 2 or --cursor ")
    assert csv_rows(env.run("log", log, "--csv", "--limit", "300", "--page", "2").stdout) == rows[300:600]


def test_a_listing_reads_one_page_at_a_time(env, monkeypatch):
    """The CSV export holds one page in memory, whatever the number of rows: the store is asked
    for CSV_PAGE rows (plus one, to know whether more follow) at a time, and only when the rows
    before are written."""
    calls = []
    real = state_logs.inbound_page

    def spy(store, **kw):
        calls.append(kw["limit"])
        return real(store, **kw)

    monkeypatch.setattr(state_logs, "inbound_page", spy)
    monkeypatch.setattr(logs, "CSV_PAGE", 100)
    pages = logs.pages(env.cfg, "inbound")
    assert calls == [100]  # the first page is read at once (a refusal comes before any output)
    assert len(next(pages)["items"]) == 100 and calls == [100]
    next(pages)
    assert calls == [100, 100]
    calls.clear()
    res = env.run("log", "inbound", "--csv")
    assert len(csv_rows(res.stdout)) == ROWS
    assert calls == [100] * (ROWS // 100)
    calls.clear()
    # a limit that is not a whole number of pages: the last page is as short as it needs
    assert len(env.json("log", "inbound", "--limit", "250")["items"]) == 250
    assert calls == [100, 100, 50]


def test_table_says_when_rows_were_cut(env):
    res = env.run("log", "inbound")
    assert len(res.stdout.splitlines()) == 2 + 100
    first = env.json("log", "inbound")
    assert res.stderr == (f"100 of {ROWS:,} rows shown; --limit N, --page 2 or --cursor "
                          f"{first['next_cursor']} for more\n")
    page = env.run("log", "events", "--page", "3", "--limit", "50")
    assert page.stderr.startswith(f"rows 101-150 of {ROWS:,} shown; --limit N, --page 4 or --cursor ")
    after = env.run("log", "inbound", "--cursor", first["next_cursor"])
    assert after.stderr.startswith(f"100 of the {ROWS - 100:,} rows after the cursor shown; --cursor ")
    # the whole listing shown, or the last page: nothing is said
    assert env.run("log", "inbound", "--limit", str(ROWS)).stderr == ""
    assert env.run("log", "inbound", "--page", "25").stderr == ""
    assert env.json("log", "inbound", "--page", "25")["next_cursor"] is None
    assert env.run("log", "inbound", "--status", "failed").stdout == "No inbound log entries match\n"
    assert env.run("log", "inbound", "--page", "26").stdout == "No inbound log entries on page 26\n"


def test_when_counting_is_slow_the_table_says_more(env, monkeypatch):
    monkeypatch.setattr(state_logs, "COUNT_BUDGET", 0.0)
    with StateStore(env.state_db, readonly=True) as st:
        assert state_logs.inbound_count(st, status="denied") is None
        assert state_logs.event_count(st, since="2026-01-01") is None
        assert state_logs.event_count(st) == ROWS  # the whole log: counted without a join
        assert state_logs.inbound_count(st, status="denied", budget=5) == ROWS
        assert state_logs.event_count(st, status="queued", budget=5) == ROWS
        # the connection is usable afterwards: the interrupting handler is gone
        assert state_logs.inbound_page(st, limit=1)[0]
    assert env.run("log", "events", "--status", "queued").stderr.startswith(
        "100 rows shown, more match; --limit N, --page 2")
    assert env.run("log", "events", "--status", "queued", "--page", "2").stderr.startswith(
        "rows 101-200 shown, more match;")


@pytest.mark.parametrize("log", ["inbound", "events"])
def test_cursor_and_page_walk_every_row_once(env, log):
    key = (lambda r: r["id"]) if log == "inbound" else (lambda r: (r["id"], r["endpointId"]))
    everything = [key(r) for r in env.json("log", log, "--limit", str(ROWS + 1))["items"]]
    assert len(everything) == len(set(everything)) == ROWS
    by_cursor, cursor, calls = [], None, 0
    while True:
        page = env.json("log", log, "--limit", "37", *(["--cursor", cursor] if cursor else []))
        by_cursor += [key(r) for r in page["items"]]
        cursor, calls = page["next_cursor"], calls + 1
        if cursor is None:
            break
    assert by_cursor == everything and calls == -(-ROWS // 37)
    by_page = []
    for k in range(1, -(-ROWS // 37) + 1):
        by_page += [key(r) for r in env.json("log", log, "--limit", "37", "--page", str(k))["items"]]
    assert by_page == everything
    # a limit above the API's largest page is read as several pages, and continues right
    first = env.json("log", log, "--limit", "1500")
    rest = env.json("log", log, "--limit", "5000", "--cursor", first["next_cursor"])
    assert [key(r) for r in first["items"] + rest["items"]] == everything and rest["next_cursor"] is None


def test_the_cli_pages_as_the_api(env):
    """The same service (services/logs.py *_page) and the same cursors."""
    api = logs.inbound_page(env.cfg, limit=100)
    cli = env.json("log", "inbound")
    assert cli == api
    assert env.json("log", "inbound", "--cursor", api["next_cursor"]) == logs.inbound_page(
        env.cfg, limit=100, cursor=api["next_cursor"])


@pytest.mark.parametrize("args,match", [
    (["--page", "2", "--cursor", "x"], "either --page or --cursor"),
    (["--cursor", "not-a-cursor"], "cursor"),
    (["--page", "0"], "page"),
    (["--csv", "--json"], "either --csv or --json"),
])
def test_listing_usage_errors(env, args, match):
    res = env.runner.invoke(climod.cli, ["--config", env.conf, "log", "inbound", *args])
    assert res.exit_code == 2 and match in res.stderr, (res.stdout, res.stderr)
    assert res.stdout == ""


def test_state_db_is_only_read(env):
    before = os.stat(env.state_db).st_mtime_ns
    env.run("log", "events", "--csv")
    assert os.stat(env.state_db).st_mtime_ns == before


@pytest.mark.parametrize("log,filters", [
    ("inbound", {}), ("inbound", {"status": "denied", "since": "2026-11-21"}),
    ("inbound", {"rule": "no_rule", "until": "2026-11-21T05:00"}),
    ("inbound", {"recipient": "u1"}), ("inbound", {"recipient": "u1234@ours.example"}),
    ("inbound", {"recipient": "@ours.example", "status": "denied"}), ("inbound", {"recipient": "*99@*"}),
    ("inbound", {"recipient": "nobody@else.example"}),
    ("events", {}), ("events", {"endpoint": 2, "status": "queued"}), ("events", {"recipient": "r12"}),
    ("events", {"recipient": "@x.example", "since": "2026-11-21T03:00"}),
])
def test_count_is_what_the_pages_walk(env, log, filters):
    """The cut notice's count, with every filter the pages take (the API's too), from the start
    and after a cursor."""
    rows = [r for page in logs.pages(env.cfg, log, **filters) for r in page["items"]]
    assert logs.count(env.cfg, log, **filters) == len(rows)
    first = logs.log_of(log).page(env.cfg, limit=10, **filters)
    if first["next_cursor"]:
        assert logs.count(env.cfg, log, cursor=first["next_cursor"], **filters) == len(rows) - 10


def test_csv_memory_does_not_grow_with_the_rows(env, monkeypatch):
    """Exporting ten times the rows takes about the memory of one page, not ten times more."""
    monkeypatch.setattr(logs, "CSV_PAGE", 100)

    def peak(limit: int) -> int:
        tracemalloc.start()
        try:
            for _chunk in logs.csv_chunks(env.cfg, "inbound", limit=limit):
                pass
            return tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

    peak(100)  # warm: caches, compiled statements
    small, large = peak(250), peak(2500)
    assert large < small * 1.5, (small, large)
