"""Read the claims of our own ChatGPT/Codex tokens.

We never verify signatures: the tokens came from the OAuth server over TLS and we only read
what they say about themselves (expiry, plan, e-mail, account id) to route and to display.
Error messages never contain the token, because they end up in logs and on the dashboard.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from typing import Any

AUTH_CLAIM = "https://api.openai.com/auth"
"""Namespaced claim in OpenAI id/access tokens that holds the ChatGPT plan and account id."""
PROFILE_CLAIM = "https://api.openai.com/profile"
"""Namespaced claim in OpenAI access tokens that holds the e-mail when the top-level one is absent."""


@dataclass(frozen=True)
class ChatGPTIdentity:
    """Who a Codex login belongs to, as its id_token claims say."""

    email: str | None
    plan: str
    account_id: str | None
    user_id: str | None
    client_id: str | None


def decode_jwt_claims(token: str) -> dict[str, Any]:
    """Return the payload of a JWT as a dict, without checking the signature.

    Raises ValueError with a message that describes the problem but never echoes the token.
    """
    if not isinstance(token, str):
        raise ValueError("token is not a JWT: expected a string")
    parts = token.strip().split(".")
    if len(parts) != 3 or not parts[1]:
        raise ValueError(f"token is not a JWT: expected 3 dot-separated parts, got {len(parts)}")
    payload = parts[1]
    try:
        raw = base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))
        claims = json.loads(raw)
    except (binascii.Error, ValueError, UnicodeDecodeError):
        raise ValueError("token is not a JWT: payload is not base64url-encoded JSON") from None
    if not isinstance(claims, dict):
        raise ValueError("token is not a JWT: payload is not a JSON object")
    return claims


def token_expiry(token: str) -> float | None:
    """The `exp` claim (Unix seconds), or None when the token has none or it is not a number."""
    exp = decode_jwt_claims(token).get("exp")
    if isinstance(exp, bool) or not isinstance(exp, int | float):
        return None
    return float(exp)


def _str_or_none(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def chatgpt_identity(id_token: str) -> ChatGPTIdentity:
    """Extract e-mail, plan, ChatGPT account id, user id and OAuth client id from an id_token."""
    claims = decode_jwt_claims(id_token)
    auth = claims.get(AUTH_CLAIM)
    auth = auth if isinstance(auth, dict) else {}
    profile = claims.get(PROFILE_CLAIM)
    profile = profile if isinstance(profile, dict) else {}

    aud = claims.get("aud")
    if isinstance(aud, list):
        aud = next((a for a in aud if isinstance(a, str) and a), None)
    client_id = _str_or_none(claims.get("client_id")) or _str_or_none(aud)

    return ChatGPTIdentity(
        email=_str_or_none(claims.get("email")) or _str_or_none(profile.get("email")),
        plan=_str_or_none(auth.get("chatgpt_plan_type")) or "unknown",
        account_id=_str_or_none(auth.get("chatgpt_account_id")),
        user_id=_str_or_none(auth.get("chatgpt_user_id"))
        or _str_or_none(auth.get("user_id"))
        or _str_or_none(claims.get("sub")),
        client_id=client_id,
    )
