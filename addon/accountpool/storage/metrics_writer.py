"""One writer thread for everything the proxy records in `pool.db` (docs/BEHAVIOUR.md §13).

mitmproxy's event loop must never wait on SQLite: hooks and the relay only `submit()` to a
queue. The thread drains it every `flush_interval` seconds and writes one transaction per batch
(Datasette's own single-writer model). A database locked by another process delays the batch,
it is retried and nothing is dropped.

Kill safety: a batch is one SQLite transaction in WAL mode, so a `kill -9` never leaves half a
batch or a corrupt file. It loses what was still in memory: the ops collected in the current
window plus the batch being committed, at most about two flush intervals (default 250 ms each;
documented in the README). While another process holds the write lock, everything queued since
is in memory too, and a `kill -9` in that time loses it. A clean stop (`done`) drains the queue.
In-flight rows of a killed process stay behind; the next writer deletes the rows whose `pid` is
no longer a live process when it starts.
"""

from __future__ import annotations

import functools
import logging
import os
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from accountpool.models import AccountHealth
from accountpool.storage import schema, store, trial_claims
from accountpool.storage.usage_history import UsageSampler

log = logging.getLogger("accountpool.metrics")

PRUNE_EVERY_S = 60.0
PRUNE_BATCH = 5_000
PRUNE_BATCHES_PER_CYCLE = 4
"""A large backlog (retention just lowered) is pruned a few batches per flush cycle, so new rows
keep landing in between instead of waiting for the whole backlog."""
MAX_BACKLOG = 500_000
MAX_BATCH = 5_000


@dataclass
class RequestRecord:
    row: dict[str, Any]
    attempts: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class InflightUpdate:
    request_id: str
    row: dict[str, Any] | None
    """None removes the request from `inflight`."""


@dataclass
class HealthUpdate:
    health: AccountHealth


@dataclass
class TrialRelease:
    """Ends a half-open trial claim (`trial_claims`); written after the batch's health, in one transaction."""

    account_id: str
    owner: str


@dataclass
class StateUpdate:
    key: str
    value: str


@dataclass
class ClientKeyUse:
    key_id: str
    at: float


Op = RequestRecord | InflightUpdate | HealthUpdate | StateUpdate | ClientKeyUse | TrialRelease


class MetricsWriter:
    def __init__(self, db_path: str | Path, *, flush_interval: float = 0.25,
                 retention_s: Callable[[], float] = lambda: 7 * 86_400,
                 prune_every_s: float = PRUNE_EVERY_S) -> None:
        self.db_path = Path(db_path)
        self.flush_interval = flush_interval
        self.retention_s = retention_s
        """Read before every prune, so a changed retention setting applies without a restart."""
        self.prune_every_s = prune_every_s
        # A deque, not a queue.Queue: `append` is atomic and wakes nobody, so `submit` costs the event
        # loop one append; the thread wakes once per flush interval and takes what is there.
        self._ops: deque[Op] = deque()
        self._thread = threading.Thread(target=self._run, name="accountpool-metrics", daemon=True)
        self._stopping = threading.Event()
        self._flushed = threading.Condition()
        self._submitted = 0
        self._written = 0
        self._last_prune = 0.0
        self._pid = os.getpid()
        self._inflight_swept = False
        self._inflight_stored: set[str] = set()
        """Ids this writer has put into `inflight` and not yet removed: only those need a DELETE."""
        self._sampler = UsageSampler()
        """Which health observations also become `usage_samples` rows (the forecasts' history)."""
        self.batches = 0
        self.lock_retries = 0
        self.dropped = 0

    def start(self) -> None:
        self._thread.start()

    def submit(self, op: Op) -> None:
        """Non-blocking: safe to call from the event loop."""
        self._submitted += 1
        self._ops.append(op)

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until everything submitted so far is written (tests, shutdown)."""
        target = self._submitted
        deadline = time.monotonic() + timeout
        with self._flushed:
            while self._written < target:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not self._thread.is_alive():
                    return False
                self._flushed.wait(min(remaining, 0.1))
        return True

    def stop(self, timeout: float = 15.0) -> None:
        self._stopping.set()
        self._thread.join(timeout)

    # ------------------------------------------------------------ thread side

    def _run(self) -> None:
        db = schema.connect(self.db_path)
        pending: list[Op] = []
        giving_up_at: float | None = None
        while True:
            if not self._inflight_swept:
                self._sweep_inflight(db)
            stop = self._collect(pending)
            if pending:
                if self._write(db, pending):
                    self._mark_written(len(pending))
                    pending = []
                else:
                    if stop:
                        giving_up_at = giving_up_at or time.monotonic() + 10.0
                        if time.monotonic() > giving_up_at:
                            log.error("metrics: giving up on %d unwritten operations at shutdown", len(pending))
                            self._mark_written(len(pending))
                            db.conn.close()
                            return
                    time.sleep(min(1.0, self.flush_interval * 2))
                    continue
            if stop:
                self._forget_own_inflight(db)
                db.conn.close()
                return
            self._maybe_prune(db)

    def _mark_written(self, n: int) -> None:
        with self._flushed:
            self._written += n
            self._flushed.notify_all()

    def _collect(self, pending: list[Op]) -> bool:
        """Gather ops for one flush interval; True once stop was requested (everything is then taken).

        With a full batch already waiting it does not wait: the interval bounds how often a quiet proxy
        writes, it must not cap the rate (MAX_BATCH per interval) below what a busy one produces."""
        if len(self._ops) + len(pending) >= MAX_BATCH:
            stop = self._stopping.is_set()
        else:
            stop = self._stopping.wait(self.flush_interval)
        ops = self._ops
        while ops and (stop or len(pending) < MAX_BATCH):
            pending.append(ops.popleft())
        return stop

    def _write(self, db: Any, ops: list[Op]) -> bool:
        requests: list[dict[str, Any]] = []
        attempts: list[dict[str, Any]] = []
        inflight: dict[str, dict[str, Any] | None] = {}
        health: dict[str, AccountHealth] = {}
        observations: list[AccountHealth] = []
        state: dict[str, str] = {}
        key_use: dict[str, float] = {}
        releases: list[tuple[str, str]] = []
        for op in ops:
            if isinstance(op, RequestRecord):
                requests.append(op.row)
                attempts.extend(op.attempts)
            elif isinstance(op, InflightUpdate):
                inflight[op.request_id] = op.row
            elif isinstance(op, HealthUpdate):
                health[op.health.account_id] = op.health
                observations.append(op.health)
            elif isinstance(op, StateUpdate):
                state[op.key] = op.value
            elif isinstance(op, ClientKeyUse):
                key_use[op.key_id] = max(op.at, key_use.get(op.key_id, 0))
            elif isinstance(op, TrialRelease):
                releases.append((op.account_id, op.owner))
        try:
            conn: sqlite3.Connection = db.conn
            conn.execute("BEGIN IMMEDIATE")
            try:
                # OR IGNORE, not OR REPLACE: a replace skips the delete trigger of the per-minute rollup.
                insert_rows(conn, "INSERT OR IGNORE", "requests", requests)
                insert_rows(conn, "INSERT OR REPLACE", "attempts", attempts)
                # A request that started and ended within one batch never touches `inflight`: most don't.
                gone = [rid for rid, row in inflight.items() if row is None and rid in self._inflight_stored]
                live = [row for row in inflight.values() if row is not None]
                insert_rows(conn, "INSERT OR REPLACE", "inflight", live)
                if gone:
                    delete_rows(conn, "inflight", "request_id", gone)
                samples: list[dict[str, Any]] = []
                if health:
                    store.save_health(db, list(health.values()))
                    samples = self._sampler.propose(observations)
                    insert_rows(conn, "INSERT OR IGNORE", "usage_samples", samples)
                if releases:
                    conn.executemany(trial_claims.release_sql(), releases)
                for key, value in state.items():
                    store.set_state(db, key, value)
                for key_id, at in key_use.items():
                    conn.execute("UPDATE client_keys SET last_used_at = ? WHERE id = ?", [at, key_id])
                conn.execute("COMMIT")
                self._sampler.accept(samples)
                self._inflight_stored.difference_update(rid for rid, row in inflight.items() if row is None)
                self._inflight_stored.update(row["request_id"] for row in live)
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
        except sqlite3.OperationalError as exc:
            self.lock_retries += 1
            log.warning("metrics: batch of %d delayed (%s); will retry", len(ops), exc)
            if len(ops) > MAX_BACKLOG:
                # Memory stays bounded under a lock that never ends: the oldest ops go first.
                excess = len(ops) - MAX_BACKLOG
                del ops[:excess]
                self.dropped += excess
                self._mark_written(excess)
            return False
        except Exception:
            log.exception("metrics: could not write a batch of %d operations; dropping it", len(ops))
            return True
        self.batches += 1
        return True

    def _maybe_prune(self, db: Any) -> None:
        now = time.time()
        if now - self._last_prune < self.prune_every_s:
            return
        try:
            cutoff = now - float(self.retention_s())
        except Exception:
            log.exception("metrics: could not read the retention setting; pruning postponed")
            self._last_prune = now
            return
        try:
            _, more = _prune_step(db, cutoff, batch=PRUNE_BATCH, max_batches=PRUNE_BATCHES_PER_CYCLE)
        except sqlite3.OperationalError as exc:
            log.warning("metrics: pruning postponed (%s)", exc)
            more = False
        # A backlog continues on the next cycle, after the next batch of new rows.
        self._last_prune = 0.0 if more else now

    def _sweep_inflight(self, db: Any) -> None:
        try:
            removed = delete_stale_inflight(db, own_pid=self._pid)
        except sqlite3.OperationalError as exc:
            log.warning("metrics: stale in-flight rows not cleared yet (%s)", exc)
            return
        self._inflight_swept = True
        if removed:
            log.info("metrics: removed %d in-flight rows left by processes that are gone", removed)

    def _forget_own_inflight(self, db: Any) -> None:
        """At a clean stop, requests cut short by the shutdown must not look in flight forever."""
        try:
            db.conn.execute("DELETE FROM inflight WHERE pid = ?", [self._pid])
        except sqlite3.OperationalError as exc:
            log.warning("metrics: could not clear this process's in-flight rows (%s)", exc)


ROWS_PER_STATEMENT = 64
"""Rows per multi-row statement. A batch of n rows takes n // 64 full statements plus one per set bit of the
rest (32, 16, …, 1): at most seven statement shapes per column set stay in the statement cache."""


def insert_rows(conn: sqlite3.Connection, verb: str, table: str, rows: list[dict[str, Any]]) -> None:
    """Multi-row `INSERT … VALUES (…), (…), …` statements, a handful per batch instead of one per row.

    sqlite-utils owns the schema (migrations); on this per-batch path its `insert_all` spent more
    CPU per row than the insert itself (column detection and SQL building for every chunk), so rows go
    in with plain SQL. Few statements, not `executemany`: the sqlite3 module lets go of the GIL around
    every statement step and takes it back after, and each take-back from mitmproxy's busy event loop is
    a forced thread switch on both sides. One step per row cost the proxy's loop as much CPU as the
    insert itself (benchmarks/README.md, issue 14, fourth pass).
    """
    by_columns: dict[tuple[str, ...], list[tuple[Any, ...]]] = {}
    for row in rows:
        by_columns.setdefault(tuple(row), []).append(tuple(row.values()))
    for columns, values in by_columns.items():
        for start, n in _statement_slices(conn, len(values), len(columns)):
            conn.execute(_insert_sql(verb, table, columns, n), [v for row in values[start:start + n] for v in row])


def delete_rows(conn: sqlite3.Connection, table: str, column: str, keys: list[Any]) -> None:
    """`DELETE … WHERE column IN (…)` in as few statements as `insert_rows` uses, for the same reason."""
    for start, n in _statement_slices(conn, len(keys), 1):
        conn.execute(f'DELETE FROM "{table}" WHERE "{column}" IN ({", ".join("?" * n)})', keys[start:start + n])


def _statement_slices(conn: sqlite3.Connection, total: int, per_row: int) -> list[tuple[int, int]]:
    """(start, rows) of each statement: full ones of up to ROWS_PER_STATEMENT rows, then powers of two."""
    limit = conn.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER) // max(1, per_row)  # 999 before SQLite 3.32
    most = 1 << (max(1, min(ROWS_PER_STATEMENT, limit)).bit_length() - 1)
    slices, start = [], 0
    while start < total:
        left = total - start
        n = most if left >= most else 1 << (left.bit_length() - 1)
        slices.append((start, n))
        start += n
    return slices


@functools.lru_cache(maxsize=256)
def _insert_sql(verb: str, table: str, columns: tuple[str, ...], n_rows: int) -> str:
    names = ", ".join(f'"{c}"' for c in columns)
    marks = "(" + ", ".join("?" * len(columns)) + ")"
    return f'{verb} INTO "{table}" ({names}) VALUES ' + ", ".join([marks] * n_rows)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    except (OverflowError, ValueError):
        return False
    return True


def delete_stale_inflight(db: Any, *, own_pid: int) -> int:
    """Delete in-flight rows of processes that no longer run (a `kill -9` leaves them behind).

    Called before this process records anything, so rows carrying its own pid are stale too: they
    come from an earlier process that had the same pid (containers reuse pids after a restart).
    """
    pids = [r[0] for r in db.conn.execute("SELECT DISTINCT pid FROM inflight")]
    dead = [pid for pid in pids if pid is None or pid == own_pid or not pid_alive(int(pid))]
    removed = 0
    for pid in dead:
        if pid is None:
            cur = db.conn.execute("DELETE FROM inflight WHERE pid IS NULL")
        else:
            cur = db.conn.execute("DELETE FROM inflight WHERE pid = ?", [pid])
        removed += cur.rowcount
    return removed


_PRUNED = (("requests", "started_at"), ("attempts", "started_at"), ("inflight", "updated_at"),
           ("usage_samples", "at"))


def _prune_step(db: Any, cutoff: float, *, batch: int, max_batches: int | None) -> tuple[int, bool]:
    """Delete up to `max_batches` batches of rows older than `cutoff`; (removed, more may remain)."""
    removed, batches = 0, 0
    for table, column in _PRUNED:
        while True:
            if max_batches is not None and batches >= max_batches:
                return removed, True
            cur = db.conn.execute(
                f"DELETE FROM {table} WHERE rowid IN (SELECT rowid FROM {table} WHERE {column} < ? LIMIT ?)",
                [cutoff, batch],
            )
            batches += 1
            removed += cur.rowcount
            if cur.rowcount < batch:
                break
    return removed, False


def prune_old_rows(db: Any, cutoff: float, *, batch: int = PRUNE_BATCH) -> int:
    """Delete rows older than `cutoff` in small transactions so traffic never waits behind a big one.

    Each batch is its own autocommit transaction: the write lock is held for one batch at a time.
    Returns how many rows went.
    """
    removed, _ = _prune_step(db, cutoff, batch=batch, max_batches=None)
    return removed
