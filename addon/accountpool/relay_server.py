"""A minimal HTTP/1.1 server on 127.0.0.1 inside mitmproxy's event loop (see docs/DESIGN.md).

mitmproxy forwards each admitted request here; the router then owns the upstream attempts and
streams the chosen answer back, so mitmproxy streams it on to the client like any server's
response. The upstream credential is only ever on the relay's outbound connection, never in a
flow that mitmweb or a flow file could show. h11 does the HTTP framing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import h11

log = logging.getLogger("accountpool.relay")

MAX_INCOMPLETE_EVENT = 64 * 1024
READ_CHUNK = 64 * 1024


@dataclass
class RelayRequest:
    method: str
    target: str
    headers: list[tuple[str, str]]
    body: bytes


class Responder:
    """Writes one response; `committed` once the status line is sent (failover is over then)."""

    streams = True

    def __init__(self, conn: h11.Connection, writer: asyncio.StreamWriter) -> None:
        self._conn = conn
        self._writer = writer
        self.committed = False
        self.finished = False
        self.client_gone = False
        self.gone_reason = "client disconnected"

    async def start(self, status: int, headers: list[tuple[str, str]]) -> None:
        self.committed = True
        encoded = [(k.encode("latin-1", "replace"), v.encode("utf-8", "replace")) for k, v in headers]
        await self._write(self._conn.send(h11.Response(status_code=status, headers=encoded)))

    async def send(self, data: bytes) -> None:
        if data:
            await self._write(self._conn.send(h11.Data(data=data)))

    async def end(self) -> None:
        if not self.finished:
            self.finished = True
            await self._write(self._conn.send(h11.EndOfMessage()))

    async def whole(self, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
        """Status line, headers and body in one write (one syscall for the common small answer)."""
        self.committed = self.finished = True
        encoded = [(k.encode("latin-1", "replace"), v.encode("utf-8", "replace"))
                   for k, v in [*headers, ("content-length", str(len(body)))]]
        data = self._conn.send(h11.Response(status_code=status, headers=encoded)) or b""
        data += (self._conn.send(h11.Data(data=body)) or b"") if body else b""
        data += self._conn.send(h11.EndOfMessage()) or b""
        await self._write(data)

    def abort(self) -> None:
        """Cut the connection without a terminating chunk: the client sees an incomplete body."""
        self.finished = True
        transport = self._writer.transport
        if transport is not None and not transport.is_closing():
            transport.abort()

    async def _write(self, data: bytes | None) -> None:
        if not data or self.client_gone:
            return
        if self._writer.transport.is_closing():
            # mitmproxy closed its side (its client went away): asyncio would swallow the writes.
            self.client_gone = True
            return
        try:
            self._writer.write(data)
            if self._writer.transport.get_write_buffer_size() > 256 * 1024:
                await self._writer.drain()
        except (ConnectionError, RuntimeError):
            self.client_gone = True


Handler = Callable[[RelayRequest, Responder], Awaitable[None]]


class RelayServer:
    def __init__(self, handler: Handler, *, max_body: int) -> None:
        self.handler = handler
        self.max_body = max_body
        self._server: asyncio.Server | None = None
        self.ready = asyncio.Event()
        # Bound synchronously so the port is known before the first request arrives.
        # IPPROTO_TCP explicitly: asyncio sets TCP_NODELAY only on sockets whose `proto` says TCP,
        # and without it a response written as headers then body waits ~40 ms for a delayed ACK.
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(1024)
        self.port: int = self._sock.getsockname()[1]

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, sock=self._sock, limit=READ_CHUNK)
        self.ready.set()

    async def stop(self) -> None:
        if self._server:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_INCOMPLETE_EVENT)
        sock = writer.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            while True:
                request = await self._read_request(conn, reader)
                if request is None:
                    return
                responder = Responder(conn, writer)
                try:
                    await self.handler(request, responder)
                except Exception:
                    log.exception("relay handler failed")
                    if not responder.committed:
                        body = (b'{"error":{"message":"accountpool: internal relay error","type":"server_error",'
                                b'"code":"accountpool_internal_error","param":null}}')
                        await responder.whole(500, [("content-type", "application/json")], body)
                    else:
                        responder.abort()
                        return
                if responder.finished and not responder.client_gone and not writer.transport.is_closing():
                    with contextlib.suppress(Exception):
                        await writer.drain()
                if conn.our_state is h11.MUST_CLOSE or conn.their_state is h11.MUST_CLOSE or responder.client_gone \
                        or writer.transport.is_closing():
                    return
                try:
                    conn.start_next_cycle()
                except h11.LocalProtocolError:
                    return
        except (ConnectionError, asyncio.IncompleteReadError, h11.RemoteProtocolError):
            return
        except asyncio.CancelledError:
            # Shutdown with an idle keep-alive connection: end quietly (Python 3.11's stream
            # callback would otherwise log the cancellation as an unhandled exception).
            return
        finally:
            with contextlib.suppress(Exception):
                writer.close()

    async def _read_request(self, conn: h11.Connection, reader: asyncio.StreamReader) -> RelayRequest | None:
        request: h11.Request | None = None
        body = bytearray()
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                data = await reader.read(READ_CHUNK)
                conn.receive_data(data)
                if not data and request is None:
                    return None
                continue
            if isinstance(event, h11.Request):
                request = event
            elif isinstance(event, h11.Data):
                body += event.data
                if len(body) > self.max_body:
                    raise ConnectionError("request body over the relay limit")
            elif isinstance(event, h11.EndOfMessage):
                assert request is not None
                return RelayRequest(
                    request.method.decode(), request.target.decode("latin-1"),
                    [(k.decode("latin-1"), v.decode("utf-8", "replace")) for k, v in request.headers],
                    bytes(body),
                )
            elif isinstance(event, h11.ConnectionClosed | h11.PAUSED):
                return None
