"""The relay: tickets from the addon in, routed answers out (docs/DESIGN.md).

Streamed requests go through the relay's loopback hop, so mitmproxy streams the answer on to
the client chunk by chunk. A request whose client waits for one whole JSON answer anyway
(`stream` not set) needs no hop: the addon runs the router inside its `request` hook with a
`BufferedResponder` and sets `flow.response` itself (`answers_whole`). That skips mitmproxy's
server-side half and the relay's framing for those requests (figures in benchmarks/README.md).

A ticket is a single-use random token the addon puts on the flow it points here; it carries
the admitted request (client identity, parsed body) across the loopback hop without putting
anything secret into the flow. Anything arriving without a live ticket is refused, so the
relay's port is useless to other local processes.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Callable

from accountpool.models import FailureClass
from accountpool.proxy.relay_server import TICKET_HEADER, RelayRequest, RelayServer, Responder
from accountpool.routing import errors
from accountpool.routing.admitted import Admitted
from accountpool.routing.router import WHOLE_READ_LIMIT, Router

__all__ = ["TICKET_HEADER", "BufferedResponder", "Relay", "answers_whole"]
TICKET_TTL_S = 120.0
TICKETS_PRUNE_FLOOR = 1000


def answers_whole(admitted: Admitted) -> bool:
    """A JSON request with `stream` unset: its client waits for the complete answer, so no hop is needed."""
    return admitted.json_body is not None and not admitted.stream


class BufferedResponder:
    """The router's responder for an answer the addon delivers itself, whole (see the module docstring)."""

    streams = False

    def __init__(self, limit: int = WHOLE_READ_LIMIT, *,
                 client_left: Callable[[], bool] | None = None) -> None:
        """`limit`: a whole answer larger than this is refused (502) rather than held; stream it instead.
        `client_left`: whether the client has closed its connection (the addon asks mitmproxy)."""
        self.limit = limit
        self._client_left = client_left
        self.status = 0
        self.headers: list[tuple[str, str]] = []
        self.body = bytearray()
        self.committed = self.finished = self.client_gone = False
        self.gone_reason = "client disconnected"
        self.cut = False
        """The upstream cut the answer after commit and no shaper could end it cleanly."""

    def disconnected(self) -> bool:
        return self._client_left is not None and self._client_left()

    async def start(self, status: int, headers: list[tuple[str, str]]) -> None:
        self.committed = True
        self.status, self.headers = status, headers

    async def send(self, data: bytes) -> None:
        self.body += data
        if len(self.body) > self.limit:
            self.client_gone = True  # the router stops reading the upstream
            self.gone_reason = f"answer larger than {self.limit} bytes; request it with stream=true"

    async def end(self) -> None:
        self.finished = True

    async def whole(self, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
        await self.start(status, headers)
        self.body += body
        self.finished = True

    def abort(self) -> None:
        self.finished = self.cut = True

    def result(self) -> tuple[int, list[tuple[str, str]], bytes]:
        """What the client gets: the whole answer, or an OpenAI-shaped error saying why there is none."""
        if self.committed and not self.cut and not self.client_gone:
            return self.status, self.headers, bytes(self.body)
        if self.client_gone:
            status, reason = 502, self.gone_reason
        elif self.committed:
            status, reason = 502, "the upstream answer was cut off"
        else:
            status, reason = 500, "internal routing error; the request was not answered"
        error = errors.openai_error(status, f"accountpool: {reason}", type="server_error",
                                    code="accountpool_incomplete_answer", outcome=FailureClass.STREAM_INTERRUPTED)
        return error.status, list(error.headers), error.body


class Relay:
    def __init__(self, router: Router) -> None:
        self.router = router
        self._server = RelayServer(self.handle)
        self._tickets: dict[str, tuple[float, Admitted]] = {}
        self._prune_above = TICKETS_PRUNE_FLOOR
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
        if len(self._tickets) > self._prune_above:
            # Tickets of clients that left before the relay read them expire here. The bound doubles with what
            # is still live: a burst of thousands of streams admitted faster than the relay picks them up must not
            # rescan every live ticket on every admission (quadratic in the burst).
            self._tickets = {t: v for t, v in self._tickets.items() if v[0] > now}
            self._prune_above = max(TICKETS_PRUNE_FLOOR, 2 * len(self._tickets))
        ticket = secrets.token_urlsafe(18)
        self._tickets[ticket] = (now + TICKET_TTL_S, admitted)
        return ticket

    async def handle(self, request: RelayRequest, responder: Responder) -> None:
        entry = self._tickets.pop(request.ticket, None) if request.ticket else None
        if entry is None or entry[0] < time.monotonic():
            body = json.dumps({"error": {"message": "accountpool: unknown or expired relay ticket",
                                         "type": "invalid_request_error", "code": "invalid_ticket",
                                         "param": None}}).encode()
            await responder.whole(403, [("content-type", "application/json")], body)
            return
        await self.router.serve(entry[1], responder)
