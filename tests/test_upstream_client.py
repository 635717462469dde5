"""The hot-path outbound client over real loopback HTTP: it forwards exactly what it is given.

Most cases talk to the project's simulated upstream. Two need bytes the simulator never sends
(a gzip body the client did not ask for, repeated header lines), so a few-line asyncio server
answers those with fixed raw bytes.
"""

from __future__ import annotations

import asyncio
import gzip
import json
from collections.abc import AsyncIterator

import pytest
from accountpool.admin.local_ports import free_port
from accountpool.simulator.server import SimulatedUpstream
from accountpool.upstream.upstream_client import UpstreamClient, UpstreamError

KEY = "sk-proj-upstream-client-test-0000wxyz"


@pytest.fixture
def sim(sim: SimulatedUpstream) -> SimulatedUpstream:
    """conftest's simulated upstream, knowing KEY."""
    sim.add_api_key(KEY)
    return sim


@pytest.fixture
async def client() -> AsyncIterator[UpstreamClient]:
    c = UpstreamClient()
    yield c
    await c.close()


def auth(*extra: tuple[str, str]) -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {KEY}"), *extra]


async def send(client: UpstreamClient, method: str, url: str, headers: list[tuple[str, str]], body: bytes = b"",
               *, read_timeout_s: float = 10.0):
    return await client.send(method, url, headers=headers, body=body, connect_timeout_s=2.0,
                             read_timeout_s=read_timeout_s)


async def test_forwards_path_query_and_headers_as_given_and_adds_none(sim, client):
    body = json.dumps({"model": "gpt-5.5", "input": "hi"}).encode()
    r = await send(client, "POST", sim.url + "/v1/responses?note=a%2Fb%20c", auth(("x-custom", "1")), body)
    answer = json.loads(await r.read(1 << 20))
    r.close()
    assert r.status == 200 and answer["status"] == "completed"
    seen = sim.requests()[-1]
    assert (seen["path"], seen["query"]) == ("/v1/responses", "note=a%2Fb%20c")  # not re-quoted
    assert seen["body"] == {"model": "gpt-5.5", "input": "hi"}
    assert seen["headers"]["x-custom"] == "1" and seen["auth"] == f"Bearer {KEY}"
    # No header the caller did not send, beyond the framing ones HTTP/1.1 requires.
    assert set(seen["headers"]) - {"x-custom", "authorization"} <= {"host", "content-length", "accept-encoding"}


async def test_a_streamed_answer_arrives_in_chunks_and_the_connection_is_reused(sim, client):
    body = json.dumps({"model": "gpt-5.5", "input": "hi", "stream": True}).encode()
    for _ in range(3):
        r = await send(client, "POST", sim.url + "/v1/responses", auth(("content-type", "application/json")), body)
        assert r.headers["content-type"].startswith("text/event-stream")
        chunks = [c async for c in r.chunks()]
        r.close()
        assert b"".join(chunks).rstrip().endswith(b"}") and b"response.completed" in b"".join(chunks)
    session = client._open()
    assert len(session.connector._conns) == 1  # one keep-alive connection served all three


async def test_refused_connection_reset_and_read_timeout_are_upstream_errors(sim, client):
    with pytest.raises(UpstreamError, match=r"ConnectError \(.*refused.*\)"):
        await send(client, "GET", f"http://127.0.0.1:{free_port()}/v1/models", auth())
    sim.script(KEY, [{"kind": "reset"}])
    with pytest.raises(UpstreamError):
        await send(client, "POST", sim.url + "/v1/responses", auth(), b'{"model": "gpt-5.5", "input": "x"}')
    sim.script(KEY, [{"kind": "slow_first_byte", "delay_s": 1.5}])
    with pytest.raises(UpstreamError, match="TimeoutError"):
        await send(client, "POST", sim.url + "/v1/responses", auth(), b'{"model": "gpt-5.5", "input": "x"}',
                   read_timeout_s=0.3)


async def test_a_body_cut_mid_stream_raises_after_what_arrived(sim, client):
    sim.script(KEY, [{"kind": "cut", "after_events": 3}])
    r = await send(client, "POST", sim.url + "/v1/responses", auth(),
                   b'{"model": "gpt-5.5", "input": "x", "stream": true}')
    got = bytearray()
    with pytest.raises(UpstreamError):
        async for chunk in r.chunks():
            got += chunk
    r.close()
    assert r.status == 200 and got.count(b"event: ") == 3


async def test_the_bounded_read_stops_at_its_limit(sim, client):
    r = await send(client, "GET", sim.url + "/v1/models", auth())
    assert len(await r.read(10)) == 10
    r.close()
    again = await send(client, "GET", sim.url + "/v1/models", auth())  # the pool is still sound
    assert again.status == 200 and json.loads(await again.read(1 << 20))["object"] == "list"
    again.close()


async def raw_server(reply: bytes) -> tuple[asyncio.Server, str]:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(reply)
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"


async def test_repeated_header_lines_are_kept_and_gzip_is_decoded(client):
    payload = gzip.compress(b'{"ok": true}')
    server, url = await raw_server(
        b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-encoding: gzip\r\n"
        b"link: <a>; rel=next\r\nlink: <b>; rel=last\r\n"
        b"content-length: " + str(len(payload)).encode() + b"\r\nconnection: close\r\n\r\n" + payload)
    async with server:
        r = await send(client, "GET", url + "/v1/files", auth())
        body = await r.read(1 << 20)
        r.close()
    assert [v for k, v in r.header_items() if k.lower() == "link"] == ["<a>; rel=next", "<b>; rel=last"]
    assert body == b'{"ok": true}'  # the proxy drops content-encoding, so the body it forwards must be plain
