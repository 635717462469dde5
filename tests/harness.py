"""Real processes for integration tests: the simulated upstream, a pool, mitmdump, Datasette.

Every process listens on 127.0.0.1 only and is stopped by the fixture that started it. The
logs of every mitmdump go to files under the test's tmp dir, so secret scans can read them.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from accountpool import account_admin, schema, store
from accountpool.secrets_store import SecretsStore
from accountpool.simulator import SimulatedUpstream

BIN = Path(sys.executable).parent
ADDON = Path(__file__).resolve().parent.parent / "addon" / "accountpool" / "mitmproxy_script.py"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, proc: subprocess.Popen | None = None, timeout: float = 30.0,
                  log: Path | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            text = log.read_text() if log and log.exists() else ""
            raise RuntimeError(f"process exited with {proc.returncode} before listening:\n{text[-4000:]}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listening on 127.0.0.1:{port} after {timeout}s")


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
                "pool_oauth_token_url": f"{sim_url}/oauth/token", "pool_metrics_flush_ms": 100,
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
