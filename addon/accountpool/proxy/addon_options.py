"""The addon's mitmproxy options: one place declares, documents and validates them.

mitmproxy options only come as str, int, bool (and sequences of str), so durations are whole
seconds or milliseconds. Validation raises `OptionsError` with a message a user can act on;
mitmdump then refuses to start instead of running half-configured.
"""

from __future__ import annotations

import ipaddress
import logging
from typing import Any

from mitmproxy import exceptions

from accountpool.models import PoolSettings
from accountpool.proxy.gc_tuning import DEFAULT_YOUNG_THRESHOLD
from accountpool.storage.paths import default_db_path
from accountpool.upstream.oauth import DEFAULT_TOKEN_URL
from accountpool.upstream.upstream_request import DEFAULT_CHATGPT_BASE
from accountpool.upstream.usage_sweep import DEFAULT_USAGE_URL

log = logging.getLogger("accountpool")

_DEFAULTS = PoolSettings()

# name, type, default, help
OPTIONS: tuple[tuple[str, type, Any, str], ...] = (
    ("pool_db", str, str(default_db_path()), "pool database (default data/pool.db or $ACCOUNTPOOL_DB)"),
    ("pool_secrets", str, "", "secrets store (default: pool.secrets beside pool_db, or $ACCOUNTPOOL_SECRETS)"),
    ("pool_oauth_token_url", str, DEFAULT_TOKEN_URL, "OAuth token endpoint for ChatGPT logins"),
    ("pool_chatgpt_base_url", str, DEFAULT_CHATGPT_BASE, "ChatGPT/Codex backend base URL"),
    ("pool_usage_url", str, DEFAULT_USAGE_URL, "ChatGPT usage endpoint probed by the background sweep"),
    ("pool_usage_sweep", int, 300, "seconds between usage probes of enabled ChatGPT logins (0: off)"),
    ("pool_upstream_hosts", str, "api.openai.com,chatgpt.com",
     "hosts whose /v1/ and /backend-api/codex/ traffic is pooled in regular and local modes (comma-separated)"),
    ("pool_require_client_keys", bool, True, "require a client key (turn off only for a loopback-only setup)"),
    ("pool_allow_open_listen", bool, False, "allow running without client keys on a non-loopback listen address"),
    ("pool_max_attempts", int, 5, "upstream attempts per client request"),
    ("pool_max_body", int, 32 * 1024 * 1024, "largest request body (bytes)"),
    ("pool_hold_metadata_events", bool, True,
     "hold back response.created/in_progress until content, so an in-band error before content can fail over"),
    ("pool_header_timeout", int, 300,
     "seconds to wait for upstream response headers, and the longest silence within a streamed answer"),
    ("pool_connect_timeout", int, 10, "upstream connect timeout (s)"),
    ("pool_refresh_margin", int, 300, "refresh a login this many seconds before its access token expires"),
    ("pool_metrics_flush_ms", int, 250, "metrics flush interval (ms)"),
    ("pool_max_wait", int, 20,
     "seconds a request may wait for an account that is back at a known time (instead of a 429) or for the "
     "proxy's own file descriptors (instead of a 503); 0: never wait"),
    ("pool_max_waiting", int, 256, "requests that may wait at once; beyond it the pool error comes at once"),
    ("pool_cooldown_rate_limited", int, int(_DEFAULTS.cooldown_rate_limited_s),
     "default cooldown after a rate limit without Retry-After (s); dashboard settings override"),
    ("pool_cooldown_quota", int, int(_DEFAULTS.cooldown_quota_s),
     "default cooldown after a quota error without a reset time (s); dashboard settings override"),
    ("pool_cooldown_auth", int, int(_DEFAULTS.cooldown_auth_s),
     "cooldown after auth_failed / permission_denied (s); dashboard settings override"),
    ("pool_cooldown_upstream", int, int(_DEFAULTS.cooldown_upstream_s),
     "cooldown after an upstream error (s); dashboard settings override"),
    ("pool_cooldown_model", int, int(_DEFAULTS.cooldown_model_s),
     "per-model cooldown after model_restricted (s); dashboard settings override"),
    ("pool_listen_backlog", int, 4096,
     "accept queue of mitmproxy's listening sockets, for bursts of connections (mitmproxy's own: 100; 0 keeps it; "
     "the kernel caps it at net.core.somaxconn)"),
    ("pool_gc_threshold", int, DEFAULT_YOUNG_THRESHOLD,
     "allocations between young garbage collections in this process (Python's default: 700), so that thousands "
     "of open streams do not trigger full collections that stall every stream; 0 keeps Python's"),
    ("pool_fault_inject", str, "", "testing only: 'request_hook' makes the request hook raise"),
)

ROUTER_OPTIONS = frozenset({"pool_chatgpt_base_url", "pool_oauth_token_url", "pool_max_attempts",
                            "pool_refresh_margin", "pool_hold_metadata_events", "pool_connect_timeout",
                            "pool_header_timeout", "pool_max_wait", "pool_max_waiting"})
COOLDOWN_OPTIONS = {"pool_cooldown_rate_limited": "cooldown_rate_limited_s", "pool_cooldown_quota": "cooldown_quota_s",
                    "pool_cooldown_auth": "cooldown_auth_s", "pool_cooldown_upstream": "cooldown_upstream_s",
                    "pool_cooldown_model": "cooldown_model_s"}


def declare(loader: Any) -> None:
    for name, typespec, default, help_text in OPTIONS:
        loader.add_option(name, typespec, default, f"accountpool: {help_text}")


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def setting_defaults(opts: Any) -> dict[str, float]:
    """Cooldown defaults from options; values saved in the dashboard take precedence."""
    return {field: float(getattr(opts, name)) for name, field in COOLDOWN_OPTIONS.items()}


def validate(opts: Any, updated: set[str]) -> None:
    """Raise OptionsError for what changed and is wrong."""
    if "pool_max_attempts" in updated and not 1 <= opts.pool_max_attempts <= 20:
        raise exceptions.OptionsError("pool_max_attempts must be between 1 and 20")
    if "pool_max_body" in updated and opts.pool_max_body < 1024:
        raise exceptions.OptionsError("pool_max_body must be at least 1024 bytes")
    for name in ("pool_oauth_token_url", "pool_chatgpt_base_url", "pool_usage_url"):
        if name in updated and not getattr(opts, name).startswith(("http://", "https://")):
            raise exceptions.OptionsError(f"{name} must be an http:// or https:// URL")
    for name in ("pool_header_timeout", "pool_connect_timeout", "pool_metrics_flush_ms"):
        if name in updated and getattr(opts, name) <= 0:
            raise exceptions.OptionsError(f"{name} must be positive")
    for name in ("pool_max_wait", "pool_max_waiting", "pool_listen_backlog", "pool_gc_threshold"):
        if name in updated and not 0 <= getattr(opts, name) <= 100_000:
            raise exceptions.OptionsError(f"{name} must be between 0 (off) and 100000")
    if "pool_usage_sweep" in updated and opts.pool_usage_sweep < 0:
        raise exceptions.OptionsError("pool_usage_sweep must be 0 (off) or a number of seconds")
    if updated & set(COOLDOWN_OPTIONS):
        try:
            PoolSettings.model_validate(setting_defaults(opts))
        except ValueError as exc:
            raise exceptions.OptionsError(f"invalid cooldown option: {exc}".replace("\n", " ")) from None
    if {"pool_require_client_keys", "pool_allow_open_listen", "listen_host"} & updated \
            and not opts.pool_require_client_keys:
        host = opts.listen_host or "0.0.0.0"
        if not is_loopback(host):
            if not opts.pool_allow_open_listen:
                raise exceptions.OptionsError(
                    f"refusing to run without client keys while listening on {host!r}: anyone who can "
                    "reach it could spend your accounts. Use --set listen_host=127.0.0.1, or keep "
                    "pool_require_client_keys=true, or force it with pool_allow_open_listen=true.")
            log.warning("accountpool: CLIENT KEYS ARE OFF and the proxy listens on %s: anyone who can "
                        "reach it can use your accounts", host)
