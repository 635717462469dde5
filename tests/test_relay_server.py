"""The relay's loopback HTTP/1.1 server on its own: framing of what mitmproxy sends and gets back."""

from __future__ import annotations

import asyncio

from accountpool.proxy.relay_server import RelayRequest, RelayServer, Responder


async def _serve(handler):  # type: ignore[no-untyped-def]
    server = RelayServer(handler)
    await server.start()
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    return server, reader, writer


async def _read_answer(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    if b"transfer-encoding: chunked" in head.lower():
        body = bytearray()
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            data = await reader.readexactly(size + 2)
            if size == 0:
                return head, bytes(body)
            body += data[:-2]
    lines = head.lower().split(b"\r\n")
    length = next((int(line.split(b":")[1]) for line in lines if line.startswith(b"content-length:")), 0)
    return head, await reader.readexactly(length)


def test_streams_chunked_and_keeps_the_connection_for_the_next_request():
    seen: list[RelayRequest] = []

    async def handler(request: RelayRequest, responder: Responder) -> None:
        seen.append(request)
        await responder.start(200, [("content-type", "text/event-stream"), ("content-length", "999")])
        await responder.send(b"data: a\n\n")
        await responder.send(b"data: b\n\n")
        await responder.end()

    async def main() -> None:
        server, reader, writer = await _serve(handler)
        body = b'{"stream":true}'
        # A chunked request body first (the relay discards it), then a content-length one on the same connection.
        writer.write(b"POST /v1/responses HTTP/1.1\r\nhost: x\r\nx-accountpool-ticket: t1\r\n"
                     b"transfer-encoding: chunked\r\n\r\n%x\r\n%s\r\n0\r\n\r\n" % (len(body), body))
        head, got = await _read_answer(reader)
        assert head.startswith(b"HTTP/1.1 200 OK\r\n")
        assert b"content-length" not in head.lower()  # the relay frames the body itself
        assert got == b"data: a\n\ndata: b\n\n"
        writer.write(b"POST /v1/responses HTTP/1.1\r\nhost: x\r\nX-Accountpool-Ticket: t2\r\n"
                     b"content-length: %d\r\n\r\n%s" % (len(body), body))
        _, got = await _read_answer(reader)
        assert got == b"data: a\n\ndata: b\n\n"
        assert [(r.method, r.target, r.ticket) for r in seen] == [("POST", "/v1/responses", "t1"),
                                                                 ("POST", "/v1/responses", "t2")]
        writer.close()
        await server.stop()

    asyncio.run(main())


def test_bodyless_answers_and_a_handler_that_fails():
    async def handler(request: RelayRequest, responder: Responder) -> None:
        if request.target == "/boom":
            raise RuntimeError("bug")
        if request.target == "/none":
            return  # answers nothing: the relay answers 500 itself
        await responder.start(204 if request.target == "/204" else 200, [("x-a", "1")])
        await responder.send(b"ignored for HEAD and 204")
        await responder.end()

    async def main() -> None:
        server, reader, writer = await _serve(handler)
        writer.write(b"HEAD /v1/models HTTP/1.1\r\nhost: x\r\n\r\n")
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert head.startswith(b"HTTP/1.1 200 OK\r\n") and b"transfer-encoding" not in head
        writer.write(b"GET /204 HTTP/1.1\r\nhost: x\r\n\r\n")
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert head.startswith(b"HTTP/1.1 204 No Content\r\n") and b"transfer-encoding" not in head
        for target in (b"/boom", b"/none"):
            writer.write(b"GET %s HTTP/1.1\r\nhost: x\r\n\r\n" % target)
            head, body = await _read_answer(reader)
            assert head.startswith(b"HTTP/1.1 500 ") and b"accountpool_internal_error" in body
        writer.write(b"GET /x HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        head, _ = await _read_answer(reader)
        assert b"connection: close" in head
        assert await asyncio.wait_for(reader.read(), 5) == b""  # closed after the answer
        writer.close()
        await server.stop()

    asyncio.run(main())
