"""The relay's HTTP/1.1 server on 127.0.0.1, inside mitmproxy's event loop (see docs/DESIGN.md).

mitmproxy forwards each admitted streamed request here; the router then owns the upstream
attempts and streams the chosen answer back, so mitmproxy streams it on to the client like any
server's response. The upstream credential is only ever on the relay's outbound connection,
never in a flow that mitmweb or a flow file could show. aiohttp's low-level server does the
framing (its C parser; the same library as the outbound client).

The relay never reads the forwarded request body: the router works from the body the addon
admitted (and handed over with the ticket), so aiohttp discards the copy mitmproxy sends.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from aiohttp import web
from multidict import CIMultiDict

log = logging.getLogger("accountpool.relay")

MAX_HEADER_LINE = 64 * 1024
"""mitmproxy refuses larger request headers first (431); this only keeps the relay from refusing less."""
INTERNAL_ERROR = (b'{"error":{"message":"accountpool: internal relay error","type":"server_error",'
                  b'"code":"accountpool_internal_error","param":null}}')


@dataclass
class RelayRequest:
    method: str
    target: str
    headers: list[tuple[str, str]]


class Responder:
    """Writes one response; `committed` once the status is chosen (failover is over then)."""

    streams = True

    def __init__(self, request: web.BaseRequest) -> None:
        self._request = request
        self._response: web.StreamResponse | None = None
        self.committed = False
        self.finished = False
        self.client_gone = False
        self.gone_reason = "client disconnected"

    async def start(self, status: int, headers: list[tuple[str, str]]) -> None:
        """Chunked (no content-length): the body is streamed as the upstream sends it."""
        self.committed = True
        self._response = web.StreamResponse(status=status, headers=CIMultiDict(headers))
        await self._guard(lambda r: r.prepare(self._request))

    def disconnected(self) -> bool:
        """mitmproxy closes its connection to the relay when its client goes away."""
        transport = self._request.transport
        return self.client_gone or transport is None or transport.is_closing()

    async def send(self, data: bytes) -> None:
        if data:
            await self._guard(lambda r: r.write(data))

    async def end(self) -> None:
        if not self.finished:
            self.finished = True
            await self._guard(lambda r: r.write_eof())

    async def whole(self, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
        """Status line, headers and body in one write (one syscall for the common small answer)."""
        self.committed = self.finished = True
        self._response = web.Response(status=status, body=body, headers=CIMultiDict(headers))
        await self._guard(lambda r: r.prepare(self._request))
        await self._guard(lambda r: r.write_eof())

    def abort(self) -> None:
        """Cut the connection without a terminating chunk: the client sees an incomplete body."""
        self.finished = True
        transport = self._request.transport
        if transport is not None and not transport.is_closing():
            transport.abort()

    @property
    def response(self) -> web.StreamResponse:
        if self._response is None:  # the handler returned without answering: a relay bug, answered as one
            self._response = web.Response(status=500, body=INTERNAL_ERROR, content_type="application/json")
        return self._response

    async def _guard(self, write: Callable[[web.StreamResponse], Awaitable[object]]) -> None:
        if self.client_gone or self._response is None:
            return
        try:
            await write(self._response)
        except (ConnectionError, RuntimeError):
            # mitmproxy closed its side (its client went away).
            self.client_gone = True


Handler = Callable[[RelayRequest, Responder], Awaitable[None]]


class RelayServer:
    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self._server: asyncio.Server | None = None
        self._web = web.Server(self._handle, access_log=None, max_line_size=MAX_HEADER_LINE,
                               max_field_size=MAX_HEADER_LINE, auto_decompress=False)
        self.ready = asyncio.Event()
        # Bound synchronously so the port is known before the first request arrives.
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(1024)
        self.port: int = self._sock.getsockname()[1]

    async def start(self) -> None:
        self._server = await asyncio.get_running_loop().create_server(self._web, sock=self._sock)
        self.ready.set()

    async def stop(self) -> None:
        with contextlib.suppress(Exception):
            await self._web.shutdown(1.0)
        if self._server:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2)

    async def _handle(self, request: web.BaseRequest) -> web.StreamResponse:
        responder = Responder(request)
        try:
            await self.handler(RelayRequest(request.method, request.raw_path, list(request.headers.items())),
                               responder)
        except Exception:
            log.exception("relay handler failed")
            if responder.committed:
                responder.abort()
            else:
                await responder.whole(500, [("content-type", "application/json")], INTERNAL_ERROR)
        return responder.response
