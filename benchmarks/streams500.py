"""500 concurrent SSE streams held open through the addon, all of which must complete (issue 6).

    .venv/bin/python benchmarks/streams500.py [--streams 500] [--deltas 20] [--delay-ms 150] [--bare]

Each stream asks the simulator for `--deltas` content events `--delay-ms` apart (headers
`x-sim-deltas`, `x-sim-delta-delay-ms`), so every stream stays open about deltas × delay
seconds. All streams are opened at once on separate connections; the script reports how many
were open at the same time (peak), how many completed with `response.completed` and a clean
chunked end, the spread of durations, and the mitmdump RSS before and after. Prints figures only.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import cpu_seconds, machine, make_pool, rss_kib, scratch_dir, simulator, start_addon, start_bare


async def one_stream(port: int, auth: str, headers: dict[str, str], body: bytes, timeout: float,
                     opened: list[int], events: list[tuple[float, int]]) -> dict:
    t0 = time.monotonic()
    reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port, limit=1 << 20), timeout)
    lines = ["POST /v1/responses HTTP/1.1", f"host: 127.0.0.1:{port}", "content-type: application/json",
             f"content-length: {len(body)}", "accept: text/event-stream", "connection: close",
             f"authorization: {auth}", *(f"{k}: {v}" for k, v in headers.items())]
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
    opened[0] += 1
    events.append((time.monotonic(), +1))
    try:
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout)
        status = int(head[9:12])
        first = None
        data = bytearray()
        clean_end = False
        while True:  # chunked body, read chunk by chunk until the terminating 0-size chunk
            size_line = await asyncio.wait_for(reader.readuntil(b"\r\n"), timeout)
            size = int(size_line.split(b";")[0], 16)
            if size == 0:
                await asyncio.wait_for(reader.readuntil(b"\r\n"), timeout)
                clean_end = True
                break
            chunk = await asyncio.wait_for(reader.readexactly(size + 2), timeout)
            first = first or time.monotonic()
            data += chunk[:-2]
        done = time.monotonic()
        return {"status": status, "ok": status == 200 and clean_end and b"response.completed" in data,
                "ms": (done - t0) * 1000, "ttfb_ms": ((first or done) - t0) * 1000}
    except (asyncio.IncompleteReadError, ConnectionError, TimeoutError, ValueError) as exc:
        return {"status": 0, "ok": False, "error": type(exc).__name__, "ms": (time.monotonic() - t0) * 1000}
    finally:
        events.append((time.monotonic(), -1))
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()


async def run_streams(port: int, auth: str, n: int, deltas: int, delay_ms: int, timeout: float) -> tuple[list, int]:
    body = b'{"model":"gpt-5.5","input":"hold this stream open for a while please","stream":true}'
    headers = {"x-sim-deltas": str(deltas), "x-sim-delta-delay-ms": str(delay_ms)}
    opened = [0]
    events: list[tuple[float, int]] = []
    results = await asyncio.gather(*(one_stream(port, auth, headers, body, timeout, opened, events)
                                     for _ in range(n)), return_exceptions=True)
    results = [r if isinstance(r, dict) else {"status": 0, "ok": False, "error": repr(r), "ms": 0.0}
               for r in results]
    peak = cur = 0
    for _, d in sorted(events):
        cur += d
        peak = max(peak, cur)
    return results, peak


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--streams", type=int, default=500)
    p.add_argument("--deltas", type=int, default=20)
    p.add_argument("--delay-ms", type=int, default=150)
    p.add_argument("--timeout", type=float, default=120.0, help="per read, seconds")
    p.add_argument("--bare", action="store_true", help="also run against bare mitmdump, for comparison")
    args = p.parse_args(argv)
    if not 1 <= args.streams <= 2000:
        p.error("--streams 1..2000")
    info = machine()
    print(f"machine: {info['nproc']} cores, {info['cpu']}, load average {info['loadavg_at_start']}")
    work = scratch_dir("streams-")
    failed = 0
    with simulator(work) as sim:
        pool = make_pool(work, sim.url)
        targets = [start_addon(work, sim.url, pool)]
        if args.bare:
            targets.insert(0, start_bare(work, sim.url))
        try:
            for px in targets:
                rss0, cpu0, t0 = rss_kib(px.pid), cpu_seconds(px.pid), time.monotonic()
                results, peak = asyncio.run(run_streams(px.port, px.auth, args.streams, args.deltas, args.delay_ms,
                                                        args.timeout))
                wall = time.monotonic() - t0
                rss1, cpu = rss_kib(px.pid), cpu_seconds(px.pid) - cpu0
                ok = sum(r["ok"] for r in results)
                failed += 0 if px.name == "bare" else len(results) - ok
                ms = sorted(r["ms"] for r in results)
                ttfb = sorted(r.get("ttfb_ms", 0.0) for r in results if r["ok"])
                errors: dict[str, int] = {}
                for r in results:
                    if not r["ok"]:
                        key = r.get("error") or f"status {r['status']}"
                        errors[key] = errors.get(key, 0) + 1
                print(f"{px.name}: {ok}/{len(results)} streams completed (response.completed + clean end), "
                      f"peak {peak} open at once, wall {wall:.1f} s, mitmdump CPU {cpu:.1f} s")
                print(f"  duration ms: min {ms[0]:.0f}  p50 {ms[len(ms) // 2]:.0f}  max {ms[-1]:.0f} "
                      f"(expected ≥ {args.deltas * args.delay_ms})")
                if ttfb:
                    print(f"  first body byte ms: p50 {ttfb[len(ttfb) // 2]:.0f}  p95 {ttfb[int(len(ttfb) * 0.95)]:.0f}"
                          f"  max {ttfb[-1]:.0f}")
                print(f"  mitmdump RSS {rss0 / 1024:.1f} MiB before, {rss1 / 1024:.1f} MiB after")
                if errors:
                    print(f"  failures: {errors}")
        finally:
            for px in targets:
                px.proc.stop()
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
