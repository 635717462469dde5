"""One answer of the simulator and the OpenAI error shape, shared by the server, the answers and the faults.

A `Reply` carries, besides status, headers and body, the misbehaviour the handler adds while sending
it (delays, a reset, a cut), so a scripted fault is just a field on the answer.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Reply:
    """One answer, with the misbehaviour the handler should add while sending it."""

    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    events: list[tuple[bytes, bool]] | None = None
    """SSE frames and whether each is a delta (delayed by `delta_delay_s`); sent chunked."""
    delta_delay_s: float = 0.0
    first_byte_delay_s: float = 0.0
    reset: bool = False
    cut_after: int | None = None
    """Drop the connection after this many SSE frames (or half a JSON body), no terminator."""
    stall_after: int | None = None
    """Fall silent for `stall_s` after this many SSE frames, then go on (a hung upstream mid-stream)."""
    stall_s: float = 0.0


def json_reply(status: int, obj: Any, headers: dict[str, str] | None = None) -> Reply:
    return Reply(status, {"content-type": "application/json", **(headers or {})}, json.dumps(obj).encode())


def error_reply(status: int, message: str, type_: str | None, code: str | None, **extra: Any) -> Reply:
    """An OpenAI-shaped error, the one shape classifiers and clients parse."""
    error = {"message": message, "type": type_, "code": code, "param": None, **extra}
    return json_reply(status, {"error": error})


def sse_event(name: str | None, data: Any) -> bytes:
    payload = data if isinstance(data, str) else json.dumps(data, separators=(",", ":"))
    return (f"event: {name}\n" if name else "").encode() + b"data: " + payload.encode() + b"\n\n"
