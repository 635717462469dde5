"""A fleet of agents on one host: thousands of long SSE streams opened at once (issue 14).

    .venv/bin/python benchmarks/fleet.py                                  # 5,000 streams × 30 s, bare then addon
    .venv/bin/python benchmarks/fleet.py --streams 500 --deltas 20 --delay-ms 150 --rounds 2   # the 500 burst

Each stream is `POST /v1/responses` with `"stream": true` asking the upstream for `--deltas`
`response.output_text.delta` events `--delay-ms` apart (default 150 × 200 ms = 30 s). All
streams are opened at once, each on its own connection (`connection: close`), against bare
mitmdump and against mitmdump with the addon, alternating, both in front of the same lean
asyncio upstream (`sse_upstream.py`; the threading simulator does not hold 5,000 streams, see
benchmarks/README.md). Reported per target: streams completed (`response.completed` and a clean
chunked end), peak open at once, time from connect to the first body byte (p50/p95/max),
stream duration, mitmdump CPU, RSS idle / peak and per open stream, the load generator's own CPU.
For the addon also: `requests` and `attempts` rows written, how far the metrics writer lagged
behind the streams that had ended (the row count polled every 50 ms against the client's end
times), and the dashboard overview (`/-/pool`) timed with Datasette's in-process client as root
while the fleet runs (a separate process, competing for the CPU like a real dashboard would).

File descriptors: 5,000 streams through the addon hold four sockets each in mitmdump (client,
mitmproxy → relay, relay ← mitmproxy, relay → upstream), more than the usual soft limit. This
script raises RLIMIT_NOFILE for itself to 65,536 (soft and hard, as root; otherwise up to the hard
limit) before it starts any process, so every child (upstream, mitmdumps, load generator)
inherits it. Figures only; nothing is asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import resource
import sqlite3
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from accountpool.proxy.gc_tuning import DEFAULT_YOUNG_THRESHOLD
from common import HERE, Proc, cpu_seconds, machine, make_pool, rss_kib, scratch_dir, start_addon, start_bare

NOFILE = 65_536
BODY = b'{"model":"gpt-5.5","input":"hold this stream open for a while please","stream":true}'


def raise_nofile(want: int = NOFILE) -> tuple[int, int]:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, want), max(hard, want)))
    except (ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)


# ------------------------------------------------------------------ the load generator (its own process)


class Stream(asyncio.Protocol):
    """One streamed request on its own connection; keeps only what the report needs."""

    __slots__ = ("done", "end", "first", "head", "request", "saw_completed", "status", "t0", "tail")

    def __init__(self, request: bytes, t0: float, done: asyncio.Future) -> None:
        self.request, self.t0, self.done = request, t0, done
        self.head = b""
        self.status = 0
        self.first = 0.0
        self.end = 0.0
        self.tail = b""
        self.saw_completed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport.write(self.request)  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        if not self.status:
            self.head += data
            end = self.head.find(b"\r\n\r\n")
            if end < 0:
                return
            self.status = int(self.head[9:12])
            data = self.head[end + 4:]
            self.head = b""
        if data and not self.first:
            self.first = time.monotonic()
        window = self.tail + data
        if not self.saw_completed and b"response.completed" in window:
            self.saw_completed = True
        self.tail = window[-32:]

    def connection_lost(self, exc: Exception | None) -> None:
        self.end = time.monotonic()
        if not self.done.done():
            self.done.set_result(None)


async def client_main(port: int, auth: str, n: int, deltas: int, delay_ms: int, deadline_s: float,
                      open_rate: float = 0.0, body_kib: int = 0) -> dict:
    loop = asyncio.get_running_loop()
    body = BODY if not body_kib else json.dumps({
        "model": "gpt-5.5", "stream": True, "input": [
            {"role": "user" if i % 2 else "assistant", "content": f"turn {i} of a long agent conversation " * 14}
            for i in range(body_kib * 2)]}).encode()
    request = ("\r\n".join(["POST /v1/responses HTTP/1.1", f"host: 127.0.0.1:{port}",
                            "content-type: application/json", f"content-length: {len(body)}",
                            "accept: text/event-stream", "connection: close", f"authorization: {auth}",
                            f"x-sim-deltas: {deltas}", f"x-sim-delta-delay-ms: {delay_ms}"]) + "\r\n\r\n").encode()
    request += body
    streams: list[Stream] = []
    errors: dict[str, int] = {}

    async def one() -> None:
        done = loop.create_future()
        s = Stream(request, time.monotonic(), done)
        streams.append(s)
        try:
            await loop.create_connection(lambda: s, "127.0.0.1", port)
        except OSError as exc:
            errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1
            s.end = time.monotonic()
            return
        await done

    cpu0 = time.process_time()
    t_start = time.monotonic()
    tasks = []
    for i in range(n):
        if open_rate and (wait := t_start + i / open_rate - time.monotonic()) > 0:
            await asyncio.sleep(wait)
        tasks.append(asyncio.ensure_future(one()))
    _, pending = await asyncio.wait(tasks, timeout=deadline_s)
    for t in pending:
        t.cancel()
    cut_by_deadline = len(pending)
    cpu = time.process_time() - cpu0
    events = sorted([(s.t0, 1) for s in streams] + [(s.end or time.monotonic(), -1) for s in streams])
    peak = cur = 0
    for _, d in events:
        cur += d
        peak = max(peak, cur)
    ok = [s for s in streams if s.status == 200 and s.saw_completed and s.tail.endswith(b"\r\n0\r\n\r\n")]
    return {"streams": n, "completed": len(ok), "cut_by_deadline": cut_by_deadline, "connect_errors": errors,
            "statuses": {str(k): v for k, v in _count(s.status for s in streams).items()},
            "incomplete": sum(1 for s in streams if s.status == 200 and not (
                s.saw_completed and s.tail.endswith(b"\r\n0\r\n\r\n"))),
            "peak_open": peak, "t_start": t_start, "wall_s": time.monotonic() - t_start, "client_cpu_s": cpu,
            "ttfb_ms": sorted(round((s.first - s.t0) * 1000, 1) for s in ok),
            "duration_ms": sorted(round((s.end - s.t0) * 1000, 1) for s in ok),
            "ends": sorted(s.end for s in ok),
            "streaming": [(s.first, s.end) for s in streams if s.first]}


def _count(values: object) -> dict:
    out: dict = {}
    for v in values:  # type: ignore[attr-defined]
        out[v] = out.get(v, 0) + 1
    return out


# ------------------------------------------------------------------ the dashboard timer (its own process)


async def dashboard_main(db: str, stop_file: str, every_s: float, max_s: float) -> list[dict]:
    from datasette.app import Datasette

    plugin = {"secrets_path": db.replace(".db", ".secrets")}
    ds = Datasette([db], metadata={"plugins": {"datasette-accountpool": plugin}})
    await ds.invoke_startup()
    cookies = {"ds_actor": ds.sign({"a": {"id": "root"}}, "actor")}
    out = []
    t_end = time.monotonic() + max_s
    while not os.path.exists(stop_file) and time.monotonic() < t_end:
        for path in ("/-/pool", "/-/pool?window=10m", "/-/pool.json"):
            t0 = time.perf_counter()
            resp = await ds.client.get(path, cookies=cookies)
            out.append({"path": path, "status": resp.status_code, "ms": round((time.perf_counter() - t0) * 1000, 1),
                        "at": time.monotonic()})
        await asyncio.sleep(every_s)
    return out


# ------------------------------------------------------------------ the driver


def start_upstream(work: Path) -> tuple[Proc, str]:
    log = work / "sse_upstream.log"
    proc = Proc([sys.executable, str(HERE / "sse_upstream.py"), "--port", "0"], log)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.proc.poll() is not None:
            raise RuntimeError(f"sse_upstream exited: {log.read_text()[-2000:]}")
        if m := re.search(r"listening on (http://127\.0\.0\.1:\d+)", log.read_text()):
            return proc, m.group(1)
        time.sleep(0.05)
    proc.stop()
    raise TimeoutError("sse_upstream did not announce its URL")


class Sampler(threading.Thread):
    """RSS and CPU of mitmdump every 0.25 s; for the addon, the metrics rows every 50 ms."""

    def __init__(self, pid: int, db: Path | None) -> None:
        super().__init__(daemon=True)
        self.pid, self.db = pid, db
        self.stop = threading.Event()
        self.rss: list[tuple[float, int]] = []
        self.rows: list[tuple[float, int, int]] = []

    def run(self) -> None:
        conn = sqlite3.connect(f"file:{self.db}?mode=ro", uri=True, timeout=5) if self.db else None
        next_rss = 0.0
        while not self.stop.is_set():
            now = time.monotonic()
            if now >= next_rss:
                self.rss.append((now, rss_kib(self.pid)))
                next_rss = now + 0.25
            if conn is not None:
                try:
                    r = conn.execute("SELECT (SELECT max(rowid) FROM requests), "
                                     "(SELECT max(rowid) FROM attempts)").fetchone()
                    self.rows.append((time.monotonic(), r[0] or 0, r[1] or 0))
                except sqlite3.OperationalError:
                    pass
            self.stop.wait(0.05)
        if conn is not None:
            conn.close()


def listen_overflows() -> int:
    """TcpExt ListenOverflows from /proc/net/netstat (network-namespace wide): connections a full accept queue
    turned away. mitmproxy listens with asyncio's default backlog of 100."""
    lines = Path("/proc/net/netstat").read_text().splitlines()
    for head, values in zip(lines[::2], lines[1::2], strict=False):
        if head.startswith("TcpExt:"):
            fields = dict(zip(head.split()[1:], values.split()[1:], strict=False))
            return int(fields.get("ListenOverflows", 0))
    return 0


def pct(values: list[float], p: float) -> float | None:
    return values[min(len(values) - 1, round(p / 100 * (len(values) - 1)))] if values else None


def run_target(px: object, args: argparse.Namespace, pool_db: Path | None, work: Path) -> dict:
    pid = px.pid  # type: ignore[attr-defined]
    # Warm-up: imports, the first reload, a few connections; then idle RSS.
    subprocess.run([sys.executable, __file__, "--client", "--port", str(px.port), "--auth", px.auth,  # type: ignore[attr-defined]
                    "--streams", "20", "--deltas", "3", "--delay-ms", "10", "--deadline", "30"],
                   capture_output=True, check=True, timeout=60)
    time.sleep(1.0)
    rss_idle = rss_kib(pid)
    gc_file = work / f"gc-{px.name}.json"  # type: ignore[attr-defined]
    gc0 = _gc_figures(gc_file)
    rows0 = None
    if pool_db is not None:
        with sqlite3.connect(f"file:{pool_db}?mode=ro", uri=True, timeout=5) as c:
            rows0 = c.execute("SELECT (SELECT count(*) FROM requests), (SELECT count(*) FROM attempts), "
                              "(SELECT max(rowid) FROM requests), (SELECT max(rowid) FROM attempts)").fetchone()
    sampler = Sampler(pid, pool_db)
    sampler.start()
    dash = None
    stop_file = work / f"stop-dashboard-{pid}"
    if pool_db is not None and not args.no_dashboard:
        dash = subprocess.Popen([sys.executable, __file__, "--dashboard", str(pool_db), "--stop-file", str(stop_file),
                                 "--deadline", str(args.deadline)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    cpu0 = cpu_seconds(pid)
    overflows0 = listen_overflows()
    deadline = args.deltas * args.delay_ms / 1000 * 4 + 120
    out = subprocess.run([sys.executable, __file__, "--client", "--port", str(px.port), "--auth", px.auth,  # type: ignore[attr-defined]
                          "--streams", str(args.streams), "--deltas", str(args.deltas), "--delay-ms",
                          str(args.delay_ms), "--deadline", str(deadline), "--open-rate", str(args.open_rate),
                          "--body-kib", str(args.body_kib)],
                         capture_output=True, text=True, timeout=deadline + 60, check=False)
    cpu = cpu_seconds(pid) - cpu0
    overflows = listen_overflows() - overflows0
    time.sleep(1.2)  # the last rows: one flush interval and then some; gc_stats.py writes once a second
    sampler.stop.set()
    sampler.join(5)
    stop_file.write_text("")
    if out.returncode != 0:
        raise RuntimeError(f"client failed: {out.stderr[-2000:]}")
    res = json.loads(out.stdout)
    res["name"] = px.name  # type: ignore[attr-defined]
    if gc0 is not None and (gc1 := _gc_figures(gc_file)) is not None:
        res["gc"] = {"collections": [b - a for a, b in zip(gc0["collections"], gc1["collections"], strict=True)],
                     "seconds": [round(b - a, 3) for a, b in zip(gc0["seconds"], gc1["seconds"], strict=True)],
                     "threshold": gc1["threshold"]}
    res["mitmdump_cpu_s"] = round(cpu, 2)
    res["listen_overflows"] = overflows
    res["rss_idle_kib"] = rss_idle
    res["rss_peak_kib"] = max(r for _, r in sampler.rss)
    # Per open stream: at the RSS sample where the most streams were streaming through the proxy (first body
    # byte seen, not yet ended), RSS above idle divided by that count.
    streaming = res.pop("streaming")
    best = (0, 0)
    for t, rss in sampler.rss:
        count = sum(1 for first, end in streaming if first <= t < end)
        best = max(best, (count, rss))
    res["streaming_peak"], res["rss_at_streaming_peak_kib"] = best
    res["rss_per_stream_kib"] = round((best[1] - rss_idle) / best[0], 1) if best[0] else None
    if pool_db is not None and rows0 is not None:
        with sqlite3.connect(f"file:{pool_db}?mode=ro", uri=True, timeout=5) as c:
            rows1 = c.execute("SELECT (SELECT count(*) FROM requests), (SELECT count(*) FROM attempts), "
                              "(SELECT count(*) FROM requests WHERE rowid > ? AND outcome = 'ok' "
                              "AND output_tokens = ?)",
                              [rows0[2] or 0, args.deltas]).fetchone()
        res["requests_rows"] = rows1[0] - rows0[0]
        res["attempts_rows"] = rows1[1] - rows0[1]
        res["requests_ok_with_usage"] = rows1[2]
        # Lag: the k-th stream to end vs the first poll that saw k new `requests` rows.
        base = rows0[2] or 0
        lags = []
        samples = sampler.rows
        i = 0
        for k, end in enumerate(res["ends"], start=1):
            while i < len(samples) and samples[i][1] - base < k:
                i += 1
            if i >= len(samples):
                lags.append(None)
                continue
            lags.append(max(0.0, samples[i][0] - end))
        known = sorted(x for x in lags if x is not None)
        res["writer_lag_s"] = {"p50": pct(known, 50), "p99": pct(known, 99), "max": known[-1] if known else None,
                               "unseen": sum(1 for x in lags if x is None)}
    if dash is not None:
        try:
            d_out, d_err = dash.communicate(timeout=60)
            res["dashboard"] = json.loads(d_out) if d_out.strip() else {"error": d_err.decode()[-500:]}
        except subprocess.TimeoutExpired:
            dash.kill()
            res["dashboard"] = {"error": "timeout"}
    res.pop("ends")
    return res


def _gc_figures(path: Path) -> dict | None:
    """What gc_stats.py last wrote (`--gc-stats`), or None."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def summarise(r: dict, args: argparse.Namespace) -> str:
    ttfb, dur = r["ttfb_ms"], r["duration_ms"]
    lines = [f"{r['name']}: {r['completed']}/{r['streams']} completed (response.completed + clean chunked end), "
             f"peak {r['peak_open']} open, incomplete {r['incomplete']}, statuses {r['statuses']}, "
             f"connect errors {r['connect_errors'] or 0}, cut by deadline {r['cut_by_deadline']}; "
             f"accept-queue overflows during the run {r['listen_overflows']} (TcpExt ListenOverflows)"]
    if ttfb:
        lines.append(f"  first body byte ms: p50 {pct(ttfb, 50):.0f}  p95 {pct(ttfb, 95):.0f}  max {ttfb[-1]:.0f}")
        lines.append(f"  duration ms: p50 {pct(dur, 50):.0f}  p95 {pct(dur, 95):.0f}  max {dur[-1]:.0f} "
                     f"(stream itself {args.deltas * args.delay_ms} ms)")
    lines.append(f"  mitmdump CPU {r['mitmdump_cpu_s']:.1f} s over {r['wall_s']:.1f} s wall; "
                 f"load generator CPU {r['client_cpu_s']:.1f} s")
    lines.append(f"  mitmdump RSS idle {r['rss_idle_kib'] / 1024:.1f} MiB, peak {r['rss_peak_kib'] / 1024:.1f} MiB; "
                 f"{r['rss_at_streaming_peak_kib'] / 1024:.1f} MiB with {r['streaming_peak']} streaming at once "
                 f"-> {r['rss_per_stream_kib']} KiB per open stream above idle")
    if gc := r.get("gc"):
        n, sec = gc["collections"], gc["seconds"]
        lines.append(f"  garbage collector: {sum(sec):.2f} s in {sum(n)} collections, of which {n[2]} of the whole "
                     f"heap ({sec[2]:.2f} s); young-generation threshold {gc['threshold'][0]}")
    if "requests_rows" in r:
        lag = r["writer_lag_s"]
        lines.append(f"  metrics: {r['requests_rows']} requests rows ({r['requests_ok_with_usage']} ok with usage), "
                     f"{r['attempts_rows']} attempts rows; writer lag behind stream ends p50 "
                     f"{_s(lag['p50'])} p99 {_s(lag['p99'])} max {_s(lag['max'])} (unseen {lag['unseen']})")
    if isinstance(r.get("dashboard"), list) and r["dashboard"]:
        by: dict[str, list[float]] = {}
        for d in r["dashboard"]:
            by.setdefault(d["path"], []).append(d["ms"])
        lines.append("  dashboard while the fleet runs: " + ", ".join(
            f"{p} median {statistics.median(v):.0f} ms max {max(v):.0f} ms (n={len(v)})" for p, v in by.items()))
    elif r.get("dashboard"):
        lines.append(f"  dashboard: {r['dashboard']}")
    return "\n".join(lines)


def _s(v: float | None) -> str:
    return "-" if v is None else f"{v * 1000:.0f} ms"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--streams", type=int, default=5000)
    p.add_argument("--deltas", type=int, default=150)
    p.add_argument("--delay-ms", type=int, default=200)
    p.add_argument("--rounds", type=int, default=1, help="alternations bare, addon (default 1)")
    p.add_argument("--addon-only", action="store_true")
    p.add_argument("--bare-only", action="store_true")
    p.add_argument("--no-dashboard", action="store_true")
    p.add_argument("--bare-backlog", action="store_true",
                   help="also bare mitmdump with the addon's deeper accept queue (backlog_only.py)")
    p.add_argument("--bare-gc", action="store_true",
                   help="also bare mitmdump with the deeper accept queue and the addon's young GC threshold")
    p.add_argument("--gc-stats", action="store_true",
                   help="load gc_stats.py into every mitmdump: time in the garbage collector during each run")
    p.add_argument("--body-kib", type=int, default=0,
                   help="request body of about this many KiB (an agent's conversation so far); default a short one")
    p.add_argument("--open-rate", type=float, default=0.0,
                   help="connections opened per second (default 0: all at once, a burst)")
    p.add_argument("--deadline", type=float, default=300.0, help="client / dashboard time bound, seconds")
    p.add_argument("--variant", action="append", default=[], metavar="OPTION=VALUE",
                   help="also the addon with `--set OPTION=VALUE`, on a pool of its own, taking turns with the others "
                        "(an ablation: e.g. pool_gc_threshold=0 for Python's own collector threshold); repeatable")
    # internal modes: the load generator and the dashboard timer run as their own processes
    p.add_argument("--client", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--dashboard", help=argparse.SUPPRESS)
    p.add_argument("--stop-file", help=argparse.SUPPRESS)
    p.add_argument("--port", type=int, help=argparse.SUPPRESS)
    p.add_argument("--auth", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.client:
        raise_nofile()
        json.dump(asyncio.run(client_main(args.port, args.auth, args.streams, args.deltas, args.delay_ms,
                                          args.deadline, args.open_rate, args.body_kib)), sys.stdout)
        return 0
    if args.dashboard:
        json.dump(asyncio.run(dashboard_main(args.dashboard, args.stop_file, 1.0, args.deadline)), sys.stdout)
        return 0
    if not 1 <= args.streams <= 20_000 or not 1 <= args.rounds <= 4:
        p.error("--streams 1..20000, --rounds 1..4")
    limits = raise_nofile()
    info = machine()
    print(f"machine: {info['nproc']} cores, {info['cpu']}, load average {info['loadavg_at_start']}; "
          f"RLIMIT_NOFILE raised to {limits[0]} (children inherit it)", flush=True)
    work = scratch_dir("fleet-")
    up, url = start_upstream(work)
    results = []
    try:
        pool = make_pool(work, url)
        def stats(name: str) -> list[str]:
            return ["-s", str(HERE / "gc_stats.py"), "--set", f"gc_stats_file={work / f'gc-{name}.json'}"] \
                if args.gc_stats else []

        pools = {"addon": pool}
        targets = [] if args.bare_only else [start_addon(work, url, pool, extra=stats("addon"))]
        for setting in args.variant:
            name = f"addon[{setting}]"
            variant_dir = work / f"variant-{len(pools)}"
            variant_dir.mkdir()
            pools[name] = make_pool(variant_dir, url)
            targets.append(start_addon(variant_dir, url, pools[name], extra=["--set", setting, *stats(name)],
                                       name=name))
        if not args.addon_only:
            targets.insert(0, start_bare(work, url, extra=stats("bare")))
            if args.bare_backlog:
                targets.insert(1, start_bare(work, url, backlog=True, extra=stats("bare+backlog")))
            if args.bare_gc:
                targets.insert(1 + args.bare_backlog, start_bare(work, url, gc_threshold=DEFAULT_YOUNG_THRESHOLD,
                                                                 extra=stats("bare+backlog+gc")))
        try:
            for rnd in range(args.rounds):
                for px in targets:
                    r = run_target(px, args, pools[px.name].db if px.name in pools else None, work)
                    r["round"] = rnd + 1
                    r["loadavg"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
                    results.append(r)
                    print(summarise(r, args), flush=True)
        finally:
            for px in targets:
                px.proc.stop()
    finally:
        up.stop()
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out = work.parent / f"fleet-{args.streams}-{stamp}.json"
    for r in results:
        r["ttfb_p50_ms"], r["ttfb_p95_ms"] = pct(r["ttfb_ms"], 50), pct(r["ttfb_ms"], 95)
        r.pop("ttfb_ms")
        r.pop("duration_ms")
    out.write_text(json.dumps({"machine": info, "args": vars(args), "results": results}, indent=1))
    by = {}
    for r in results:
        by.setdefault(r["name"], []).append(r)
    for base in ("bare", "bare+backlog", "bare+backlog+gc"):
        for name in (n for n in by if n.startswith("addon") and base in by):
            b = statistics.median(r["ttfb_p50_ms"] or 0 for r in by[base])
            a = statistics.median(r["ttfb_p50_ms"] or 0 for r in by[name])
            b95 = statistics.median(r["ttfb_p95_ms"] or 0 for r in by[base])
            a95 = statistics.median(r["ttfb_p95_ms"] or 0 for r in by[name])
            print(f"\nfirst body byte {name} ÷ {base}: p50 {a / b if b else 0:.2f}×, "
                  f"p95 {a95 / b95 if b95 else 0:.2f}× "
                  "(targets: p50 ≤ 1.5× for the fleet, p95 ≤ 1.5× for the 500 burst)")
    print(f"results: {out}")
    return 0 if all(r["completed"] == r["streams"] for r in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
