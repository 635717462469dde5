"""pool.secrets: private, atomic, and out of reach of anything Datasette serves."""

from __future__ import annotations

import multiprocessing
import os
import sqlite3
import stat
import traceback
from pathlib import Path

import pytest
from accountpool.storage.secrets_store import Credentials, SecretsStore, SecretsStoreError
from helpers_pool import all_tokens, dump_served_db, make_auth_json, run_cli, write_json


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_new_store_and_its_wal_files_are_0600(tmp_path: Path) -> None:
    old_umask = os.umask(0o022)  # a permissive umask must not leak into the secrets' modes
    try:
        store = SecretsStore(tmp_path / "pool.secrets")
        store.put(Credentials("acc_1", api_key="sk-" + "x" * 40))
        files = [p for p in tmp_path.iterdir() if p.name.startswith("pool.secrets")]
        assert tmp_path / "pool.secrets" in files
        assert Path(str(tmp_path / "pool.secrets") + "-wal") in files  # WAL: the sidecar exists now
        for f in files:
            assert _mode(f) == 0o600, (f.name, oct(_mode(f)))
        with store.refresh_lock("acc_1"):
            lock = tmp_path / "pool.secrets.lock"
            assert _mode(lock) == 0o600
        store.close()
    finally:
        os.umask(old_umask)


def test_existing_store_with_loose_mode_is_tightened(tmp_path: Path) -> None:
    path = tmp_path / "pool.secrets"
    SecretsStore(path).close()
    os.chmod(path, 0o644)
    SecretsStore(path).close()
    assert _mode(path) == 0o600


def test_missing_store_without_create(tmp_path: Path) -> None:
    with pytest.raises(SecretsStoreError, match=str(tmp_path / "nope.secrets")):
        SecretsStore(tmp_path / "nope.secrets", create=False)
    assert not (tmp_path / "nope.secrets").exists()


def test_put_get_and_generation(tmp_path: Path) -> None:
    store = SecretsStore(tmp_path / "pool.secrets")
    assert store.get("acc_1") is None
    first = store.put(Credentials("acc_1", access_token="at-1", refresh_token="rt-1", id_token="id-1"))
    assert first.generation == 1
    second = store.put(Credentials("acc_1", access_token="at-2", refresh_token="rt-2", id_token="id-2"))
    assert second.generation == 2
    got = store.get("acc_1")
    assert (got.access_token, got.refresh_token, got.id_token, got.generation) == ("at-2", "rt-2", "id-2", 2)
    store.delete("acc_1")
    assert store.get("acc_1") is None
    store.close()


def test_save_rotation_is_atomic_and_bumps_generation(tmp_path: Path) -> None:
    path = tmp_path / "pool.secrets"
    store = SecretsStore(path)
    store.put(Credentials("acc_1", access_token="at-old", refresh_token="rt-old-" + "r" * 30, id_token="id-old"))
    before = store.get("acc_1").generation
    new = store.save_rotation("acc_1", access_token="at-new", refresh_token="rt-new-" + "n" * 30,
                              id_token="id-new")
    assert new.generation == before + 1
    # another connection (another process) sees the whole new set at once
    other = SecretsStore(path)
    got = other.get("acc_1")
    assert (got.access_token, got.refresh_token, got.id_token) == ("at-new", "rt-new-" + "n" * 30, "id-new")
    assert got.generation == before + 1
    all_values = repr([(c.access_token, c.refresh_token, c.id_token) for c in other.all()])
    assert "rt-old" not in all_values
    # an answer without a new refresh/id token keeps the old ones
    kept = store.save_rotation("acc_1", access_token="at-3", refresh_token=None, id_token=None)
    assert (kept.refresh_token, kept.id_token, kept.generation) == ("rt-new-" + "n" * 30, "id-new", before + 2)
    with pytest.raises(SecretsStoreError, match="acc_missing"):
        store.save_rotation("acc_missing", access_token="a", refresh_token="b", id_token="c")
    other.close()
    store.close()


def test_failed_rotation_leaves_the_old_set_intact(tmp_path: Path) -> None:
    path = tmp_path / "pool.secrets"
    store = SecretsStore(path)
    store.put(Credentials("acc_1", access_token="at-old", refresh_token="rt-old", id_token="id-old"))
    # make the UPDATE inside the rotation's transaction fail, after its SELECT succeeded
    conn = sqlite3.connect(path)
    conn.execute("create trigger no_update before update on secrets begin select raise(abort, 'disk trouble'); end")
    conn.commit()
    with pytest.raises(SecretsStoreError) as info:
        store.save_rotation("acc_1", access_token="at-new", refresh_token="rt-new", id_token="id-new")
    assert str(path) in str(info.value) and "rt-new" not in str(info.value)
    conn.execute("drop trigger no_update")
    conn.commit()
    conn.close()
    got = store.get("acc_1")
    assert (got.access_token, got.refresh_token, got.id_token, got.generation) == ("at-old", "rt-old", "id-old", 1)
    # and the store is still usable (the transaction was rolled back, not left open)
    assert store.save_rotation("acc_1", access_token="at-2", refresh_token="rt-2", id_token=None).generation == 2
    assert SecretsStore(path).get("acc_1").refresh_token == "rt-2"
    store.close()


def test_corrupt_store_raises_with_path_and_no_secret(tmp_path: Path) -> None:
    path = tmp_path / "pool.secrets"
    secret = "sk-corrupt-" + "s" * 40
    path.write_bytes(b"garbage, not sqlite " + secret.encode() + b"\x00" * 200)
    os.chmod(path, 0o600)
    with pytest.raises(SecretsStoreError) as info:
        SecretsStore(path)
    assert str(path) in str(info.value)
    assert secret not in str(info.value) and "sk-corrupt" not in repr(info.value)


def test_corrupt_store_through_the_cli(tmp_path: Path) -> None:
    db = tmp_path / "pool.db"
    assert run_cli(db, "init").returncode == 0
    secrets_file = tmp_path / "pool.secrets"
    secrets_file.write_bytes(b"not a database at all, with sk-leak-" + b"z" * 40 + b"\x00" * 100)
    for wal in ("-wal", "-shm"):
        Path(str(secrets_file) + wal).unlink(missing_ok=True)
    result = run_cli(db, "list")
    assert result.returncode == 1
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("accountpool: error:") and str(secrets_file) in line
    assert "sk-leak" not in result.stderr and "Traceback" not in result.stderr


def test_credentials_repr_hides_secrets() -> None:
    creds = Credentials("acc_1", api_key="sk-apikey-1234567890", access_token="at-abcdefghijkl",
                        refresh_token="rt-mnopqrstuvwx", id_token="id-yz0123456789", generation=3)
    for text in (repr(creds), str(creds), f"{creds}", repr([creds]), repr({"c": creds})):
        for secret in ("sk-apikey", "at-abcdef", "rt-mnopq", "id-yz01"):
            assert secret not in text
        assert "acc_1" in text


def test_secrets_unreadable_through_the_served_database(tmp_path: Path) -> None:
    """Import a login and add a key via the CLI; neither pool.db's bytes nor SQL over it shows a token."""
    db = tmp_path / "data" / "pool.db"
    auth = make_auth_json("acct-served", email="served@example.com")
    api_key = "sk-proj-" + "K" * 20 + "servedkey" + "Q" * 20
    assert run_cli(db, "init").returncode == 0
    imported = run_cli(db, "import", str(write_json(tmp_path / "auth.json", auth)))
    assert imported.returncode == 0, imported.stderr
    added = run_cli(db, "add-key", "--label", "k1", stdin=api_key + "\n")
    assert added.returncode == 0, added.stderr
    created = run_cli(db, "client-key", "create", "--label", "laptop")
    client_key = created.stdout.strip()
    assert created.returncode == 0 and client_key.startswith("ap-")
    # some churn so secrets would have had a chance to land in free pages or the WAL
    assert run_cli(db, "disable", "k1").returncode == 0
    assert run_cli(db, "enable", "k1").returncode == 0

    # the secrets really are in the secrets store (so the assertions below can fail)
    secrets_raw = b"".join(p.read_bytes() for p in db.parent.iterdir() if p.name.startswith("pool.secrets"))
    assert api_key.encode() in secrets_raw
    for token in all_tokens(auth):
        assert token.encode() in secrets_raw

    raw, rows = dump_served_db(db)
    # and the main file once the WAL has been merged into it, as a backup would copy it
    conn = sqlite3.connect(db)
    conn.execute("pragma wal_checkpoint(truncate)")
    conn.close()
    raw += db.read_bytes()
    needles = [*all_tokens(auth), api_key, client_key]
    # distinctive fragments, so a truncated or transformed copy is caught as well
    needles += [t[-40:] for t in all_tokens(auth)] + [api_key[8:40], client_key[3:30]]
    for needle in needles:
        assert needle.encode() not in raw, needle[:12]
        assert needle not in rows, needle[:12]
    # and the database does carry the accounts (the scan really read something)
    assert "served@example.com" in rows and "k1" in rows


def _open_store(path: str, barrier, results) -> None:  # child process
    barrier.wait()
    try:
        SecretsStore(path).put(Credentials(f"acc_{os.getpid()}", api_key="sk-" + "p" * 30))
        results.put("ok")
    except Exception:
        results.put(traceback.format_exc())


def test_concurrent_first_open_of_the_secrets_store(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("fork")
    for run in range(4):
        path = str(tmp_path / f"race{run}.secrets")
        barrier, results = ctx.Barrier(6), ctx.Queue()
        procs = [ctx.Process(target=_open_store, args=(path, barrier, results)) for _ in range(6)]
        for p in procs:
            p.start()
        for p in procs:
            p.join(timeout=30)
        outcomes = [results.get(timeout=5) for _ in procs]
        assert outcomes == ["ok"] * 6, outcomes
        store = SecretsStore(path)
        assert len(store.all()) == 6
        store.close()
