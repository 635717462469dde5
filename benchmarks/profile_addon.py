"""Profile the addon's mitmdump under the JSON (or SSE) c=8 load with py-spy, and sort the costs.

    .venv/bin/pip install py-spy          # not a project dependency
    .venv/bin/python benchmarks/profile_addon.py [--kind json] [--duration 10]

Samples the mitmdump process (all its threads, idle ones excluded) while `loadgen.py` drives it,
writes the collapsed stacks and a flame graph to `benchmarks/out/`, and prints two views:
*self* time by leaf module (where the CPU actually is) and *inclusive* time of the parts the
issue names: mitmproxy itself, the relay hop (the bare asyncio Protocol of proxy/relay_server.py +
the loopback socket), the aiohttp client to the upstream, the router and selection, the metrics
writer, pool view refresh, SSE parsing.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import BIN, make_pool, run_loadgen, scratch_dir, simulator, start_addon, start_bare

# (label, substrings of a frame "function (file:line)"); first match on the stack wins for inclusive.
INCLUSIVE = [
    ("addon hooks: requestheaders/request (_admit)", ("(accountpool/proxy/mitm_addon.py",)),
    ("  BufferedResponder path (_answer_whole, non-streamed)", ("_answer_whole (accountpool/proxy/mitm_addon.py",)),
    ("pool_view.refresh (reload on data_version change)", ("refresh (accountpool/storage/pool_view.py",)),
    ("router.serve (whole relay side, incl. below)", ("serve (accountpool/routing/router.py",)),
    ("  router._phase (InflightUpdate dicts)", ("_phase (accountpool/routing/router.py",)),
    ("  router._observe_usage (headers + model_copy)", ("_observe_usage (accountpool/routing/router.py",)),
    ("  router._record (RequestRecord)", ("_record (accountpool/routing/router.py",)),
    ("  selection.choose_candidates", ("(accountpool/routing/selection.py",)),
    ("  response_shapers (plan + client headers)", ("(accountpool/routing/response_shapers.py",)),
    ("  SSE watcher (sse_usage)", ("(accountpool/upstream/sse_usage.py",)),
    ("  upstream client (aiohttp, accountpool/upstream/upstream_client.py)",
     ("(accountpool/upstream/upstream_client.py", "(aiohttp/client")),
    ("relay_server (bare asyncio Protocol, loopback hop)", ("(accountpool/proxy/relay_server.py",)),
    ("aiohttp (anywhere)", ("(aiohttp/",)),
    ("metrics writer thread", ("(accountpool/storage/metrics_writer.py",)),
    ("pydantic (anywhere)", ("(pydantic/", "(pydantic_core/")),
    ("sqlite3 / sqlite_utils (anywhere)", ("(sqlite_utils/", "sqlite3")),
    ("mitmproxy proxy layers/server", ("(mitmproxy/proxy/",)),
    ("mitmproxy addon manager / hooks dispatch", ("(mitmproxy/addonmanager.py",)),
    ("asyncio event loop (anywhere)", ("(asyncio/",)),
]


IDLE = "MetricsWriter._collect (accountpool/storage/metrics_writer.py"


def leaf_module(frame: str) -> str:
    # "function (path/to/module.py:123)" -> a coarse package name
    if "(" not in frame:
        return frame
    path = frame.rsplit("(", 1)[1].split(":")[0]
    parts = path.replace("\\", "/").split("/")
    if "site-packages" in parts:
        i = parts.index("site-packages")
        return "/".join(parts[i + 1:i + 3]) if parts[i + 1] == "mitmproxy" else parts[i + 1]
    if "accountpool" in parts:
        return "accountpool/" + parts[-1]
    return parts[-2] + "/" + parts[-1] if len(parts) > 1 else parts[-1]


STDLIB_DIRS = ("asyncio/", "selectors.py", "contextlib.py", "socket.py", "enum.py", "dataclasses.py", "typing.py",
               "threading.py", "functools.py", "ssl.py", "abc.py", "re/", "json/", "queue.py", "weakref",
               "collections/", "<frozen", "copy.py", "traceback.py", "linecache.py", "secrets.py", "base64.py",
               "urllib/", "email/", "http/client.py", "ipaddress.py", "hashlib.py", "random.py", "types.py")


def owner(frames: list[str]) -> str:
    """Who is responsible for a sample: logging if it is on the stack, else the first non-stdlib frame
    from the leaf up, grouped by package (accountpool by module)."""
    if any("logging/__init__.py" in f or "LegacyLogEvents" in f for f in frames):
        return "logging (records + mitmproxy add_log dispatch)"
    for f in reversed(frames):
        if "(" not in f:
            continue
        path = f.rsplit("(", 1)[1].split(":")[0]
        if any(d in path for d in STDLIB_DIRS):
            continue
        if "accountpool/" in path:
            return "accountpool/" + path.rsplit("/", 1)[1]
        for pkg in ("aiohttp", "multidict", "yarl", "httpx", "httpcore", "anyio", "h11", "mitmproxy", "sqlite_utils",
                    "pydantic", "sniffio"):
            if path.startswith(pkg + "/") or f"/{pkg}/" in path:
                return {"httpcore": "httpx+httpcore+anyio", "httpx": "httpx+httpcore+anyio",
                        "anyio": "httpx+httpcore+anyio", "sniffio": "httpx+httpcore+anyio"}.get(pkg, pkg)
        return path
    return "event loop / stdlib (select, socket syscalls)"


def analyse(collapsed: Path, top: int = 25) -> str:
    total = 0
    owners: Counter[str] = Counter()
    self_by: Counter[str] = Counter()
    incl: Counter[str] = Counter()
    threads: Counter[str] = Counter()
    for line in collapsed.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        n = int(count)
        frames = stack.split(";")
        if IDLE in frames[-1]:
            continue  # the writer thread waiting on its queue: py-spy cannot tell that it is idle
        total += n
        threads[frames[0][:60]] += n
        self_by[leaf_module(frames[-1])] += n
        owners[owner(frames)] += n
        for label, needles in INCLUSIVE:
            if any(needle in f for f in frames for needle in needles):
                incl[label] += n
    out = [f"samples: {total}", "", "threads:"]
    out += [f"  {n / total:6.1%}  {t}" for t, n in threads.most_common(6)]
    out += ["", "by owner (each sample once: the first non-stdlib frame from the leaf up):"]
    out += [f"  {n / total:6.1%}  {o}" for o, n in owners.most_common(20)]
    out += ["", "inclusive (a sample counts once per row; rows overlap):"]
    out += [f"  {incl[label] / total:6.1%}  {label}" for label, _ in INCLUSIVE]
    out += ["", f"self time by leaf module (top {top}):"]
    out += [f"  {n / total:6.1%}  {m}" for m, n in self_by.most_common(top)]
    return "\n".join(out)


def thread_cpu(pid: int) -> dict[int, tuple[str, float]]:
    """utime + stime of every thread of `pid`, in seconds."""
    tick = os.sysconf("SC_CLK_TCK")
    out = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            stat = (task / "stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        out[int(task.name)] = (stat.split("(", 1)[1].rsplit(")", 1)[0], (int(fields[11]) + int(fields[12])) / tick)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--kind", choices=("json", "sse"), default="json")
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--duration", type=float, default=10.0)
    p.add_argument("--rate", type=int, default=250, help="py-spy samples per second")
    p.add_argument("--nonblocking", action="store_true",
                   help="py-spy without pausing mitmdump (less overhead, but many stacks come out partial)")
    p.add_argument("--bare", action="store_true", help="profile bare mitmdump instead (for comparison)")
    p.add_argument("--analyse", type=Path, help="only print the analysis of an existing collapsed file")
    args = p.parse_args(argv)
    if args.analyse:
        print(analyse(args.analyse))
        return 0
    pyspy = shutil.which("py-spy") or str(BIN / "py-spy")
    if not Path(pyspy).exists():
        print("py-spy is not installed: .venv/bin/pip install py-spy", file=sys.stderr)
        return 2
    work = scratch_dir("profile-")
    with simulator(work) as sim:
        pool = make_pool(work, sim.url)
        proxy = start_bare(work, sim.url) if args.bare else start_addon(work, sim.url, pool)
        try:
            run_loadgen(proxy.port, proxy.auth, kind=args.kind, concurrency=args.concurrency, duration=1.0,
                        warmup=0.5)  # warm: connections, imports, first reload
            name = f"{proxy.name}-{args.kind}-c{args.concurrency}"
            collapsed = work / f"{name}.txt"
            spy = subprocess.Popen([pyspy, "record", "--pid", str(proxy.proc.pid), "--rate", str(args.rate),
                                    "--duration", str(int(args.duration)), "--format", "raw", "-o", str(collapsed),
                                    *(["--nonblocking"] if args.nonblocking else [])],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            time.sleep(0.5)
            cpu0 = thread_cpu(proxy.proc.pid)
            result = run_loadgen(proxy.port, proxy.auth, kind=args.kind, concurrency=args.concurrency,
                                 duration=args.duration - 1, warmup=0.2)
            cpu1 = thread_cpu(proxy.proc.pid)
            _, err = spy.communicate(timeout=args.duration + 30)
            if spy.returncode != 0:
                print(err.decode()[-2000:], file=sys.stderr)
                return 1
        finally:
            proxy.proc.stop()
    print(f"{name}: {result['rps']} req/s, p50 {result['p50_ms']} ms under the profiler")
    wall = args.duration - 1 + 0.2
    print(f"CPU of mitmdump during the load ({wall:.1f} s wall, from /proc/<pid>/task/*/stat):")
    for tid, (name, t1) in sorted(cpu1.items()):
        used = t1 - cpu0.get(tid, (name, 0.0))[1]
        if used > 0.01:
            per_req = used / max(1, result["requests"]) * 1e3
            print(f"  tid {tid} {'main' if tid == proxy.proc.pid else 'thread'}: {used:.2f} s "
                  f"({used / wall:.0%} of a core, {per_req:.2f} ms per request)")
    print(analyse(collapsed))
    print(f"\ncollapsed stacks: {collapsed}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
