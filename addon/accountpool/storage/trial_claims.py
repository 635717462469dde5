"""The half-open trial claim: one request, across every process sharing `pool.db`, tests a recovering account.

When a cooldown ends (`recovery.needs_trial`), each proxy would otherwise send its next request there, and
N proxies would hit a still-limited upstream N times. The claim is one conditional UPDATE on the account's
`account_health` row:

    UPDATE account_health SET trial_until = now + lease, trial_owner = me
    WHERE account_id = ? AND (trial_until IS NULL OR trial_until < now)
      AND (cooldown_until IS NULL OR cooldown_until <= now)

in a `BEGIN IMMEDIATE` transaction; `changes()` says whether this process won. SQLite's write lock makes it
atomic across processes. The row's own `cooldown_until` is checked too, so a trial that just failed
elsewhere (and wrote a new cooldown) is not followed by a second one.

A claim is rare (once per account per cooldown), so it is a small synchronous write, run in a thread
(`asyncio.to_thread`) so the event loop never waits on SQLite. The release goes through the metrics writer
(`TrialRelease`), in the same transaction as the trial's health outcome: releasing first would let another
process claim a second trial before the new cooldown is on disk. A process that dies holding a claim does not
wedge the account: the lease (`TRIAL_LEASE_S`) expires.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path

from accountpool.storage import schema

log = logging.getLogger("accountpool.trial")

TRIAL_RECHECK_S = 1.0
"""After losing a claim to another process, do not ask the database again for this long."""
TRIAL_LEASE_S = 30.0
"""How long a claim stays valid without a release. A trial still waiting for headers after this long lets one
more trial in; a process killed mid-trial blocks the account's recovery for at most this long."""


class TrialClaims:
    """Claims half-open trials in `pool.db` on a connection of its own (used from worker threads)."""

    def __init__(self, db_path: str | Path, *, lease_s: float = TRIAL_LEASE_S) -> None:
        self.db_path = Path(db_path)
        self.lease_s = lease_s
        self._conn: sqlite3.Connection | None = None
        self._lock = threading.Lock()
        self._prefix = f"{os.getpid()}:"

    def new_owner(self) -> str:
        """A token naming one claim, so a release never clears someone else's later claim."""
        return self._prefix + secrets.token_hex(6)

    async def claim(self, account_id: str, owner: str, now: float) -> bool:
        """True when this process now holds the account's trial (off the event loop)."""
        try:
            return await asyncio.to_thread(self.claim_sync, account_id, owner, now)
        except sqlite3.Error as exc:
            # Unable to coordinate: do not send a trial (the waiters retry shortly) rather than risk two.
            log.warning("trial claim for %s failed: %s", account_id, exc)
            return False

    def claim_sync(self, account_id: str, owner: str, now: float) -> bool:
        with self._lock:
            conn = self._connection()
            conn.execute("BEGIN IMMEDIATE")
            try:
                conn.execute("INSERT OR IGNORE INTO account_health (account_id) VALUES (?)", [account_id])
                cur = conn.execute(
                    "UPDATE account_health SET trial_until = ?, trial_owner = ? WHERE account_id = ? "
                    "AND (trial_until IS NULL OR trial_until < ?) AND (cooldown_until IS NULL OR cooldown_until <= ?)",
                    [now + self.lease_s, owner, account_id, now, now])
                won = cur.rowcount == 1
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
            return won

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            self._conn = schema.connect(self.db_path, check_same_thread=False).conn
        return self._conn

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None


class TrialGate:
    """This process's side of the trials: at most one claim attempt per account at a time, no database round trip
    while another process is known to hold it, and the release handed to the metrics writer."""

    def __init__(self, claims: TrialClaims, release: Callable[[str, str], None]) -> None:
        """`release(account_id, owner)`: queue the release behind the trial's health outcome (the writer)."""
        self.claims = claims
        self._release = release
        self._held: dict[str, str] = {}
        """account id → owner token of the trials this process holds or is claiming."""
        self._busy_until: dict[str, float] = {}

    async def claim(self, account_id: str, now: float) -> str | None:
        """The owner token when this process now holds the account's trial, else None."""
        if account_id in self._held or self._busy_until.get(account_id, 0) > now:
            return None
        owner = self.claims.new_owner()
        self._held[account_id] = owner  # before the await: concurrent requests of this process skip it
        if await self.claims.claim(account_id, owner, now):
            return owner
        del self._held[account_id]
        self._busy_until[account_id] = now + TRIAL_RECHECK_S
        return None

    def release(self, account_id: str, owner: str) -> None:
        if self._held.get(account_id) == owner:
            del self._held[account_id]
        self._release(account_id, owner)

    def close(self) -> None:
        self.claims.close()


def release_sql() -> str:
    """The release the metrics writer runs (only the claim's owner clears it)."""
    return "UPDATE account_health SET trial_until = NULL, trial_owner = NULL WHERE account_id = ? AND trial_owner = ?"
