"""Every permission decision of the dashboard, in one place (Datasette 1.0 replaces this API).

Two actions: `accountpool-view` (see the pages) and `accountpool-manage` (submit their forms;
implies view). Granted to the root actor (`datasette --root`; in 0.65 root has no power of its
own) and to actors matching the Datasette *allow blocks* in the plugin configuration:

    plugins:
      datasette-accountpool:
        allow_view: {id: [alice, bob]}
        allow_manage: {id: alice}

Anything else (no config, no match) is left to other plugins and then denied by default.
"""

from __future__ import annotations

from typing import Any

from datasette.utils import actor_matches_allow
from datasette.utils.asgi import Forbidden

from .config import plugin_config

VIEW = "accountpool-view"
MANAGE = "accountpool-manage"
ROOT_ACTOR_ID = "root"

_CONFIG_KEYS = {VIEW: ("allow_view", "allow_manage"), MANAGE: ("allow_manage",)}


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


def permission_allowed(datasette: Any, actor: dict[str, Any] | None, action: str) -> bool | None:
    return decide(actor, action, plugin_config(datasette))


async def can(datasette: Any, actor: dict[str, Any] | None, action: str) -> bool:
    return bool(await datasette.permission_allowed(actor, action, default=False))


async def require(datasette: Any, request: Any, action: str) -> None:
    if not await can(datasette, request.actor, action):
        raise Forbidden(f"You need the {action!r} permission")


def actor_name(actor: dict[str, Any] | None) -> str:
    """How the audit log names who did it."""
    if not actor:
        return "anonymous"
    return str(actor.get("id") or actor.get("username") or actor)
