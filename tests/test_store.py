"""pool.db: schema and migrations, old-shaped records, client keys, settings, audit."""

from __future__ import annotations

import json
import multiprocessing
import sqlite3
import traceback
from pathlib import Path

import pytest
import sqlite_utils
from accountpool.models import Account, AccountHealth, AccountKind, ModelOverride, PoolSettings, UsageWindow
from accountpool.storage import schema, store
from pydantic import ValidationError


def _migrations(db_path: Path) -> list[tuple[str, str]]:
    conn = sqlite3.connect(db_path)
    try:
        return conn.execute("select migration_set, name from _sqlite_migrations order by id").fetchall()
    finally:
        conn.close()


def _add(db: sqlite_utils.Database, label: str, **fields: object) -> Account:
    acc = Account(id=store.new_account_id(), label=label, kind=AccountKind.API_KEY, **fields)
    return store.insert_account(db, acc)


# ---------------------------------------------------------------- schema


def test_schema_created_and_migrations_recorded(pool_paths: tuple[Path, Path]) -> None:
    db_path, _ = pool_paths
    db = schema.connect(db_path)
    tables = set(db.table_names())
    assert {"accounts", "client_keys", "settings", "audit_log", "account_health", "_sqlite_migrations"} <= tables
    assert not tables & schema.SECRET_TABLE_NAMES
    applied = _migrations(db_path)
    assert applied == [("accountpool", m.name) for m in schema.MIGRATIONS._migrations]
    assert ("accountpool", "m001_initial") in applied
    assert schema.MIGRATIONS.pending(db) == []
    db.close()


def test_opening_twice_is_a_noop(pool_paths: tuple[Path, Path]) -> None:
    db_path, _ = pool_paths
    db = schema.connect(db_path)
    acc = _add(db, "kept")
    db.close()
    before = _migrations(db_path)
    db = schema.connect(db_path)
    db2 = schema.connect(db_path)
    assert _migrations(db_path) == before
    assert [a.id for a in store.list_accounts(db2)] == [acc.id]
    db.close()
    db2.close()


def test_wal_mode(pool_paths: tuple[Path, Path]) -> None:
    db_path, _ = pool_paths
    schema.connect(db_path).close()
    conn = sqlite3.connect(db_path)
    try:
        assert conn.execute("pragma journal_mode").fetchone()[0] == "wal"
    finally:
        conn.close()


def test_open_existing_refuses_missing_and_garbage(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="accountpool init"):
        schema.open_existing(tmp_path / "nope.db")
    assert not (tmp_path / "nope.db").exists()
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"this is not sqlite at all" * 100)
    with pytest.raises(RuntimeError, match="not a usable pool database"):
        schema.open_existing(garbage)


# ---------------------------------------------------------------- old-shaped records


def test_account_with_null_enabled_reads_as_enabled(pool) -> None:
    db, _ = pool
    # Written by something that does not know the column (an older version, a raw SQL insert).
    db.execute("insert into accounts (id, label, kind) values ('acc_old', 'old', 'api_key')")
    db.execute("insert into accounts (id, label, kind, enabled) values ('acc_off', 'off', 'api_key', 0)")
    row = db.execute("select enabled from accounts where id = 'acc_old'").fetchone()
    assert row[0] is None  # the record really lacks the value
    accounts = {a.id: a for a in store.list_accounts(db)}
    assert accounts["acc_old"].enabled is True
    assert accounts["acc_off"].enabled is False
    assert store.get_account(db, "old").enabled is True
    # and disabling/enabling it works and persists as a real value
    assert store.set_enabled(db, "acc_old", False, actor="test").enabled is False
    assert store.get_account(db, "acc_old").enabled is False


def test_old_version_database_migrates_and_reads_as_enabled(tmp_path: Path) -> None:
    """A file from the first release (only m001 applied, rollback journal, an account written
    without `enabled`) opens, migrates in place to the current schema, and keeps the account enabled."""
    db_path = tmp_path / "old.db"
    names = [m.name for m in schema.MIGRATIONS._migrations]
    old = sqlite_utils.Database(db_path)
    schema.MIGRATIONS.apply(old, stop_before=names[1:])
    old.execute("insert into accounts (id, label, kind, plan) values ('acc_legacy', 'legacy', 'chatgpt', 'pro')")
    old.conn.commit()
    assert old.journal_mode != "wal"
    old.close()
    assert _migrations(db_path) == [("accountpool", "m001_initial")]

    db = schema.connect(db_path)
    assert db.journal_mode == "wal"
    assert schema.MIGRATIONS.pending(db) == []
    assert _migrations(db_path) == [("accountpool", n) for n in names]
    [acc] = store.list_accounts(db)
    assert acc.id == "acc_legacy" and acc.enabled is True and acc.auth_blocked is False
    assert acc.kind is AccountKind.CHATGPT and acc.plan == "pro"
    assert store.get_account(db, "legacy").enabled is True
    db.close()


# ---------------------------------------------------------------- accounts


def test_duplicate_label_refused_and_unknown_id(pool) -> None:
    db, _ = pool
    _add(db, "a")
    with pytest.raises(store.Conflict, match="'a'"):
        _add(db, "a")
    with pytest.raises(store.NotFound, match="nope"):
        store.get_account(db, "nope")
    with pytest.raises(store.NotFound):
        store.set_enabled(db, "nope", False, actor="test")


def test_find_chatgpt_account_by_identity(pool) -> None:
    db, _ = pool
    acc = store.insert_account(db, Account(id="acc_1", label="x", kind=AccountKind.CHATGPT,
                                           upstream_account_id="u-1", email="x@example.com"))
    assert store.find_chatgpt_account(db, "u-1", "x@example.com").id == acc.id
    assert store.find_chatgpt_account(db, "u-1", None).id == acc.id
    assert store.find_chatgpt_account(db, "u-1", "other@example.com") is None
    assert store.find_chatgpt_account(db, "u-2", "x@example.com") is None


# ---------------------------------------------------------------- client keys


def test_client_keys_stored_hashed(pool, pool_paths: tuple[Path, Path]) -> None:
    db, _ = pool
    db_path, _ = pool_paths
    _, key = store.create_client_key(db, "laptop")
    assert key.startswith(store.CLIENT_KEY_PREFIX) and len(key) > 30
    db.close()
    raw = b"".join(Path(str(db_path) + s).read_bytes() for s in ("", "-wal") if Path(str(db_path) + s).exists())
    assert key.encode() not in raw
    assert key[len(store.CLIENT_KEY_PREFIX):].encode() not in raw
    assert store.hash_client_key(key).encode() in raw  # what *is* stored is the hash
    conn = sqlite3.connect(db_path)
    try:
        rows = conn.execute("select * from client_keys").fetchall()
    finally:
        conn.close()
    assert len(rows) == 1 and key not in repr(rows)


def test_match_client_key_compares_every_hash(pool, monkeypatch: pytest.MonkeyPatch) -> None:
    db, _ = pool
    keys = [store.create_client_key(db, f"k{i}") for i in range(5)]
    active = store.active_client_key_hashes(db)
    last_id, last_key = keys[-1]
    assert store.match_client_key(last_key, active) == (last_id, "k4")
    assert store.match_client_key(keys[0][1], active) == (keys[0][0], "k0")
    assert store.match_client_key("ap-wrong", active) is None
    assert store.match_client_key("", active) is None

    # constant-time in shape: a match on the first key still compares all of them
    calls: list[tuple[str, str]] = []
    real = store.hmac.compare_digest

    def counting(a: str, b: str) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(store.hmac, "compare_digest", counting)
    assert store.match_client_key(keys[0][1], active) == (keys[0][0], "k0")
    assert len(calls) == len(active) == 5
    calls.clear()
    assert store.match_client_key("ap-nothing", active) is None
    assert len(calls) == 5


def test_revoke_client_key(pool) -> None:
    db, _ = pool
    keep_id, keep = store.create_client_key(db, "keep")
    gone_id, gone = store.create_client_key(db, "gone")
    store.revoke_client_key(db, gone_id)
    active = store.active_client_key_hashes(db)
    assert store.match_client_key(gone, active) is None
    assert store.match_client_key(keep, active) == (keep_id, "keep")
    listed = {r["id"]: r for r in store.list_client_keys(db)}
    assert listed[gone_id]["revoked_at"] is not None and listed[keep_id]["revoked_at"] is None
    assert all("key_hash" not in r for r in listed.values())
    with pytest.raises(store.NotFound):
        store.revoke_client_key(db, "ck_missing")
    # the label of a revoked key may be reused; an active duplicate may not
    store.create_client_key(db, "gone")
    with pytest.raises(store.Conflict):
        store.create_client_key(db, "keep")
    with pytest.raises(ValueError):
        store.create_client_key(db, "  ")


# ---------------------------------------------------------------- settings and audit


def test_settings_defaults_and_round_trip(pool) -> None:
    db, _ = pool
    settings = store.load_settings(db)
    assert settings == PoolSettings()
    gpt55 = settings.model_overrides["gpt-5.5"]
    assert (gpt55.context_window, gpt55.auto_compact_token_limit) == (1_050_000, 650_000)

    new = PoolSettings(mode="sequential", free_first=True, sequential_threshold=75, cooldown_rate_limited_s=12,
                       model_overrides={"gpt-5.5": ModelOverride(context_window=400_000,
                                                                 auto_compact_token_limit=300_000)})
    store.save_settings(db, new, actor="test")
    loaded = store.load_settings(db)
    assert loaded == new
    assert loaded.model_overrides["gpt-5.5"].auto_compact_token_limit == 300_000
    stored = {r["key"]: json.loads(r["value"]) for r in db.query("select key, value from settings")}
    assert stored["mode"] == "sequential" and stored["sequential_threshold"] == 75


@pytest.mark.parametrize("bad", [
    {"model_overrides": {"gpt-5.5": {"context_window": 200_000, "auto_compact_token_limit": 300_000}}},
    {"model_overrides": {"gpt-5.5": {"context_window": 2_000_000, "auto_compact_token_limit": 650_000}}},
    {"mode": "random"},
    {"sequential_threshold": 0},
    {"cooldown_rate_limited_s": -5},
    {"no_such_setting": 1},
])
def test_invalid_settings_refused(bad: dict) -> None:
    with pytest.raises(ValidationError):
        PoolSettings.model_validate(bad)


def test_invalid_settings_bypassing_the_constructor_are_refused_by_save(pool) -> None:
    db, _ = pool
    sneaky = PoolSettings().model_copy(update={"sequential_threshold": 500})
    with pytest.raises(ValidationError):
        store.save_settings(db, sneaky, actor="test")
    assert store.load_settings(db) == PoolSettings()


def test_audit_rows_for_enable_disable_and_settings(pool) -> None:
    db, _ = pool
    acc = _add(db, "audited")
    store.set_enabled(db, acc.id, False, actor="alice")
    store.set_enabled(db, "audited", True, actor="bob")
    store.save_settings(db, PoolSettings(free_first=True), actor="carol")
    store.save_settings(db, PoolSettings(free_first=True), actor="carol")  # no change → no row
    rows = list(db.query("select actor, action, target, before, after from audit_log order by id"))
    assert [(r["actor"], r["action"], r["target"]) for r in rows] == [
        ("alice", "disable", acc.id), ("bob", "enable", acc.id), ("carol", "settings", "settings")]
    assert json.loads(rows[0]["before"]) == {"enabled": True}
    assert json.loads(rows[0]["after"]) == {"enabled": False}
    assert json.loads(rows[2]["after"]) == {"free_first": True}
    assert json.loads(rows[2]["before"]) == {"free_first": False}


def test_auth_block_set_and_cleared_with_audit(pool) -> None:
    db, _ = pool
    acc = _add(db, "blk")
    blocked = store.set_auth_blocked(db, acc.id, "invalid_grant", actor="cli")
    assert blocked.auth_blocked and blocked.auth_error == "invalid_grant"
    cleared = store.set_auth_blocked(db, acc.id, None, actor="cli")
    assert not cleared.auth_blocked and cleared.auth_error is None
    actions = [r["action"] for r in db.query("select action from audit_log order by id")]
    assert actions == ["auth_block", "clear_block"]


def _open_at_once(path: str, barrier, results) -> None:  # runs in a child process
    barrier.wait()
    try:
        schema.connect(path).close()
        results.put("ok")
    except Exception:
        results.put(traceback.format_exc())


def test_concurrent_first_open_migrates_once(tmp_path: Path) -> None:
    """mitmdump, Datasette and the CLI may all open a fresh pool.db at the same moment."""
    ctx = multiprocessing.get_context("fork")
    for run in range(4):
        path = str(tmp_path / f"race{run}.db")
        barrier, results = ctx.Barrier(6), ctx.Queue()
        procs = [ctx.Process(target=_open_at_once, args=(path, barrier, results)) for _ in range(6)]
        for p in procs:
            p.start()
        for p in procs:
            p.join(timeout=30)
        outcomes = [results.get(timeout=5) for _ in procs]
        assert outcomes == ["ok"] * 6, outcomes
        assert _migrations(Path(path)) == [("accountpool", m.name) for m in schema.MIGRATIONS._migrations]


def test_save_health_keeps_the_newer_observation_and_the_later_cooldown(pool):
    """Two proxies write health; a late flush of an older observation must not win (issue 7 §3)."""
    db, _ = pool
    newer = AccountHealth(account_id="acc_x", usage_seen_at=200.0, secondary=UsageWindow(used_percent=80),
                          cooldown_until=1_000.0, cooldown_class="rate_limited")
    older = AccountHealth(account_id="acc_x", usage_seen_at=100.0, secondary=UsageWindow(used_percent=5),
                          cooldown_until=500.0, cooldown_class="upstream_error", last_used_at=300.0)
    store.save_health(db, [newer])
    store.save_health(db, [older])
    saved = store.load_health(db, now=0.0)["acc_x"]
    assert saved.secondary.used_percent == 80 and saved.usage_seen_at == 200.0
    assert saved.cooldown_until == 1_000.0 and saved.cooldown_class == "rate_limited"
    assert saved.last_used_at == 300.0
