"""The proxy's in-memory picture of the pool, kept current cheaply.

Selection runs on every request, so it reads memory, not SQLite. `PRAGMA data_version` (a
counter that moves only when *another* connection commits) tells whether the CLI, the
dashboard, another proxy or our own writer changed `pool.db`; only then are the small tables
re-read. Runtime health observed here is merged with what the database says, taking the later
or stricter value, so a cooldown seen by one proxy is respected by the other (docs/BEHAVIOUR.md §2, issue 7).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from pathlib import Path

from accountpool.models import Account, AccountHealth, PoolSettings, merge_health
from accountpool.storage import schema, store
from accountpool.storage.secrets_store import Credentials, SecretsStore

log = logging.getLogger("accountpool.pool")

SEQUENTIAL_KEY = "sequential_current_account"
SECRETS_CHECK_S = 0.25
"""A token rotated by another process is picked up within this; a 401 meanwhile re-reads at once."""
AFFINITY_MAX = 50_000


class PoolView:
    """Accounts, health, settings and client keys as of the last change, plus session affinity."""

    def __init__(self, db_path: str | Path, secrets_path: str | Path, *,
                 setting_defaults: dict[str, float] | None = None) -> None:
        self.setting_defaults = setting_defaults or {}
        self.db_path = Path(db_path)
        self.db = schema.open_existing(db_path, check_same_thread=False)
        self.secrets = SecretsStore(secrets_path, create=False)
        self._lock = threading.Lock()
        self._version = -1
        self._secrets_version = -1
        self._secrets_checked_at = 0.0
        self.accounts: list[Account] = []
        self.health: dict[str, AccountHealth] = {}
        self.settings = PoolSettings()
        self.client_keys: list[tuple[str, str, str]] = []
        self.sequential_current: str | None = None
        self._credentials: dict[str, Credentials] = {}
        self._affinity: OrderedDict[str, str] = OrderedDict()
        self.reloads = 0
        self.refresh(force=True)

    # ------------------------------------------------------------ reload

    def refresh(self, *, force: bool = False) -> bool:
        """Re-read the small tables when another connection committed; True when it did."""
        with self._lock:
            version = store.data_version(self.db)
            if not force and version == self._version:
                return False
            self._version = version
            self.accounts = store.list_accounts(self.db)
            fresh = store.load_health(self.db)
            self.health = {aid: merge_health(self.health.get(aid), h) for aid, h in fresh.items()} | {
                aid: h for aid, h in self.health.items() if aid not in fresh}
            for account in self.accounts:
                # Every account has an entry, so selection never builds a blank one per request (an account
                # that has not answered yet: a pydantic model for each of them, on every request).
                if account.id not in self.health:
                    self.health[account.id] = AccountHealth(account_id=account.id)
            try:
                self.settings = store.load_settings(self.db, self.setting_defaults)
            except ValueError as exc:
                log.error("settings in the database are invalid, keeping the previous ones: %s", exc)
            self.client_keys = store.active_client_key_hashes(self.db)
            self.sequential_current = store.get_state(self.db, SEQUENTIAL_KEY)
            self.reloads += 1
            return True

    def credentials(self, account_id: str) -> Credentials | None:
        """Cached credentials, re-read only when the secrets store changed (e.g. a refresh elsewhere)."""
        now = time.monotonic()
        if now - self._secrets_checked_at < SECRETS_CHECK_S and account_id in self._credentials:
            return self._credentials[account_id]
        self._secrets_checked_at = now
        version = self.secrets.data_version()
        if version != self._secrets_version:
            self._secrets_version = version
            self._credentials = {c.account_id: c for c in self.secrets.all()}
        return self._credentials.get(account_id)

    def remember_credentials(self, creds: Credentials) -> None:
        self._credentials[creds.account_id] = creds

    # ------------------------------------------------------------ health

    def health_of(self, account_id: str) -> AccountHealth:
        h = self.health.get(account_id)
        if h is None:
            h = self.health[account_id] = AccountHealth(account_id=account_id)
        return h

    def update_health(self, health: AccountHealth) -> None:
        self.health[health.account_id] = health

    # ------------------------------------------------------------ affinity

    def affinity(self, session_key: str | None) -> str | None:
        if not session_key:
            return None
        account_id = self._affinity.get(session_key)
        if account_id is not None:
            self._affinity.move_to_end(session_key)
        return account_id

    def remember_affinity(self, session_key: str | None, account_id: str) -> None:
        if not session_key:
            return
        self._affinity[session_key] = account_id
        self._affinity.move_to_end(session_key)
        while len(self._affinity) > AFFINITY_MAX:
            self._affinity.popitem(last=False)

    def close(self) -> None:
        self.db.conn.close()
        self.secrets.close()

