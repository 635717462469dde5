"""Diagnostic mitmproxy script (`-s`, after the addon) that applies candidate hot-path fixes in memory.

Not part of the product, never loaded by default. The benchmarks load it with
`--patch nodelay,metrics_batch` to measure what a fix in the addon would buy before anyone
edits the addon itself; the env var ACCOUNTPOOL_BENCH_PATCHES names the patches:

- `nodelay`: TCP_NODELAY on the relay's accepted sockets. `RelayServer` binds its own
  `socket.socket(AF_INET, SOCK_STREAM)`, whose `proto` is 0, and asyncio sets TCP_NODELAY only
  on sockets whose proto is IPPROTO_TCP; so a relay answer written as headers, then body, waits
  for mitmproxy's delayed ACK (~40 ms) under Nagle. The real fix is one argument in
  `relay_server.py`: `socket.socket(AF_INET, SOCK_STREAM, IPPROTO_TCP)` (or setsockopt there).
- `metrics_batch`: `MetricsWriter.submit` appends to a list on the event loop and hands the
  list to the writer thread once per `BATCH_S`, instead of one `queue.put` per op (7 per request),
  each of which wakes the writer thread and bounces the GIL between it and the event loop.
- `quiet_httpcore`: `logging.getLogger("httpcore").setLevel(WARNING)`. mitmdump sets the root
  logger to DEBUG, so httpcore's trace logging is on: about ten DEBUG records per upstream
  request, each formatted by mitmproxy's `LegacyLogEvents` handler and dispatched as an
  `add_log` hook to every addon through `call_soon_threadsafe`. The addon already quiets
  `httpx`; `httpcore` needs the same line.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket

from accountpool import metrics_writer, relay_server

BATCH_S = 0.05
PATCHES = {p.strip() for p in os.environ.get("ACCOUNTPOOL_BENCH_PATCHES", "").split(",") if p.strip()}


def _patch_nodelay() -> None:
    original = relay_server.RelayServer._serve

    async def _serve(self, reader, writer) -> None:  # type: ignore[no-untyped-def]
        sock = writer.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        await original(self, reader, writer)

    relay_server.RelayServer._serve = _serve  # type: ignore[method-assign]


def _patch_metrics_batch() -> None:
    def submit(self, op) -> None:  # type: ignore[no-untyped-def]
        self._submitted += 1
        batch = self.__dict__.setdefault("_bench_batch", [])
        batch.append(op)
        if len(batch) == 1:
            try:
                asyncio.get_running_loop().call_later(BATCH_S, _hand_over, self)
            except RuntimeError:  # not on the loop (shutdown): hand over at once
                _hand_over(self)

    def _hand_over(self) -> None:  # type: ignore[no-untyped-def]
        batch, self._bench_batch = self.__dict__.get("_bench_batch", []), []
        for op in batch:  # no GIL release between puts: the writer wakes once for the lot
            self._queue.put(op)

    original_stop = metrics_writer.MetricsWriter.stop

    def stop(self, timeout: float = 15.0) -> None:  # type: ignore[no-untyped-def]
        _hand_over(self)
        original_stop(self, timeout)

    metrics_writer.MetricsWriter.submit = submit  # type: ignore[method-assign]
    metrics_writer.MetricsWriter.stop = stop  # type: ignore[method-assign]


if not getattr(relay_server, "_bench_patched", False):
    relay_server._bench_patched = True  # type: ignore[attr-defined]
    if "nodelay" in PATCHES:
        _patch_nodelay()
    if "metrics_batch" in PATCHES:
        _patch_metrics_batch()
    if "quiet_httpcore" in PATCHES:
        logging.getLogger("httpcore").setLevel(logging.WARNING)

addons: list = []
