"""The outbound HTTP client of the relay's hot path: one upstream attempt per call (issue 6).

aiohttp, not httpx, because this is the one place per-request cost adds up: measured against
the simulator on this 2-core machine (benchmarks/README.md), httpx spends 0.58 ms CPU per
request at 8 concurrent requests and 1.37 ms at 64 (httpcore's pool bookkeeping grows with
the number of connections), aiohttp 0.10 and 0.13 ms (C parser, O(1) pool). httpx stays for
the control plane (token refresh, usage sweep, demo), where a request a minute costs nothing.

The router sees only this module's small surface, so the library stays swappable:
`UpstreamClient.send` → `UpstreamResponse` (status, headers, body chunks) or `UpstreamError`.
A proxy must not alter what it forwards: the URL is sent exactly as given (no re-quoting) and
no header the client did not send is added (no default User-Agent, Accept or Content-Type).
"""

from __future__ import annotations

import errno
import os
from collections.abc import AsyncIterator, Mapping

import aiohttp
from yarl import URL

READ_CHUNK = 64 * 1024
URL_CACHE_MAX = 1024
_NO_AUTO_HEADERS = frozenset({"User-Agent", "Accept", "Content-Type"})


class UpstreamError(Exception):
    """The connection failed, timed out or was cut; `str()` names the cause, never a header or URL query."""


LOCAL_LIMIT_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})


class LocalLimitError(UpstreamError):
    """This process could not open a connection for lack of its own resources (file descriptors, memory).

    No account's fault, and every other account would fail the same way: a fleet holding thousands of
    streams reaches `ulimit -n` (four descriptors per stream), and treating that as an upstream error
    cooled every account down in turn and answered the next requests 503 (benchmarks/README.md)."""


class UpstreamResponse:
    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self._response = response
        self.status: int = response.status
        self.headers: Mapping[str, str] = response.headers  # case-insensitive, repeated names kept

    def header_items(self) -> list[tuple[str, str]]:
        """Every header line in order, repeated names included (`Set-Cookie`, `Link`)."""
        return list(self._response.headers.items())

    async def chunks(self) -> AsyncIterator[bytes]:
        """The body as it arrives, de-chunked and decompressed; raises UpstreamError when cut."""
        content = self._response.content
        try:
            while True:
                chunk = await content.readany()
                if not chunk:
                    return
                yield chunk
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise UpstreamError(_describe(exc)) from None

    def stop_read_timer(self) -> None:
        """From here on aiohttp does not re-arm its read timeout for every chunk (a cancelled and a new timer
        per token: about a tenth of a streamed token's CPU); the router watches streams for silence instead."""
        protocol = getattr(self._response.connection, "protocol", None)
        if protocol is not None and hasattr(protocol, "read_timeout"):
            protocol.read_timeout = None

    def cut(self) -> None:
        """End the body with a timeout: the reader's next `chunks()` step raises UpstreamError("TimeoutError")."""
        self._response.content.set_exception(TimeoutError("upstream silent too long"))

    async def read(self, limit: int) -> bytes:
        """At most `limit` bytes of the body; a cut body is returned as far as it came."""
        body = bytearray()
        try:
            async for chunk in self.chunks():
                body += chunk
                if len(body) >= limit:
                    break
        except UpstreamError:
            pass
        return bytes(body[:limit])

    def close(self) -> None:
        """Back to the pool when the body was read to its end; otherwise the connection is dropped."""
        if self._response.content.at_eof():
            self._response.release()
        else:
            self._response.close()


class UpstreamClient:
    def __init__(self, *, max_connections: int = 0) -> None:
        """`max_connections`: 0 (default) for no cap. Every open stream holds its own upstream connection, and a
        cap would make the stream after it wait, silently, for another to end (a fleet of agents holds thousands
        of streams open; the process's file-descriptor limit is the real bound)."""
        self._max_connections = max_connections
        self._session: aiohttp.ClientSession | None = None
        self._timeouts: dict[tuple[float, float], aiohttp.ClientTimeout] = {}
        self._urls: dict[str, URL] = {}

    def _open(self) -> aiohttp.ClientSession:
        # Created on first use so the session binds to the running loop (mitmproxy's), not an import-time one.
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self._max_connections, limit_per_host=0),
                # No cookie jar: one session serves every client, and a cookie one upstream answer set must not
                # ride along on another client's request (the Set-Cookie header itself never reaches clients).
                cookie_jar=aiohttp.DummyCookieJar(),
                auto_decompress=True, trust_env=False, skip_auto_headers=_NO_AUTO_HEADERS)
        return self._session

    async def send(self, method: str, url: str, *, headers: list[tuple[str, str]], body: bytes,
                   connect_timeout_s: float, read_timeout_s: float) -> UpstreamResponse:
        """Send one request and wait for the response headers; the caller must `close()` the answer."""
        timeout = self._timeouts.get((connect_timeout_s, read_timeout_s))
        if timeout is None:
            timeout = self._timeouts[(connect_timeout_s, read_timeout_s)] = aiohttp.ClientTimeout(
                total=None, sock_connect=connect_timeout_s, sock_read=read_timeout_s)
        target = self._urls.get(url)
        if target is None:
            # Parsed once per distinct URL (a handful: one per endpoint and account base); bounded anyway.
            if len(self._urls) >= URL_CACHE_MAX:
                self._urls.clear()
            target = self._urls[url] = URL(url, encoded=True)
        try:
            response = await self._open().request(
                method, target, headers=headers, data=body if body or method != "GET" else None,
                allow_redirects=False, timeout=timeout, read_bufsize=READ_CHUNK)
        except aiohttp.ClientConnectorError as exc:
            if exc.os_error.errno in LOCAL_LIMIT_ERRNOS:
                raise LocalLimitError(os.strerror(exc.os_error.errno)) from None
            raise UpstreamError(_describe(exc)) from None
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise UpstreamError(_describe(exc)) from None
        return UpstreamResponse(response)

    async def close(self) -> None:
        if self._session is not None:
            session, self._session = self._session, None
            await session.close()


def _describe(exc: BaseException) -> str:
    """A short cause for failure briefs: the exception type, plus the OS error when there is one."""
    if isinstance(exc, TimeoutError):
        return "TimeoutError"
    if isinstance(exc, aiohttp.ClientConnectorError):
        errno = exc.os_error.errno
        return f"ConnectError ({os.strerror(errno) if errno else type(exc.os_error).__name__})"
    return type(exc).__name__
