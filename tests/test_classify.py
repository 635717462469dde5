import json

import pytest
from accountpool.models import AccountKind, FailureClass, PoolSettings
from accountpool.upstream.classify import (
    MAX_COOLDOWN_S,
    classify_attempt,
    classify_inband_event,
    cooldown_until,
    error_brief,
    scrub_secrets,
)

C = FailureClass
CHATGPT = AccountKind.CHATGPT
API_KEY = AccountKind.API_KEY
NOW = 1_700_000_000.0
S = PoolSettings()


def err(code=None, message="", type_=None, **extra) -> bytes:
    return json.dumps({"error": {"code": code, "message": message, "type": type_, **extra}}).encode()


# ------------------------------------------------------------------ classify_attempt


@pytest.mark.parametrize("status", [200, 201, 204, 301, 304])
def test_ok(status):
    assert classify_attempt(status, b"whatever: rate limit", kind=CHATGPT) == C.OK


def test_connection_error_is_upstream_error():
    assert classify_attempt(None, None, kind=CHATGPT, connection_error=True) == C.UPSTREAM_ERROR
    assert classify_attempt(None, None, kind=API_KEY) == C.UPSTREAM_ERROR


def test_401_by_kind_and_refresh():
    assert classify_attempt(401, b"", kind=CHATGPT) == C.AUTH_EXPIRED
    assert classify_attempt(401, b"", kind=CHATGPT, after_refresh=True) == C.AUTH_FAILED
    assert classify_attempt(401, err("invalid_api_key", "Incorrect API key"), kind=API_KEY) == C.AUTH_FAILED


@pytest.mark.parametrize(
    "body",
    [
        err("token_expired", "Provided authentication token is expired. Please try signing in again."),
        err(None, "Invalid token"),
        b"jwt expired",
        json.dumps({"detail": "Login required"}).encode(),
        "Your token has expired",
    ],
)
def test_auth_wording_on_other_status(body):
    assert classify_attempt(400, body, kind=CHATGPT) == C.AUTH_EXPIRED
    assert classify_attempt(403, body, kind=API_KEY) == C.AUTH_FAILED


@pytest.mark.parametrize(
    ("status", "body"),
    [
        (402, b""),
        (429, err("insufficient_quota", "You exceeded your current quota, please check your plan")),
        (429, err(None, "The usage limit has been reached", "usage_limit_reached")),
        (400, b"You exceeded your current quota."),
    ],
)
def test_quota_beats_rate_limit(status, body):
    assert classify_attempt(status, body, kind=API_KEY) == C.QUOTA_EXCEEDED


@pytest.mark.parametrize(
    ("status", "body"),
    [
        (429, b""),
        (429, err("rate_limit_exceeded", "Rate limit reached for gpt-4o")),
        (400, err("rate_limit_exceeded", "Rate limit reached")),
        (503, b"Too Many Requests"),
    ],
)
def test_rate_limited(status, body):
    assert classify_attempt(status, body, kind=CHATGPT) == C.RATE_LIMITED


@pytest.mark.parametrize(
    ("status", "body"),
    [
        (404, err("model_not_found", "The model `gpt-9` does not exist or you do not have access to it.")),
        (403, b"Project does not have access to model gpt-5"),
        (400, err(None, "The model `o3` does not exist or you do not have access to it.")),
    ],
)
def test_model_restricted(status, body):
    assert classify_attempt(status, body, kind=API_KEY) == C.MODEL_RESTRICTED


def test_403_is_permission_denied():
    assert classify_attempt(403, b"<html>Forbidden</html>", kind=CHATGPT) == C.PERMISSION_DENIED


@pytest.mark.parametrize("status", [500, 502, 503, 504, 408])
def test_upstream_errors(status):
    assert classify_attempt(status, b"oops", kind=CHATGPT) == C.UPSTREAM_ERROR


@pytest.mark.parametrize("status", [400, 404, 409, 413, 422, 501, 505])
def test_other_4xx_invalid_request(status):
    """…and the two 5xx that judge the request, not the account (a HEAD answered 501 by every upstream)."""
    assert classify_attempt(status, err("invalid_value", "bad"), kind=API_KEY) == C.INVALID_REQUEST


def test_json_fields_only_not_echoed_content():
    # The request echo mentions "rate limit", but the error itself does not.
    body = json.dumps({"error": {"message": "Invalid value for 'input'", "param": "rate limit please"}})
    assert classify_attempt(400, body, kind=API_KEY) == C.INVALID_REQUEST


def test_body_scan_is_bounded():
    body = b"x" * (70 * 1024) + b"rate limit"
    assert classify_attempt(400, body, kind=API_KEY) == C.INVALID_REQUEST
    assert classify_attempt(400, b"rate limit" + b"x" * (70 * 1024), kind=API_KEY) == C.RATE_LIMITED


def test_str_body_and_truncated_json_fall_back_to_text():
    assert classify_attempt(400, '{"error": {"code": "insufficient_quota"', kind=API_KEY) == C.QUOTA_EXCEEDED


# ------------------------------------------------------------------ in-band


def test_inband_response_failed():
    data = {
        "type": "response.failed",
        "response": {"error": {"code": "rate_limit_exceeded", "message": "slow"}},
    }
    assert classify_inband_event("response.failed", data) == C.RATE_LIMITED
    data["response"]["error"] = {"code": "usage_limit_reached", "message": "done"}
    assert classify_inband_event("response.failed", data) == C.QUOTA_EXCEEDED
    data["response"]["error"] = {"code": "server_error", "message": "boom"}
    assert classify_inband_event("response.failed", data) == C.UPSTREAM_ERROR
    assert classify_inband_event("response.failed", {"response": {}}) == C.UPSTREAM_ERROR


def test_inband_error_event_shapes():
    assert classify_inband_event(
        "error", {"type": "error", "code": "insufficient_quota", "message": "x"}
    ) == (C.QUOTA_EXCEEDED)
    assert classify_inband_event("error", {"error": {"type": "usage_limit_reached"}}) == C.QUOTA_EXCEEDED
    assert classify_inband_event("error", {"code": "model_not_found"}) == C.MODEL_RESTRICTED
    assert classify_inband_event("error", {"code": "context_length_exceeded"}) == C.INVALID_REQUEST
    assert classify_inband_event("error", {"message": "token expired"}) == C.AUTH_EXPIRED
    assert classify_inband_event("error", {"message": "token expired"}, kind=API_KEY) == C.AUTH_FAILED
    assert classify_inband_event("error", {}) == C.UPSTREAM_ERROR


def test_inband_other_events_are_none():
    assert classify_inband_event("response.completed", {}) is None
    assert classify_inband_event("response.output_text.delta", {"delta": "rate limit"}) is None


# ------------------------------------------------------------------ cooldowns


def cd(cls, headers=None, body=None, settings=S):
    return cooldown_until(cls, headers or {}, body, settings=settings, now=NOW)


def test_rate_limit_retry_after_seconds_and_date():
    assert cd(C.RATE_LIMITED, {"Retry-After": "12"}) == NOW + 12
    assert cd(C.RATE_LIMITED, {"retry-after": "Tue, 14 Nov 2023 22:15:00 GMT"}) == NOW + 100
    assert cd(C.RATE_LIMITED, {"retry-after": "0"}) == NOW


def test_rate_limit_header_precedence():
    headers = {"retry-after-ms": "1500", "x-ratelimit-reset-requests": "20s"}
    assert cd(C.RATE_LIMITED, headers) == NOW + 1.5
    assert cd(C.RATE_LIMITED, {"retry-after": "3", **headers}) == NOW + 3
    assert cd(C.RATE_LIMITED, {"x-ratelimit-reset-requests": "20s"}) == NOW + 20


def test_rate_limit_reset_prefers_exhausted_counter():
    headers = {
        "x-ratelimit-reset-requests": "6m0s",
        "x-ratelimit-reset-tokens": "250ms",
        "x-ratelimit-remaining-requests": "5",
        "x-ratelimit-remaining-tokens": "0",
    }
    assert cd(C.RATE_LIMITED, headers) == pytest.approx(NOW + 0.25)
    del headers["x-ratelimit-remaining-tokens"]
    assert cd(C.RATE_LIMITED, headers) == NOW + 360


@pytest.mark.parametrize(
    ("message", "delay"),
    [
        ("Rate limit reached. Please try again in 20s.", 20),
        ("Please try again in 1.5s", 1.5),
        ("Please try again in 250ms.", 0.25),
        ("Please try again in 6m0s.", 360),
        ("Try again in 2 minutes", 120),
        ("retry after 3 seconds", 3),
    ],
)
def test_rate_limit_body_wording(message, delay):
    assert cd(C.RATE_LIMITED, {}, err("rate_limit_exceeded", message)) == pytest.approx(NOW + delay)


def test_rate_limit_default():
    assert cd(C.RATE_LIMITED, {}, b"slow down") == NOW + S.cooldown_rate_limited_s
    custom = PoolSettings(cooldown_rate_limited_s=5)
    assert cd(C.RATE_LIMITED, {"retry-after": "soon"}, None, custom) == NOW + 5


def test_quota_body_reset():
    assert (
        cd(C.QUOTA_EXCEEDED, {}, err(None, "limit", "usage_limit_reached", resets_at=NOW + 900)) == NOW + 900
    )
    assert (
        cd(C.QUOTA_EXCEEDED, {}, err(None, "limit", "usage_limit_reached", resets_in_seconds=60)) == NOW + 60
    )


def test_quota_past_reset_ignored():
    body = err(None, "limit", "usage_limit_reached", resets_at=NOW - 10)
    assert cd(C.QUOTA_EXCEEDED, {}, body) == NOW + S.cooldown_quota_s


def test_quota_from_exhausted_window_headers():
    headers = {
        "x-codex-primary-used-percent": "100",
        "x-codex-primary-reset-after-seconds": "1200",
        "x-codex-secondary-used-percent": "40",
        "x-codex-secondary-reset-at": str(int(NOW + 99_999)),
    }
    assert cd(C.QUOTA_EXCEEDED, headers) == NOW + 1200
    headers["x-codex-secondary-used-percent"] = "100"
    assert cd(C.QUOTA_EXCEEDED, headers) == NOW + 99_999
    headers["x-codex-primary-used-percent"] = headers["x-codex-secondary-used-percent"] = "50"
    assert cd(C.QUOTA_EXCEEDED, headers) == NOW + S.cooldown_quota_s


@pytest.mark.parametrize(
    ("cls", "seconds"),
    [
        (C.AUTH_FAILED, S.cooldown_auth_s),
        (C.PERMISSION_DENIED, S.cooldown_auth_s),
        (C.AUTH_EXPIRED, S.cooldown_auth_s),
        (C.UPSTREAM_ERROR, S.cooldown_upstream_s),
        (C.MODEL_RESTRICTED, S.cooldown_model_s),
    ],
)
def test_fixed_cooldowns(cls, seconds):
    assert cd(cls, {"retry-after": "5"}) == NOW + seconds


@pytest.mark.parametrize("cls", [C.OK, C.INVALID_REQUEST])
def test_no_cooldown(cls):
    assert cd(cls, {"retry-after": "5"}) is None


def test_clamped_to_seven_days():
    assert cd(C.RATE_LIMITED, {"retry-after": "99999999"}) == NOW + MAX_COOLDOWN_S
    assert (
        cd(C.QUOTA_EXCEEDED, {}, err(None, "x", "usage_limit_reached", resets_at=NOW * 2))
        == NOW + MAX_COOLDOWN_S
    )
    assert cd(C.RATE_LIMITED, {"retry-after": "Tue, 14 Nov 2000 22:14:20 GMT"}) == NOW


# ------------------------------------------------------------------ briefs and scrubbing

JWT = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.c2lnbmF0dXJlX3ZhbHVlX2hlcmU"


@pytest.mark.parametrize(
    ("text", "secret", "tail"),
    [
        (
            "Incorrect API key provided: sk-proj-abcDEF1234567890xyzWXYZ.",
            "sk-proj-abcDEF1234567890xyz",
            "WXYZ",
        ),
        (f"token {JWT} is bad", JWT, JWT[-4:]),
        ("Authorization: Bearer abcdefghijklmnopqrstuvwx9876", "abcdefghijklmnopqrstuvwx", "9876"),
        ("hash 0123456789abcdef0123456789abcdef done", "0123456789abcdef0123456789abcdef", "cdef"),
        ("refresh rt_Ab3dEfGh1JkLmN0pQrStUvWxYz99 gone", "rt_Ab3dEfGh1JkLmN0pQrStUvWxYz99", "Yz99"),
        ("req_0123456789abcdef0123456789abcdef", "0123456789abcdef0123456789abcdef", "cdef"),
    ],
)
def test_scrub_secrets(text, secret, tail):
    scrubbed = scrub_secrets(text)
    assert secret not in scrubbed
    assert "…" + tail in scrubbed


@pytest.mark.parametrize(
    "text",
    [
        "The model `gpt-4o-realtime-preview-2024-12-17` does not exist",
        "POST /backend-api/codex/responses failed",
        "Rate limit reached for gpt-4o in organization on tokens per min",
        "Please use Bearer auth",
        "task-force",
    ],
)
def test_scrub_keeps_ordinary_text(text):
    assert scrub_secrets(text) == text


def test_error_brief_json_message():
    assert error_brief(429, err("rate_limit_exceeded", "Rate limit reached.\n  Try later.")) == (
        "Rate limit reached. Try later."
    )
    assert error_brief(400, json.dumps({"detail": "Bad thing"})) == "Bad thing"
    assert error_brief(400, json.dumps({"detail": {"message": "Nested"}})) == "Nested"
    assert (
        error_brief(401, json.dumps({"error": "invalid_grant", "error_description": "gone"}))
        == "invalid_grant"
    )
    assert (
        error_brief(400, json.dumps({"error_description": "refresh token revoked"}))
        == "refresh token revoked"
    )
    assert error_brief(429, err("usage_limit_reached")) == "usage_limit_reached"


def test_error_brief_fallbacks():
    assert error_brief(502, None) == "HTTP 502"
    assert error_brief(None, b"") == "no response"
    assert error_brief(503, b"  upstream\r\nconnect error ") == "upstream connect error"
    html = b"<html><head><style>p{}</style><title>502</title></head><body><h1>Bad Gateway</h1></body></html>"
    assert error_brief(502, html) == "502 Bad Gateway"


def test_error_brief_truncates_and_scrubs():
    key = "sk-" + "A1b2C3d4" * 10
    brief = error_brief(401, err("invalid_api_key", f"Incorrect API key provided: {key}. " + "x " * 200))
    assert key[:-4] not in brief
    assert "…" + key[-4:] in brief
    assert len(brief) <= 160
    assert brief.endswith("…")
    assert "\n" not in brief


def test_error_brief_limit_and_long_secret_at_cut():
    key = "sk-" + "Zz9" * 100
    brief = error_brief(400, f"{'w ' * 70}{key}", limit=160)
    assert "Zz9Zz9Zz9" not in brief
