"""Queries on `pool.db` shared by the addon, the CLI and the dashboard.

Functions take a `sqlite_utils.Database` so the dashboard can call them inside
`execute_write_fn` (wrapping Datasette's connection) and the CLI on its own connection.
Nothing here touches a secret: credentials are `secrets_store`'s.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import time
from collections.abc import Iterable
from typing import Any

import sqlite_utils

from accountpool.models import (
    RECOVERY_FIELDS,
    Account,
    AccountHealth,
    PoolSettings,
    RateLimitObservation,
    UsageWindow,
    merge_health,
)

CLIENT_KEY_PREFIX = "ap-"


class NotFound(LookupError):
    """An id or label that names nothing; the message is meant for the operator."""


class Conflict(ValueError):
    """A duplicate label or identity."""


# ---------------------------------------------------------------- accounts

_ACCOUNT_FIELDS = tuple(Account.model_fields)


def account_from_row(row: dict[str, Any]) -> Account:
    data = {k: row.get(k) for k in _ACCOUNT_FIELDS if row.get(k) is not None}
    # A record written before `enabled` existed (or with NULL) is enabled (docs/BEHAVIOUR.md §2).
    data["enabled"] = row.get("enabled") is None or bool(row["enabled"])
    data["auth_blocked"] = bool(row.get("auth_blocked") or 0)
    return Account.model_validate(data)


def list_accounts(db: sqlite_utils.Database) -> list[Account]:
    return [account_from_row(r) for r in db.query("select * from accounts order by label")]


def get_account(db: sqlite_utils.Database, id_or_label: str) -> Account:
    rows = list(db.query("select * from accounts where id = ? or label = ? limit 1", [id_or_label, id_or_label]))
    if not rows:
        raise NotFound(f"no account with id or label {id_or_label!r}")
    return account_from_row(rows[0])


def new_account_id() -> str:
    return "acc_" + secrets.token_hex(4)


def insert_account(db: sqlite_utils.Database, account: Account) -> Account:
    if list(db.query("select 1 from accounts where label = ?", [account.label])):
        raise Conflict(f"an account labelled {account.label!r} already exists")
    now = time.time()
    row = account.model_dump(mode="json")
    row.update(enabled=int(account.enabled), auth_blocked=int(account.auth_blocked), created_at=now, updated_at=now)
    db["accounts"].insert(row)
    return account


def update_account(db: sqlite_utils.Database, account_id: str, **changes: Any) -> Account:
    get_account(db, account_id)
    for key in ("enabled", "auth_blocked"):
        if key in changes and changes[key] is not None:
            changes[key] = int(bool(changes[key]))
    changes["updated_at"] = time.time()
    db["accounts"].update(account_id, changes)
    return get_account(db, account_id)


def find_chatgpt_account(db: sqlite_utils.Database, upstream_account_id: str, email: str | None) -> Account | None:
    """The same upstream identity (account id, and e-mail when known): re-import updates it."""
    rows = list(db.query(
        "select * from accounts where kind = 'chatgpt' and upstream_account_id = ? "
        "and (email is ? or email = ? or ? is null) order by created_at limit 1",
        [upstream_account_id, email, email, email],
    ))
    return account_from_row(rows[0]) if rows else None


def set_enabled(db: sqlite_utils.Database, account_id: str, enabled: bool, *, actor: str) -> Account:
    before = get_account(db, account_id)
    after = update_account(db, before.id, enabled=enabled)
    record_audit(db, actor=actor, action="enable" if enabled else "disable", target=before.id,
                 before={"enabled": before.enabled}, after={"enabled": after.enabled})
    return after


def set_auth_blocked(db: sqlite_utils.Database, account_id: str, error: str | None, *, actor: str) -> Account:
    """Only deliberate account management calls this (docs/BEHAVIOUR.md §2): routing never blocks an account."""
    before = get_account(db, account_id)
    after = update_account(db, before.id, auth_blocked=error is not None, auth_error=error)
    record_audit(db, actor=actor, action="auth_block" if error else "clear_block", target=before.id,
                 before={"auth_blocked": before.auth_blocked}, after={"auth_blocked": after.auth_blocked,
                                                                     "auth_error": error})
    return after


# ---------------------------------------------------------------- health

_HEALTH_SCALARS = ("cooldown_until", "cooldown_reason", "cooldown_class", "last_error", "last_error_class",
                   "last_error_at", "last_used_at", "usage_seen_at", "ratelimit_seen_at", *RECOVERY_FIELDS)
_LOADED_ONLY = ("trial_until",)
"""Read into AccountHealth but never written by `save_health` (owned by `trial_claims`)."""
_RL_COLUMNS = {f"rl_{name}": name for name in RateLimitObservation.model_fields}


def health_from_row(row: dict[str, Any], model_cooldowns: dict[str, float] | None = None) -> AccountHealth:
    return AccountHealth(
        account_id=row["account_id"],
        # Columns a migration added are NULL in older rows: the model's default stands for them.
        **{k: v for k in (*_HEALTH_SCALARS, *_LOADED_ONLY) if (v := row.get(k)) is not None},
        model_cooldowns=model_cooldowns or {},
        primary=UsageWindow(used_percent=row.get("primary_used_percent"),
                            window_minutes=row.get("primary_window_minutes"),
                            reset_at=row.get("primary_reset_at")),
        secondary=UsageWindow(used_percent=row.get("secondary_used_percent"),
                              window_minutes=row.get("secondary_window_minutes"),
                              reset_at=row.get("secondary_reset_at")),
        ratelimit=RateLimitObservation(**{name: row.get(col) for col, name in _RL_COLUMNS.items()}),
    )


def health_to_row(health: AccountHealth) -> dict[str, Any]:
    row: dict[str, Any] = {"account_id": health.account_id}
    row.update({k: getattr(health, k) for k in _HEALTH_SCALARS})
    for prefix, window in (("primary", health.primary), ("secondary", health.secondary)):
        row[f"{prefix}_used_percent"] = window.used_percent
        row[f"{prefix}_window_minutes"] = window.window_minutes
        row[f"{prefix}_reset_at"] = window.reset_at
    row.update({col: getattr(health.ratelimit, name) for col, name in _RL_COLUMNS.items()})
    return row


def load_health(db: sqlite_utils.Database, now: float | None = None) -> dict[str, AccountHealth]:
    now = time.time() if now is None else now
    per_model: dict[str, dict[str, float]] = {}
    for row in db.query("select account_id, model, until from model_cooldowns where until > ?", [now]):
        per_model.setdefault(row["account_id"], {})[row["model"]] = row["until"]
    return {
        row["account_id"]: health_from_row(row, per_model.get(row["account_id"]))
        for row in db.query("select * from account_health")
    }


def save_health(db: sqlite_utils.Database, healths: Iterable[AccountHealth]) -> None:
    """Merge into what is stored (another process may have written a newer observation meanwhile)."""
    healths = list(healths)
    stored = load_health(db, now=0.0)
    healths = [merge_health(h, stored[h.account_id]) if h.account_id in stored else h for h in healths]
    rows = [health_to_row(h) for h in healths]
    if rows:
        db["account_health"].upsert_all(rows, pk="account_id")
    cooldowns = [
        {"account_id": h.account_id, "model": model, "until": until, "reason": "model_restricted"}
        for h in healths
        for model, until in h.model_cooldowns.items()
    ]
    if cooldowns:
        db["model_cooldowns"].upsert_all(cooldowns, pk=("account_id", "model"))


# ---------------------------------------------------------------- client keys


def hash_client_key(key: str) -> str:
    """SHA-256 is enough: client keys are 32 random bytes, so there is nothing to brute-force offline."""
    return hashlib.sha256(key.encode()).hexdigest()


def create_client_key(db: sqlite_utils.Database, label: str, *, actor: str = "cli") -> tuple[str, str]:
    """Returns (id, key). The key is shown once; only its hash is stored."""
    if not label.strip():
        raise ValueError("a client key needs a non-empty label")
    if list(db.query("select 1 from client_keys where label = ? and revoked_at is null", [label])):
        raise Conflict(f"an active client key labelled {label!r} already exists")
    key = CLIENT_KEY_PREFIX + secrets.token_urlsafe(32)
    key_id = "ck_" + secrets.token_hex(4)
    db["client_keys"].insert({"id": key_id, "label": label, "key_hash": hash_client_key(key),
                              "prefix": key[:7], "created_at": time.time(), "revoked_at": None})
    record_audit(db, actor=actor, action="client_key_create", target=key_id, before=None, after={"label": label})
    return key_id, key


def list_client_keys(db: sqlite_utils.Database) -> list[dict[str, Any]]:
    return list(db.query("select id, label, prefix, created_at, revoked_at, last_used_at from client_keys "
                         "order by created_at"))


def revoke_client_key(db: sqlite_utils.Database, key_id: str, *, actor: str = "cli") -> None:
    rows = list(db.query("select revoked_at from client_keys where id = ? or label = ?", [key_id, key_id]))
    if not rows:
        raise NotFound(f"no client key with id or label {key_id!r}")
    db.execute("update client_keys set revoked_at = ? where (id = ? or label = ?) and revoked_at is null",
               [time.time(), key_id, key_id])
    record_audit(db, actor=actor, action="client_key_revoke", target=key_id, before=None, after=None)


def active_client_key_hashes(db: sqlite_utils.Database) -> list[tuple[str, str, str]]:
    """(hash, id, label) of every key not revoked."""
    return [(r["key_hash"], r["id"], r["label"])
            for r in db.query("select key_hash, id, label from client_keys where revoked_at is null")]


def match_client_key(presented: str, active: list[tuple[str, str, str]]) -> tuple[str, str] | None:
    """Constant-time match: every stored hash is compared, with no early exit. Returns (id, label)."""
    digest = hash_client_key(presented)
    found: tuple[str, str] | None = None
    for key_hash, key_id, label in active:
        if hmac.compare_digest(digest, key_hash):
            found = (key_id, label)
    return found


# ---------------------------------------------------------------- settings, state, audit


def load_settings(db: sqlite_utils.Database, defaults: dict[str, Any] | None = None) -> PoolSettings:
    """Stored settings over `defaults` (the proxy's options) over the built-in defaults."""
    stored = {r["key"]: json.loads(r["value"]) for r in db.query("select key, value from settings")}
    known = {k: v for k, v in stored.items() if k in PoolSettings.model_fields}
    return PoolSettings.model_validate({**(defaults or {}), **known})


def save_settings(db: sqlite_utils.Database, new: PoolSettings, *, actor: str) -> PoolSettings:
    # Re-validate: `model_copy(update=...)` skips validation, and one bad stored value would make
    # every later `load_settings` (the proxy's and the dashboard's) fail.
    new = PoolSettings.model_validate(new.model_dump(mode="json"))
    before = load_settings(db)
    now = time.time()
    old_dump, new_dump = before.model_dump(mode="json"), new.model_dump(mode="json")
    changed = {k: v for k, v in new_dump.items() if old_dump.get(k) != v}
    if changed:
        db["settings"].upsert_all([{"key": k, "value": json.dumps(v), "updated_at": now} for k, v in changed.items()],
                                  pk="key")
        record_audit(db, actor=actor, action="settings", target="settings",
                     before={k: old_dump.get(k) for k in changed}, after=changed)
    return new


def get_state(db: sqlite_utils.Database, key: str) -> str | None:
    rows = list(db.query("select value from pool_state where key = ?", [key]))
    return rows[0]["value"] if rows else None


def set_state(db: sqlite_utils.Database, key: str, value: str) -> None:
    db["pool_state"].upsert({"key": key, "value": value, "updated_at": time.time()}, pk="key")


def record_audit(db: sqlite_utils.Database, *, actor: str, action: str, target: str, before: Any, after: Any) -> None:
    db["audit_log"].insert({
        "at": time.time(), "actor": actor, "action": action, "target": target,
        "before": json.dumps(before) if before is not None else None,
        "after": json.dumps(after) if after is not None else None,
    })


def data_version(db: sqlite_utils.Database) -> int:
    """Changes whenever another connection commits: the cheap "reload?" probe behind docs/BEHAVIOUR.md §7.

    Probed before every request, so a change made elsewhere applies to the very next one. It reads
    no table: in WAL mode it is a counter in the shared-memory index (~2 µs on the raw connection).
    """
    return db.conn.execute("PRAGMA data_version").fetchone()[0]
