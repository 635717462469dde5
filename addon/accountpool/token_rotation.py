"""Spending a rotating refresh token exactly once, across requests and processes (SPEC §5).

Blocking by design (a file lock, a sync HTTP call, a SQLite transaction): callers run it in a
worker thread. The order is the guarantee: the token endpoint's answer is committed to the
secrets store before anyone uses the new access token, and a waiter that finds the generation
moved on uses the stored result instead of spending the (now dead) old refresh token again.
"""

from __future__ import annotations

from pathlib import Path

from .oauth import RefreshError, client_id_for, refresh_sync
from .secrets_store import Credentials, SecretsStore


def rotate_tokens(secrets_path: str | Path, account_id: str, *, stale_generation: int | None,
                  token_url: str) -> Credentials:
    """Refresh unless someone already did since `stale_generation` (None forces a refresh)."""
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
            return secrets.save_rotation(account_id, access_token=answer.access_token,
                                         refresh_token=answer.refresh_token, id_token=answer.id_token)
    finally:
        secrets.close()
