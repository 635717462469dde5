"""The client request the addon admitted, as the router and the answer shapers read it.

Its own module because both sides need it and neither should import the other for it: the addon builds
one per pooled request, the relay keeps it behind a ticket, the router runs the attempts and
`response_shapers` plans each attempt's body from it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass
class Admitted:
    """A client request the addon has authenticated and parsed; the relay picks it up by ticket."""

    request_id: str
    started_at: float
    t0: float
    method: str
    path: str
    endpoint: str
    client_label: str | None
    headers: list[tuple[str, str]]
    body: bytes
    json_body: dict[str, Any] | None
    model: str | None
    stream: bool
    session_key: str | None
    pinned_account: str | None
