"""A lean Responses upstream for the fleet benchmark: thousands of slow SSE streams from one process.

    python benchmarks/sse_upstream.py --port 0        # prints "listening on http://127.0.0.1:<port>"

The simulator (`accountpool.simulator`) is a `ThreadingHTTPServer`: one thread per open stream,
each sleeping between its deltas. On the 2-core benchmark machine that does not hold 5,000 open
streams (5,000 threads with 8 MiB stack reservations each, and every delta a thread wake-up that
takes the GIL; see benchmarks/README.md). This server answers the same wire format from one asyncio
event loop: a bare `Protocol` per connection and one timer task that writes every delta that is
due, so a stream costs a heap entry and a transport, not a thread.

What it speaks, enough for the addon to parse and meter it (and the same for bare mitmdump):
`POST /v1/responses` with `"stream": true` → `response.created`, `response.in_progress`,
`response.output_item.added`, `response.content_part.added` at once, then `x-sim-deltas`
`response.output_text.delta` events `x-sim-delta-delay-ms` apart, then `.done` events and
`response.completed` with `usage`; chunked, one event per chunk. Without `stream` it answers the
assembled JSON response with `usage`. Any bearer key is accepted; `x-ratelimit-*` headers are
sent so the addon's usage-header path runs as it would against api.openai.com.
"""

from __future__ import annotations

import argparse
import asyncio
import heapq
import itertools
import json
import sys
import time

TICK_S = 0.005
_seq = itertools.count()


def _sse(doc: dict) -> bytes:
    return b"event: " + doc["type"].encode() + b"\ndata: " + json.dumps(doc, separators=(",", ":")).encode() + b"\n\n"


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%b\r\n" % (len(data), data)


_EVENTS: dict[int, tuple[bytes, list[bytes], bytes]] = {}


def events_for(deltas: int) -> tuple[bytes, list[bytes], bytes]:
    """(head events, one chunk per delta, tail events incl. the terminating chunk), each chunk-framed."""
    cached = _EVENTS.get(deltas)
    if cached is not None:
        return cached
    rid, mid = "resp_bench0000000000000000", "msg_bench0000000000000000"
    pieces = [f"tok{i} " for i in range(deltas)]
    text = "".join(pieces)
    usage = {"input_tokens": 18, "input_tokens_details": {"cached_tokens": 0}, "output_tokens": deltas,
             "output_tokens_details": {"reasoning_tokens": 0}, "total_tokens": 18 + deltas}
    start = {"id": rid, "object": "response", "created_at": 1_700_000_000, "status": "in_progress",
             "model": "gpt-5.5", "output": [], "usage": None}
    part = {"type": "output_text", "text": text, "annotations": []}
    done = {"type": "message", "id": mid, "role": "assistant", "status": "completed", "content": [part]}
    at = {"item_id": mid, "output_index": 0, "content_index": 0}
    head = [{"type": "response.created", "response": start}, {"type": "response.in_progress", "response": start},
            {"type": "response.output_item.added", "output_index": 0,
             "item": {**done, "status": "in_progress", "content": []}},
            {"type": "response.content_part.added", **at, "part": {**part, "text": ""}}]
    body = [{"type": "response.output_text.delta", **at, "delta": p, "logprobs": []} for p in pieces]
    final = {**start, "status": "completed", "output": [done], "usage": usage}
    tail = [{"type": "response.output_text.done", **at, "text": text, "logprobs": []},
            {"type": "response.content_part.done", **at, "part": part},
            {"type": "response.output_item.done", "output_index": 0, "item": done},
            {"type": "response.completed", "response": final}]
    n = itertools.count()
    for doc in (*head, *body, *tail):
        doc["sequence_number"] = next(n)
    cached = (b"".join(_chunk(_sse(d)) for d in head), [_chunk(_sse(d)) for d in body],
              b"".join(_chunk(_sse(d)) for d in tail) + b"0\r\n\r\n")
    _EVENTS[deltas] = cached
    json_body = json.dumps(final).encode()
    _JSON[deltas] = json_body
    return cached


_JSON: dict[int, bytes] = {}
RATE_HEADERS = (b"x-ratelimit-limit-requests: 10000\r\nx-ratelimit-remaining-requests: 9999\r\n"
                b"x-ratelimit-reset-requests: 6ms\r\nx-ratelimit-limit-tokens: 30000000\r\n"
                b"x-ratelimit-remaining-tokens: 29999000\r\nx-ratelimit-reset-tokens: 2ms\r\n")


class Stream:
    __slots__ = ("bodies", "close", "delay", "i", "proto", "tail")

    def __init__(self, proto: Conn, bodies: list[bytes], tail: bytes, delay: float, close: bool) -> None:
        self.proto, self.bodies, self.tail, self.delay, self.close, self.i = proto, bodies, tail, delay, close, 0


class Clock:
    """One timer for every open stream: a heap of (due, seq, stream)."""

    def __init__(self) -> None:
        self.heap: list[tuple[float, int, Stream]] = []
        self.open = 0
        self.peak = 0
        self.wake = asyncio.Event()

    def add(self, stream: Stream, due: float) -> None:
        heapq.heappush(self.heap, (due, next(_seq), stream))
        self.wake.set()

    async def run(self) -> None:
        heap = self.heap
        while True:
            if not heap:
                self.wake.clear()
                await self.wake.wait()
                continue
            now = time.monotonic()
            while heap and heap[0][0] <= now:
                _, _, s = heapq.heappop(heap)
                transport = s.proto.transport
                if transport is None or transport.is_closing():
                    self.open -= 1
                    continue
                if s.i < len(s.bodies):
                    transport.write(s.bodies[s.i])
                    s.i += 1
                    heapq.heappush(heap, (now + s.delay, next(_seq), s))
                else:
                    transport.write(s.tail)
                    self.open -= 1
                    s.proto.finished(s.close)
            await asyncio.sleep(max(0.0, min(TICK_S, heap[0][0] - time.monotonic())) if heap else 0)


CLOCK: Clock


class Conn(asyncio.Protocol):
    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buf = b""
        self.busy = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while not self.busy:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self.buf[:end].lower()
            length = 0
            i = head.find(b"\r\ncontent-length:")
            if i >= 0:
                j = head.find(b"\r\n", i + 2)
                length = int(head[i + 17:j if j >= 0 else None])
            if len(self.buf) < end + 4 + length:
                return
            body = self.buf[end + 4:end + 4 + length]
            self.buf = self.buf[end + 4 + length:]
            self.answer(head, body)

    def answer(self, head: bytes, body: bytes) -> None:
        assert self.transport is not None
        deltas = _header_int(head, b"x-sim-deltas", 8)
        delay = _header_int(head, b"x-sim-delta-delay-ms", 0) / 1000
        close = b"\r\nconnection: close" in head
        first, bodies, tail = events_for(max(1, deltas))
        conn = b"connection: close\r\n" if close else b""
        if b'"stream":true' not in body.replace(b" ", b""):
            payload = _JSON[max(1, deltas)]
            self.transport.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n" + RATE_HEADERS + conn +
                                 b"content-length: %d\r\n\r\n" % len(payload) + payload)
            self.finished(close)
            return
        self.transport.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream; charset=utf-8\r\n"
                             b"cache-control: no-cache\r\n" + RATE_HEADERS + conn +
                             b"transfer-encoding: chunked\r\n\r\n" + first)
        if delay <= 0:
            self.transport.write(b"".join(bodies) + tail)
            self.finished(close)
            return
        self.busy = True
        CLOCK.open += 1
        CLOCK.peak = max(CLOCK.peak, CLOCK.open)
        CLOCK.add(Stream(self, bodies, tail, delay, close), time.monotonic() + delay)

    def finished(self, close: bool) -> None:
        self.busy = False
        if self.transport is None:
            return
        if close:
            self.transport.close()
        elif self.buf:
            self.data_received(b"")


def _header_int(head: bytes, name: bytes, default: int) -> int:
    i = head.find(b"\r\n" + name + b":")
    if i < 0:
        return default
    j = head.find(b"\r\n", i + 2)
    try:
        return int(head[i + len(name) + 3:j if j >= 0 else None].strip())
    except ValueError:
        return default


async def serve(port: int) -> None:
    global CLOCK
    CLOCK = Clock()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(Conn, "127.0.0.1", port, backlog=4096)
    print(f"sse_upstream listening on http://127.0.0.1:{server.sockets[0].getsockname()[1]}", flush=True)
    await CLOCK.run()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--port", type=int, default=0)
    args = p.parse_args(argv)
    try:
        asyncio.run(serve(args.port))
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
