"""Spending a rotating refresh token exactly once, across requests and processes (docs/BEHAVIOUR.md §9).

Blocking by design (a file lock, a sync HTTP call, a SQLite transaction): callers run it in a
worker thread. The order is the guarantee: the token endpoint's answer is committed to the
secrets store before anyone uses the new access token, and a waiter that finds the generation
moved on uses the stored result instead of spending the (now dead) old refresh token again.
"""

from __future__ import annotations

import logging
from pathlib import Path

from accountpool.storage import schema, store
from accountpool.storage.secrets_store import Credentials, SecretsStore
from accountpool.upstream.jwt_claims import token_expiry
from accountpool.upstream.oauth import RefreshError, client_id_for, refresh_sync

log = logging.getLogger("accountpool.refresh")


def rotate_tokens(secrets_path: str | Path, account_id: str, *, stale_generation: int | None,
                  token_url: str, db_path: str | Path | None = None) -> Credentials:
    """Refresh unless someone already did since `stale_generation` (None forces a refresh).

    With `db_path`, a refresh done here also records the new expiry in the accounts table and
    clears a stale `auth_error` there (the dashboard shows both); the tokens are safe by then.
    """
    secrets = SecretsStore(secrets_path, create=False)
    try:
        with secrets.refresh_lock(account_id):
            current = secrets.get(account_id)
            if current is None or not current.refresh_token:
                raise RefreshError("no stored refresh token for this account; re-import its auth.json",
                                   permanent=True)
            if stale_generation is not None and current.generation != stale_generation:
                return current
            answer = refresh_sync(token_url, current.refresh_token,
                                  client_id_for(current.access_token, current.id_token))
            saved = secrets.save_rotation(account_id, access_token=answer.access_token,
                                          refresh_token=answer.refresh_token, id_token=answer.id_token)
    finally:
        secrets.close()
    if db_path is not None:
        note_rotation(db_path, account_id, saved)
    return saved


def access_expiry(creds: Credentials) -> float | None:
    """When the stored access token expires (its `exp` claim), or None when it does not say."""
    try:
        return token_expiry(creds.access_token) if creds.access_token else None
    except ValueError:
        return None


def note_rotation(db_path: str | Path, account_id: str, creds: Credentials) -> None:
    """Best effort: a failure here must not fail a refresh whose tokens are already stored."""
    try:
        db = schema.open_existing(db_path)
    except Exception as exc:
        log.warning("refresh of %s: could not open the pool database to record it: %s", account_id, exc)
        return
    try:
        # `secret_hint` stays: it names the account for humans, and a hint that changed with every
        # refresh would make one login look like several in logs and flows.
        store.update_account(db, account_id, access_expires_at=access_expiry(creds), auth_error=None)
    except Exception as exc:
        log.warning("refresh of %s: could not record the new expiry: %s", account_id, exc)
    finally:
        db.conn.close()
