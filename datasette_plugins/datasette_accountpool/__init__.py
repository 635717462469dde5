"""Datasette plugin: the accountpool dashboard (overview, accounts, settings) — docs/BEHAVIOUR.md §14, issue 5.

Hooks only wire things together: permissions in `permissions`, SQL in `queries`, pages in `views`.
"""

from __future__ import annotations

from typing import Any

from datasette import hookimpl

from . import config, formatting, permissions, views


@hookimpl
def register_routes() -> list[tuple[str, Any]]:
    return [
        (r"^/-/pool$", views.overview),
        (r"^/-/pool\.json$", views.overview_json),
        (r"^/-/pool/fragment$", views.overview_fragment),
        (r"^/-/pool/accounts$", views.accounts),
        (r"^/-/pool/settings$", views.settings),
        # Datasette's own listing, minus the databases the actor may not view (a private pool).
        (r"^/-/databases(\.(?P<format>json))?$", views.databases_listing),
    ]


@hookimpl
def permission_allowed(datasette: Any, actor: dict[str, Any] | None, action: str, resource: Any) -> Any:
    return permissions.permission_allowed(datasette, actor, action, resource)


@hookimpl
def menu_links(datasette: Any, actor: dict[str, Any] | None) -> Any:
    async def links() -> list[dict[str, str]]:
        if not await permissions.can(datasette, actor, permissions.VIEW):
            return []
        return [{"href": datasette.urls.path(path), "label": label} for path, label in (
            ("/-/pool", "Pool overview"), ("/-/pool/accounts", "Pool accounts"), ("/-/pool/settings", "Pool settings"))]

    return links


@hookimpl
def startup(datasette: Any) -> Any:
    async def refuse_secrets() -> None:
        await config.refuse_served_secrets(datasette)

    return refuse_secrets


@hookimpl
def extra_template_vars(template: str, datasette: Any) -> dict[str, str]:
    if "accountpool" not in template:
        return {}
    return {"ap_static_css": datasette.urls.static_plugins(config.STATIC_NAME, "accountpool.css"),
            "ap_static_js": datasette.urls.static_plugins(config.STATIC_NAME, "accountpool.js")}


@hookimpl
def prepare_jinja2_environment(env: Any) -> None:
    formatting.register(env)
