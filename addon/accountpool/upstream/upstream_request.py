"""Where an attempt goes and with which headers (docs/BEHAVIOUR.md §5). Pure functions.

The client's own credentials and anything that would leak or conflict never reach the
upstream: its key, its proxy credentials, its organization (unless the account sets one), its
cookies, and our own ticket header.
"""

from __future__ import annotations

from collections.abc import Iterable

from accountpool.models import Account, AccountKind
from accountpool.upstream.request_paths import has_dot_segment

DEFAULT_API_BASE = "https://api.openai.com"
DEFAULT_CHATGPT_BASE = "https://chatgpt.com/backend-api/codex"
CODEX_PATH_PREFIX = "/backend-api/codex"

HOP_BY_HOP = frozenset({"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer",
                        "trailers", "transfer-encoding", "upgrade", "proxy-connection"})
DROPPED_REQUEST_HEADERS = HOP_BY_HOP | frozenset({
    "host", "content-length", "authorization", "x-api-key", "api-key", "chatgpt-account-id", "cookie",
    "openai-organization", "openai-project", "accept-encoding", "x-accountpool-ticket",
})
DROPPED_RESPONSE_HEADERS = HOP_BY_HOP | frozenset({"content-length", "set-cookie", "content-encoding"})


def join_base(base: str, path: str) -> str:
    """`https://host/prefix` + `/v1/x?q` → `https://host/prefix/v1/x?q`; a base ending in `/v1` is not doubled."""
    base = base.rstrip("/")
    if base.endswith("/v1") and (path == "/v1" or path.startswith(("/v1/", "/v1?"))):
        path = path[3:]
    return base + path


def chatgpt_path(path: str) -> str:
    """Map a client path onto the Codex backend: `/v1/responses` → `/responses`, `/backend-api/codex/x` → `/x`."""
    if path.startswith(CODEX_PATH_PREFIX):
        return path[len(CODEX_PATH_PREFIX):] or "/"
    if path.startswith("/v1/"):
        if path.startswith("/v1/chat/completions"):
            return "/responses" + path[len("/v1/chat/completions"):]
        return path[3:]
    return path


def upstream_url(account: Account, path: str, *, chatgpt_base: str) -> str:
    """The attempt's URL. The addon resolves dot segments before it admits a request (`request_paths`); a path
    that still has one here would climb out of the account's base-URL prefix, so it is refused outright."""
    if has_dot_segment(path):
        raise ValueError(f"refusing a path with a dot segment: {path[:200]!r}")
    if account.kind == AccountKind.CHATGPT:
        return chatgpt_base.rstrip("/") + chatgpt_path(path)
    return join_base(account.base_url or DEFAULT_API_BASE, path)


def upstream_headers(account: Account, client_headers: Iterable[tuple[str, str]], *,
                     token: str) -> list[tuple[str, str]]:
    headers = [(k, v) for k, v in client_headers if k.lower() not in DROPPED_REQUEST_HEADERS]
    headers.append(("authorization", f"Bearer {token}"))
    headers.append(("accept-encoding", "identity"))
    if account.kind == AccountKind.CHATGPT:
        if account.upstream_account_id:
            headers.append(("chatgpt-account-id", account.upstream_account_id))
    else:
        if account.organization:
            headers.append(("openai-organization", account.organization))
        if account.project:
            headers.append(("openai-project", account.project))
    return headers


def client_response_headers(upstream: Iterable[tuple[str, str]], *, account: Account, request_id: str,
                            attempts: int) -> list[tuple[str, str]]:
    """Upstream headers for the client, plus who served it (label and last four characters only)."""
    out = [(k, v) for k, v in upstream if k.lower() not in DROPPED_RESPONSE_HEADERS]
    out.append(("x-accountpool-account", account.display))
    out.append(("x-accountpool-request-id", request_id))
    out.append(("x-accountpool-attempts", str(attempts)))
    return out
