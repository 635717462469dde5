"""The shapes every other module agrees on: accounts, their health, failure classes, settings.

One place owns each fact: the failure-class names, the setting names and their
validation rules live here, so the addon, the CLI and the dashboard cannot drift apart.
"""

from __future__ import annotations

import json
from enum import StrEnum
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


class AccountKind(StrEnum):
    API_KEY = "api_key"
    CHATGPT = "chatgpt"


class FailureClass(StrEnum):
    """Outcome of one upstream attempt (docs/BEHAVIOUR.md §8), plus the request-level outcomes of §13."""

    OK = "ok"
    AUTH_EXPIRED = "auth_expired"
    QUOTA_EXCEEDED = "quota_exceeded"
    RATE_LIMITED = "rate_limited"
    MODEL_RESTRICTED = "model_restricted"
    AUTH_FAILED = "auth_failed"
    PERMISSION_DENIED = "permission_denied"
    UPSTREAM_ERROR = "upstream_error"
    INVALID_REQUEST = "invalid_request"
    # request-level outcomes that no single attempt produces
    STREAM_INTERRUPTED = "stream_interrupted"
    CLIENT_AUTH_FAILED = "client_auth_failed"
    POOL_EXHAUSTED = "pool_exhausted"
    CLIENT_GONE = "client_gone"
    """The client disconnected while its request waited for an account: nothing was sent upstream."""
    PROXY_OVERLOADED = "proxy_overloaded"
    """This proxy could not open an upstream connection (out of file descriptors or memory): no account tried."""
    BAD_CLIENT_REQUEST = "bad_client_request"
    INTERNAL_ERROR = "internal_error"


LIMIT_CLASSES = frozenset({FailureClass.RATE_LIMITED, FailureClass.QUOTA_EXCEEDED})
"""Failures that mean "try later", so an exhausted pool answers 429 + Retry-After."""


class Account(BaseModel):
    """An account as the routing and the dashboard see it: never holds a secret."""

    model_config = ConfigDict(frozen=True)

    id: str
    label: str
    kind: AccountKind
    plan: str = "unknown"
    email: str | None = None
    upstream_account_id: str | None = None
    """ChatGPT account id (sent as `ChatGPT-Account-Id`); None for API keys."""
    base_url: str | None = None
    """API-key accounts: the OpenAI-compatible base (without `/v1`). None → the default."""
    organization: str | None = None
    project: str | None = None
    enabled: bool = True
    auth_blocked: bool = False
    auth_error: str | None = None
    secret_hint: str = ""
    """Last four characters of the credential, for humans telling accounts apart."""
    access_expires_at: float | None = None

    @property
    def display(self) -> str:
        """How logs, errors and mitmweb name the account: label and last four characters."""
        return f"{self.label} (...{self.secret_hint})" if self.secret_hint else self.label

    @property
    def is_paid(self) -> bool:
        """Anything but `free` counts as paid (an unknown plan is assumed paid, like an API key)."""
        return self.plan.lower() != "free"


class UsageWindow(BaseModel):
    """One Codex usage window (5-hour primary or weekly secondary) as last observed."""

    used_percent: float | None = None
    window_minutes: int | None = None
    reset_at: float | None = None


class RateLimitObservation(BaseModel):
    """`x-ratelimit-*` response headers, one field per header (reset values in seconds from `seen_at`)."""

    limit_requests: int | None = None
    remaining_requests: int | None = None
    reset_requests_s: float | None = None
    limit_tokens: int | None = None
    remaining_tokens: int | None = None
    reset_tokens_s: float | None = None


class AccountHealth(BaseModel):
    """Runtime health: observations, never the durable `auth_blocked` state (docs/BEHAVIOUR.md §2)."""

    account_id: str
    cooldown_until: float | None = None
    cooldown_reason: str | None = None
    cooldown_class: str | None = None
    model_cooldowns: dict[str, float] = Field(default_factory=dict)
    """model → until (Unix seconds), for `model_restricted`."""
    last_error: str | None = None
    last_error_class: str | None = None
    last_error_at: float | None = None
    last_used_at: float | None = None
    primary: UsageWindow = Field(default_factory=UsageWindow)
    secondary: UsageWindow = Field(default_factory=UsageWindow)
    usage_seen_at: float | None = None
    ratelimit: RateLimitObservation = Field(default_factory=RateLimitObservation)
    ratelimit_seen_at: float | None = None
    # Recovery (issue 13, `routing/recovery.py`): newest observation wins, by `recovery_at`.
    recovering: bool = False
    """Set when a cooldown opens; once it ends the account is half-open until one trial succeeds."""
    failure_streak: int = 0
    """Consecutive failures of `streak_class` (each one lengthens the next cooldown); a success resets it."""
    streak_class: str | None = None
    transient_times: list[float] = Field(default_factory=list)
    """When the recent `upstream_error`s happened (those within `transient_window_s`, fewer than the threshold:
    no cooldown yet). A sliding window: three errors within any 60 s count, wherever the first one fell."""
    recovery_at: float | None = None
    trial_until: float | None = None
    """Lease of the half-open trial, read from `pool.db`; written only by `trial_claims` (never by the writer's
    health upsert, which would overwrite another process's claim)."""


    @field_validator("transient_times", mode="before")
    @classmethod
    def _stored_as_json(cls, value: object) -> object:
        """`pool.db` keeps the list as JSON text (sqlite-utils writes lists that way)."""
        return json.loads(value) if isinstance(value, str) else value

    @property
    def transient_count(self) -> int:
        return len(self.transient_times)

def merge_health(mine: AccountHealth | None, theirs: AccountHealth) -> AccountHealth:
    """Combine two observers' views of one account: later observations win, cooldowns take the later end.

    Both directions use it: a proxy reloading what others wrote, and the writer saving over what
    another process stored meanwhile (a plain upsert would let an older observation win).
    """
    if mine is None:
        return theirs
    data = theirs.model_dump()
    if (mine.cooldown_until or 0) > (theirs.cooldown_until or 0):
        data.update(cooldown_until=mine.cooldown_until, cooldown_reason=mine.cooldown_reason,
                    cooldown_class=mine.cooldown_class)
    if (mine.last_error_at or 0) > (theirs.last_error_at or 0):
        data.update(last_error=mine.last_error, last_error_class=mine.last_error_class,
                    last_error_at=mine.last_error_at)
    data["last_used_at"] = max(mine.last_used_at or 0, theirs.last_used_at or 0) or None
    if (mine.usage_seen_at or 0) > (theirs.usage_seen_at or 0):
        data.update(primary=mine.primary.model_dump(), secondary=mine.secondary.model_dump(),
                    usage_seen_at=mine.usage_seen_at)
    if (mine.ratelimit_seen_at or 0) > (theirs.ratelimit_seen_at or 0):
        data.update(ratelimit=mine.ratelimit.model_dump(), ratelimit_seen_at=mine.ratelimit_seen_at)
    if (mine.recovery_at or 0) > (theirs.recovery_at or 0):
        data.update({k: getattr(mine, k) for k in RECOVERY_FIELDS})
    models = dict(theirs.model_cooldowns)
    for model, until in mine.model_cooldowns.items():
        models[model] = max(until, models.get(model, 0))
    data["model_cooldowns"] = models
    return AccountHealth.model_validate(data)


RECOVERY_FIELDS = ("recovering", "failure_streak", "streak_class", "transient_times", "recovery_at")


class ModelOverride(BaseModel):
    """Limits the addon writes into model-catalog responses so Codex sees the right numbers."""

    context_window: int = Field(ge=1_000, le=1_050_000)
    auto_compact_token_limit: int = Field(ge=1_000)

    @model_validator(mode="after")
    def _compact_within_window(self) -> ModelOverride:
        if self.auto_compact_token_limit > self.context_window:
            raise ValueError(
                f"auto_compact_token_limit ({self.auto_compact_token_limit}) must not exceed "
                f"context_window ({self.context_window})"
            )
        return self


def default_model_overrides() -> dict[str, ModelOverride]:
    return {"gpt-5.5": ModelOverride(context_window=1_050_000, auto_compact_token_limit=650_000)}


class PoolSettings(BaseModel):
    """Operator settings kept in the `settings` table; the dashboard edits them, routing reads them."""

    model_config = ConfigDict(extra="forbid")

    mode: Literal["balanced", "sequential"] = "balanced"
    free_first: bool = False
    sequential_threshold: float = Field(default=90, ge=1, le=100)
    cooldown_rate_limited_s: float = Field(default=60, ge=1, le=86_400)
    cooldown_quota_s: float = Field(default=3_600, ge=1, le=7 * 86_400)
    cooldown_auth_s: float = Field(default=300, ge=1, le=86_400)
    cooldown_upstream_s: float = Field(default=30, ge=1, le=86_400)
    cooldown_model_s: float = Field(default=3_600, ge=1, le=7 * 86_400)
    retention_days: float = Field(default=7, ge=0.01, le=3_650)
    cooldown_escalation_factor: float = Field(default=2, ge=1, le=10)
    cooldown_max_s: float = Field(default=1_800, ge=1, le=7 * 86_400)
    transient_threshold: int = Field(default=3, ge=1, le=100)
    transient_window_s: float = Field(default=60, ge=1, le=86_400)
    model_overrides: dict[str, ModelOverride] = Field(default_factory=default_model_overrides)
    prefer_expiring_windows: bool = True
    """Balanced mode, `chatgpt` accounts: within one plan rank, spend first the quota of a weekly window
    that resets soon and will not run out before it does ("use it or lose it"; rule in `selection`)."""


class SkipReason(BaseModel):
    """Why an account was not a candidate for one request (shown in errors and the dashboard)."""

    account_id: str
    label: str
    reason: Literal[
        "disabled", "endpoint", "auth_blocked", "cooldown", "model_cooldown", "usage_exhausted", "not_pinned"
    ]
    detail: str = ""
    until: float | None = None
