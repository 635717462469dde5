"""The metrics writer on its own, against a temp `pool.db`: batching, flush/stop, locks, pruning."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from accountpool.models import AccountHealth
from accountpool.storage import metrics_writer, schema
from accountpool.storage.metrics_writer import (
    HealthUpdate,
    InflightUpdate,
    MetricsWriter,
    RequestRecord,
    delete_stale_inflight,
    prune_old_rows,
)


def request_row(i: int | str, *, started_at: float | None = None, outcome: str = "ok") -> dict[str, Any]:
    t = time.time() if started_at is None else started_at
    return {"id": f"req_{i}", "started_at": t, "finished_at": t + 0.1, "method": "POST",
            "endpoint": "/v1/responses", "model": "gpt-5.5", "stream": 0, "attempts": 1, "status": 200,
            "outcome": outcome, "total_ms": 100.0}


def attempt_row(i: int | str, n: int = 1, *, started_at: float | None = None) -> dict[str, Any]:
    return {"request_id": f"req_{i}", "n": n, "account_id": "acc_a", "status": 200, "class": "ok", "ms": 90.0,
            "refreshed": 0, "started_at": time.time() if started_at is None else started_at}


def inflight_row(rid: str, *, pid: int, updated_at: float | None = None) -> dict[str, Any]:
    t = time.time() if updated_at is None else updated_at
    return {"request_id": rid, "started_at": t, "updated_at": t, "pid": pid, "phase": "streaming"}


def count(db_path: Path, table: str, where: str = "1") -> int:
    conn = sqlite3.connect(db_path)
    try:
        return conn.execute(f"select count(*) from {table} where {where}").fetchone()[0]
    finally:
        conn.close()


def wait_until(predicate: Any, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()



def test_many_submits_become_few_transactions(writer: MetricsWriter, db_path: Path) -> None:
    for i in range(2_000):
        writer.submit(RequestRecord(request_row(i), [attempt_row(i)]))
    assert writer.flush()
    assert count(db_path, "requests") == 2_000
    assert count(db_path, "attempts") == 2_000
    # 2,000 submits in well under a second of flush windows: a handful of transactions, not 2,000.
    assert 1 <= writer.batches <= 10, writer.batches


class CountingConnection(sqlite3.Connection):
    """Counts the statements sent to SQLite: each is one release and re-take of the GIL on the writer thread."""

    statements: list[str]

    def execute(self, sql: str, parameters: Any = (), /) -> sqlite3.Cursor:
        self.statements.append(sql)
        return super().execute(sql, parameters)


@pytest.mark.parametrize(("rows", "limit", "sizes"), [
    (150, None, [64, 64, 16, 4, 2]),  # full statements, then the rest as powers of two
    (64, None, [64]),
    (1, None, [1]),
    (0, None, []),
    (150, 999, [64, 64, 16, 4, 2]),  # SQLite before 3.32: 999 variables, 64 rows of 8 columns fit
    (150, 200, [16, 16, 16, 16, 16, 16, 16, 16, 16, 4, 2]),  # a build with a lower limit: 16 rows of 8
])
def test_rows_go_in_a_few_multi_row_statements(tmp_path: Path, rows: int, limit: int | None,
                                               sizes: list[int]) -> None:
    schema.connect(tmp_path / "pool.db").conn.close()
    conn = sqlite3.connect(tmp_path / "pool.db", factory=CountingConnection, isolation_level=None)
    conn.statements = []
    if limit is not None:
        conn.setlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER, limit)
    attempts = [attempt_row(i) for i in range(rows)]
    metrics_writer.insert_rows(conn, "INSERT OR REPLACE", "attempts", attempts)
    assert [sql.count("(?, ") for sql in conn.statements] == sizes
    got = conn.execute('select request_id, n, account_id, status, "class", ms, refreshed, started_at '
                       "from attempts order by rowid").fetchall()
    assert got == [tuple(a.values()) for a in attempts]
    conn.close()


def test_multi_row_statements_keep_per_row_conflict_rules(tmp_path: Path) -> None:
    """OR IGNORE keeps the first of two rows with one id, even inside one statement; rows with different
    column sets go in separately; the rollup triggers see every row; deletes take lists of keys."""
    db = schema.connect(tmp_path / "pool.db")
    conn = db.conn
    t = time.time()
    rows = [request_row(i, started_at=t) for i in range(40)]
    rows.append({**request_row(3, started_at=t), "outcome": "upstream_error"})  # same id as row 3
    rows.append({**request_row("tokens", started_at=t), "output_tokens": 7})  # one more column
    metrics_writer.insert_rows(conn, "INSERT OR IGNORE", "requests", rows)
    assert conn.execute("select count(*) from requests").fetchone()[0] == 41
    assert conn.execute("select outcome from requests where id = 'req_3'").fetchone()[0] == "ok"
    assert conn.execute("select output_tokens from requests where id = 'req_tokens'").fetchone()[0] == 7
    assert conn.execute("select requests, output_tokens from request_minute_stats "
                        "where dim = 'all'").fetchone() == (41, 7)
    metrics_writer.insert_rows(conn, "INSERT OR REPLACE", "inflight",
                               [inflight_row(f"req_{i}", pid=1) for i in range(70)])
    metrics_writer.delete_rows(conn, "inflight", "request_id", [f"req_{i}" for i in range(0, 70, 2)])
    assert [r for (r,) in conn.execute("select request_id from inflight order by rowid")] == [
        f"req_{i}" for i in range(1, 70, 2)]
    db.close()


def test_flush_waits_for_the_rows(db_path: Path) -> None:
    w = MetricsWriter(db_path, flush_interval=1.0)
    w.start()
    try:
        w.submit(RequestRecord(request_row("late")))
        assert count(db_path, "requests") == 0  # still in the window
        assert w.flush()
        assert count(db_path, "requests") == 1
    finally:
        w.stop()


def test_stop_drains_everything(db_path: Path) -> None:
    w = MetricsWriter(db_path, flush_interval=5.0)  # a window far longer than the test
    w.start()
    for i in range(300):
        w.submit(RequestRecord(request_row(i)))
    w.submit(InflightUpdate("req_x", inflight_row("req_x", pid=os.getpid())))
    w.stop()
    assert not w._thread.is_alive()
    assert count(db_path, "requests") == 300
    # A clean stop leaves no in-flight row of its own process behind.
    assert count(db_path, "inflight") == 0


def test_inflight_updates_coalesce_and_removal_wins(writer: MetricsWriter, db_path: Path) -> None:
    pid = os.getpid()
    writer.submit(InflightUpdate("req_a", {**inflight_row("req_a", pid=pid), "phase": "received"}))
    writer.submit(InflightUpdate("req_a", {**inflight_row("req_a", pid=pid), "phase": "streaming"}))
    writer.submit(InflightUpdate("req_b", inflight_row("req_b", pid=pid)))
    writer.submit(InflightUpdate("req_b", None))
    assert writer.flush()
    conn = sqlite3.connect(db_path)
    try:
        assert conn.execute("select request_id, phase from inflight").fetchall() == [("req_a", "streaming")]
    finally:
        conn.close()
    writer.submit(InflightUpdate("req_a", None))
    assert writer.flush()
    assert count(db_path, "inflight") == 0


def test_a_locked_database_delays_rows_but_loses_none(writer: MetricsWriter, db_path: Path) -> None:
    holder = sqlite3.connect(db_path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    try:
        t0 = time.monotonic()
        for i in range(100):
            writer.submit(RequestRecord(request_row(i)))  # never blocks, whatever the lock
        assert time.monotonic() - t0 < 0.5
        time.sleep(0.3)  # several flush windows pass while the lock is held
        assert count(db_path, "requests") == 0
    finally:
        holder.execute("COMMIT")
        holder.close()
    assert writer.flush(timeout=10)
    assert count(db_path, "requests") == 100


def test_a_lock_longer_than_the_busy_timeout_is_retried(db_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`database is locked` after the busy timeout: the batch waits in memory and is written later."""
    monkeypatch.setattr(schema, "BUSY_TIMEOUT_MS", 100)
    w = MetricsWriter(db_path, flush_interval=0.05)
    w.start()
    holder = sqlite3.connect(db_path, isolation_level=None)
    try:
        holder.execute("BEGIN IMMEDIATE")
        for i in range(50):
            w.submit(RequestRecord(request_row(i)))
        assert wait_until(lambda: w.lock_retries >= 2)
        holder.execute("COMMIT")
        for i in range(50, 60):
            w.submit(RequestRecord(request_row(i)))
        assert w.flush(timeout=10)
        assert count(db_path, "requests") == 60
    finally:
        holder.close()
        w.stop()


def test_health_updates_land_in_account_health(writer: MetricsWriter, db_path: Path) -> None:
    now = time.time()
    writer.submit(HealthUpdate(AccountHealth(account_id="acc_a", last_used_at=now - 1)))
    writer.submit(HealthUpdate(AccountHealth(account_id="acc_a", last_used_at=now, usage_seen_at=now,
                                             model_cooldowns={"gpt-5.5": now + 60})))
    assert writer.flush()
    conn = sqlite3.connect(db_path)
    try:
        assert conn.execute("select last_used_at, usage_seen_at from account_health").fetchall() == [(now, now)]
        assert conn.execute("select account_id, model from model_cooldowns").fetchall() == [("acc_a", "gpt-5.5")]
    finally:
        conn.close()


def test_prune_old_rows_removes_only_rows_past_the_cutoff(db_path: Path) -> None:
    db = schema.connect(db_path)
    try:
        now = time.time()
        db["requests"].insert_all([request_row(f"old{i}", started_at=now - 8 * 86_400) for i in range(25)]
                                  + [request_row(f"new{i}", started_at=now - 6 * 86_400) for i in range(5)])
        db["attempts"].insert_all([attempt_row(f"old{i}", started_at=now - 8 * 86_400) for i in range(25)]
                                  + [attempt_row(f"new{i}", started_at=now - 60) for i in range(5)])
        db["inflight"].insert_all([inflight_row("old", pid=1, updated_at=now - 8 * 86_400),
                                   inflight_row("new", pid=1, updated_at=now)])
        removed = prune_old_rows(db, now - 7 * 86_400, batch=10)  # several small batches
        assert removed == 25 + 25 + 1
        assert sorted(r["id"] for r in db.query("select id from requests")) == [f"req_new{i}" for i in range(5)]
        assert db["attempts"].count == 5 and db["inflight"].count == 1
        # The per-minute rollup follows the deletions (its triggers run in the same statements).
        assert db.execute("select sum(requests) from request_minute_stats where dim = 'all'").fetchone()[0] == 5
    finally:
        db.close()


def test_periodic_prune_uses_the_current_retention(db_path: Path) -> None:
    retention = {"s": 7 * 86_400.0}
    db = schema.connect(db_path)
    now = time.time()
    db["requests"].insert_all([request_row("ancient", started_at=now - 30 * 86_400),
                               request_row("hour_old", started_at=now - 3_600)])
    db.close()
    w = MetricsWriter(db_path, flush_interval=0.02, retention_s=lambda: retention["s"], prune_every_s=0.05)
    w.start()
    try:
        assert wait_until(lambda: count(db_path, "requests") == 1)
        assert count(db_path, "requests", "id = 'req_hour_old'") == 1
        retention["s"] = 60.0  # the setting changed: read again on the next prune
        w.submit(RequestRecord(request_row("fresh")))
        assert wait_until(lambda: count(db_path, "requests", "id = 'req_hour_old'") == 0)
        assert w.flush()
        assert count(db_path, "requests", "id = 'req_fresh'") == 1
    finally:
        w.stop()


def test_a_pruning_backlog_goes_a_few_batches_per_cycle(db_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(metrics_writer, "PRUNE_BATCH", 10)
    monkeypatch.setattr(metrics_writer, "PRUNE_BATCHES_PER_CYCLE", 2)
    db = schema.connect(db_path)
    db["requests"].insert_all([request_row(i, started_at=1_000.0) for i in range(95)])
    db.close()
    w = MetricsWriter(db_path, flush_interval=0.01, prune_every_s=3_600)
    w.start()
    try:
        assert wait_until(lambda: count(db_path, "requests") == 0)
    finally:
        w.stop()


def test_stale_inflight_rows_of_dead_processes_are_swept_at_start(db_path: Path) -> None:
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    db = schema.connect(db_path)
    db["inflight"].insert_all([inflight_row("dead", pid=gone.pid), inflight_row("alive", pid=os.getppid()),
                               inflight_row("reused_pid", pid=os.getpid())])
    db.close()
    w = MetricsWriter(db_path, flush_interval=0.02)
    w.start()
    try:
        assert wait_until(lambda: count(db_path, "inflight") == 1)
        assert count(db_path, "inflight", "request_id = 'alive'") == 1
    finally:
        w.stop()


def test_delete_stale_inflight_keeps_live_processes(db_path: Path) -> None:
    db = schema.connect(db_path)
    try:
        db["inflight"].insert_all([inflight_row("a", pid=os.getppid()), inflight_row("b", pid=2**22 + 12345)])
        assert delete_stale_inflight(db, own_pid=os.getpid()) == 1
        assert [r["request_id"] for r in db.query("select request_id from inflight")] == ["a"]
    finally:
        db.close()


def test_submit_never_blocks_while_the_writer_is_stuck(db_path: Path) -> None:
    holder = sqlite3.connect(db_path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    w = MetricsWriter(db_path, flush_interval=0.01)
    w.start()
    try:
        worst = 0.0
        for i in range(5_000):
            t = time.perf_counter()
            w.submit(RequestRecord(request_row(i)))
            worst = max(worst, time.perf_counter() - t)
        assert worst < 0.5, worst  # a put, never a wait on SQLite (busy timeout: 5 s)
    finally:
        holder.execute("COMMIT")
        holder.close()
        stopper = threading.Thread(target=w.stop)
        stopper.start()
        stopper.join(20)
    assert count(db_path, "requests") == 5_000


KILLED_WRITER = """
import sys, time
from accountpool.storage.metrics_writer import MetricsWriter, RequestRecord
w = MetricsWriter(sys.argv[1], flush_interval=0.05)
w.start()
row = lambda i: {"id": f"req_{i}", "started_at": time.time(), "outcome": "ok"}
for i in range(500):
    w.submit(RequestRecord(row(i)))
assert w.flush()
print("flushed", flush=True)
i = 500
while True:
    w.submit(RequestRecord(row(i)))
    i += 1
    time.sleep(0.0005)
"""


def test_kill_9_loses_only_the_open_window_and_never_corrupts(db_path: Path) -> None:
    """A batch is one transaction: after `kill -9` the file is intact and every flushed row is there."""
    proc = subprocess.Popen([sys.executable, "-c", KILLED_WRITER, str(db_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "flushed"
        time.sleep(0.3)  # a few more windows commit while rows keep coming
    finally:
        proc.kill()
        proc.wait(5)
    conn = sqlite3.connect(db_path)
    try:
        assert conn.execute("pragma integrity_check").fetchone()[0] == "ok"
        ids = {int(r[0][4:]) for r in conn.execute("select id from requests")}
    finally:
        conn.close()
    assert set(range(500)) <= ids
    assert ids == set(range(len(ids)))  # committed in order: whatever was lost is the tail
