"""Builders for pool tests: unsigned JWTs, Codex auth.json dicts, and running the CLI as a subprocess."""

from __future__ import annotations

import base64
import json
import os
import secrets
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

AUTH_CLAIM = "https://api.openai.com/auth"


def _b64(data: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def make_jwt(claims: dict[str, Any]) -> str:
    """An unsigned-looking JWT (random dummy signature, so every token is a unique secret)."""
    return f"{_b64({'alg': 'RS256', 'typ': 'JWT'})}.{_b64(claims)}.{secrets.token_urlsafe(32)}"


def make_auth_json(account_id: str, *, email: str | None = None, plan: str = "plus",
                   exp: float | None = None, refresh_token: str | None = None) -> dict[str, Any]:
    """A Codex CLI `auth.json` for one ChatGPT login."""
    email = email or f"{account_id}@example.com"
    auth = {"chatgpt_plan_type": plan, "chatgpt_account_id": account_id}
    id_token = make_jwt({"email": email, AUTH_CLAIM: auth, "sub": f"user-{account_id}",
                         "aud": "app_EMoamEEZ73f0CkXaXp7hrann"})
    access = make_jwt({"exp": int(exp if exp is not None else time.time() + 3600), AUTH_CLAIM: auth,
                       "client_id": "app_EMoamEEZ73f0CkXaXp7hrann"})
    return {
        "OPENAI_API_KEY": None,
        "tokens": {
            "id_token": id_token,
            "access_token": access,
            "refresh_token": refresh_token or "rt_" + secrets.token_urlsafe(24),
            "account_id": account_id,
        },
        "last_refresh": "2025-01-01T00:00:00Z",
    }


def write_json(path: Path, data: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))
    return path


def all_tokens(auth: dict[str, Any]) -> list[str]:
    return [v for v in auth["tokens"].values() if isinstance(v, str) and len(v) > 20]


def _cli_command(db: Path, args: tuple[str, ...], env: dict[str, str] | None,
                 script: bool) -> tuple[list[str], dict[str, str]]:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("ACCOUNTPOOL_")}
    full_env.update(env or {})
    console_script = [str(Path(sys.executable).with_name("accountpool"))]
    cmd = console_script if script else [sys.executable, "-m", "accountpool.admin.cli"]
    return [*cmd, "--db", str(db), *args], full_env


def run_cli(db: Path, *args: str, stdin: str | None = None, env: dict[str, str] | None = None,
            script: bool = False, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    """Run `accountpool --db DB ARGS…` in a fresh interpreter (or the installed console script)."""
    cmd, full_env = _cli_command(db, args, env, script)
    return subprocess.run(cmd, input=stdin if stdin is not None else "",
                          capture_output=True, text=True, env=full_env, timeout=timeout, check=False)


def run_cli_many(db: Path, calls: list[tuple[tuple[str, ...], str | None, dict[str, str] | None]],
                 timeout: float = 60) -> list[subprocess.CompletedProcess[str]]:
    """Run several CLI invocations at once (each in its own interpreter), in order of `calls`.

    For commands that must fail without writing: running them concurrently is no weaker a test
    (nothing may be written by any of them) and it keeps the suite fast."""
    procs = []
    for args, stdin, env in calls:
        cmd, full_env = _cli_command(db, args, env, False)
        proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, env=full_env)
        procs.append((cmd, proc, stdin))
    results = []
    for cmd, proc, stdin in procs:
        out, err = proc.communicate(stdin if stdin is not None else "", timeout=timeout)
        results.append(subprocess.CompletedProcess(cmd, proc.returncode, out, err))
    return results


def assert_clean_error(result: subprocess.CompletedProcess[str], *fragments: str) -> str:
    """One line on stderr starting with `accountpool: error:`, exit 1, no traceback."""
    assert result.returncode == 1, (result.returncode, result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("accountpool: error:"), result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


def dump_served_db(db_path: Path) -> tuple[bytes, str]:
    """Everything a Datasette user could reach: the db's raw bytes (and its -wal), and `select *` of
    every table, view and virtual table in sqlite_master, rendered as text."""
    raw = b""
    for suffix in ("", "-wal", "-shm", "-journal"):
        f = Path(str(db_path) + suffix)
        if f.exists():
            raw += f.read_bytes()
    conn = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
    try:
        names = [r[0] for r in conn.execute("select name from sqlite_master where type in ('table', 'view')")]
        assert "accounts" in names and "client_keys" in names
        rendered = []
        for name in names:
            for row in conn.execute(f'select * from "{name}"'):
                rendered.append(repr(row))
    finally:
        conn.close()
    return raw, "\n".join(rendered)
