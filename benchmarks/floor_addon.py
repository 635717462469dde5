"""The floor of the addon's design: its two ways out of mitmproxy, and nothing else (issue 14).

    mitmdump --mode reverse:<upstream> -s benchmarks/floor_addon.py --set floor_key=<an upstream key>

Run by `compare.py --floor` beside bare mitmdump and the addon, to split what the addon costs over
bare mitmdump into what the design needs and what the product does. It keeps exactly what
docs/DESIGN.md says a pool on mitmproxy's addon API cannot do without, with the addon's own parts:

- the upstream credential only on an outbound connection of our own, never in the flow (the
  addon's `UpstreamClient`, aiohttp);
- a request whose client waits for one whole answer is answered from the `request` hook
  (`flow.response`, no server connection for mitmproxy);
- anything that streams crosses the loopback hop to the addon's relay server (`RelayServer`),
  carrying the request head and a ticket, so mitmproxy streams the answer like any server's;
- the body parsed once, to know which of the two it is.

Left out, because it is the product rather than the design: the client-key check, account
selection, failover, usage headers and token counts, the in-band error watch, the metrics rows,
and giving mitmweb the request as the client sent it. Not a way to run a pool: one fixed key,
no error handling.
"""

from __future__ import annotations

import json
import secrets

from accountpool.proxy.relay_server import TICKET_HEADER, RelayRequest, RelayServer, Responder
from accountpool.upstream.upstream_client import UpstreamClient
from mitmproxy import http

_HOP_BY_HOP = frozenset({"connection", "keep-alive", "transfer-encoding", "content-length", "host", "authorization"})


class Floor:
    def __init__(self) -> None:
        self.client: UpstreamClient | None = None
        self.relay: RelayServer | None = None
        self.key = ""
        self._tickets: dict[str, tuple[str, str, list[tuple[str, str]], bytes]] = {}

    def load(self, loader) -> None:
        loader.add_option("floor_key", str, "", "The upstream credential every request is sent with.")

    def configure(self, updated: set[str]) -> None:
        from mitmproxy import ctx

        self.key = ctx.options.floor_key

    async def running(self) -> None:
        self.client = UpstreamClient()
        self.relay = RelayServer(self._serve)
        await self.relay.start()

    async def request(self, flow: http.HTTPFlow) -> None:
        assert self.client is not None and self.relay is not None
        body = flow.request.raw_content or b""
        doc = json.loads(body) if body else None
        url = flow.request.url
        headers = [(k, v) for k, v in flow.request.headers.items(multi=True) if k.lower() not in _HOP_BY_HOP]
        headers.append(("authorization", f"Bearer {self.key}"))
        if isinstance(doc, dict) and not doc.get("stream"):
            answer = await self.client.send(flow.request.method, url, headers=headers, body=body,
                                            connect_timeout_s=10, read_timeout_s=60)
            try:
                data = await answer.read(64 * 1024 * 1024)
                flow.response = http.Response.make(answer.status, data, [
                    (k.encode(), v.encode()) for k, v in answer.header_items() if k.lower() not in _HOP_BY_HOP])
            finally:
                answer.close()
            return
        ticket = secrets.token_urlsafe(18)
        self._tickets[ticket] = (flow.request.method, url, headers, body)
        flow.request.data.scheme, flow.request.data.host, flow.request.data.port = b"http", "127.0.0.1", self.relay.port
        flow.request.headers[TICKET_HEADER] = ticket
        flow.request.content = b""

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        if flow.response is not None and TICKET_HEADER in flow.request.headers:
            flow.response.stream = True

    async def _serve(self, request: RelayRequest, responder: Responder) -> None:
        assert self.client is not None
        method, url, headers, body = self._tickets.pop(request.ticket or "")
        answer = await self.client.send(method, url, headers=headers, body=body, connect_timeout_s=10,
                                        read_timeout_s=60)
        try:
            await responder.start(answer.status, answer.header_items())
            async for chunk in answer.chunks():
                await responder.send(chunk)
            await responder.end()
        finally:
            answer.close()


addons = [Floor()]
