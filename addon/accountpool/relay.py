"""The relay: tickets from the addon in, routed answers out (docs/DESIGN.md).

A ticket is a single-use random token the addon puts on the flow it points here; it carries
the admitted request (client identity, parsed body) across the loopback hop without putting
anything secret into the flow. Anything arriving without a live ticket is refused, so the
relay's port is useless to other local processes.
"""

from __future__ import annotations

import json
import secrets
import time

from .relay_server import RelayRequest, RelayServer, Responder
from .router import Admitted, Router

TICKET_HEADER = "x-accountpool-ticket"
TICKET_TTL_S = 120.0


class Relay:
    def __init__(self, router: Router, *, max_body: int) -> None:
        self.router = router
        self._server = RelayServer(self.handle, max_body=max_body + 1024)
        self._tickets: dict[str, tuple[float, Admitted]] = {}
        self.ready = self._server.ready

    @property
    def port(self) -> int:
        return self._server.port

    async def start(self) -> None:
        await self._server.start()

    async def stop(self) -> None:
        await self._server.stop()

    def admit(self, admitted: Admitted) -> str:
        now = time.monotonic()
        if len(self._tickets) > 1000:
            self._tickets = {t: v for t, v in self._tickets.items() if v[0] > now}
        ticket = secrets.token_urlsafe(18)
        self._tickets[ticket] = (now + TICKET_TTL_S, admitted)
        return ticket

    async def handle(self, request: RelayRequest, responder: Responder) -> None:
        ticket = next((v for k, v in request.headers if k.lower() == TICKET_HEADER), None)
        entry = self._tickets.pop(ticket, None) if ticket else None
        if entry is None or entry[0] < time.monotonic():
            body = json.dumps({"error": {"message": "accountpool: unknown or expired relay ticket",
                                         "type": "invalid_request_error", "code": "invalid_ticket",
                                         "param": None}}).encode()
            await responder.whole(403, [("content-type", "application/json")], body)
            return
        await self.router.serve(entry[1], responder)
