"""Processes the benchmarks share: the simulated upstream, a pool, bare mitmdump, mitmdump + addon.

Everything listens on 127.0.0.1 and is started as a separate process, so the load generator,
the upstream and the proxy under test compete for the CPU as they would on a real host, and no
benchmark measures its own event loop. Every process is stopped by the context that started it.
Scratch files (pool db, secrets, mitmproxy confdir, logs) go to `benchmarks/out/` (gitignored).
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import re
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from accountpool.admin.local_ports import free_port, wait_for_port

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
OUT = HERE / "out"
BIN = Path(sys.executable).parent
ADDON = ROOT / "addon" / "accountpool" / "mitmproxy_script.py"
sys.path.insert(0, str(ROOT / "addon"))

SIM_KEYS = ("sk-bench-account-a-0000000000000000aaaa", "sk-bench-account-b-0000000000000000bbbb")
BARE_KEY = "sk-bench-bare-client-00000000000000cccc"
"""Bare mitmdump forwards the client's own key, so the simulator has to know one too."""


def scratch_dir(prefix: str) -> Path:
    OUT.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=prefix, dir=OUT))


class Proc:
    """A child process in its own session, its output in a log file; stopped with SIGTERM, then SIGKILL."""

    def __init__(self, args: list[str], log: Path, env: dict[str, str] | None = None) -> None:
        self.args, self.log = args, log
        self._fh = open(log, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(args, stdout=self._fh, stderr=subprocess.STDOUT, start_new_session=True,
                                     env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})})

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        self._fh.close()


@dataclass
class Sim:
    proc: Proc
    url: str

    def control(self, path: str, body: dict) -> dict:
        req = urllib.request.Request(self.url + path, data=json.dumps(body).encode(), method="POST",
                                     headers={"content-type": "application/json"})
        with _no_proxy().open(req, timeout=10) as resp:
            return json.loads(resp.read())


def _no_proxy() -> urllib.request.OpenerDirector:
    return urllib.request.build_opener(urllib.request.ProxyHandler({}))


@contextlib.contextmanager
def simulator(workdir: Path) -> Iterator[Sim]:
    """`python -m accountpool.simulator --port 0` as its own process; the URL comes from its first line."""
    log = workdir / "simulator.log"
    proc = Proc([sys.executable, "-m", "accountpool.simulator", "--port", "0"], log)
    try:
        deadline = time.monotonic() + 30
        url = None
        while url is None and time.monotonic() < deadline:
            if proc.proc.poll() is not None:
                raise RuntimeError(f"simulator exited: {log.read_text()[-2000:]}")
            m = re.search(r"listening on (http://127\.0\.0\.1:\d+)", log.read_text())
            url = m.group(1) if m else None
            time.sleep(0.05)
        if url is None:
            raise TimeoutError("the simulator did not announce its URL")
        sim = Sim(proc, url)
        for key in (*SIM_KEYS, BARE_KEY):
            sim.control("/_sim/api_keys", {"key": key, "plan": "paid"})
        yield sim
    finally:
        proc.stop()


@dataclass
class PoolFiles:
    db: Path
    secrets: Path
    client_key: str


def make_pool(workdir: Path, sim_url: str) -> PoolFiles:
    """Two healthy API-key accounts pointing at the simulator and one client key."""
    from accountpool.admin import account_admin
    from accountpool.storage import schema, store
    from accountpool.storage.secrets_store import SecretsStore

    db_path, secrets_path = workdir / "pool.db", workdir / "pool.secrets"
    db = schema.connect(db_path)
    secrets = SecretsStore(secrets_path)
    try:
        for label, key in zip(("bench-a", "bench-b"), SIM_KEYS, strict=True):
            account_admin.add_api_key(db, secrets, label=label, key=key, base_url=sim_url, plan="paid")
        _, client_key = store.create_client_key(db, "bench")
    finally:
        secrets.close()
        db.close()
    return PoolFiles(db_path, secrets_path, client_key)


@dataclass
class Proxy:
    name: str
    proc: Proc
    port: int
    auth: str
    """The Authorization header value the load generator sends."""

    @property
    def pid(self) -> int:
        return self.proc.pid


QUIET = ["--set", "flow_detail=0", "--set", "termlog_verbosity=warn"]


def mitmdump_args(port: int, sim_url: str, confdir: Path) -> list[str]:
    return [str(BIN / "mitmdump"), "--listen-host", "127.0.0.1", "-p", str(port), "--mode", f"reverse:{sim_url}",
            "--set", f"confdir={confdir}", *QUIET]


def start_bare(workdir: Path, sim_url: str, *, prefix: list[str] | None = None, backlog: bool = False,
               gc_threshold: int = 0, extra: list[str] | None = None) -> Proxy:
    """Bare mitmdump in reverse mode. `stream_large_bodies=1` makes it stream every response as the
    addon streams pooled flows (without it bare mitmdump buffers SSE whole, which would flatter the
    addon's time to first byte). `backlog`: plus `backlog_only.py`, the addon's deeper accept queue;
    `gc_threshold`: that script with the addon's young garbage-collection threshold too."""
    port = free_port()
    name = "bare+backlog+gc" if gc_threshold else "bare+backlog" if backlog else "bare"
    log = workdir / f"mitmdump-{name}-{port}.log"
    tuned = backlog or gc_threshold
    args = [*(prefix or []), *mitmdump_args(port, sim_url, workdir / "conf"), "--set", "stream_large_bodies=1",
            *(["-s", str(HERE / "backlog_only.py"), "--set", f"bare_gc_threshold={gc_threshold}"] if tuned else []),
            *(extra or [])]
    proc = Proc(args, log)
    wait_for_port(port, proc.proc, log=log)
    return Proxy(name, proc, port, f"Bearer {BARE_KEY}")


def start_floor(workdir: Path, sim_url: str) -> Proxy:
    """mitmdump -s `floor_addon.py`: the addon's design (whole answers from the hook, streams over the relay hop,
    the credential on its own connection) without the product's work; see that file."""
    port = free_port()
    log = workdir / f"mitmdump-floor-{port}.log"
    args = [*mitmdump_args(port, sim_url, workdir / "conf"), "-s", str(HERE / "floor_addon.py"),
            "--set", f"floor_key={SIM_KEYS[0]}"]
    proc = Proc(args, log, env={"PYTHONPATH": str(ROOT / "addon")})
    wait_for_port(port, proc.proc, log=log)
    return Proxy("floor", proc, port, f"Bearer {BARE_KEY}")


def start_addon(workdir: Path, sim_url: str, pool: PoolFiles, *, prefix: list[str] | None = None,
                extra: list[str] | None = None, source: Path | None = None, name: str = "addon") -> Proxy:
    """mitmdump -s the addon: client keys on (the default), metrics on (they always are).

    `source`: another checkout's `addon/` directory (`compare.py`'s "before"), put first on PYTHONPATH."""
    port = free_port()
    log = workdir / f"mitmdump-{name}-{port}.log"
    script = source / "accountpool" / "mitmproxy_script.py" if source else ADDON
    args = [*(prefix or []), *mitmdump_args(port, sim_url, workdir / "conf"), "-s", str(script),
            "--set", f"pool_db={pool.db}", "--set", f"pool_secrets={pool.secrets}", *(extra or [])]
    proc = Proc(args, log, env={"PYTHONPATH": str(source)} if source else None)
    wait_for_port(port, proc.proc, log=log)
    return Proxy(name, proc, port, f"Bearer {pool.client_key}")


def request_body(kind: str) -> bytes:
    doc = {"model": "gpt-5.5", "input": "Summarise the benchmark in one short sentence please",
           "stream": kind == "sse"}
    return json.dumps(doc).encode()


def run_loadgen(port: int, auth: str, *, kind: str, concurrency: int, duration: float, warmup: float,
                extra_headers: dict[str, str] | None = None, max_requests: int = 0, timeout: float = 60.0,
                raw: bool = False) -> dict:
    """Run `loadgen.py` as a separate process and return its JSON summary."""
    args = [sys.executable, str(HERE / "loadgen.py"), "--port", str(port), "--path", "/v1/responses",
            "--auth", auth, "--kind", kind, "--concurrency", str(concurrency), "--duration", str(duration),
            "--warmup", str(warmup), "--max-requests", str(max_requests), *(["--raw"] if raw else [])]
    for k, v in (extra_headers or {}).items():
        args += ["--header", f"{k}: {v}"]
    budget = warmup + duration + timeout
    out = subprocess.run(args, capture_output=True, text=True, timeout=budget, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"loadgen failed ({out.returncode}): {out.stderr[-2000:]}")
    return json.loads(out.stdout)


def rss_kib(pid: int) -> int:
    """VmRSS of a process in KiB, from /proc/<pid>/status."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


def cpu_seconds(pid: int) -> float:
    """utime + stime of a whole process (all threads), in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main_thread_cpu_seconds(pid: int) -> float:
    """utime + stime of a process's main thread only (for mitmdump: the event loop), in seconds."""
    fields = Path(f"/proc/{pid}/task/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine() -> dict[str, str]:
    cpu = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    try:
        from mitmproxy.version import VERSION as mitm_version
    except ImportError:
        mitm_version = "?"
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    return {"nproc": str(os.cpu_count()), "cpu": cpu, "python": platform.python_version(),
            "mitmproxy": mitm_version, "loadavg_at_start": load}
