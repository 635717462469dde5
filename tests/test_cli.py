"""The `accountpool` command, run as a subprocess exactly as an operator runs it."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from accountpool.admin import account_admin
from accountpool.simulator.server import SimulatedUpstream
from accountpool.storage import schema, store
from accountpool.storage.secrets_store import SecretsStore
from helpers_pool import all_tokens, assert_clean_error, make_auth_json, run_cli, run_cli_many, write_json

LIST_FIELDS = {"id", "label", "kind", "plan", "enabled", "auth_blocked"}


@pytest.fixture
def db(tmp_path: Path) -> Path:
    """An initialised pool (in-process: `init` itself is tested as a subprocess below)."""
    path = tmp_path / "data" / "pool.db"
    schema.connect(path).close()
    SecretsStore(path.with_name("pool.secrets")).close()
    return path


def setup_login(db: Path, auth: dict[str, Any]) -> str:
    """Import an auth.json in-process, for tests whose subject is another command; returns its id."""
    conn, secrets = schema.connect(db), SecretsStore(db.with_name("pool.secrets"))
    try:
        pending = [account_admin.parse_codex_auth(auth, "test")]
        [result] = account_admin.apply_import(conn, secrets, pending, actor="test")
        return result.account.id
    finally:
        conn.close()
        secrets.close()


def setup_key(db: Path, label: str, key: str) -> str:
    conn, secrets = schema.connect(db), SecretsStore(db.with_name("pool.secrets"))
    try:
        return account_admin.add_api_key(conn, secrets, label=label, key=key, actor="test").id
    finally:
        conn.close()
        secrets.close()


@pytest.fixture(scope="module")
def sim() -> Iterator[SimulatedUpstream]:
    with SimulatedUpstream() as upstream:
        yield upstream


def listed(db: Path) -> list[dict[str, Any]]:
    """The accounts as `list --json` shows them, read in-process (subprocesses are the slow part)."""
    conn = schema.connect(db)
    try:
        return [a.model_dump(mode="json") for a in store.list_accounts(conn)]
    finally:
        conn.close()


def cli_listed(db: Path) -> list[dict[str, Any]]:
    result = run_cli(db, "list", "--json")
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    return json.loads(result.stdout)


def by_label(db: Path) -> dict[str, dict[str, Any]]:
    return {a["label"]: a for a in listed(db)}


def secrets_of(db: Path) -> dict[str, Any]:
    store_ = SecretsStore(db.with_name("pool.secrets"), create=False)
    try:
        return {c.account_id: c for c in store_.all()}
    finally:
        store_.close()


def block(db: Path, account_id: str, error: str = "invalid_grant (test)") -> None:
    conn = schema.connect(db)
    store.set_auth_blocked(conn, account_id, error, actor="test")
    conn.close()


def snapshot(db: Path) -> tuple[Any, ...]:
    """Accounts, secrets, client keys and the audit log: what "nothing half-written" compares."""
    secrets = {k: (c.api_key, c.access_token, c.refresh_token, c.generation) for k, c in secrets_of(db).items()}
    conn = schema.connect(db)
    try:
        keys = store.list_client_keys(conn)
        audit = conn.execute("select count(*) from audit_log").fetchone()[0]
    finally:
        conn.close()
    return listed(db), secrets, keys, audit


# ---------------------------------------------------------------- init and the console script


def test_init_is_idempotent_and_private(tmp_path: Path) -> None:
    db = tmp_path / "nested" / "dir" / "pool.db"
    first = run_cli(db, "init", script=True)  # the installed console script
    assert first.returncode == 0, first.stderr
    assert str(db.resolve()) in first.stdout
    secrets_file = db.with_name("pool.secrets")
    assert db.is_file() and secrets_file.is_file()
    assert stat.S_IMODE(secrets_file.stat().st_mode) == 0o600
    second = run_cli(db, "init")
    assert second.returncode == 0, second.stderr
    assert cli_listed(db) == []


def test_db_and_secrets_from_environment(tmp_path: Path) -> None:
    db = tmp_path / "env" / "pool.db"
    secrets_file = tmp_path / "elsewhere" / "my.secrets"
    env = {"ACCOUNTPOOL_DB": str(db), "ACCOUNTPOOL_SECRETS": str(secrets_file)}
    result = subprocess.run([sys.executable, "-m", "accountpool.admin.cli", "init"], capture_output=True, text=True,
                            env={**os.environ, **env}, check=False, timeout=30)
    assert result.returncode == 0, result.stderr
    assert db.is_file() and secrets_file.is_file()
    assert not db.with_name("pool.secrets").exists()


def test_commands_without_init_fail_cleanly(tmp_path: Path) -> None:
    db = tmp_path / "data" / "pool.db"
    auth = write_json(tmp_path / "auth.json", make_auth_json("acct-noinit"))
    calls = [(("list",), None), (("list", "--json"), None), (("import", str(auth)), None),
             (("add-key", "--label", "k"), "sk-" + "a" * 40), (("enable", "x"), None),
             (("disable", "x"), None), (("refresh", "x"), None), (("export",), None),
             (("client-key", "create", "--label", "c"), None), (("client-key", "list"), None),
             (("client-key", "revoke", "x"), None)]
    for result in run_cli_many(db, [(args, stdin, None) for args, stdin in calls]):
        assert_clean_error(result, "accountpool init")
        assert result.stdout == ""
    assert not db.parent.exists() or list(db.parent.iterdir()) == []


# ---------------------------------------------------------------- import


def test_import_one_auth_json(db: Path, tmp_path: Path) -> None:
    auth = make_auth_json("acct-one", email="one@example.com", plan="pro", exp=2_000_000_000)
    result = run_cli(db, "import", str(write_json(tmp_path / "auth.json", auth)))
    assert result.returncode == 0, result.stderr
    assert "added" in result.stdout and "one@example.com" in result.stdout
    [acc] = cli_listed(db)
    assert acc.keys() >= LIST_FIELDS
    assert (acc["label"], acc["kind"], acc["plan"], acc["enabled"], acc["auth_blocked"]) == (
        "one@example.com", "chatgpt", "pro", True, False)
    assert acc["email"] == "one@example.com" and acc["upstream_account_id"] == "acct-one"
    assert acc["access_expires_at"] == 2_000_000_000
    creds = secrets_of(db)[acc["id"]]
    assert creds.access_token == auth["tokens"]["access_token"]
    assert creds.refresh_token == auth["tokens"]["refresh_token"]
    assert creds.id_token == auth["tokens"]["id_token"]
    for token in all_tokens(auth):
        assert token not in result.stdout + result.stderr


def test_import_simulator_login_with_label(db: Path, tmp_path: Path, sim: SimulatedUpstream) -> None:
    auth = sim.add_chatgpt_login("acct-sim-label", email="sim@example.com", plan="team")
    result = run_cli(db, "import", str(write_json(tmp_path / "auth.json", auth)), "--label", "work")
    assert result.returncode == 0, result.stderr
    acc = by_label(db)["work"]
    assert (acc["plan"], acc["email"], acc["upstream_account_id"]) == ("team", "sim@example.com", "acct-sim-label")


def test_import_directory(db: Path, tmp_path: Path) -> None:
    folder = tmp_path / "logins"
    for i, plan in enumerate(["plus", "free", "team"]):
        write_json(folder / f"auth{i}.json", make_auth_json(f"acct-dir-{i}", email=f"d{i}@example.com", plan=plan))
    (folder / "README.txt").write_text("not json, ignored")
    result = run_cli(db, "import", str(folder))
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("added") == 3
    accounts = by_label(db)
    assert {k: v["plan"] for k, v in accounts.items()} == {
        "d0@example.com": "plus", "d1@example.com": "free", "d2@example.com": "team"}
    assert len(secrets_of(db)) == 3


def test_reimport_updates_tokens_and_clears_block(db: Path, tmp_path: Path) -> None:
    first = make_auth_json("acct-re", email="re@example.com", plan="plus")
    assert run_cli(db, "import", str(write_json(tmp_path / "a1.json", first))).returncode == 0
    [acc] = listed(db)
    block(db, acc["id"])
    assert listed(db)[0]["auth_blocked"] is True

    second = make_auth_json("acct-re", email="re@example.com", plan="pro", exp=2_100_000_000)
    result = run_cli(db, "import", str(write_json(tmp_path / "a2.json", second)))
    assert result.returncode == 0, result.stderr
    assert "updated" in result.stdout
    [after] = cli_listed(db)  # no twin
    assert after["id"] == acc["id"]
    assert after["auth_blocked"] is False and after["auth_error"] is None
    assert after["plan"] == "pro" and after["access_expires_at"] == 2_100_000_000
    creds = secrets_of(db)[acc["id"]]
    assert creds.access_token == second["tokens"]["access_token"]
    assert creds.refresh_token == second["tokens"]["refresh_token"]
    assert creds.id_token == second["tokens"]["id_token"]


def test_export_then_import_into_another_pool(db: Path, tmp_path: Path) -> None:
    auth = make_auth_json("acct-exp", email="exp@example.com")
    assert run_cli(db, "import", str(write_json(tmp_path / "auth.json", auth))).returncode == 0
    api_key = "sk-export-" + "e" * 40
    assert run_cli(db, "add-key", "--label", "exported-key", "--base-url", "http://127.0.0.1:9/",
                   stdin=api_key).returncode == 0
    assert run_cli(db, "disable", "exported-key").returncode == 0
    out = tmp_path / "export.json"
    result = run_cli(db, "export", "--include-secrets", "-o", str(out))
    assert result.returncode == 0, result.stderr

    other = tmp_path / "other" / "pool.db"
    assert run_cli(other, "init").returncode == 0
    imported = run_cli(other, "import", str(out))
    assert imported.returncode == 0, imported.stderr
    accounts = by_label(other)
    assert set(accounts) == {"exp@example.com", "exported-key"}
    key_acc = accounts["exported-key"]
    assert (key_acc["kind"], key_acc["enabled"], key_acc["base_url"]) == ("api_key", False, "http://127.0.0.1:9")
    secrets = secrets_of(other)
    assert secrets[key_acc["id"]].api_key == api_key
    assert secrets[accounts["exp@example.com"]["id"]].refresh_token == auth["tokens"]["refresh_token"]
    # importing the same export again updates instead of adding twins
    again = run_cli(other, "import", str(out))
    assert again.returncode == 0, again.stderr
    assert len(listed(other)) == 2


# ---------------------------------------------------------------- add-key


def test_add_key_from_stdin_and_env(db: Path) -> None:
    key = "sk-proj-" + "s" * 40 + "tail"
    result = run_cli(db, "add-key", "--label", "main", stdin=key + "\n")
    assert result.returncode == 0, result.stderr
    assert key not in result.stdout + result.stderr and "tail" in result.stdout  # last four only
    env_key = "sk-env-" + "v" * 40
    result = run_cli(db, "add-key", "--label", "cheap", "--plan", "free", "--base-url", "https://llm.example.com/",
                     "--organization", "org-1", "--from-env", "MY_KEY", env={"MY_KEY": env_key})
    assert result.returncode == 0, result.stderr
    accounts = by_label(db)
    assert (accounts["main"]["kind"], accounts["main"]["plan"], accounts["main"]["base_url"]) == (
        "api_key", "paid", None)
    assert (accounts["cheap"]["plan"], accounts["cheap"]["base_url"], accounts["cheap"]["organization"]) == (
        "free", "https://llm.example.com", "org-1")
    secrets = secrets_of(db)
    assert secrets[accounts["main"]["id"]].api_key == key
    assert secrets[accounts["cheap"]["id"]].api_key == env_key


# ---------------------------------------------------------------- list, enable, disable


def test_list_never_shows_a_secret(db: Path, tmp_path: Path) -> None:
    auth = make_auth_json("acct-list", email="list@example.com")
    setup_login(db, auth)
    key = "sk-list-" + "L" * 40 + "WXYZ"
    setup_key(db, "k", key)
    text = run_cli(db, "list")
    as_json = run_cli(db, "list", "--json")
    assert text.returncode == as_json.returncode == 0
    assert "list@example.com" in text.stdout and "WXYZ" in text.stdout
    data = json.loads(as_json.stdout)
    assert len(data) == 2 and all(a.keys() >= LIST_FIELDS for a in data)
    for secret in [*all_tokens(auth), key]:
        for out in (text.stdout, as_json.stdout):
            assert secret not in out
            assert secret[:-4][-24:] not in out


def test_enable_disable_by_id_and_label(db: Path) -> None:
    acc_id = setup_key(db, "toggle", "sk-" + "t" * 40)
    result = run_cli(db, "disable", acc_id)
    assert result.returncode == 0 and "disabled" in result.stdout
    assert listed(db)[0]["enabled"] is False
    assert "disabled" in run_cli(db, "list").stdout
    assert run_cli(db, "enable", "toggle").returncode == 0
    assert listed(db)[0]["enabled"] is True


# ---------------------------------------------------------------- refresh


def _import_sim_login(db: Path, tmp_path: Path, sim: SimulatedUpstream, account_id: str) -> str:
    auth = sim.add_chatgpt_login(account_id, email=f"{account_id}@example.com", plan="plus")
    return setup_login(db, auth)


def test_refresh_success_rotates(db: Path, tmp_path: Path, sim: SimulatedUpstream) -> None:
    acc_id = _import_sim_login(db, tmp_path, sim, "acct-refresh-ok")
    old = secrets_of(db)[acc_id]
    result = run_cli(db, "refresh", acc_id, "--token-url", f"{sim.url}/oauth/token")
    assert result.returncode == 0, result.stderr
    assert "refreshed" in result.stdout
    assert sim.refresh_count("acct-refresh-ok") == 1
    new = secrets_of(db)[acc_id]
    current = sim.current_tokens("acct-refresh-ok")
    assert new.refresh_token == current["refresh_token"] != old.refresh_token
    assert new.access_token == current["access_token"] != old.access_token
    assert new.generation == old.generation + 1
    for token in (old.refresh_token, new.refresh_token, new.access_token):
        assert token not in result.stdout + result.stderr
    # by label, and with the token URL from the environment
    again = run_cli(db, "refresh", "acct-refresh-ok@example.com",
                    env={"ACCOUNTPOOL_OAUTH_TOKEN_URL": f"{sim.url}/oauth/token"})
    assert again.returncode == 0, again.stderr
    assert sim.refresh_count("acct-refresh-ok") == 2
    assert secrets_of(db)[acc_id].refresh_token == sim.current_tokens("acct-refresh-ok")["refresh_token"]


def test_refresh_invalid_grant_blocks_and_a_later_success_clears(db: Path, tmp_path: Path,
                                                                 sim: SimulatedUpstream) -> None:
    acc_id = _import_sim_login(db, tmp_path, sim, "acct-refresh-bad")
    before = secrets_of(db)[acc_id]
    sim.script("acct-refresh-bad", [{"kind": "refresh_error", "error": "invalid_grant"}])
    result = run_cli(db, "refresh", acc_id, "--token-url", f"{sim.url}/oauth/token")
    line = assert_clean_error(result, "invalid_grant")
    assert before.refresh_token not in line
    acc = by_label(db)["acct-refresh-bad@example.com"]
    assert acc["auth_blocked"] is True and "invalid_grant" in acc["auth_error"]
    after = secrets_of(db)[acc_id]
    assert after.refresh_token == before.refresh_token and after.generation == before.generation  # not lost
    assert "auth_blocked" in run_cli(db, "list").stdout

    # a transient failure afterwards keeps the block and its reason
    sim.script("acct-refresh-bad", [{"kind": "refresh_error", "status": 500}])
    assert_clean_error(run_cli(db, "refresh", acc_id, "--token-url", f"{sim.url}/oauth/token"), "500")
    acc = by_label(db)["acct-refresh-bad@example.com"]
    assert acc["auth_blocked"] is True and "invalid_grant" in acc["auth_error"]

    ok = run_cli(db, "refresh", acc_id, "--token-url", f"{sim.url}/oauth/token")
    assert ok.returncode == 0, ok.stderr
    acc = by_label(db)["acct-refresh-bad@example.com"]
    assert acc["auth_blocked"] is False and acc["auth_error"] is None


def test_refresh_server_error_does_not_block(db: Path, tmp_path: Path, sim: SimulatedUpstream) -> None:
    acc_id = _import_sim_login(db, tmp_path, sim, "acct-refresh-500")
    before = secrets_of(db)[acc_id]
    sim.script("acct-refresh-500", [{"kind": "refresh_error", "status": 500}])
    result = run_cli(db, "refresh", acc_id, "--token-url", f"{sim.url}/oauth/token")
    assert_clean_error(result, "500")
    acc = by_label(db)["acct-refresh-500@example.com"]
    assert acc["auth_blocked"] is False
    assert secrets_of(db)[acc_id].refresh_token == before.refresh_token
    assert sim.refresh_count("acct-refresh-500") == 0


def test_refresh_unreachable_and_api_key(db: Path, tmp_path: Path, sim: SimulatedUpstream) -> None:
    acc_id = _import_sim_login(db, tmp_path, sim, "acct-refresh-down")
    # a closed port on loopback: connection refused, transient, not blocked
    result = run_cli(db, "refresh", acc_id, "--token-url", "http://127.0.0.1:9/oauth/token")
    assert_clean_error(result, "token refresh failed")
    assert by_label(db)["acct-refresh-down@example.com"]["auth_blocked"] is False
    setup_key(db, "plain", "sk-" + "p" * 40)
    assert_clean_error(run_cli(db, "refresh", "plain", "--token-url", f"{sim.url}/oauth/token"), "API key")


# ---------------------------------------------------------------- export


def test_export_without_and_with_secrets(db: Path, tmp_path: Path) -> None:
    auth = make_auth_json("acct-export", email="export@example.com")
    setup_login(db, auth)
    key = "sk-exp-" + "x" * 40
    setup_key(db, "kx", key)
    secrets = [*all_tokens(auth), key]

    plain = run_cli(db, "export")
    assert plain.returncode == 0, plain.stderr
    data = json.loads(plain.stdout)
    assert data["includes_secrets"] is False and len(data["accounts"]) == 2
    for secret in secrets:
        assert secret not in plain.stdout

    plain_file = tmp_path / "plain.json"
    assert run_cli(db, "export", "-o", str(plain_file)).returncode == 0
    assert not any(s in plain_file.read_text() for s in secrets)

    out = tmp_path / "with-secrets.json"
    out.write_text("{}")
    os.chmod(out, 0o644)  # an existing, world-readable file must not keep its mode
    result = run_cli(db, "export", "--include-secrets", "-o", str(out))
    assert result.returncode == 0, result.stderr
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    text = out.read_text()
    for secret in secrets:
        assert secret in text
        assert secret not in result.stdout + result.stderr
    assert json.loads(text)["includes_secrets"] is True


# ---------------------------------------------------------------- client keys


def test_client_key_create_list_revoke(db: Path) -> None:
    created = run_cli(db, "client-key", "create", "--label", "laptop")
    assert created.returncode == 0, created.stderr
    key = created.stdout.strip()
    assert key.startswith("ap-") and len(key) > 30 and "\n" not in key
    assert "only this once" in created.stderr
    listing = run_cli(db, "client-key", "list")
    as_json = run_cli(db, "client-key", "list", "--json")
    assert key not in listing.stdout + as_json.stdout
    [row] = json.loads(as_json.stdout)
    assert row["label"] == "laptop" and row["revoked_at"] is None and "key_hash" not in row
    assert "active" in listing.stdout

    conn = schema.connect(db)
    stored = list(conn.query("select key_hash from client_keys"))
    assert stored == [{"key_hash": store.hash_client_key(key)}]
    assert store.match_client_key(key, store.active_client_key_hashes(conn)) == (row["id"], "laptop")
    conn.close()

    revoked = run_cli(db, "client-key", "revoke", row["id"])
    assert revoked.returncode == 0, revoked.stderr
    assert json.loads(run_cli(db, "client-key", "list", "--json").stdout)[0]["revoked_at"] is not None
    assert "revoked" in run_cli(db, "client-key", "list").stdout
    conn = schema.connect(db)
    assert store.match_client_key(key, store.active_client_key_hashes(conn)) is None
    conn.close()


# ---------------------------------------------------------------- addon-path


def test_addon_path(tmp_path: Path) -> None:
    for script in (False, True):
        result = run_cli(tmp_path / "unused.db", "addon-path", script=script)
        assert result.returncode == 0, result.stderr
        path = Path(result.stdout.strip())
        assert path.is_absolute() and path.name == "mitmproxy_script.py"
        assert path.parent.name == "accountpool"
        if path.exists():
            assert path.is_file()
    assert not (tmp_path / "unused.db").exists()


# ---------------------------------------------------------------- bad input


def test_bad_input_is_one_clean_line_and_writes_nothing(db: Path, tmp_path: Path) -> None:
    good = make_auth_json("acct-good", email="good@example.com")
    setup_login(db, good)
    setup_key(db, "taken", "sk-" + "k" * 40)
    before = snapshot(db)

    bad_jwt = make_auth_json("acct-badjwt")
    bad_jwt["tokens"]["id_token"] = "not-a-jwt"
    bad_payload = make_auth_json("acct-badpayload")
    bad_payload["tokens"]["access_token"] = "aaa.%%%notbase64%%%.bbb"
    no_tokens = {"OPENAI_API_KEY": "sk-" + "o" * 40}
    (tmp_path / "malformed.json").write_text('{"tokens": {"access_token": ')
    mixed = tmp_path / "mixed"
    write_json(mixed / "a_ok.json", make_auth_json("acct-mixed-ok"))
    write_json(mixed / "b_bad.json", bad_jwt)
    write_json(mixed / "c_ok.json", make_auth_json("acct-mixed-ok2"))
    empty_dir = tmp_path / "empty"
    empty_dir.mkdir()
    bad_export = {"format": "accountpool-export", "version": 1, "accounts": [{"label": "x", "kind": "martian"}]}
    null_export = {"format": "accountpool-export", "version": 1, "accounts": None}
    odd_secrets = {"format": "accountpool-export", "version": 1,
                   "accounts": [{"label": "y", "kind": "api_key", "secrets": ["sk-" + "q" * 40]}]}

    cases: list[tuple[tuple[str, ...], str | None, dict[str, str] | None, str]] = [
        (("import", str(tmp_path / "missing.json")), None, None, "missing.json"),
        (("import", str(tmp_path / "malformed.json")), None, None, "not valid JSON"),
        (("import", str(write_json(tmp_path / "badjwt.json", bad_jwt))), None, None, "JWT"),
        (("import", str(write_json(tmp_path / "badpayload.json", bad_payload))), None, None, "JWT"),
        (("import", str(write_json(tmp_path / "notokens.json", no_tokens))), None, None, "tokens"),
        (("import", str(mixed)), None, None, "b_bad.json"),
        (("import", str(empty_dir)), None, None, "no .json"),
        (("import", str(write_json(tmp_path / "badexport.json", bad_export))), None, None, "badexport.json"),
        (("import", str(write_json(tmp_path / "nullexport.json", null_export))), None, None, "accounts"),
        (("import", str(write_json(tmp_path / "oddsecrets.json", odd_secrets))), None, None, "secrets"),
        (("enable", "acc_nope"), None, None, "acc_nope"),
        (("disable", "nope-label"), None, None, "nope-label"),
        (("refresh", "acc_nope"), None, None, "acc_nope"),
        (("client-key", "revoke", "ck_nope"), None, None, "ck_nope"),
        (("add-key", "--label", "taken"), "sk-" + "d" * 40, None, "taken"),
        (("add-key", "--label", "empty"), "", None, "empty"),
        (("add-key", "--label", "blank"), "   \n", None, "empty"),
        (("add-key", "--label", "spaced"), "sk-abc def-" + "g" * 30, None, "whitespace"),
        (("add-key", "--label", "noscheme", "--base-url", "api.example.com"), "sk-" + "n" * 40, None, "http"),
        (("add-key", "--label", "noenv", "--from-env", "UNSET_VAR_XYZ"), None, None, "UNSET_VAR_XYZ"),
        (("export", "-o", str(tmp_path / "no" / "such" / "dir" / "out.json")), None, None, "out.json"),
    ]
    results = run_cli_many(db, [(args, stdin, env) for args, stdin, env, _ in cases])
    for (args, _, _, fragment), result in zip(cases, results, strict=True):
        line = assert_clean_error(result, fragment)
        assert result.stdout == "", args
        for secret in [*all_tokens(good), *all_tokens(bad_jwt), *all_tokens(bad_payload), "q" * 40, "o" * 40]:
            assert secret not in line
    assert snapshot(db) == before
    assert not (tmp_path / "no").exists()


def test_duplicate_client_key_label(db: Path) -> None:
    assert run_cli(db, "client-key", "create", "--label", "dup").returncode == 0
    before = run_cli(db, "client-key", "list", "--json").stdout
    result = run_cli(db, "client-key", "create", "--label", "dup")
    assert_clean_error(result, "dup")
    assert result.stdout == ""
    assert run_cli(db, "client-key", "list", "--json").stdout == before


def test_not_a_database(tmp_path: Path) -> None:
    db = tmp_path / "pool.db"
    db.write_bytes(b"definitely not sqlite" * 50)
    assert_clean_error(run_cli(db, "list"), str(db))


def test_export_without_secrets_restores_metadata_but_creates_no_empty_accounts(db: Path, tmp_path: Path) -> None:
    auth = make_auth_json("acct-meta", email="meta@example.com")
    acc_id = setup_login(db, auth)
    out = tmp_path / "meta.json"
    assert run_cli(db, "export", "-o", str(out)).returncode == 0

    # into a fresh pool: an account without credentials could never serve, so refuse
    other = tmp_path / "other" / "pool.db"
    assert run_cli(other, "init").returncode == 0
    assert_clean_error(run_cli(other, "import", str(out)), "include-secrets")
    assert listed(other) == [] and secrets_of(other) == {}

    # back into the pool it came from: metadata only; the stored tokens stay, and so does a block
    # on them (only new tokens clear it)
    block(db, acc_id)
    result = run_cli(db, "import", str(out))
    assert result.returncode == 0, result.stderr
    [acc] = listed(db)
    assert acc["id"] == acc_id and acc["auth_blocked"] is True
    assert secrets_of(db)[acc_id].refresh_token == auth["tokens"]["refresh_token"]


def test_export_import_never_overwrites_a_login_with_a_key_of_the_same_label(db: Path, tmp_path: Path) -> None:
    auth = make_auth_json("acct-shared", email="shared@example.com")
    login_id = setup_login(db, auth)
    source = tmp_path / "src" / "pool.db"
    assert run_cli(source, "init").returncode == 0
    setup_key(source, "shared@example.com", "sk-shared-" + "s" * 40)
    out = tmp_path / "keys.json"
    assert run_cli(source, "export", "--include-secrets", "-o", str(out)).returncode == 0

    result = run_cli(db, "import", str(out))
    assert result.returncode == 0, result.stderr
    accounts = listed(db)
    assert len(accounts) == 2 and {a["kind"] for a in accounts} == {"chatgpt", "api_key"}
    login = secrets_of(db)[login_id]
    assert login.refresh_token == auth["tokens"]["refresh_token"] and login.api_key is None
