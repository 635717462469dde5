"""The background usage probe: real simulator, real pool files, no mitmdump needed."""

import httpx
from accountpool.storage import store
from accountpool.storage.metrics_writer import MetricsWriter
from accountpool.storage.pool_view import PoolView
from accountpool.upstream.usage_sweep import UsageSweeper, accounts_to_probe


async def test_sweep_updates_enabled_logins_and_skips_disabled(pool_env, sim):
    busy = pool_env.add_login("busy", "acct-busy", plan="pro")
    off = pool_env.add_login("off", "acct-off", plan="plus")
    pool_env.add_key("key", "sk-test-sweep-key-aaaaaaaaaaaaaa")
    sim.set_usage("acct-busy", primary_used_percent=42.0, secondary_used_percent=17.0)
    db = pool_env.db()
    store.set_enabled(db, off, False, actor="tests")
    db.close()
    view = PoolView(pool_env.db_path, pool_env.secrets_path)
    writer = MetricsWriter(pool_env.db_path, flush_interval=0.05)
    writer.start()
    try:
        assert [a.id for a in accounts_to_probe(view.accounts)] == [busy]
        async with httpx.AsyncClient(trust_env=False) as client:
            sweeper = UsageSweeper(view, writer, client, url=f"{sim.url}/backend-api/wham/usage", interval_s=60)
            assert await sweeper.sweep_once() == 1
        assert writer.flush()
        rows = pool_env.query("select * from account_health")
        by_id = {r["account_id"]: r for r in rows}
        assert by_id[busy]["primary_used_percent"] == 42.0
        assert by_id[busy]["secondary_used_percent"] == 17.0
        assert by_id[busy]["usage_seen_at"] is not None
        assert off not in by_id
        probed = [r for r in sim.requests() if r["path"].endswith("/wham/usage")]
        assert [r["account_header"] for r in probed] == ["acct-busy"]
    finally:
        writer.stop()
        view.close()
