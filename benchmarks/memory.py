"""Addon mitmdump memory (VmRSS) as requests accumulate: flat within 10 % from 10 k to 100 k? (issue 6)

    .venv/bin/python benchmarks/memory.py                    # 10 k, then up to 50 k (default)
    .venv/bin/python benchmarks/memory.py --requests 100000  # the full target (several minutes)

Drives JSON `/v1/responses` at concurrency 8 through the addon with `loadgen.py`, in steps of
`--step` requests, and reads `/proc/<pid>/status` VmRSS of the addon's mitmdump after each step
(metrics on, as always). Prints the RSS series and the growth from the 10 k reading to the last.
Bounded: every step has a time limit, and the whole run stops at `--max-minutes`.
"""

from __future__ import annotations

import argparse
import sqlite3
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import machine, make_pool, rss_kib, run_loadgen, scratch_dir, simulator, start_addon


def rows_written(db: Path) -> int:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as conn:
        return conn.execute("select count(*) from requests").fetchone()[0]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--requests", type=int, default=50_000, help="total requests (default 50 000; target: 100 000)")
    p.add_argument("--step", type=int, default=10_000)
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--kind", choices=("json", "sse"), default="json")
    p.add_argument("--max-minutes", type=float, default=30.0)
    args = p.parse_args(argv)
    if not 1_000 <= args.step <= args.requests <= 1_000_000:
        p.error("need 1000 <= --step <= --requests <= 1000000")
    info = machine()
    print(f"machine: {info['nproc']} cores, {info['cpu']}, load average {info['loadavg_at_start']}")
    work = scratch_dir("memory-")
    deadline = time.monotonic() + args.max_minutes * 60
    series: list[tuple[int, int]] = []
    with simulator(work) as sim:
        pool = make_pool(work, sim.url)
        px = start_addon(work, sim.url, pool)
        try:
            series.append((0, rss_kib(px.pid)))
            print(f"       0 requests: RSS {series[-1][1] / 1024:7.1f} MiB (idle, after start)")
            done = 0
            while done < args.requests:
                left = deadline - time.monotonic()
                if left <= 5:
                    print(f"stopped at {done} requests: --max-minutes {args.max_minutes} reached")
                    break
                n = min(args.step, args.requests - done)
                t0 = time.monotonic()
                r = run_loadgen(px.port, px.auth, kind=args.kind, concurrency=args.concurrency, duration=left,
                                warmup=0, max_requests=n)
                done += r["total_sent"]
                time.sleep(1.0)  # let the metrics writer drain its batch
                series.append((done, rss_kib(px.pid)))
                bad = r["non200"] + sum(r["errors"].values())
                # A writer that falls behind shows as memory growth here: the rows say whether it kept up.
                rows = rows_written(pool.db)
                print(f"{done:8d} requests: RSS {series[-1][1] / 1024:7.1f} MiB  ({r['rps']:.0f} req/s, "
                      f"{time.monotonic() - t0:.0f} s, non-200/errors {bad}, metrics rows {rows})", flush=True)
        finally:
            px.proc.stop()
    base = next(((n, kib) for n, kib in series if n >= 10_000), None)
    if base and series[-1][0] > base[0]:
        growth = (series[-1][1] - base[1]) / base[1]
        print(f"\nRSS growth from {base[0]} to {series[-1][0]} requests: {growth:+.1%} (target: within ±10 % "
              f"from 10 k to 100 k) -> {'within' if abs(growth) <= 0.10 else 'OUTSIDE'} 10 %"
              f"{'' if series[-1][0] >= 100_000 else ' (run with --requests 100000 for the full target)'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
