"""The relay's HTTP/1.1 server on 127.0.0.1, inside mitmproxy's event loop (see docs/DESIGN.md).

mitmproxy forwards each admitted streamed request here; the router then owns the upstream
attempts and streams the chosen answer back, so mitmproxy streams it on to the client like any
server's response. The upstream credential is only ever on the relay's outbound connection,
never in a flow that mitmweb or a flow file could show.

Its only peer is mitmproxy, so the server is a bare asyncio `Protocol` that does the little this
hop needs (issue 14; figures in benchmarks/README.md): read a request head, find the ticket,
discard the request body (the router works from the body the addon admitted and handed over with
the ticket), and write the answer chunked. What it saves over a general server (it was aiohttp's
low-level server): the request object, header multidicts and task machinery per request, and
one `send` per response, because writes made within one event-loop turn leave in one `send`
(the headers with the first chunk; the last chunk with the terminating one). On loopback each
`send` also runs the receiving side's TCP work, so syscalls are most of the hop's cost.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from http import HTTPStatus

log = logging.getLogger("accountpool.relay")

MAX_HEAD = 256 * 1024
"""mitmproxy refuses larger request headers first (431); this only keeps the relay from refusing less."""
INTERNAL_ERROR = (b'{"error":{"message":"accountpool: internal relay error","type":"server_error",'
                  b'"code":"accountpool_internal_error","param":null}}')
_REASONS = {s.value: s.phrase for s in HTTPStatus}
_FRAMING = frozenset({"content-length", "transfer-encoding", "connection", "keep-alive"})
"""Set by the relay itself from how it sends the body; any copy in the router's headers is dropped."""
_BODYLESS = frozenset({204, 304})


TICKET_HEADER = "x-accountpool-ticket"


@dataclass
class RelayRequest:
    """What the relay needs from a forwarded request: the router works from the admitted copy, so the
    headers are not kept (an open stream would hold them for its whole life)."""

    method: str
    target: str
    ticket: str | None


class Responder:
    """Writes one response; `committed` once the status is chosen (failover is over then)."""

    streams = True

    def __init__(self, conn: _Connection, head_only: bool, close: bool) -> None:
        self._conn = conn
        self._head_only = head_only
        self._close = close
        self._chunked = False
        self.committed = False
        self.finished = False
        self.client_gone = False
        self.gone_reason = "client disconnected"

    async def start(self, status: int, headers: list[tuple[str, str]]) -> None:
        """Chunked (no content-length): the body is streamed as the upstream sends it."""
        self.committed = True
        self._chunked = not (self._head_only or status in _BODYLESS or status < 200)
        self._conn.queue(self._head(status, headers, b"transfer-encoding: chunked\r\n" if self._chunked else b""))

    def disconnected(self) -> bool:
        """mitmproxy closes its connection to the relay when its client goes away (a queued request leaves)."""
        return self.client_gone or self._conn.closed

    async def send(self, data: bytes) -> None:
        # Inline, not through `_write`: this runs for every chunk of every stream.
        if data and self._chunked and not self.finished and not self.client_gone:
            conn = self._conn
            if not conn.queue(b"%x\r\n%b\r\n" % (len(data), data)):
                self.client_gone = True
            elif conn.paused is not None:
                await conn.drained()

    async def end(self) -> None:
        if not self.finished:
            self.finished = True
            if self._chunked:
                await self._write(b"0\r\n\r\n")

    async def whole(self, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
        """Status line, headers and body in one write (one syscall for the common small answer)."""
        self.committed = self.finished = True
        bodyless = status in _BODYLESS or status < 200
        head = self._head(status, headers, b"" if bodyless else b"content-length: %d\r\n" % len(body))
        await self._write(head if self._head_only or bodyless else head + body)

    def abort(self) -> None:
        """Cut the connection without a terminating chunk: the client sees an incomplete body."""
        self.finished = True
        self._conn.abort()

    def _head(self, status: int, headers: list[tuple[str, str]], framing: bytes) -> bytes:
        lines = [f"HTTP/1.1 {status} {_REASONS.get(status, 'Unknown')}\r\n"]
        for k, v in headers:
            if k.lower() in _FRAMING:
                continue
            if "\n" in k or "\r" in k or "\n" in v or "\r" in v:  # never split a header line
                k, v = k.replace("\r", " ").replace("\n", " "), v.replace("\r", " ").replace("\n", " ")
            lines.append(f"{k}: {v}\r\n")
        return "".join(lines).encode("utf-8", "surrogateescape") + framing + (
            b"connection: close\r\n\r\n" if self._close else b"\r\n")

    async def _write(self, data: bytes) -> None:
        if self.client_gone:
            return
        if not self._conn.queue(data):
            self.client_gone = True  # mitmproxy closed its side (its client went away)
            return
        if self._conn.paused is not None:
            await self._conn.drained()


Handler = Callable[[RelayRequest, Responder], Awaitable[None]]


class _Connection(asyncio.Protocol):
    """One connection from mitmproxy: requests one after the other (mitmproxy does not pipeline)."""

    def __init__(self, handler: Handler, tasks: set[asyncio.Task]) -> None:
        self._handler = handler
        self._tasks = tasks
        self._transport: asyncio.Transport | None = None
        self._buf = bytearray()
        self._discard = 0
        """Request body bytes still to skip (content-length)."""
        self._chunked_state = 0
        """Skipping a chunked request body: 0 not, 1 next size line (chunk data goes by `_discard`), 3 trailers."""
        self._busy = False
        self._out: list[bytes] = []
        self.paused: asyncio.Future | None = None
        self._responder: Responder | None = None

    # ------------------------------------------------------------ writing

    @property
    def closed(self) -> bool:
        return self._transport is None or self._transport.is_closing()

    def queue(self, data: bytes) -> bool:
        """Queue bytes for this loop turn's single `send`; False when the connection is gone."""
        transport = self._transport
        if transport is None or transport.is_closing():
            return False
        if not self._out:
            asyncio.get_running_loop().call_soon(self._flush)
        self._out.append(data)
        return True

    def _flush(self) -> None:
        if self._out:
            data = b"".join(self._out) if len(self._out) > 1 else self._out[0]
            self._out.clear()
            if self._transport is not None and not self._transport.is_closing():
                self._transport.write(data)

    async def drained(self) -> None:
        if self.paused is not None:
            await asyncio.shield(self.paused)

    def pause_writing(self) -> None:
        if self.paused is None:
            self.paused = asyncio.get_running_loop().create_future()

    def resume_writing(self) -> None:
        if self.paused is not None:
            if not self.paused.done():
                self.paused.set_result(None)
            self.paused = None

    def abort(self) -> None:
        self._out.clear()
        if self._transport is not None and not self._transport.is_closing():
            self._transport.abort()

    # ------------------------------------------------------------ reading

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # small SSE chunks leave at once

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        self._out.clear()
        self.resume_writing()
        if self._responder is not None:
            self._responder.client_gone = True

    def data_received(self, data: bytes) -> None:
        self._buf += data
        self._consume()

    def _consume(self) -> None:
        buf = self._buf
        while buf:
            if self._discard:
                n = min(self._discard, len(buf))
                del buf[:n]
                self._discard -= n
            elif self._chunked_state:
                if not self._skip_chunked():
                    return
            elif self._busy:
                return  # the next request waits until this answer is out
            else:
                end = buf.find(b"\r\n\r\n")
                if end < 0:
                    if len(buf) > MAX_HEAD:
                        self._refuse(431, b"request head too large")
                    return
                head = bytes(buf[:end])
                del buf[:end + 4]
                self._begin(head)

    def _skip_chunked(self) -> bool:
        """Skip one piece of a chunked request body; False when more bytes are needed."""
        buf = self._buf
        end = buf.find(b"\r\n")
        if end < 0:
            return False
        line = bytes(buf[:end])
        del buf[:end + 2]
        if self._chunked_state == 3:
            if not line:
                self._chunked_state = 0  # end of trailers: the body is done
            return True
        try:
            size = int(line.split(b";", 1)[0].strip(), 16)
        except ValueError:
            self._refuse(400, b"bad chunked request body")
            return False
        if size == 0:
            self._chunked_state = 3
        else:
            self._discard = size + 2  # data and its CRLF; the size-line state resumes after it
        return True

    def _begin(self, head: bytes) -> None:
        try:
            text = head.decode("utf-8", "surrogateescape")
            request_line, *lines = text.split("\r\n")
            method, target, version = request_line.split(" ", 2)
        except ValueError:
            self._refuse(400, b"bad request line")
            return
        ticket = None
        close = version == "HTTP/1.0"
        length = 0
        for line in lines:
            name, sep, value = line.partition(":")
            if not sep:
                continue
            lname = name.lower()
            if lname == TICKET_HEADER:
                ticket = ticket or value.strip()
                continue
            value = value.strip()
            if lname == "content-length":
                if not value.isdigit():
                    self._refuse(400, b"bad content-length")
                    return
                length = int(value)
            elif lname == "transfer-encoding" and "chunked" in value.lower():
                self._chunked_state = 1
            elif lname == "connection":
                v = value.lower()
                close = "close" in v or (version == "HTTP/1.0" and "keep-alive" not in v)
        if not self._chunked_state:
            self._discard = length
        self._busy = True
        responder = self._responder = Responder(self, method == "HEAD", close)
        task = asyncio.get_running_loop().create_task(self._serve(RelayRequest(method, target, ticket), responder))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _serve(self, request: RelayRequest, responder: Responder) -> None:
        try:
            await self._handler(request, responder)
        except Exception:
            log.exception("relay handler failed")
            if responder.committed:
                responder.abort()
                return
            await responder.whole(500, [("content-type", "application/json")], INTERNAL_ERROR)
        if not responder.committed:  # the handler returned without answering: a relay bug, answered as one
            await responder.whole(500, [("content-type", "application/json")], INTERNAL_ERROR)
        elif not responder.finished:
            await responder.end()
        self._responder = None
        self._busy = False
        if responder._close or responder.client_gone:
            self._flush()
            if self._transport is not None:
                self._transport.close()
        elif self._buf:
            self._consume()

    def _refuse(self, status: int, why: bytes) -> None:
        """A request the relay cannot frame: answer and close (mitmproxy never sends one)."""
        self._buf.clear()
        self._busy = True
        if self._transport is not None and not self._transport.is_closing():
            self._transport.write(b"HTTP/1.1 %d %s\r\ncontent-length: %d\r\nconnection: close\r\n\r\n%s" % (
                status, _REASONS.get(status, "Error").encode(), len(why), why))
            self._transport.close()


class RelayServer:
    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task] = set()
        self.ready = asyncio.Event()
        # Bound synchronously so the port is known before the first request arrives.
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(4096)  # a burst of thousands of streams connects here at once
        self.port: int = self._sock.getsockname()[1]

    async def start(self) -> None:
        self._server = await asyncio.get_running_loop().create_server(
            lambda: _Connection(self.handler, self._tasks), sock=self._sock, backlog=4096)
        self.ready.set()

    async def stop(self) -> None:
        if self._server:
            self._server.close()
        if self._tasks:
            with contextlib.suppress(Exception):
                await asyncio.wait(list(self._tasks), timeout=1.0)
        for task in list(self._tasks):
            task.cancel()
        if self._server:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2)
