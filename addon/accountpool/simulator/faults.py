"""The simulator's scripted faults: which kinds there are and the answer each one gives.

A test scripts a credential's faults (`SimulatedUpstream.script`); the server takes the first one that
matches a request and answers with `fault_reply`, or alters a normal answer (slow first byte, a cut,
an in-band error after the handshake events).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from accountpool.simulator.logins import Login
from accountpool.simulator.replies import Reply, error_reply, json_reply
from accountpool.simulator.usage import Usage

FAULT_KINDS = frozenset({
    "rate_limit", "quota", "expired", "forbidden", "server_error", "model_not_found", "reset",
    "slow_first_byte", "cut", "stall", "inband_error", "refresh_error", "invalid_request",
})  # fmt: skip


@dataclass
class Fault:
    spec: dict[str, Any]
    remaining: int | None


def _go_duration(seconds: float) -> str:
    """`x-ratelimit-reset-*` style: "12ms", "1s", "6m0s"."""
    if seconds < 1:
        return f"{int(seconds * 1000)}ms"
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes}m{secs}s" if minutes else f"{secs}s"


def expired_reply() -> Reply:
    message = "Provided authentication token is expired. Please try signing in again."
    return error_reply(401, message, None, "token_expired")


def fault_reply(fault: dict, login: Login | None, model: Any, usage: Usage | None) -> Reply | None:
    """The error answer of a scripted fault, or None when the fault only alters a normal answer."""
    kind, message, now = fault["kind"], fault.get("message"), time.time()
    if kind == "reset":
        return Reply(reset=True)
    if kind == "rate_limit":
        wait = fault.get("retry_after", 1)
        text = (f"Rate limit reached for {model or 'gpt-5.5'} in organization org-simulated on requests "
                "per min (RPM): Limit 3, Used 3, Requested 1. "
                f"Please try again in {_go_duration(float(wait))}.")  # fmt: skip
        reply = error_reply(int(fault.get("status", 429)), message or text, "requests", "rate_limit_exceeded")
        reply.headers |= {"retry-after": str(wait), "x-ratelimit-remaining-requests": "0",
                          "x-ratelimit-reset-requests": _go_duration(float(wait))}  # fmt: skip
        return reply
    if kind == "quota" and login:
        default_wait = (usage.primary_reset_at - now) if usage else 3600
        wait = int(fault.get("resets_in_seconds", max(1, default_wait)))
        error = {"type": "usage_limit_reached", "message": message or "The usage limit has been reached",
                 "plan_type": login.plan, "resets_at": int(now + wait),
                 "resets_in_seconds": wait}  # fmt: skip
        return json_reply(429, {"error": error}, {"x-codex-primary-used-percent": "100.0"})
    if kind == "quota":
        return error_reply(429, message or "You exceeded your current quota, please check your plan and billing "
                      "details.", "insufficient_quota", "insufficient_quota")  # fmt: skip
    if kind == "expired":
        return expired_reply()
    if kind == "forbidden":
        message = message or "You are not permitted to perform this request."
        return error_reply(403, message, "invalid_request_error", "forbidden")
    if kind == "server_error":
        message = message or "The server had an error while processing your request. Sorry about that!"
        return error_reply(int(fault.get("status", 500)), message, "server_error", None)
    if kind == "model_not_found":
        return error_reply(404, message or f"The model `{model}` does not exist or you do not have access to it.",
                      "invalid_request_error", "model_not_found")  # fmt: skip
    if kind == "invalid_request":
        return error_reply(int(fault.get("status", 400)), message or "Invalid request (simulated).",
                      "invalid_request_error", fault.get("code"))  # fmt: skip
    return None


def _inband_message(fault: dict, model: str) -> str:
    return fault.get("message") or f"Rate limit reached for {model}. Please try again in 1s."


def inband_error(fault: dict, model: str) -> dict[str, str]:
    return {"code": fault.get("code", "rate_limit_exceeded"), "message": _inband_message(fault, model)}


def inband_events(fault: dict, events: list[dict[str, Any]], model: str) -> list[dict[str, Any]]:
    """200 + the handshake events, then the failure as `response.failed` (or an `error` event)."""
    error = inband_error(fault, model)
    head = events[:2]
    if fault.get("event") == "error":
        tail = {"type": "error", **error, "param": None}
    else:
        failed = {**head[0]["response"], "status": "failed", "error": error}
        tail = {"type": "response.failed", "response": failed}
    return [*head, {**tail, "sequence_number": 2}]
