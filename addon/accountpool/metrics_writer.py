"""One writer thread for everything the proxy records in `pool.db` (SPEC §7).

mitmproxy's event loop must never wait on SQLite: hooks and the relay only `submit()` to a
queue. The thread drains it every `flush_interval` seconds and writes one transaction per batch
(Datasette's own single-writer model). A database locked by another process delays the batch,
it is retried and nothing is dropped; a `kill -9` loses at most the rows of the current window
(documented in the README: up to two flush intervals).
"""

from __future__ import annotations

import logging
import queue
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import schema, store
from .models import AccountHealth

log = logging.getLogger("accountpool.metrics")

PRUNE_EVERY_S = 60.0
PRUNE_BATCH = 5_000
MAX_BACKLOG = 500_000


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
class StateUpdate:
    key: str
    value: str


@dataclass
class ClientKeyUse:
    key_id: str
    at: float


Op = RequestRecord | InflightUpdate | HealthUpdate | StateUpdate | ClientKeyUse


class MetricsWriter:
    def __init__(self, db_path: str | Path, *, flush_interval: float = 0.25,
                 retention_s: Callable[[], float] = lambda: 7 * 86_400) -> None:
        self.db_path = Path(db_path)
        self.flush_interval = flush_interval
        self.retention_s = retention_s
        self._queue: queue.SimpleQueue[Op | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="accountpool-metrics", daemon=True)
        self._stopping = threading.Event()
        self._flushed = threading.Condition()
        self._submitted = 0
        self._written = 0
        self._last_prune = 0.0
        self.batches = 0
        self.lock_retries = 0

    def start(self) -> None:
        self._thread.start()

    def submit(self, op: Op) -> None:
        """Non-blocking: safe to call from the event loop."""
        self._submitted += 1
        self._queue.put(op)

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
        self._queue.put(None)
        self._thread.join(timeout)

    # ------------------------------------------------------------ thread side

    def _run(self) -> None:
        db = schema.connect(self.db_path)
        pending: list[Op] = []
        while True:
            stop = self._collect(pending)
            if pending:
                if self._write(db, pending):
                    with self._flushed:
                        self._written += len(pending)
                        self._flushed.notify_all()
                    pending = []
                else:
                    if stop and self._stopping.is_set() and time.monotonic() > self._stop_deadline():
                        log.error("metrics: giving up on %d unwritten operations at shutdown", len(pending))
                        return
                    time.sleep(min(1.0, self.flush_interval * 2))
                    continue
            if stop:
                db.conn.close()
                return
            self._maybe_prune(db)

    def _stop_deadline(self) -> float:
        if not hasattr(self, "_deadline"):
            self._deadline = time.monotonic() + 10.0
        return self._deadline

    def _collect(self, pending: list[Op]) -> bool:
        """Gather ops for up to one flush interval; True once stop was requested."""
        deadline = time.monotonic() + self.flush_interval
        stop = self._stopping.is_set()
        while True:
            timeout = deadline - time.monotonic()
            if timeout <= 0:
                break
            try:
                op = self._queue.get(timeout=timeout)
            except queue.Empty:
                break
            if op is None:
                stop = True
                # drain whatever is left without waiting
                while True:
                    try:
                        rest = self._queue.get_nowait()
                    except queue.Empty:
                        break
                    if rest is not None:
                        pending.append(rest)
                break
            pending.append(op)
            if len(pending) >= 5_000:
                break
        return stop

    def _write(self, db: Any, ops: list[Op]) -> bool:
        requests: list[dict[str, Any]] = []
        attempts: list[dict[str, Any]] = []
        inflight: dict[str, dict[str, Any] | None] = {}
        health: dict[str, AccountHealth] = {}
        state: dict[str, str] = {}
        key_use: dict[str, float] = {}
        for op in ops:
            if isinstance(op, RequestRecord):
                requests.append(op.row)
                attempts.extend(op.attempts)
            elif isinstance(op, InflightUpdate):
                inflight[op.request_id] = op.row
            elif isinstance(op, HealthUpdate):
                health[op.health.account_id] = op.health
            elif isinstance(op, StateUpdate):
                state[op.key] = op.value
            elif isinstance(op, ClientKeyUse):
                key_use[op.key_id] = max(op.at, key_use.get(op.key_id, 0))
        try:
            conn: sqlite3.Connection = db.conn
            conn.execute("BEGIN IMMEDIATE")
            try:
                if requests:
                    db["requests"].insert_all(requests, replace=True, batch_size=500)
                if attempts:
                    db["attempts"].insert_all(attempts, replace=True, batch_size=500)
                gone = [rid for rid, row in inflight.items() if row is None]
                live = [row for row in inflight.values() if row is not None]
                if live:
                    db["inflight"].upsert_all(live, pk="request_id")
                if gone:
                    conn.executemany("DELETE FROM inflight WHERE request_id = ?", [(rid,) for rid in gone])
                if health:
                    store.save_health(db, list(health.values()))
                for key, value in state.items():
                    store.set_state(db, key, value)
                for key_id, at in key_use.items():
                    conn.execute("UPDATE client_keys SET last_used_at = ? WHERE id = ?", [at, key_id])
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
        except sqlite3.OperationalError as exc:
            self.lock_retries += 1
            log.warning("metrics: batch of %d delayed (%s); will retry", len(ops), exc)
            if len(ops) > MAX_BACKLOG:
                del ops[: len(ops) - MAX_BACKLOG]
            return False
        except Exception:
            log.exception("metrics: could not write a batch of %d operations; dropping it", len(ops))
            return True
        self.batches += 1
        return True

    def _maybe_prune(self, db: Any) -> None:
        now = time.time()
        if now - self._last_prune < PRUNE_EVERY_S:
            return
        self._last_prune = now
        try:
            prune_old_rows(db, now - self.retention_s())
        except sqlite3.OperationalError as exc:
            log.warning("metrics: pruning postponed (%s)", exc)


def prune_old_rows(db: Any, cutoff: float, *, batch: int = PRUNE_BATCH) -> int:
    """Delete rows older than `cutoff` in small transactions so traffic never waits behind a big one."""
    removed = 0
    for table, column in (("requests", "started_at"), ("attempts", "started_at"), ("inflight", "updated_at")):
        while True:
            cur = db.conn.execute(
                f"DELETE FROM {table} WHERE rowid IN (SELECT rowid FROM {table} WHERE {column} < ? LIMIT ?)",
                [cutoff, batch],
            )
            removed += cur.rowcount
            if cur.rowcount < batch:
                break
    return removed
