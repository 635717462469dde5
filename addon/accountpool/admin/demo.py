"""`accountpool demo`: the whole product on one machine, against the simulated upstream.

It starts the simulator, builds a demo pool (API keys and ChatGPT logins, some with scripted
faults), runs `mitmdump` with the addon and Datasette with the dashboard, sends a mix of
traffic through the proxy, and prints where to look. Nothing leaves 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import random
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

from accountpool.admin import account_admin
from accountpool.admin.local_ports import port_open, wait_for_port
from accountpool.simulator.server import SimulatedUpstream
from accountpool.storage import schema, store
from accountpool.storage.secrets_store import SecretsStore

ADDON_SCRIPT = Path(__file__).parent.parent / "mitmproxy_script.py"
BIN = Path(sys.executable).parent


def build_demo_pool(db_path: Path, sim: SimulatedUpstream) -> str:
    """A fresh pool with five accounts and scripted faults; returns the demo client key."""
    for suffix in ("", "-wal", "-shm"):
        Path(str(db_path) + suffix).unlink(missing_ok=True)
    secrets_path = db_path.with_name(db_path.stem + ".secrets")
    for suffix in ("", "-wal", "-shm", ".lock"):
        Path(str(secrets_path) + suffix).unlink(missing_ok=True)
    db = schema.connect(db_path)
    secrets = SecretsStore(secrets_path)
    try:
        # Labels sort the troubled accounts first, so failover shows on the dashboard.
        keys = {"alpha-team-key": "sk-demo-team-" + "a" * 24 + "1111",
                "backup-key": "sk-demo-backup-" + "b" * 22 + "2222", "free-key": "sk-demo-free-" + "c" * 24 + "3333"}
        for label, key in keys.items():
            plan = "free" if label == "free-key" else "paid"
            sim.add_api_key(key, plan=plan)
            account_admin.add_api_key(db, secrets, label=label, key=key, base_url=sim.url, plan=plan, actor="demo")
        for label, upstream_id, plan, ttl in (("pro-login", "acct-demo-pro", "pro", 3600),
                                              ("plus-login", "acct-demo-plus", "plus", 60)):
            auth = sim.add_chatgpt_login(upstream_id, email=f"{label}@example.com", plan=plan, access_ttl_s=ttl)
            pending = account_admin.parse_codex_auth(auth, label, label=label)
            account_admin.apply_import(db, secrets, [pending], actor="demo")
        # The first trouble comes at once, on three accounts and in three classes, so even a few seconds of
        # demo show failover at work (the end-to-end test runs it briefly); `inject_faults` goes on from
        # there. The first generation request goes to pro-login (lowest weekly use): its token has expired
        # (401, refresh, retry); the next one meets its rate limit and fails over to plus-login, whose 5xx
        # sends it on to the API keys, where model listings meet alpha-team-key's faults. Login faults match
        # only Responses calls, so the usage sweep's start-up probe of the logins does not take them.
        sim.script(keys["alpha-team-key"], [{"kind": "server_error", "count": 2},
                                            {"kind": "rate_limit", "retry_after": 10}])
        sim.script("acct-demo-pro", [{"kind": "expired", "path": LOGIN_PATH},
                                     {"kind": "rate_limit", "retry_after": 5, "path": LOGIN_PATH}])
        sim.script("acct-demo-plus", [{"kind": "server_error", "path": LOGIN_PATH}])
        sim.set_usage("acct-demo-pro", primary_used_percent=35.0, secondary_used_percent=20.0)
        sim.set_usage("acct-demo-plus", primary_used_percent=40.0, secondary_used_percent=20.5)
        _, client_key = store.create_client_key(db, "demo-client", actor="demo")
    finally:
        secrets.close()
        db.close()
    return client_key


LOGIN_PATH = "/codex/responses"
"""Faults scripted for a login match only its Responses calls (chat is translated to them), never the usage probe."""
FAULT_CYCLE: tuple[tuple[str, dict], ...] = (
    ("acct-demo-pro", {"kind": "rate_limit", "retry_after": 20, "path": LOGIN_PATH}),
    ("acct-demo-plus", {"kind": "server_error", "count": 2, "path": LOGIN_PATH}),
    ("sk-demo-team-" + "a" * 24 + "1111", {"kind": "rate_limit", "retry_after": 10}),
    ("acct-demo-pro", {"kind": "expired", "path": LOGIN_PATH}),
    ("acct-demo-plus", {"kind": "cut", "after_events": 3, "path": LOGIN_PATH}),
    ("sk-demo-backup-" + "b" * 22 + "2222", {"kind": "server_error"}),
    ("acct-demo-pro", {"kind": "inband_error", "path": LOGIN_PATH}),
    ("acct-demo-plus", {"kind": "quota", "resets_in_seconds": 30, "path": LOGIN_PATH}),
    ("acct-demo-pro", {"kind": "reset", "path": LOGIN_PATH}),
)
"""What goes wrong upstream during the demo, one fault every few seconds, round the accounts. The quota fault
is a login's usage limit, which names its reset (30 s): an API key's `insufficient_quota` names none, so it
would cool the key for the default hour and take it out of the demo."""
DRIFT_PER_TICK = {"acct-demo-pro": 0.4, "acct-demo-plus": 0.2}
"""5-hour used % added per fault tick (weekly: a quarter of it): pro burns ~24 %/h, plus ~12 %/h, so its
weekly use overtakes plus's within a few minutes and balanced mode moves traffic, and the forecasts on the
accounts page have plausible slopes."""


def inject_faults(sim: SimulatedUpstream, stop: threading.Event, every_s: float = 6.0) -> None:
    """Upstream trouble spread over time and accounts, as a real pool meets it; failover absorbs it, so the
    dashboard shows faults per account and attempts, and a client-visible failure rate near zero. The
    logins' usage drifts upwards meanwhile, so balanced mode moves traffic between them.

    A fault that met no request in its turn is dropped at the next tick: in a real pool an account that is
    cooling down gets no traffic and so meets no fault, while a queued one would fail its recovery trial
    every time and keep it out of the demo for good."""
    i, last = 0, None
    while not stop.wait(every_s):
        credential, fault = FAULT_CYCLE[i % len(FAULT_CYCLE)]
        if last is not None and last != credential:
            sim.script(last, [])
        sim.script(credential, [fault])
        last = credential
        for login, step in DRIFT_PER_TICK.items():
            usage = sim.usage_of(login)
            sim.set_usage(login, primary_used_percent=min(95.0, usage.primary_used_percent + step),
                          secondary_used_percent=min(95.0, usage.secondary_used_percent + step / 4))
        i += 1


def send_traffic(proxy_url: str, client_key: str, stop: threading.Event, counts: dict[str, int],
                 seed: int = 7) -> None:
    """A steady mix of Responses and Chat Completions requests, streamed and not, and now and then a model list."""
    rng = random.Random(seed)
    n = 0
    with httpx.Client(base_url=proxy_url, headers={"authorization": f"Bearer {client_key}"}, timeout=60,
                      trust_env=False) as client:
        while not stop.is_set():
            kind = rng.choices(["responses", "responses-stream", "chat", "chat-stream", "models"],
                               weights=[2, 2, 2, 2, 1])[0]
            try:
                if kind == "models":
                    r = client.get("/v1/models")
                elif kind.startswith("responses"):
                    r = client.post("/v1/responses", json={
                        "model": "gpt-5.5", "input": "Summarise the pool's health", "stream": kind.endswith("stream"),
                        "prompt_cache_key": f"conv-{seed}-{n // 12}"})  # a new conversation now and then
                else:
                    r = client.post("/v1/chat/completions", json={
                        "model": "gpt-5.5", "messages": [{"role": "user", "content": "Hello from the demo"}],
                        "stream": kind.endswith("stream"), "stream_options": {"include_usage": True}})
                counts["ok" if r.status_code < 400 else "failed"] += 1
            except httpx.HTTPError:
                counts["failed"] += 1
            n += 1
            stop.wait(rng.uniform(0.2, 0.8))


STALE_KEY_EVERY_S = 20.0
"""Far below the client-key throttle's 10 refusals a minute: the stale client is refused (401), never throttled."""


def send_stale_key(proxy_url: str, stop: threading.Event, counts: dict[str, int],
                   every_s: float = STALE_KEY_EVERY_S) -> None:
    """A misconfigured client with a stale key, now and then: refused with 401, visible on the dashboard, and
    harmless to the demo client, whose requests go on being answered."""
    with httpx.Client(base_url=proxy_url, headers={"authorization": "Bearer ap-stale-demo-key"}, timeout=60,
                      trust_env=False) as client:
        while not stop.is_set():
            try:
                r = client.post("/v1/responses", json={"model": "gpt-5.5", "input": "hi"})
                counts["refused" if r.status_code == 401 else "failed"] += 1
            except httpx.HTTPError:
                counts["failed"] += 1
            stop.wait(every_s)


def start_traffic(proxy_url: str, client_key: str, sim: SimulatedUpstream,
                  stop: threading.Event) -> tuple[list[threading.Thread], dict[str, int]]:
    """The demo's load: three clients with the good key, one with a stale key, and the fault script."""
    counts = {"ok": 0, "failed": 0, "refused": 0}
    workers = [threading.Thread(target=send_traffic, args=(proxy_url, client_key, stop, counts, 7 + i), daemon=True)
               for i in range(3)]
    workers.append(threading.Thread(target=send_stale_key, args=(proxy_url, stop, counts), daemon=True))
    workers.append(threading.Thread(target=inject_faults, args=(sim, stop), daemon=True))
    for w in workers:
        w.start()
    return workers, counts


def run_demo(*, db_path: Path, seconds: float, datasette_port: int, proxy_port: int) -> None:
    demo_dir = db_path.parent / "demo" if db_path.name == "pool.db" else db_path.parent
    demo_db = demo_dir / "pool.db"
    demo_dir.mkdir(parents=True, exist_ok=True)
    for port, what in ((proxy_port, "--proxy-port"), (datasette_port, "--datasette-port")):
        if port_open(port):
            raise RuntimeError(f"port {port} is in use; pick another with {what}")
    sim = SimulatedUpstream().start()
    procs: list[subprocess.Popen] = []
    stop = threading.Event()
    try:
        client_key = build_demo_pool(demo_db, sim)
        mitm_log = open(demo_dir / "mitmdump.log", "wb")  # noqa: SIM115 - lives as long as the process
        procs.append(subprocess.Popen(
            [str(BIN / "mitmdump"), "--listen-host", "127.0.0.1", "-p", str(proxy_port), "--mode",
             f"reverse:{sim.url}", "-s", str(ADDON_SCRIPT), "--set", f"pool_db={demo_db}",
             "--set", f"pool_chatgpt_base_url={sim.url}/backend-api/codex",
             "--set", f"pool_oauth_token_url={sim.url}/oauth/token",
             "--set", f"pool_usage_url={sim.url}/backend-api/wham/usage", "--set", "pool_usage_sweep=30"],
            stdout=mitm_log, stderr=subprocess.STDOUT, start_new_session=True))
        wait_for_port(proxy_port, procs[-1], timeout=60, log=demo_dir / "mitmdump.log")
        datasette = shutil.which("datasette", path=str(BIN)) or str(BIN / "datasette")
        ds = subprocess.Popen([datasette, str(demo_db), "--root", "-h", "127.0.0.1", "-p", str(datasette_port)],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
        procs.append(ds)
        sign_in = _read_root_url(ds)
        wait_for_port(datasette_port, ds, timeout=60)
        _, counts = start_traffic(f"http://127.0.0.1:{proxy_port}", client_key, sim, stop)
        until = f"stopping after {seconds:.0f} s" if seconds else "Ctrl-C stops everything"
        print(f"""
accountpool demo is running (everything on 127.0.0.1):
  simulated upstream : {sim.url}
  proxy (reverse)    : http://127.0.0.1:{proxy_port}/v1   client key: {client_key}
  dashboard          : http://127.0.0.1:{datasette_port}/-/pool
  sign in as root    : {sign_in}
  pool database      : {demo_db}   (mitmdump log: {demo_dir / 'mitmdump.log'})

Try:  curl http://127.0.0.1:{proxy_port}/v1/responses -H 'Authorization: Bearer {client_key}' \\
        -H 'content-type: application/json' -d '{{"model":"gpt-5.5","input":"hi"}}'
Demo traffic is flowing; {until}.
""", flush=True)
        deadline = time.monotonic() + seconds if seconds else None
        with contextlib.suppress(KeyboardInterrupt):
            while deadline is None or time.monotonic() < deadline:
                time.sleep(0.5)
                if any(p.poll() is not None for p in procs):
                    raise RuntimeError("a demo process exited early; see " + str(demo_dir / "mitmdump.log"))
        print(f"demo traffic: {counts['ok']} answered, {counts['failed']} failed; "
              f"{counts['refused']} stale-key requests refused (401)", flush=True)
    finally:
        stop.set()
        for p in procs:
            if p.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
        sim.stop()


def _read_root_url(proc: subprocess.Popen, timeout: float = 30) -> str:
    """`datasette --root` prints a one-time sign-in URL; pass it on to the operator."""
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            if proc.poll() is not None:
                raise RuntimeError("datasette exited before printing its sign-in URL")
            continue
        match = re.search(r"(http://\S+/-/auth-token\?token=\S+)", line)
        if match:
            threading.Thread(target=_drain, args=(proc,), daemon=True).start()
            return match.group(1)
    raise RuntimeError("datasette did not print a root sign-in URL")


def _drain(proc: subprocess.Popen) -> None:
    assert proc.stdout is not None
    for _ in proc.stdout:
        pass
