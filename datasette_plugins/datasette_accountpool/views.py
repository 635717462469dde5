"""The dashboard's pages: each view checks a permission, runs `queries` / `store`, renders a template.

The one module where Datasette's requests and responses meet the pool, so that the SQL (`queries`,
`foresight`) and the form (`settings_form`) stay plain functions one can read and test on their own. Here each
page asks `permissions`, puts those functions in order, and keeps the blocking work (SQL via `db.execute_fn`,
"refresh now" via a thread) off Datasette's event loop.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import sqlite_utils
from accountpool.admin import account_admin
from accountpool.models import Account, AccountKind
from accountpool.storage import schema, store
from accountpool.storage.secrets_store import SecretsStore, SecretsStoreError
from accountpool.upstream.oauth import RefreshError
from datasette.utils import add_cors_headers
from datasette.utils.asgi import NotFound, Response

from . import charts, config, foresight, permissions, queries
from .settings_form import SettingsForm, form_from_settings, parse_form

REFRESH_SECONDS = 5
ACCOUNT_ACTIONS = ("enable", "disable", "refresh", "clear_block")


async def _pool(datasette: Any) -> Any:
    try:
        return await config.pool_database(datasette)
    except config.PoolNotFound as exc:
        raise NotFound(str(exc)) from None


def _window(request: Any) -> queries.Window:
    return queries.WINDOWS.get(request.args.get("window") or "", queries.WINDOWS[queries.DEFAULT_WINDOW])


def _redirect(datasette: Any, path: str) -> Response:
    return Response.redirect(datasette.urls.path(path), status=303)


# ---------------------------------------------------------------- overview


async def _overview_context(datasette: Any, request: Any) -> dict[str, Any]:
    db = await _pool(datasette)
    window = _window(request)
    data = await db.execute_fn(lambda conn: queries.overview(conn, window))
    return {
        "data": data,
        "window": window,
        "windows": queries.WINDOWS,
        "database": db.name,
        "chart": charts.timeline_svg(data["timeline"]["buckets"], data["timeline"]["step"],
                                     title=f"Requests, failures and p95 latency, last {window.label}"),
        "refresh_seconds": REFRESH_SECONDS,
    }


async def overview(request: Any, datasette: Any) -> Response:
    await permissions.require(datasette, request, permissions.VIEW)
    context = await _overview_context(datasette, request)
    return Response.html(await datasette.render_template("accountpool_overview.html", context, request=request))


async def overview_fragment(request: Any, datasette: Any) -> Response:
    """The live part of the overview, swapped in by accountpool.js every few seconds."""
    await permissions.require(datasette, request, permissions.VIEW)
    context = await _overview_context(datasette, request)
    html = await datasette.render_template("_accountpool_live.html", context, request=request)
    return Response.html(html, headers={"Cache-Control": "no-store"})


async def overview_json(request: Any, datasette: Any) -> Response:
    await permissions.require(datasette, request, permissions.VIEW)
    db = await _pool(datasette)
    window = _window(request)
    data = await db.execute_fn(lambda conn: queries.overview(conn, window))
    return Response.json(data, headers={"Cache-Control": "no-store"})


# ---------------------------------------------------------------- accounts


async def accounts(request: Any, datasette: Any) -> Response:
    await permissions.require(datasette, request, permissions.VIEW)
    db = await _pool(datasette)
    if request.method == "POST":
        await permissions.require(datasette, request, permissions.MANAGE)
        await _account_action(request, datasette, db)
        return _redirect(datasette, "/-/pool/accounts")
    data = await db.execute_fn(queries.accounts_page)
    # "What if I disable X": the Disable button leads here first (a GET, so it works without JavaScript).
    preview_id = request.args.get("preview") or None
    preview = await db.execute_fn(lambda conn: foresight.disable_preview(conn, preview_id)) if preview_id else None
    context = {"data": data, "database": db.name,
               "can_manage": await permissions.can(datasette, request.actor, permissions.MANAGE),
               "kinds": AccountKind, "usage_windows": await db.execute_fn(foresight.account_windows),
               "preview_id": preview_id, "preview": preview}
    return Response.html(await datasette.render_template("accountpool_accounts.html", context, request=request))


async def _account_action(request: Any, datasette: Any, db: Any) -> None:
    """Apply one form action; every outcome, good or bad, becomes a message on the next page."""
    form = await request.post_vars()
    action, account_id = form.get("action", ""), form.get("account_id", "")
    actor = permissions.actor_name(request.actor)
    if action not in ACCOUNT_ACTIONS:
        datasette.add_message(request, f"Unknown action {action!r}; nothing changed.", datasette.ERROR)
        return
    account: Account | None = await db.execute_fn(lambda conn: _find_account(conn, account_id))
    if account is None:
        datasette.add_message(request, f"No account with id {account_id!r}; nothing changed.", datasette.ERROR)
        return
    try:
        if action in ("enable", "disable"):
            await db.execute_write_fn(lambda conn: store.set_enabled(
                sqlite_utils.Database(conn), account.id, action == "enable", actor=actor))
            datasette.add_message(request, f"{account.label}: {action}d.")
        elif action == "clear_block":
            await db.execute_write_fn(lambda conn: store.set_auth_blocked(
                sqlite_utils.Database(conn), account.id, None, actor=actor))
            datasette.add_message(request, f"{account.label}: authorization block cleared.")
        else:
            await _refresh(request, datasette, db, account, actor)
    except store.NotFound as exc:  # deleted between the check and the write
        datasette.add_message(request, f"{exc}; nothing changed.", datasette.ERROR)


def _find_account(conn: Any, account_id: str) -> Account | None:
    rows = list(sqlite_utils.Database(conn).query("select * from accounts where id = ?", [account_id]))
    return store.account_from_row(rows[0]) if rows else None


async def _refresh(request: Any, datasette: Any, db: Any, account: Account, actor: str) -> None:
    if account.kind != AccountKind.CHATGPT:
        datasette.add_message(request, f"{account.label} is an API key: it has no token to refresh.",
                              datasette.WARNING)
        return
    secrets = config.secrets_path(datasette, db.path)
    token_url = config.token_url(datasette)
    try:
        await asyncio.to_thread(_refresh_blocking, db.path, str(secrets), account.id, token_url, actor)
    except RefreshError as exc:
        if exc.permanent:
            datasette.add_message(request, f"{account.label}: refresh failed permanently, the account is blocked "
                                           f"until it is re-authorized: {exc}", datasette.ERROR)
        else:
            datasette.add_message(request, f"{account.label}: refresh failed (temporary, not blocked): {exc}",
                                  datasette.WARNING)
    except (account_admin.ImportProblem, SecretsStoreError, store.NotFound) as exc:
        datasette.add_message(request, f"{account.label}: {exc}", datasette.ERROR)
    else:
        datasette.add_message(request, f"{account.label}: token refreshed.")


def _refresh_blocking(db_path: str, secrets_path: str, account_id: str, token_url: str, actor: str) -> Account:
    """Runs in a worker thread with its own connections (HTTP and a file lock may block for seconds)."""
    pool = schema.connect(db_path)
    try:
        secrets = SecretsStore(secrets_path, create=False)
        try:
            return account_admin.refresh_now(pool, secrets, account_id, token_url=token_url, actor=actor)
        finally:
            secrets.close()
    finally:
        pool.conn.close()


# ---------------------------------------------------------------- settings


async def settings(request: Any, datasette: Any) -> Response:
    await permissions.require(datasette, request, permissions.VIEW)
    db = await _pool(datasette)
    can_manage = await permissions.can(datasette, request.actor, permissions.MANAGE)
    status = 200
    if request.method == "POST":
        await permissions.require(datasette, request, permissions.MANAGE)
        new, form = parse_form(await request.post_vars())
        if new is not None:
            actor = permissions.actor_name(request.actor)
            await db.execute_write_fn(lambda conn: store.save_settings(sqlite_utils.Database(conn), new, actor=actor))
            datasette.add_message(request, "Settings saved; the proxy applies them from its next request.")
            return _redirect(datasette, "/-/pool/settings")
        count = len(form.errors)
        datasette.add_message(request, f"Settings not saved: {count} problem{'s' if count != 1 else ''} "
                                       "(see below). Nothing was changed.", datasette.ERROR)
        status = 400
    else:
        form = form_from_settings(await db.execute_fn(queries.load_settings))
    return Response.html(await datasette.render_template(
        "accountpool_settings.html", _settings_context(form, can_manage, db.name), request=request), status=status)


def _settings_context(form: SettingsForm, can_manage: bool, database: str) -> dict[str, Any]:
    return {"form": form, "can_manage": can_manage, "database": database, "now": time.time(),
            "blank_row": len(form.overrides)}


# ---------------------------------------------------------------- Datasette's /-/databases, filtered


async def databases_listing(request: Any, datasette: Any) -> Response:
    """Datasette's `/-/databases` (same JSON, same page) without the databases the actor may not view:
    Datasette's own listing checks only `view-instance`, so it would name a private pool and its path."""
    await datasette.ensure_permissions(request.actor, [permissions.INSTANCE_ACTION])
    data = await permissions.visible_databases(datasette, request.actor, datasette._connected_databases())
    if request.url_vars.get("format"):
        headers: dict[str, str] = {}
        if datasette.cors:
            add_cors_headers(headers)
        return Response.json(data, headers=headers)
    return Response.html(await datasette.render_template(
        "show_json.html", {"filename": "databases.json", "data_json": json.dumps(data, indent=4)}, request=request))
