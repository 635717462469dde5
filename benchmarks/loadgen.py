"""A small closed-loop HTTP/1.1 load generator: N keep-alive connections, one request in flight each.

    python benchmarks/loadgen.py --port 8080 --auth "Bearer K" --kind json --concurrency 8 --duration 5

Prints one JSON object: completed requests, requests/s, latency and time-to-first-body-byte
percentiles (ms), status counts, errors. Runs as its own process (the benchmarks start it), on a
bare asyncio `Protocol` with a hand-written response parser (status line, content-length or
chunked): about 20-40 µs of CPU per request, a few percent of what mitmproxy spends, so on a
2-core machine the generator is not the bottleneck and leaves the cores to the proxy under test.
Only requests that start after the warm-up and finish before the end are measured.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections import Counter

perf = time.perf_counter


class Result:
    __slots__ = ("first_body", "headers_at", "status")

    def __init__(self) -> None:
        self.status = 0
        self.headers_at = 0.0
        self.first_body = 0.0


class Client(asyncio.Protocol):
    """One keep-alive connection; `request()` sends the request and resolves when the body is complete."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.waiter: asyncio.Future | None = None
        self.closed = asyncio.get_running_loop().create_future()
        self._reset()

    def _reset(self) -> None:
        self.state = 0  # 0 head, 1 fixed body, 2 chunk size, 3 chunk data, 4 chunk end, 5 trailers
        self.remaining = 0
        self.res = Result()
        self.close_after = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(ConnectionError(f"connection lost: {exc!r}"))
        if not self.closed.done():
            self.closed.set_result(None)

    def request(self, data: bytes) -> asyncio.Future:
        self._reset()
        self.waiter = asyncio.get_running_loop().create_future()
        assert self.transport is not None
        self.transport.write(data)
        return self.waiter

    def data_received(self, data: bytes) -> None:
        now = perf()
        buf = self.buf
        buf += data
        res = self.res
        pos = 0
        n = len(buf)
        while pos < n:
            state = self.state
            if state < 0:  # a complete answer; nothing else was asked for
                pos = n
                break
            if state == 0:
                end = buf.find(b"\r\n\r\n", pos)
                if end < 0:
                    break
                head = bytes(buf[pos:end]).lower()
                res.status = int(head[9:12])
                res.headers_at = now
                pos = end + 4
                self.close_after = b"\r\nconnection: close" in head
                if b"\r\ntransfer-encoding: chunked" in head:
                    self.state = 2
                    continue
                i = head.find(b"\r\ncontent-length:")
                j = head.find(b"\r\n", i + 2) if i >= 0 else -1
                self.remaining = int(head[i + 17:j if j >= 0 else None]) if i >= 0 else 0
                self.state = 1
                if self.remaining == 0:
                    self._done(now)
            elif state == 1:
                pos = self._take_body(pos, n, now)
                if self.remaining == 0:
                    self._done(now)
            elif state == 2:
                end = buf.find(b"\r\n", pos)
                if end < 0:
                    break
                size = int(bytes(buf[pos:end]).split(b";")[0], 16)
                pos = end + 2
                if size == 0:
                    self.state = 5
                else:
                    self.remaining, self.state = size, 3
            elif state == 3:
                pos = self._take_body(pos, n, now)
                if self.remaining == 0:
                    self.state = 4
            elif state == 4:
                if n - pos < 2:
                    break
                pos += 2
                self.state = 2
            else:  # trailers: an empty line ends the message
                end = buf.find(b"\r\n", pos)
                if end < 0:
                    break
                line_empty = end == pos
                pos = end + 2
                if line_empty:
                    self._done(now)
        del buf[:pos]

    def _take_body(self, pos: int, n: int, now: float) -> int:
        """Consume up to `remaining` body bytes (content-length body or one chunk); the new position."""
        take = min(self.remaining, n - pos)
        if take and not self.res.first_body:
            self.res.first_body = now
        self.remaining -= take
        return pos + take

    def _done(self, now: float) -> None:
        self.state = -1
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result((self.res, now))
        if self.close_after and self.transport is not None:
            self.transport.close()


async def worker(args: argparse.Namespace, request: bytes, t_measure: float, t_end: float, stats: dict,
                 budget: list[int]) -> None:
    loop = asyncio.get_running_loop()
    client: Client | None = None
    while True:
        if perf() >= t_end or (args.max_requests and budget[0] <= 0):
            break
        budget[0] -= 1
        if client is None or client.transport is None or client.transport.is_closing():
            try:
                _, client = await asyncio.wait_for(
                    loop.create_connection(Client, "127.0.0.1", args.port), args.timeout)
            except (OSError, TimeoutError) as exc:
                stats["errors"][f"connect: {type(exc).__name__}"] += 1
                await asyncio.sleep(0.05)
                continue
        t0 = perf()
        try:
            res, t_done = await asyncio.wait_for(client.request(request), args.timeout)
        except (ConnectionError, TimeoutError) as exc:
            stats["errors"][type(exc).__name__] += 1
            if client.transport is not None:
                client.transport.close()
            client = None
            continue
        stats["status"][res.status] += 1
        if t0 >= t_measure and t_done <= t_end:
            stats["latency"].append(t_done - t0)
            stats["ttfb"].append((res.first_body or res.headers_at) - t0)
            stats["measured"] += 1
            if res.status != 200:
                stats["measured_non200"] += 1
        stats["total"] += 1
    if client is not None and client.transport is not None:
        client.transport.close()


def pct(values: list[float], p: float) -> float | None:
    if not values:
        return None
    s = sorted(values)
    return round(s[min(len(s) - 1, round(p / 100 * (len(s) - 1)))] * 1000, 3)


async def main_async(args: argparse.Namespace) -> dict:
    body = args.body.encode() if args.body else json.dumps(
        {"model": "gpt-5.5", "input": "Summarise the benchmark in one short sentence please",
         "stream": args.kind == "sse"}).encode()
    lines = [f"POST {args.path} HTTP/1.1", f"host: 127.0.0.1:{args.port}", "content-type: application/json",
             f"content-length: {len(body)}", "accept: text/event-stream" if args.kind == "sse" else "accept: */*"]
    if args.auth:
        lines.append(f"authorization: {args.auth}")
    lines += args.header
    request = ("\r\n".join(lines) + "\r\n\r\n").encode() + body
    stats: dict = {"latency": [], "ttfb": [], "status": Counter(), "errors": Counter(), "measured": 0,
                   "measured_non200": 0, "total": 0}
    start = perf()
    t_measure = start + args.warmup
    t_end = t_measure + args.duration
    budget = [args.max_requests]
    await asyncio.gather(*(worker(args, request, t_measure, t_end, stats, budget) for _ in range(args.concurrency)))
    finished = perf()
    window = args.duration if not args.max_requests else max(1e-9, finished - t_measure)
    return {
        "kind": args.kind, "concurrency": args.concurrency, "duration_s": round(window, 3),
        "requests": stats["measured"], "rps": round(stats["measured"] / window, 1),
        "p50_ms": pct(stats["latency"], 50), "p95_ms": pct(stats["latency"], 95),
        "p99_ms": pct(stats["latency"], 99), "ttfb_p50_ms": pct(stats["ttfb"], 50),
        "ttfb_p95_ms": pct(stats["ttfb"], 95), "non200": stats["measured_non200"],
        "status": {str(k): v for k, v in stats["status"].items()}, "errors": dict(stats["errors"]),
        "total_sent": stats["total"], "wall_s": round(finished - start, 3),
        "latencies_ms": [round(x * 1000, 3) for x in stats["latency"]] if args.raw else None,
        "ttfbs_ms": [round(x * 1000, 3) for x in stats["ttfb"]] if args.raw else None,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--path", default="/v1/responses")
    p.add_argument("--auth", default="")
    p.add_argument("--kind", choices=("json", "sse"), default="json")
    p.add_argument("--body", default="")
    p.add_argument("--header", action="append", default=[], help="extra 'name: value' header")
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--duration", type=float, default=5.0, help="measured seconds (after the warm-up)")
    p.add_argument("--warmup", type=float, default=1.0)
    p.add_argument("--max-requests", type=int, default=0, help="stop after this many requests (0: by time only)")
    p.add_argument("--timeout", type=float, default=30.0, help="per request")
    p.add_argument("--raw", action="store_true", help="include every latency in the output")
    args = p.parse_args(argv)
    if args.max_requests:  # a count-bounded run measures everything, still bounded in time by --duration
        args.warmup = 0.0
    result = asyncio.run(main_async(args))
    json.dump(result, sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
