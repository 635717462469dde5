"""Dashboard overview latency over a big `requests` table: < 300 ms over 1 M rows? (issue 6)

    .venv/bin/python benchmarks/dashboard.py                 # 1 000 000 rows (db cached in benchmarks/out/)
    .venv/bin/python benchmarks/dashboard.py --rows 200000 --rebuild

Fills a pool database with `make_big_db.py` (synthetic rows over the last 24 h, rollup triggers
included), then serves it with Datasette's in-process test client as the root actor
(`Datasette([...]).client.get(..., cookies=...)`, the plugin loaded from its entry point) and
times each overview page: first request (cold caches) and the median of `--repeat` more.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import HERE, OUT, machine

PATHS = ["/-/pool?window=10m", "/-/pool?window=1h", "/-/pool?window=24h", "/-/pool.json?window=24h",
         "/-/pool/fragment?window=24h", "/-/pool/accounts"]
TARGET_MS = 300.0


async def time_pages(db_path: Path, repeat: int, paths: list[str]) -> list[tuple[str, int, float, float, float]]:
    from datasette.app import Datasette

    ds = Datasette([str(db_path)], metadata={"plugins": {"datasette-accountpool": {
        "secrets_path": str(db_path.with_suffix(".secrets"))}}})
    await ds.invoke_startup()
    cookies = {"ds_actor": ds.sign({"a": {"id": "root"}}, "actor")}
    out = []
    for path in paths:
        t0 = time.perf_counter()
        resp = await ds.client.get(path, cookies=cookies)
        cold = (time.perf_counter() - t0) * 1000
        warm = []
        for _ in range(repeat):
            t0 = time.perf_counter()
            resp = await ds.client.get(path, cookies=cookies)
            warm.append((time.perf_counter() - t0) * 1000)
        out.append((path, resp.status_code, cold, statistics.median(warm) if warm else cold,
                    max(warm) if warm else cold))
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=1_000_000)
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--rebuild", action="store_true", help="make the database again even if cached")
    p.add_argument("--db", type=Path, help="time an existing pool database instead")
    args = p.parse_args(argv)
    info = machine()
    print(f"machine: {info['nproc']} cores, {info['cpu']}, Python {info['python']}, "
          f"load average {info['loadavg_at_start']}")
    db = args.db or OUT / f"big-{args.rows}.db"
    if args.db is None and (args.rebuild or not db.exists()):
        OUT.mkdir(exist_ok=True)
        for suffix in ("", "-wal", "-shm"):
            Path(str(db) + suffix).unlink(missing_ok=True)
        t0 = time.monotonic()
        subprocess.run([sys.executable, str(HERE / "make_big_db.py"), str(db), "-n", str(args.rows)], check=True,
                       timeout=3600)
        print(f"built {db} with {args.rows:,} rows in {time.monotonic() - t0:.0f} s")
    try:
        import datasette_accountpool  # noqa: F401
    except ImportError as exc:
        print(f"the dashboard plugin is not importable ({exc}); nothing to time")
        return 1
    results = asyncio.run(time_pages(db, args.repeat, PATHS))
    print(f"\n{'page':32s} {'status':>6s} {'cold ms':>9s} {'median ms':>10s} {'max ms':>8s}"
          f"  target < {TARGET_MS:.0f} ms")
    worst = 0.0
    for path, status, cold, med, mx in results:
        worst = max(worst, med) if path.startswith("/-/pool?") or path.startswith("/-/pool.json") else worst
        verdict = "met" if med < TARGET_MS else "MISSED"
        print(f"{path:32s} {status:6d} {cold:9.1f} {med:10.1f} {mx:8.1f}  {verdict}")
    print(f"\nworst overview median: {worst:.1f} ms over {args.rows:,} rows -> "
          f"{'met' if worst < TARGET_MS else 'MISSED'} (< {TARGET_MS:.0f} ms)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
