"""The pool database is private by default (issue 12): Datasette's own pages for it need `accountpool-view`.

Anonymous visitors and signed-in actors without the permission get 403 on everything that reads
the pool (instance index when it serves only the pool, database page, table and row pages and their
JSON, arbitrary and canned SQL, the download); root and actors granted by `allow_view` read it as
before. Beside other databases the instance stays open and the pool drops out of its listings.
In-process tests use Datasette's test client; the last one starts a real `datasette` server.
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from accountpool.storage import schema
from datasette import hookimpl
from datasette.app import Datasette
from datasette.plugins import pm
from datasette.utils import tilde_encode
from datasette_accountpool import config
from harness import Datasette as DatasetteProcess
from harness import Pool
from test_dashboard import actor_cookies, seed_metrics

API_KEY = "sk-privacy-test-" + "P4v8" * 8
CANNED = "recent_failures"
VIEWER = "alice"
STRANGER = "mallory"


@pytest.fixture
def pool(pool_env: Pool) -> dict[str, Any]:
    key_id = pool_env.add_key("work", API_KEY)
    seed_metrics(pool_env.db_path, [key_id], time.time())
    return {"pool": pool_env, "key_id": key_id, "name": pool_env.db_path.stem}


def other_database(directory: Path) -> Path:
    """An unrelated database an operator might serve beside the pool."""
    path = directory / "other.db"
    with sqlite3.connect(path) as conn:
        conn.execute("create table things (id integer primary key, name text)")
        conn.execute("insert into things (name) values ('public row')")
    return path


async def serve(paths: list[Path], *, plugin: dict[str, Any] | None = None, databases: dict[str, Any] | None = None,
                **kwargs: Any) -> Datasette:
    metadata: dict[str, Any] = {"plugins": {config.PLUGIN_NAME: plugin or {"allow_view": {"id": [VIEWER]}}}}
    if databases:
        metadata["databases"] = databases
    ds = Datasette([str(p) for p in paths], metadata=metadata, **kwargs)
    await ds.invoke_startup()
    return ds


def pool_urls(name: str, key_id: str, tables: list[str]) -> list[str]:
    """Every Datasette URL that reads the pool, plus the dashboard's own pages."""
    urls = ["/", f"/{name}", f"/{name}.json", "/-/databases", "/-/databases.json",
            f"/{name}?sql=select+*+from+client_keys", f"/{name}.json?sql=select+*+from+client_keys",
            f"/{name}/{CANNED}", f"/{name}/{CANNED}.json",
            f"/{name}/accounts/{tilde_encode(key_id)}", f"/{name}/accounts/{tilde_encode(key_id)}.json",
            "/-/pool", "/-/pool.json", "/-/pool/accounts", "/-/pool/settings"]
    for table in tables:
        urls += [f"/{name}/{table}", f"/{name}/{table}.json"]
    return urls


def table_names(path: Path) -> list[str]:
    with sqlite3.connect(path) as conn:
        return [r[0] for r in conn.execute("select name from sqlite_master where type = 'table'")]


async def statuses(ds: Datasette, urls: list[str], actor_id: str | None) -> dict[str, int]:
    cookies = actor_cookies(ds, actor_id) if actor_id else {}
    return {url: (await ds.client.get(url, cookies=cookies)).status_code for url in urls}


async def test_every_pool_url_is_forbidden_without_view_and_open_with_it(pool: dict[str, Any]) -> None:
    name = pool["name"]
    tables = table_names(pool["pool"].db_path)
    assert {"requests", "attempts", "audit_log", "accounts", "client_keys"} <= set(tables)
    ds = await serve([pool["pool"].db_path], databases={name: {"queries": {
        CANNED: "select id, status, failure_brief from requests where outcome != 'ok'"}}})
    urls = pool_urls(name, pool["key_id"], tables)
    for actor_id in ("root", VIEWER):
        assert set((await statuses(ds, urls, actor_id)).values()) == {200}, actor_id
    for actor_id in (None, STRANGER):
        got = await statuses(ds, urls, actor_id)
        assert {url: s for url, s in got.items() if s != 403} == {}, actor_id


async def test_the_pool_file_download_is_refused_without_view(pool: dict[str, Any]) -> None:
    """Datasette only offers immutable files for download (a snapshot served with `-i`)."""
    ds = await serve([], immutables=[str(pool["pool"].db_path)])
    url = f"/{pool['name']}.db"
    root = await ds.client.get(url, cookies=actor_cookies(ds))
    assert root.status_code == 200 and root.content.startswith(b"SQLite format 3")
    assert (await ds.client.get(url, cookies=actor_cookies(ds, VIEWER))).status_code == 200
    assert (await ds.client.get(url)).status_code == 403
    assert (await ds.client.get(url, cookies=actor_cookies(ds, STRANGER))).status_code == 403


async def test_an_unrelated_database_beside_the_pool_stays_open_and_the_pool_is_unlisted(
        pool: dict[str, Any], tmp_path: Path) -> None:
    """Decision: with another database served, the instance stays open (Datasette as usual for that
    database) and the pool is left out of the index and /-/databases for actors who may not view it."""
    name = pool["name"]
    ds = await serve([pool["pool"].db_path, other_database(tmp_path)])
    for actor_id in (None, STRANGER):
        cookies = actor_cookies(ds, actor_id) if actor_id else {}
        for url in ("/other", "/other/things", "/other/things.json", "/other?sql=select+*+from+things"):
            response = await ds.client.get(url, cookies=cookies)
            assert response.status_code == 200, url
            assert url == "/other" or "public row" in response.text, url
        index = await ds.client.get("/", cookies=cookies)
        assert index.status_code == 200 and 'href="/other"' in index.text
        assert f'href="/{name}"' not in index.text
        listed = (await ds.client.get("/-/databases.json", cookies=cookies)).json()
        assert [d["name"] for d in listed] == ["other"]
        assert (await ds.client.get(f"/{name}/accounts", cookies=cookies)).status_code == 403
        assert (await ds.client.get(f"/{name}?sql=select+1", cookies=cookies)).status_code == 403
    index = await ds.client.get("/", cookies=actor_cookies(ds, VIEWER))
    assert f'href="/{name}"' in index.text
    listed = (await ds.client.get("/-/databases.json", cookies=actor_cookies(ds, VIEWER))).json()
    assert {d["name"] for d in listed} == {name, "other"}


async def test_crossdb_sql_cannot_reach_the_pool_without_view(pool: dict[str, Any], tmp_path: Path) -> None:
    """`--crossdb` attaches every database to `_memory`: SQL there could read the pool's tables."""
    name = pool["name"]
    ds = await serve([pool["pool"].db_path, other_database(tmp_path)], crossdb=True)
    url = f"/_memory.json?sql=select+prefix+from+{name}.client_keys&_shape=array"
    assert (await ds.client.get(url)).status_code == 403
    assert (await ds.client.get(url, cookies=actor_cookies(ds, STRANGER))).status_code == 403
    assert (await ds.client.get(url, cookies=actor_cookies(ds))).status_code == 200
    assert (await ds.client.get("/other.json?sql=select+*+from+things")).status_code == 200


async def test_metadata_allow_cannot_open_the_pool_but_allow_view_can(pool: dict[str, Any]) -> None:
    """Opening the pool is one deliberate switch (`allow_view`); a metadata `allow: true` on the
    database, written for Datasette alone, does not publish it. Viewers still obey metadata blocks."""
    name = pool["name"]
    ds = await serve([pool["pool"].db_path], databases={name: {"allow": True, "allow_sql": True}})
    assert (await ds.client.get(f"/{name}/client_keys")).status_code == 403
    assert (await ds.client.get(f"/{name}?sql=select+1")).status_code == 403

    opened = await serve([pool["pool"].db_path], plugin={"allow_view": True})
    for url in ("/", f"/{name}/client_keys.json", f"/{name}.json?sql=select+prefix+from+client_keys", "/-/pool"):
        assert (await opened.client.get(url)).status_code == 200, url

    narrowed = await serve([pool["pool"].db_path], databases={name: {"allow": {"id": "root"}}})
    assert (await narrowed.client.get(f"/{name}/accounts", cookies=actor_cookies(narrowed, VIEWER))).status_code == 403
    assert (await narrowed.client.get(f"/{name}/accounts", cookies=actor_cookies(narrowed))).status_code == 200


def opened_at_a_finer_level(name: str) -> dict[str, Any]:
    """Metadata an operator might write to open parts of the pool below the database level."""
    return {name: {"allow_sql": True,
                   "tables": {"client_keys": {"allow": True}, "accounts": {"allow": True}},
                   "queries": {CANNED: {"sql": "select prefix from client_keys", "allow": True}}}}


class GrantingPlugin:
    """An operator's permission plugin that opens SQL and downloads to everyone, for every database."""

    __name__ = "granting-plugin"

    @staticmethod
    @hookimpl
    def permission_allowed(action: str) -> bool | None:
        return True if action in ("execute-sql", "view-database-download") else None


@pytest.fixture
def granting_plugin() -> Any:
    pm.register(GrantingPlugin, name=GrantingPlugin.__name__)
    try:
        yield
    finally:
        pm.unregister(name=GrantingPlugin.__name__)


async def test_table_query_sql_and_download_grants_below_the_database_do_not_open_the_pool(
        pool: dict[str, Any], granting_plugin: None) -> None:
    """Datasette asks `view-table`, `view-query`, `execute-sql` and `view-database-download` first and stops at
    the first answer, so a table-level or canned-query `allow: true`, `allow_sql: true` or another plugin's
    grant would open those pages past the database-level refusal: the plugin refuses each action itself."""
    name = pool["name"]
    ds = await serve([], immutables=[str(pool["pool"].db_path)], databases=opened_at_a_finer_level(name),
                     settings={"allow_download": True})
    urls = [f"/{name}/client_keys", f"/{name}/client_keys.json", f"/{name}/client_keys.json?_where=1",
            f"/{name}/accounts/{tilde_encode(pool['key_id'])}.json", f"/{name}/{CANNED}", f"/{name}/{CANNED}.json",
            f"/{name}?sql=select+prefix+from+client_keys", f"/{name}.json?sql=select+prefix+from+client_keys",
            f"/{name}.db"]
    for actor_id in (None, STRANGER):
        got = await statuses(ds, urls, actor_id)
        assert {url: s for url, s in got.items() if s != 403} == {}, actor_id
        # Asked on its own (as Datasette's SQL links and other plugins do), each action is refused too.
        actor = {"id": actor_id} if actor_id else None
        for action, resource in (("view-table", (name, "client_keys")), ("view-query", (name, CANNED)),
                                 ("execute-sql", name), ("view-database-download", name)):
            assert await ds.permission_allowed(actor, action, resource, default=None) is False, (action, actor)
    for actor_id in ("root", VIEWER):
        got = await statuses(ds, urls, actor_id)
        assert set(got.values()) == {200}, (actor_id, got)
    assert "prefix" in (await ds.client.get(f"/{name}/{CANNED}.json", cookies=actor_cookies(ds))).text


async def test_a_database_that_becomes_a_pool_while_served_turns_private(tmp_path: Path) -> None:
    """A "not a pool" answer is not cached: `accountpool init` on a served, empty file closes it."""
    path = tmp_path / "late.db"
    sqlite3.connect(path).close()
    ds = await serve([path])
    assert (await ds.client.get("/late")).status_code == 200
    schema.connect(path).close()
    assert (await ds.client.get("/late/accounts")).status_code == 403
    assert (await ds.client.get("/late")).status_code == 403
    assert (await ds.client.get("/late/accounts", cookies=actor_cookies(ds))).status_code == 200


def test_a_real_datasette_server_refuses_the_pool_to_anonymous(pool: dict[str, Any]) -> None:
    """`datasette pool.db --root` as a real process: table and SQL URLs 403 anonymously, 200 signed in."""
    name = pool["name"]
    urls = ["/", f"/{name}/client_keys.json", f"/{name}/accounts", f"/{name}.json?sql=select+*+from+client_keys"]
    with DatasetteProcess(pool["pool"]) as server, httpx.Client(base_url=server.url, trust_env=False,
                                                                 timeout=30) as client:
        for url in urls:
            assert client.get(url).status_code == 403, url
        signed_in = client.get(server.sign_in_url.replace(server.url, ""))
        assert signed_in.status_code == 302 and "ds_actor" in client.cookies
        for url in urls:
            response = client.get(url)
            assert response.status_code == 200, (url, response.text[:300])
