"""Every permission decision of the dashboard, in one place (Datasette 1.0 replaces this API).

Two actions: `accountpool-view` (see the pages) and `accountpool-manage` (submit their forms;
implies view). Granted to the root actor (`datasette --root`; in 0.65 root has no power of its
own) and to actors matching the Datasette *allow blocks* in the plugin configuration:

    plugins:
      datasette-accountpool:
        allow_view: {id: [alice, bob]}
        allow_manage: {id: alice}

Anything else (no config, no match) is left to other plugins and then denied by default.

The pool database is private too (issue 12): its accounts, client-key hashes, requests and audit
log are for the same people as the dashboard. Datasette's own actions on it (`POOL_ACTIONS`) are
refused to an actor without `accountpool-view`; viewers get Datasette's usual answer (metadata
`allow` blocks still apply to them). `view-instance` is refused to non-viewers only when every served
database is private, i.e. when the instance would show nothing but the pool; beside other databases
the instance stays open and the pool is left out of its listings. `allow_view: true` opens it all.
"""

from __future__ import annotations

import weakref
from collections.abc import Awaitable
from typing import Any

from datasette.utils import actor_matches_allow
from datasette.utils.asgi import Forbidden

from .config import POOL_TABLES, plugin_config

VIEW = "accountpool-view"
MANAGE = "accountpool-manage"
ROOT_ACTOR_ID = "root"

_CONFIG_KEYS = {VIEW: ("allow_view", "allow_manage"), MANAGE: ("allow_manage",)}

POOL_ACTIONS = frozenset({"view-database", "view-database-download", "view-table", "view-query", "execute-sql"})
"""Datasette's actions whose resource names a database (alone or as `(database, table_or_query)`)."""
INSTANCE_ACTION = "view-instance"
INTERNAL_DATABASE = "_internal"
"""Datasette's own catalog: root-only already, and never a reason to keep the instance open."""
CROSSDB_DATABASE = "_memory"
"""With `--crossdb` this one attaches the other databases, so SQL there reaches the pool's tables."""

_KNOWN_POOLS: weakref.WeakSet[Any] = weakref.WeakSet()
"""`Database` objects found to hold the pool tables. A pool stays a pool, so a yes is kept for the
object's life; a no is asked again (one read of sqlite_master, never of the data) because a database
served before `accountpool init` made its tables must not stay open once it has them."""


def decide(actor: dict[str, Any] | None, action: str, config: dict[str, Any]) -> bool | None:
    """True to grant; None to abstain (never False, so another plugin may still grant)."""
    if action not in _CONFIG_KEYS:
        return None
    if actor and actor.get("id") == ROOT_ACTOR_ID:
        return True
    for key in _CONFIG_KEYS[action]:
        allow = config.get(key)
        # `actor_matches_allow(actor, None)` is True: an absent block must grant nothing.
        if allow is not None and actor_matches_allow(actor, allow):
            return True
    return None


def permission_allowed(datasette: Any, actor: dict[str, Any] | None, action: str,
                       resource: Any) -> bool | Awaitable[bool | None] | None:
    """The hook's answer. Datasette 0.65 keeps the *last* non-None answer of all plugins, and its
    default plugin (metadata `allow` blocks) runs first (`tryfirst`): a False here wins over a metadata
    grant. Another plugin answering the same action may still run after this one and override it."""
    if action in _CONFIG_KEYS:
        return decide(actor, action, plugin_config(datasette))
    if action in POOL_ACTIONS:
        return _refuse_non_viewer(datasette, actor, _database_of(resource))
    if action == INSTANCE_ACTION:
        return _refuse_non_viewer(datasette, actor, None)
    return None


def _database_of(resource: Any) -> str | None:
    return resource[0] if isinstance(resource, (tuple, list)) else resource


async def _refuse_non_viewer(datasette: Any, actor: dict[str, Any] | None, database: str | None) -> bool | None:
    """False if the resource is private and the actor may not view the pool; else abstain.

    `database` None means the instance itself, private when every served database is."""
    private = await (_instance_is_private(datasette) if database is None else _is_private(datasette, database))
    if private and not await can(datasette, actor, VIEW):
        return False
    return None


async def _instance_is_private(datasette: Any) -> bool:
    names = [name for name in datasette.databases if name != INTERNAL_DATABASE]
    for name in names:
        if not await _is_private(datasette, name):
            return False
    return bool(names)


async def _is_private(datasette: Any, database: str) -> bool:
    if database == CROSSDB_DATABASE and datasette.crossdb:
        return any([await is_pool(datasette, name) for name in datasette.databases if name != database])
    return await is_pool(datasette, database)


async def is_pool(datasette: Any, name: str) -> bool:
    """Is the served database `name` a pool: the one the plugin config names, or any holding its tables
    (two pools served side by side are both private)?"""
    if name == plugin_config(datasette).get("database"):
        return True
    db = datasette.databases.get(name)
    if db is None or db.is_memory:
        return False
    if db in _KNOWN_POOLS:
        return True
    if set(await db.table_names()) >= POOL_TABLES:
        _KNOWN_POOLS.add(db)
        return True
    return False


async def can(datasette: Any, actor: dict[str, Any] | None, action: str) -> bool:
    return bool(await datasette.permission_allowed(actor, action, default=False))


async def require(datasette: Any, request: Any, action: str) -> None:
    if not await can(datasette, request.actor, action):
        raise Forbidden(f"You need the {action!r} permission")


async def visible_databases(datasette: Any, actor: dict[str, Any] | None,
                            listing: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """`listing` (rows with a `name`) without the databases `actor` may not view, the way the index
    page leaves them out: so `/-/databases` does not name a private pool."""
    visible = []
    for row in listing:
        shown, _ = await datasette.check_visibility(actor, permissions=[("view-database", row["name"]),
                                                                        INSTANCE_ACTION])
        if shown:
            visible.append(row)
    return visible


def actor_name(actor: dict[str, Any] | None) -> str:
    """How the audit log names who did it."""
    if not actor:
        return "anonymous"
    return str(actor.get("id") or actor.get("username") or actor)
