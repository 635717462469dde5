"""The simulator's ChatGPT logins and the JWTs it issues them.

Tokens are real-looking HS256 JWTs with the claims Codex CLI and the proxy read (account id, plan,
email, expiry); the signing key is no secret, since consumers decode claims without checking it.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from dataclasses import dataclass, field
from typing import Any

from accountpool.simulator.usage import Usage

CODEX_CLIENT_ID = "app_EMoamEEZ73f0CkXaXp7hrann"
AUTH_CLAIM = "https://api.openai.com/auth"
_JWT_KEY = b"accountpool-simulator-not-a-secret"


@dataclass
class Login:
    """One registered ChatGPT login: its identity, its current tokens and its usage."""

    account_id: str
    email: str
    plan: str
    client_id: str
    access_ttl_s: float
    access_token: str = ""
    refresh_token: str = ""
    id_token: str = ""
    expired: bool = False
    """An `expired` fault hit the current access token: it stays rejected until a refresh."""
    refresh_count: int = 0
    usage: Usage = field(default_factory=Usage)


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def make_jwt(claims: dict[str, Any]) -> str:
    """A real-looking HS256 JWT; consumers decode claims without checking the signature."""
    payload = json.dumps(claims, separators=(",", ":")).encode()
    signing_input = _b64url(b'{"alg":"HS256","typ":"JWT"}') + "." + _b64url(payload)
    return f"{signing_input}.{_b64url(hmac.new(_JWT_KEY, signing_input.encode(), hashlib.sha256).digest())}"
