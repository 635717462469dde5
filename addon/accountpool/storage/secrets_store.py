"""Credentials, kept apart from everything Datasette can serve.

`pool.db` is served by Datasette, where anyone with view permission can run SQL; a token in
it would be one `select` away. So tokens live in their own SQLite file (`pool.secrets`, mode
0600, deliberately not named `*.db`). Token rotation writes access, refresh and id token in one
transaction: a rotated refresh token is either fully stored or the old set is still intact.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import sqlite3
import stat
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

BUSY_TIMEOUT_S = 10.0


class SecretsStoreError(RuntimeError):
    """The secrets file is missing, unreadable or corrupt; the message names the file, never a secret."""


@dataclass(frozen=True)
class Credentials:
    account_id: str
    api_key: str | None = None
    access_token: str | None = None
    refresh_token: str | None = None
    id_token: str | None = None
    generation: int = 0
    """Bumped on every token change; lets a waiter see that another process already refreshed."""

    def __repr__(self) -> str:  # never print a secret, even in a traceback
        return f"Credentials(account_id={self.account_id!r}, generation={self.generation})"

    __str__ = __repr__


_COLUMNS = "account_id, api_key, access_token, refresh_token, id_token, generation"


class SecretsStore:
    def __init__(self, path: str | os.PathLike[str], *, create: bool = True) -> None:
        self.path = Path(path)
        if not self.path.exists():
            if not create:
                raise SecretsStoreError(f"no secrets store at {self.path}")
            self.path.parent.mkdir(parents=True, exist_ok=True)
            os.close(os.open(self.path, os.O_CREAT | os.O_WRONLY, 0o600))
        self._ensure_private()
        try:
            self._conn = sqlite3.connect(str(self.path), timeout=BUSY_TIMEOUT_S, isolation_level=None,
                                         check_same_thread=False)
            self._enable_wal()
            self._conn.execute(
                "CREATE TABLE IF NOT EXISTS secrets (account_id TEXT PRIMARY KEY, api_key TEXT, "
                "access_token TEXT, refresh_token TEXT, id_token TEXT, generation INTEGER NOT NULL DEFAULT 0, "
                "updated_at REAL)"
            )
        except sqlite3.DatabaseError as exc:
            raise SecretsStoreError(f"secrets store {self.path} is unreadable or corrupt: {exc}") from exc

    def _enable_wal(self) -> None:
        """Switching to WAL needs an exclusive lock that SQLite does not wait for through the busy
        handler, so two processes opening a fresh store at once would see "database is locked"."""
        deadline = time.monotonic() + BUSY_TIMEOUT_S
        while True:
            try:
                if self._conn.execute("PRAGMA journal_mode = WAL").fetchone()[0] == "wal":
                    return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() > deadline:
                    raise
            if time.monotonic() > deadline:
                raise sqlite3.OperationalError("could not switch to WAL mode")
            time.sleep(0.02)

    def _ensure_private(self) -> None:
        mode = stat.S_IMODE(self.path.stat().st_mode)
        if mode & 0o077:
            os.chmod(self.path, 0o600)

    def close(self) -> None:
        self._conn.close()

    def data_version(self) -> int:
        """Changes when another connection commits: a cheap "did anything change?" probe."""
        return self._conn.execute("PRAGMA data_version").fetchone()[0]

    def get(self, account_id: str) -> Credentials | None:
        try:
            row = self._conn.execute(f"SELECT {_COLUMNS} FROM secrets WHERE account_id = ?", [account_id]).fetchone()
        except sqlite3.DatabaseError as exc:
            raise SecretsStoreError(f"secrets store {self.path} is unreadable or corrupt: {exc}") from exc
        return Credentials(*row) if row else None

    def all(self) -> list[Credentials]:
        try:
            rows = self._conn.execute(f"SELECT {_COLUMNS} FROM secrets ORDER BY account_id").fetchall()
        except sqlite3.DatabaseError as exc:
            raise SecretsStoreError(f"secrets store {self.path} is unreadable or corrupt: {exc}") from exc
        return [Credentials(*row) for row in rows]

    def put(self, creds: Credentials) -> Credentials:
        """Insert or replace an account's credentials in one transaction; returns the stored generation."""
        with self._transaction() as cur:
            row = cur.execute("SELECT generation FROM secrets WHERE account_id = ?", [creds.account_id]).fetchone()
            generation = (row[0] if row else 0) + 1
            cur.execute(
                "INSERT OR REPLACE INTO secrets (account_id, api_key, access_token, refresh_token, id_token, "
                "generation, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                [creds.account_id, creds.api_key, creds.access_token, creds.refresh_token, creds.id_token,
                 generation, time.time()],
            )
        return Credentials(creds.account_id, creds.api_key, creds.access_token, creds.refresh_token,
                           creds.id_token, generation)

    def save_rotation(self, account_id: str, *, access_token: str, refresh_token: str | None,
                      id_token: str | None) -> Credentials:
        """Persist a refresh answer atomically; a missing new refresh/id token keeps the old one."""
        with self._transaction() as cur:
            row = cur.execute(f"SELECT {_COLUMNS} FROM secrets WHERE account_id = ?", [account_id]).fetchone()
            if row is None:
                raise SecretsStoreError(f"no credentials stored for account {account_id}")
            old = Credentials(*row)
            new = Credentials(account_id, old.api_key, access_token, refresh_token or old.refresh_token,
                              id_token or old.id_token, old.generation + 1)
            cur.execute(
                "UPDATE secrets SET access_token = ?, refresh_token = ?, id_token = ?, generation = ?, "
                "updated_at = ? WHERE account_id = ?",
                [new.access_token, new.refresh_token, new.id_token, new.generation, time.time(), account_id],
            )
        return new

    def delete(self, account_id: str) -> None:
        with self._transaction() as cur:
            cur.execute("DELETE FROM secrets WHERE account_id = ?", [account_id])

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Cursor]:
        cur = self._conn.cursor()
        try:
            cur.execute("BEGIN IMMEDIATE")
            try:
                yield cur
            except BaseException:
                cur.execute("ROLLBACK")
                raise
            cur.execute("COMMIT")
        except sqlite3.DatabaseError as exc:
            raise SecretsStoreError(f"secrets store {self.path} could not be written: {exc}") from exc

    @contextlib.contextmanager
    def refresh_lock(self, account_id: str) -> Iterator[None]:
        """Cross-process single-flight for one account's refresh (blocking: call from a thread).

        A rotating refresh token may be spent only once; two proxies sharing the pool must not both
        spend it. An advisory `flock` on a per-store lock file serialises refreshes; the holder
        re-reads the credentials first, so a waiter sees the rotated token and skips its own refresh.
        """
        lock_path = self.path.with_name(self.path.name + ".lock")
        fd = os.open(lock_path, os.O_CREAT | os.O_RDWR, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)
