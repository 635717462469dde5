"""Where the pool's files live, so the CLI, the addon and the dashboard agree without flags."""

from __future__ import annotations

import os
from pathlib import Path

DB_ENV = "ACCOUNTPOOL_DB"
SECRETS_ENV = "ACCOUNTPOOL_SECRETS"
DEFAULT_DB = Path("data") / "pool.db"


def default_db_path() -> Path:
    return Path(os.environ.get(DB_ENV) or DEFAULT_DB)


def secrets_path_for(db_path: str | os.PathLike[str], explicit: str | os.PathLike[str] | None = None) -> Path:
    """The secrets store sits beside the database, named so Datasette never picks it up as a `.db`."""
    if explicit:
        return Path(explicit)
    if os.environ.get(SECRETS_ENV):
        return Path(os.environ[SECRETS_ENV])
    db = Path(db_path)
    return db.with_name(db.stem + ".secrets")
