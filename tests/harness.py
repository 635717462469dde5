"""Real processes for integration tests: the simulated upstream, a pool, mitmdump, Datasette.

Every process listens on 127.0.0.1 only and is stopped by the fixture that started it. The
logs of every mitmdump go to files under the test's tmp dir, so secret scans can read them.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from accountpool.admin import account_admin
from accountpool.admin.local_ports import free_port, wait_for_port
from accountpool.simulator.server import SimulatedUpstream
from accountpool.storage import schema, store
from accountpool.storage.secrets_store import SecretsStore

BIN = Path(sys.executable).parent
ADDON = Path(__file__).resolve().parent.parent / "addon" / "accountpool" / "mitmproxy_script.py"


@dataclass
class Pool:
    """A pool database + secrets store in a temp dir, with accounts pointing at the simulator."""

    dir: Path
    sim: SimulatedUpstream
    db_path: Path = field(init=False)
    secrets_path: Path = field(init=False)
    client_key: str = field(init=False)
    secrets_used: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.db_path = self.dir / "pool.db"
        self.secrets_path = self.dir / "pool.secrets"
        db = self.db()
        SecretsStore(self.secrets_path).close()
        _, self.client_key = store.create_client_key(db, "tests")
        db.close()

    def db(self) -> Any:
        return schema.connect(self.db_path)

    def add_key(self, label: str, key: str, *, plan: str = "paid", base_url: str | None = None,
                usage: dict | None = None) -> str:
        self.sim.add_api_key(key, plan=plan, usage=usage)
        self.secrets_used.append(key)
        db = self.db()
        secrets = SecretsStore(self.secrets_path)
        try:
            acc = account_admin.add_api_key(db, secrets, label=label, key=key, base_url=base_url or self.sim.url,
                                            plan=plan)
        finally:
            secrets.close()
            db.close()
        return acc.id

    def add_login(self, label: str, upstream_id: str, *, plan: str = "plus", access_ttl_s: float = 3600) -> str:
        auth = self.sim.add_chatgpt_login(upstream_id, email=f"{label}@example.com", plan=plan,
                                          access_ttl_s=access_ttl_s)
        self.secrets_used.extend(t for t in auth["tokens"].values() if t and len(t) > 20)
        db = self.db()
        secrets = SecretsStore(self.secrets_path)
        try:
            pending = account_admin.parse_codex_auth(auth, label, label=label)
            [result] = account_admin.apply_import(db, secrets, [pending], actor="tests")
        finally:
            secrets.close()
            db.close()
        return result.account.id

    def all_secrets(self) -> list[str]:
        """Everything secret the pool holds now (rotated tokens included) plus what it ever held."""
        secrets = SecretsStore(self.secrets_path)
        try:
            current = [v for c in secrets.all() for v in (c.api_key, c.access_token, c.refresh_token, c.id_token)
                       if v]
        finally:
            secrets.close()
        return sorted(set(current + self.secrets_used))

    def query(self, sql: str, params: Iterable[Any] = ()) -> list[dict[str, Any]]:
        db = self.db()
        try:
            return list(db.query(sql, list(params)))
        finally:
            db.close()

    def wait_rows(self, sql: str, n: int, params: Iterable[Any] = (), timeout: float = 10.0) -> list[dict]:
        """Metrics are written off-loop in batches: poll until `n` rows are there."""
        deadline = time.monotonic() + timeout
        rows: list[dict] = []
        while time.monotonic() < deadline:
            rows = self.query(sql, params)
            if len(rows) >= n:
                return rows
            time.sleep(0.1)
        return rows


class Mitmdump:
    """`mitmdump -s <addon>` as a real process."""

    def __init__(self, pool: Pool, *, mode: str | None = None, options: dict[str, Any] | None = None,
                 extra_args: list[str] | None = None, tool: str = "mitmdump", port: int | None = None,
                 confdir: Path | None = None, listen_host: str = "127.0.0.1") -> None:
        self.pool = pool
        self.port = port or free_port()
        self.log = pool.dir / f"{tool}-{self.port}.log"
        self.confdir = confdir or pool.dir / "mitmproxy-conf"
        sim_url = pool.sim.url
        opts = {"pool_db": str(pool.db_path), "pool_chatgpt_base_url": f"{sim_url}/backend-api/codex",
                "pool_oauth_token_url": f"{sim_url}/oauth/token",
                "pool_usage_url": f"{sim_url}/backend-api/wham/usage", "pool_usage_sweep": 0,
                "pool_metrics_flush_ms": 100,
                "confdir": str(self.confdir), "termlog_verbosity": "info"}
        opts.update(options or {})
        self.args = [str(BIN / tool), "--listen-host", listen_host, "-p", str(self.port)]
        if mode is not False:
            self.args += ["--mode", mode or f"reverse:{sim_url}"]
        self.args += ["-s", str(ADDON)]
        for k, v in opts.items():
            self.args += ["--set", f"{k}={_opt(v)}"]
        self.args += extra_args or []
        self.proc: subprocess.Popen | None = None

    def start(self) -> Mitmdump:
        self._fh = open(self.log, "ab")  # noqa: SIM115 - closed in stop()
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen(self.args, stdout=self._fh, stderr=subprocess.STDOUT, env=env,
                                     start_new_session=True)
        wait_for_port(self.port, self.proc, log=self.log)
        return self

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self, sig: int = signal.SIGTERM) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._fh.close()
        return self.proc.returncode

    def kill9(self) -> None:
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(5)
        self._fh.close()

    def run_to_exit(self, timeout: float = 30.0) -> tuple[int, str]:
        """Start a mitmdump that is expected to refuse to start: (exit code, its output)."""
        with open(self.log, "ab") as fh:
            proc = subprocess.run(self.args, stdout=fh, stderr=subprocess.STDOUT, timeout=timeout,
                                  env={**os.environ, "PYTHONUNBUFFERED": "1"}, check=False)
        return proc.returncode, self.log_text()

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def client(self, key: str | None = None, **kw: Any) -> httpx.Client:
        headers = {"authorization": f"Bearer {key or self.pool.client_key}"}
        return httpx.Client(base_url=self.url, headers=headers, timeout=30, trust_env=False, **kw)

    def __enter__(self) -> Mitmdump:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class Datasette:
    """`datasette <pool.db> --root` as a real process; `sign_in_url` signs a browser in as root.

    The plugin finds the secrets store beside the database; "refresh now" talks to the simulator.
    Output goes to a log file under the pool's dir once the sign-in URL has been read from it.
    """

    SIGN_IN = re.compile(r"(http://\S+/-/auth-token\?token=\S+)")

    def __init__(self, pool: Pool, *, port: int | None = None, extra_args: list[str] | None = None) -> None:
        self.pool = pool
        self.port = port or free_port()
        self.log = pool.dir / f"datasette-{self.port}.log"
        self.args = [str(BIN / "datasette"), str(pool.db_path), "--root", "-h", "127.0.0.1", "-p", str(self.port),
                     *(extra_args or [])]
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1",
                    "ACCOUNTPOOL_OAUTH_TOKEN_URL": f"{pool.sim.url}/oauth/token"}
        self.proc: subprocess.Popen | None = None
        self.sign_in_url = ""
        self._found = threading.Event()

    def start(self, timeout: float = 30.0) -> Datasette:
        self.proc = subprocess.Popen(self.args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                     env=self.env, start_new_session=True)
        self._reader = threading.Thread(target=self._read_output, daemon=True)
        self._reader.start()
        deadline = time.monotonic() + timeout
        while not self._found.wait(0.05):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"datasette printed no root sign-in URL:\n{self.log_text()[-4000:]}")
        wait_for_port(self.port, self.proc, timeout=max(1.0, deadline - time.monotonic()), log=self.log)
        return self

    def _read_output(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        with open(self.log, "a") as fh:
            for line in self.proc.stdout:
                fh.write(line)
                fh.flush()
                match = self.SIGN_IN.search(line)
                if match and not self._found.is_set():
                    self.sign_in_url = match.group(1)
                    self._found.set()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._reader.join(5)
        return self.proc.returncode

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def __enter__(self) -> Datasette:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# Debian's Chromium, driven by Playwright (never a downloaded browser).
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"
LAPTOP = {"width": 1366, "height": 900}
PHONE = {"width": 390, "height": 844}


def launch_chromium(playwright: Any) -> Any:
    """A headless Debian Chromium from a sync Playwright instance."""
    return playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)


def signed_in_page(browser: Any, datasette: Datasette, viewport: dict[str, int] = LAPTOP) -> Any:
    """A new browser context signed in as root through Datasette's `--root` URL (valid once: change the
    page's viewport with `page.set_viewport_size` rather than signing in again)."""
    context = browser.new_context(viewport=viewport)
    page = context.new_page()
    page.goto(datasette.sign_in_url)
    assert any(c["name"] == "ds_actor" for c in context.cookies()), "the sign-in URL set no actor cookie"
    return page


def _opt(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    return str(v)


def sse_events(text: str) -> list[tuple[str, dict[str, Any] | str]]:
    """Parse an SSE body into (event, data) pairs; data is JSON when it parses."""
    out = []
    for block in text.replace("\r\n", "\n").split("\n\n"):
        name, data = "message", []
        for line in block.split("\n"):
            if line.startswith("event:"):
                name = line[6:].strip()
            elif line.startswith("data:"):
                data.append(line[5:].strip())
        if data:
            raw = "\n".join(data)
            try:
                out.append((name, json.loads(raw)))
            except ValueError:
                out.append((name, raw))
    return out


def find_secrets(haystack: str | bytes, secrets: Iterable[str]) -> list[str]:
    """The secrets (shown by their last four characters only) that occur in `haystack`."""
    text = haystack.decode("utf-8", "replace") if isinstance(haystack, bytes) else haystack
    return [f"...{s[-4:]}" for s in secrets if s and s in text]


def running_sim() -> Iterator[SimulatedUpstream]:
    sim = SimulatedUpstream().start()
    try:
        yield sim
    finally:
        sim.stop()


# ---------------------------------------------------------------- helpers for routing tests


def openai_client(proxy: Mitmdump, key: str | None = None, **kw: Any) -> Any:
    """The official SDK pointed at the proxy in reverse mode, without retries (tests count attempts)."""
    from openai import OpenAI

    return OpenAI(base_url=proxy.url + "/v1", api_key=key or proxy.pool.client_key, max_retries=0,
                  http_client=httpx.Client(trust_env=False, timeout=30), **kw)


def timed_sse(response: httpx.Response) -> list[tuple[float, str, Any]]:
    """(arrival time, event name, data) for each SSE event of a streamed httpx response, as it arrives."""
    out: list[tuple[float, str, Any]] = []
    buf = ""
    for text in response.iter_text():
        buf += text.replace("\r\n", "\n")
        while "\n\n" in buf:
            block, buf = buf.split("\n\n", 1)
            now = time.monotonic()
            out.extend((now, name, data) for name, data in sse_events(block + "\n\n"))
    if buf.strip():
        out.extend((time.monotonic(), name, data) for name, data in sse_events(buf))
    return out


def seed_health(pool: Pool, account_id: str, **fields: Any) -> None:
    """Write an `account_health` row (e.g. usage windows) as if the proxy had observed it."""
    from accountpool.models import AccountHealth

    db = pool.db()
    try:
        store.save_health(db, [AccountHealth.model_validate({"account_id": account_id, **fields})])
    finally:
        db.close()


def upstream_header_values(sim: SimulatedUpstream) -> str:
    """Every header value of every request the simulator received, as one string to search in."""
    return "\n".join(f"{k}: {v}" for q in sim.requests() for k, v in q["headers"].items())


def wait_until(predicate: Any, timeout: float = 10.0, interval: float = 0.05) -> Any:
    """Poll `predicate` until it returns something truthy; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"condition not met within {timeout}s")
        time.sleep(interval)


# ---------------------------------------------------------------- helpers for hardening tests (issue 7)


def fast_cooldowns(pool: Pool, seconds: float = 1) -> None:
    """Every default cooldown `seconds` long, so a faulted account is back within the test."""
    from accountpool.models import PoolSettings

    db = pool.db()
    try:
        current = store.load_settings(db)
        store.save_settings(db, PoolSettings.model_validate({
            **current.model_dump(mode="json"), "cooldown_rate_limited_s": seconds, "cooldown_quota_s": seconds,
            "cooldown_auth_s": seconds, "cooldown_upstream_s": seconds, "cooldown_model_s": seconds}), actor="tests")
    finally:
        db.close()


def secret_files(root: Path) -> list[Path]:
    """What a secret scan of a test run reads: every log, database (with -wal/-shm/-journal) and flow file
    under `root`, except the secrets store itself (whose job is to hold them)."""
    out = []
    for path in sorted(root.rglob("*")):
        if not path.is_file() or ".secrets" in path.name or "mitmproxy-conf" in path.parts:
            continue
        if path.suffix in (".log", ".mitm", ".flows", ".json") or ".db" in path.name:
            out.append(path)
    return out


def scan_run_for_secrets(root: Path, secrets: Iterable[str]) -> dict[str, list[str]]:
    """{file name: secrets found (as last four)} over `secret_files(root)`; empty when clean."""
    secrets = list(secrets)
    hits = {}
    for path in secret_files(root):
        found = find_secrets(path.read_bytes(), secrets)
        if found:
            hits[str(path.relative_to(root))] = found
    return hits


def integrity_check(path: Path) -> str:
    """SQLite's own `PRAGMA integrity_check` on a file (read-only open): "ok" when intact."""
    import sqlite3

    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return "\n".join(r[0] for r in conn.execute("PRAGMA integrity_check"))
    finally:
        conn.close()


class TokenUseAudit:
    """Checks, at the simulated upstream, that every ChatGPT access token presented upstream is already in the
    secrets store *on disk* (read by another connection at that moment): refreshed tokens are persisted before use.

    Wraps the simulator instance's request handler; `violations` lists (path, token's last four) that arrived
    while the store did not hold them. A token once found stays verified (later rotations replace it)."""

    def __init__(self, sim: SimulatedUpstream, secrets_path: Path) -> None:
        self.sim, self.secrets_path = sim, secrets_path
        self.verified: set[str] = set()
        self.checked = 0
        self.violations: list[tuple[str, str]] = []
        self._lock = threading.Lock()
        self._orig = sim._respond
        sim._respond = self._respond  # type: ignore[method-assign]

    def _stored_access_tokens(self) -> set[str]:
        secrets = SecretsStore(self.secrets_path, create=False)
        try:
            return {c.access_token for c in secrets.all() if c.access_token}
        finally:
            secrets.close()

    def _respond(self, req: Any) -> Any:
        token = req.bearer
        if req.path.startswith("/backend-api/") and token:
            with self._lock:
                if token not in self.verified:
                    self.checked += 1
                    if token in self._stored_access_tokens():
                        self.verified.add(token)
                    else:
                        self.violations.append((req.path, token[-4:]))
        return self._orig(req)

    def close(self) -> None:
        self.sim._respond = self._orig  # type: ignore[method-assign]


def drop_root_file_override(args: list[str]) -> list[str]:
    """Run `args` without root's power to ignore file modes (so chmod 0444 binds), when we are root."""
    import shutil

    if os.geteuid() != 0:
        return args
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        raise RuntimeError("running as root without setpriv: cannot make a read-only file bind")
    return [setpriv, "--bounding-set", "-dac_override,-dac_read_search", "--", *args]


def regular_mode_client(proxy: Mitmdump, *, proxy_url: str | None = None, **kw: Any) -> httpx.Client:
    """An httpx client using `proxy` as a regular (forward) proxy, trusting its mitmproxy CA."""
    import ssl

    ca = ssl.create_default_context(cafile=str(proxy.confdir / "mitmproxy-ca-cert.pem"))
    return httpx.Client(proxy=proxy_url or proxy.url, verify=ca, trust_env=False, timeout=30, **kw)
