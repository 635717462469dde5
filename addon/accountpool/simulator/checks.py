"""What the simulated services accept: the request as the server read it, and the checks that reject the rest.

Its own module because these rules are the simulator's contract with the code under test: the Codex backend's
field whitelist, its `store`/`stream` demands, the Responses and Chat required fields. When translation sends
something the real services refuse, it is refused here first, and the rule that caught it is easy to find.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl

from accountpool.simulator.replies import Reply, error_reply, json_reply

CODEX_ALLOWED_FIELDS = frozenset({
    "model", "instructions", "input", "tools", "tool_choice", "parallel_tool_calls", "reasoning",
    "store", "stream", "include", "prompt_cache_key", "text", "service_tier", "client_metadata",
})  # fmt: skip
"""Top-level fields the Codex backend accepts; anything else is a 400 there, as upstream."""


@dataclass
class Request:
    method: str
    path: str
    query: str
    headers: dict[str, str]
    raw: bytes
    body: Any = None

    @property
    def bearer(self) -> str | None:
        value = self.headers.get("authorization", "")
        return value[7:].strip() if value[:7].lower() == "bearer " else None



def detail_reply(status: int, detail: str) -> Reply:
    """The Codex backend's FastAPI-style validation error."""
    return json_reply(status, {"detail": detail})



def form_fields(req: Request) -> dict[str, Any]:
    """OAuth bodies come as JSON (Codex CLI) or form-encoded (most other clients)."""
    if isinstance(req.body, dict):
        return req.body
    return dict(parse_qsl(req.raw.decode("utf-8", "replace")))


def validate(endpoint: str, req: Request) -> Reply | None:
    """Reject what the real services reject, so translation bugs surface here rather than in production."""
    if req.method != "POST":
        return None
    body = req.body
    if not isinstance(body, dict):
        return error_reply(400, "We could not parse the JSON body of your request.", "invalid_request_error", None)
    if endpoint == "codex_responses":
        unknown = sorted(set(body) - CODEX_ALLOWED_FIELDS)
        if unknown:
            return detail_reply(400, f"Unsupported parameter: {unknown[0]}")
        if body.get("store") is True:
            return detail_reply(400, "Store must be set to false")
        if body.get("stream") is not True:
            return detail_reply(400, "Stream must be set to true")
    if not isinstance(body.get("model"), str):
        return error_reply(400, "Missing required parameter: 'model'.", "invalid_request_error",
                      "missing_required_parameter")  # fmt: skip
    if endpoint == "chat" and not isinstance(body.get("messages"), list):
        return error_reply(400, "Missing required parameter: 'messages'.", "invalid_request_error",
                      "missing_required_parameter")  # fmt: skip
    return None
