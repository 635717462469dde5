"""ChatGPT/Codex token refresh (docs/BEHAVIOUR.md §9): the request, the answer, and what a failure means.

The request and the parsing are plain functions; `refresh_async` / `refresh_sync` only send.
The refresh token rotates: the answer's `refresh_token` replaces the old one, which stops
working, so callers must persist the answer before they use it (`SecretsStore.save_rotation`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import httpx

from accountpool.upstream.classify import scrub_secrets
from accountpool.upstream.jwt_claims import decode_jwt_claims

DEFAULT_TOKEN_URL = "https://auth.openai.com/oauth/token"
CODEX_CLIENT_ID = "app_EMoamEEZ73f0CkXaXp7hrann"
REFRESH_TIMEOUT_S = 30.0
PERMANENT_ERRORS = frozenset({"invalid_grant", "invalid_client", "unauthorized_client", "access_denied",
                              "refresh_token_expired", "refresh_token_reused", "refresh_token_invalidated"})


class RefreshError(Exception):
    """A refresh that did not produce tokens. `permanent` means re-authorization is needed."""

    def __init__(self, message: str, *, permanent: bool) -> None:
        super().__init__(message)
        self.permanent = permanent


@dataclass(frozen=True)
class TokenAnswer:
    access_token: str
    refresh_token: str | None
    id_token: str | None

    def __repr__(self) -> str:
        return "TokenAnswer(<redacted>)"


def client_id_for(access_token: str | None, id_token: str | None) -> str:
    """The client id in the token's claims when present, else Codex CLI's public one."""
    for token in (access_token, id_token):
        if not token:
            continue
        try:
            claims = decode_jwt_claims(token)
        except ValueError:
            continue
        candidate = claims.get("client_id") or claims.get("azp")
        aud = claims.get("aud")
        if not candidate and isinstance(aud, str) and aud.startswith("app_"):
            candidate = aud
        if not candidate and isinstance(aud, list):
            candidate = next((a for a in aud if isinstance(a, str) and a.startswith("app_")), None)
        if candidate:
            return str(candidate)
    return CODEX_CLIENT_ID


def refresh_request_body(refresh_token: str, client_id: str) -> dict[str, str]:
    return {"grant_type": "refresh_token", "refresh_token": refresh_token, "client_id": client_id,
            "scope": "openid profile email"}


def parse_refresh_answer(status: int, body: bytes) -> TokenAnswer:
    """Turn the token endpoint's answer into tokens or a RefreshError (transient for 5xx/429)."""
    try:
        data = json.loads(body) if body else {}
    except ValueError:
        data = {}
    if not isinstance(data, dict):
        data = {}
    if 200 <= status < 300 and isinstance(data.get("access_token"), str):
        return TokenAnswer(data["access_token"], data.get("refresh_token"), data.get("id_token"))
    error = data.get("error")
    code = error.get("code") if isinstance(error, dict) else error
    description = data.get("error_description") or (error.get("message") if isinstance(error, dict) else "")
    message = scrub_secrets(f"token refresh failed: HTTP {status}" + (f" {code}" if code else "")
                            + (f": {description}" if description else ""))[:300]
    permanent = (status in (400, 401, 403) and (code in PERMANENT_ERRORS or status != 400)) or (
        code in PERMANENT_ERRORS)
    return _raise(message, permanent)


def _raise(message: str, permanent: bool) -> TokenAnswer:
    raise RefreshError(message, permanent=permanent)


async def refresh_async(client: httpx.AsyncClient, token_url: str, refresh_token: str, client_id: str) -> TokenAnswer:
    try:
        response = await client.post(token_url, json=refresh_request_body(refresh_token, client_id),
                                     timeout=REFRESH_TIMEOUT_S)
    except httpx.HTTPError as exc:
        raise RefreshError(f"token refresh failed: {type(exc).__name__}", permanent=False) from None
    return parse_refresh_answer(response.status_code, response.content)


def refresh_sync(token_url: str, refresh_token: str, client_id: str) -> TokenAnswer:
    try:
        response = httpx.post(token_url, json=refresh_request_body(refresh_token, client_id),
                              timeout=REFRESH_TIMEOUT_S)
    except httpx.HTTPError as exc:
        raise RefreshError(f"token refresh failed: {type(exc).__name__}", permanent=False) from None
    return parse_refresh_answer(response.status_code, response.content)
