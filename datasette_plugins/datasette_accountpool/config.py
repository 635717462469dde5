"""Where the dashboard finds the pool: its database, the secrets store and the token endpoint.

Plugin configuration (metadata `plugins: datasette-accountpool: {...}`):
- `database`: name of the served pool database (default: the one with `accounts` and `requests`);
- `secrets_path`: the secrets store (else env ACCOUNTPOOL_SECRETS, else `<db stem>.secrets` beside it);
- `oauth_token_url`: token endpoint for "refresh now" (else env ACCOUNTPOOL_OAUTH_TOKEN_URL, else OpenAI's);
- `allow_view` / `allow_manage`: see `permissions` (they also open the pool database's own Datasette pages).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from accountpool.storage.paths import secrets_path_for
from accountpool.storage.schema import SECRET_TABLE_NAMES
from accountpool.upstream.oauth import DEFAULT_TOKEN_URL

PLUGIN_NAME = "datasette-accountpool"
STATIC_NAME = "accountpool"
"""Datasette serves `static/` under the *distribution's* name: /-/static-plugins/accountpool/…"""
TOKEN_URL_ENV = "ACCOUNTPOOL_OAUTH_TOKEN_URL"
POOL_TABLES = frozenset({"accounts", "requests"})


class PoolNotFound(LookupError):
    pass


class SecretsServed(RuntimeError):
    """A served database holds a table of credentials: refuse to start rather than publish it."""


def plugin_config(datasette: Any) -> dict[str, Any]:
    return datasette.plugin_config(PLUGIN_NAME) or {}


async def pool_database(datasette: Any) -> Any:
    """The Datasette `Database` holding the pool (configured by name, else found by its tables)."""
    name = plugin_config(datasette).get("database")
    if name:
        if name not in datasette.databases:
            raise PoolNotFound(f"plugin config names database {name!r}, which Datasette does not serve")
        return datasette.databases[name]
    for db_name, db in datasette.databases.items():
        if db_name.startswith("_"):
            continue
        if set(await db.table_names()) >= POOL_TABLES:
            return db
    raise PoolNotFound("no served database holds the accountpool tables (accounts, requests); "
                       "serve the pool database, e.g. `datasette data/pool.db`")


def secrets_path(datasette: Any, db_path: str) -> Path:
    return secrets_path_for(db_path, plugin_config(datasette).get("secrets_path"))


def token_url(datasette: Any) -> str:
    return plugin_config(datasette).get("oauth_token_url") or os.environ.get(TOKEN_URL_ENV) or DEFAULT_TOKEN_URL


async def refuse_served_secrets(datasette: Any) -> None:
    """docs/BEHAVIOUR.md §15: no secret in a Datasette page or SQL result, so a served secrets table stops startup."""
    for name, db in datasette.databases.items():
        found = {t for t in await db.table_names() if t.lower() in SECRET_TABLE_NAMES}
        if found:
            raise SecretsServed(
                f"datasette-accountpool: refusing to start: database {name!r} ({db.path}) has table(s) "
                f"{', '.join(sorted(found))}, which may hold credentials. Serve only the pool database "
                "(e.g. data/pool.db), never the secrets store.")
