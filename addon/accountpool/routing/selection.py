"""Choose which accounts may serve a request, best first (docs/BEHAVIOUR.md §7).

Pure: the caller passes the accounts, their health, the settings and the clock, and gets back
an ordered candidate list plus the reason each other account was skipped, so the pool error
and the dashboard can say why nobody was available.

Decisions (also in the README):
- Paid means "any plan except `free`": an unknown plan is more often a claim we could not read
  than a free account, and API keys have no ChatGPT plan at all.
- A usage window whose reset time has passed counts as 0 % used: its old percentage is stale.
- Sequential mode keeps the current account first while its 5-hour use is below the threshold
  (unknown counts as below); otherwise accounts below the threshold come before those past it,
  each group in balanced order, so the pool moves to the best *other* account instead of
  ping-ponging between nearly full ones.
- A `chatgpt` account serves `POST /v1/responses` (and `/v1/responses/compact`),
  `/backend-api/codex/...`, and `/v1/chat/completions` when chat translation is on. Stored-response
  routes such as `/v1/responses/{id}` need an API key (the Codex backend does not store responses).
- "Use it or lose it" (`prefer_expiring_windows`, balanced order): see `expiring_rank`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from accountpool.forecast import latest_forecast
from accountpool.models import Account, AccountHealth, AccountKind, PoolSettings, SkipReason, UsageWindow

V1_PREFIX = "/v1/"
CODEX_PREFIX = "/backend-api/codex/"
BACKEND_PREFIX = "/backend-api/"
RESPONSES_PATHS = frozenset({"/v1/responses", "/v1/responses/compact"})
MODELS_PATH = "/v1/models"
CHAT_PATH = "/v1/chat/completions"

CHATGPT_FAMILIES = frozenset({"responses", "codex"})
"""`/v1/models` is not among them: the Codex backend lists models in its own shape."""
API_KEY_FAMILIES = frozenset({"responses", "models", "chat", "v1"})


@dataclass
class Selection:
    """Candidates in the order to try them, and why every other account was left out."""

    candidates: list[Account] = field(default_factory=list)
    skipped: list[SkipReason] = field(default_factory=list)
    preferred_current: str | None = None
    """Sequential mode: the account the order picked before session affinity was applied."""


def _normalize(path: str) -> str:
    path = path.split("?", 1)[0].split("#", 1)[0]
    return path.rstrip("/") or "/"


def endpoint_family(path: str) -> str:
    """Which kind of endpoint a request path is: responses, models, chat, codex, v1, backend, other."""
    p = _normalize(path)
    if p in RESPONSES_PATHS:
        return "responses"
    if p == MODELS_PATH:
        return "models"
    if p == CHAT_PATH:
        return "chat"
    if p == CODEX_PREFIX.rstrip("/") or p.startswith(CODEX_PREFIX):
        return "codex"
    if p.startswith(V1_PREFIX):
        return "v1"
    if p.startswith(BACKEND_PREFIX):
        return "backend"
    return "other"


def can_serve(account: Account, path: str, *, translate_chat: bool = True) -> bool:
    """Whether this kind of account can answer this path at all (not whether it is healthy)."""
    family = endpoint_family(path)
    if account.kind == AccountKind.CHATGPT:
        return family in CHATGPT_FAMILIES or (family == "chat" and translate_chat)
    return family in API_KEY_FAMILIES


def _is_free(account: Account) -> bool:
    return not account.is_paid


def _effective_used(window: UsageWindow, now: float) -> float | None:
    """Used percent, or 0 once the window has reset; None when unknown."""
    if window.used_percent is None:
        return None
    if window.reset_at is not None and window.reset_at <= now:
        return 0.0
    return window.used_percent


def _exhausted_window(health: AccountHealth, now: float) -> tuple[str, UsageWindow] | None:
    for name, window in (("5-hour", health.primary), ("weekly", health.secondary)):
        used = window.used_percent
        if used is not None and used >= 100 and (window.reset_at is None or window.reset_at > now):
            return name, window
    return None


def _skip(account: Account, health: AccountHealth, *, path: str, model: str | None, now: float,
          pinned: str | None, translate_chat: bool) -> SkipReason | None:
    """The first filter (in docs/BEHAVIOUR.md §7 order) that rules this account out, or None."""
    def reason(kind: str, detail: str = "", until: float | None = None) -> SkipReason:
        return SkipReason(account_id=account.id, label=account.label, reason=kind, detail=detail, until=until)

    if not account.enabled:
        return reason("disabled")
    if not can_serve(account, path, translate_chat=translate_chat):
        return reason("endpoint", f"{account.kind} account cannot serve {endpoint_family(path)} ({path})")
    if account.auth_blocked:
        return reason("auth_blocked", account.auth_error or "")
    if health.cooldown_until is not None and health.cooldown_until > now:
        detail = health.cooldown_reason or health.cooldown_class or ""
        return reason("cooldown", detail, health.cooldown_until)
    if model is not None:
        model_until = health.model_cooldowns.get(model)
        if model_until is not None and model_until > now:
            return reason("model_cooldown", model, model_until)
    if exhausted := _exhausted_window(health, now):
        name, window = exhausted
        return reason("usage_exhausted", f"{name} window {window.used_percent:g}% used", window.reset_at)
    if pinned is not None and pinned not in (account.id, account.upstream_account_id):
        return reason("not_pinned", f"client pinned {pinned}")
    return None


def _unknown_last(used: float | None) -> tuple[int, float]:
    return (1, 0.0) if used is None else (0, used)


EXPIRING_WITHIN_S = 24 * 3600
"""A weekly window resetting within this long counts as expiring."""
EXPIRING_PRIMARY_MAX = 90.0
"""…and only while its 5-hour window is below this used %, so the preference never drives an account
into a 5-hour exhaustion (and a failed attempt); the sequential threshold's default, for the same reason."""
NOT_EXPIRING = (1, 0.0)


def expiring_rank(account: Account, health: AccountHealth, now: float) -> tuple[int, float]:
    """(0, reset time) for a login whose weekly quota would expire unused; NOT_EXPIRING otherwise.

    The rule (README "Decisions"): a `chatgpt` account whose weekly window resets within
    `EXPIRING_WITHIN_S`, whose forecast says it will *not* run out before that reset, and whose 5-hour
    window is below `EXPIRING_PRIMARY_MAX`. Such accounts sort first within their plan rank, soonest
    reset first. Why: what is left of that week vanishes at the reset, while another account's quota
    keeps; an account that runs out before its reset anyway wastes nothing and is not pushed harder.
    The forecast is the latest observation's window average (`forecast.latest_forecast`): routing reads
    memory only, never the history table. Unknown reset time, window length or usage: not expiring.
    """
    if account.kind != AccountKind.CHATGPT:
        return NOT_EXPIRING
    reset_at = health.secondary.reset_at
    if reset_at is None or not now < reset_at <= now + EXPIRING_WITHIN_S:
        return NOT_EXPIRING
    primary = _effective_used(health.primary, now)
    if primary is not None and primary >= EXPIRING_PRIMARY_MAX:
        return NOT_EXPIRING
    if not latest_forecast(health, "secondary", now).headroom_until_reset():
        return NOT_EXPIRING
    return (0, reset_at)


def balanced_key(account: Account, health: AccountHealth, *, free_first: bool, now: float,
                 prefer_expiring: bool = False) -> tuple:
    """Sort key of `balanced` mode: unblocked, paid (or free) first, expiring weekly quota first (when
    `prefer_expiring`), weekly then 5-hour use, label."""
    free_rank = int(_is_free(account)) ^ int(free_first)
    return (
        int(account.auth_blocked),
        free_rank,
        expiring_rank(account, health, now) if prefer_expiring else NOT_EXPIRING,
        _unknown_last(_effective_used(health.secondary, now)),
        _unknown_last(_effective_used(health.primary, now)),
        account.label.lower(),
        account.id,
    )


def _move_first(candidates: list[Account], account_id: str | None) -> None:
    for i, account in enumerate(candidates):
        if account.id == account_id:
            candidates.insert(0, candidates.pop(i))
            return


def choose_candidates(
    accounts: Sequence[Account],
    health: Mapping[str, AccountHealth],
    *,
    settings: PoolSettings,
    path: str,
    model: str | None,
    now: float,
    pinned_account_id: str | None = None,
    affinity_account_id: str | None = None,
    current_account_id: str | None = None,
    translate_chat: bool = True,
) -> Selection:
    """Filter and order the pool for one request (docs/BEHAVIOUR.md §7)."""
    selection = Selection()
    healths: dict[str, AccountHealth] = {}
    for account in accounts:
        h = health.get(account.id) or AccountHealth(account_id=account.id)
        skip = _skip(account, h, path=path, model=model, now=now, pinned=pinned_account_id,
                     translate_chat=translate_chat)
        if skip is None:
            selection.candidates.append(account)
            healths[account.id] = h
        else:
            selection.skipped.append(skip)

    cands = selection.candidates
    cands.sort(key=lambda a: balanced_key(a, healths[a.id], free_first=settings.free_first, now=now,
                                          prefer_expiring=settings.prefer_expiring_windows))
    if settings.mode == "sequential":
        # Accounts past the threshold are what sequential mode moves away from, so they go
        # last; the current account stays first while it is below the threshold.
        def below(account_id: str) -> bool:
            used = _effective_used(healths[account_id].primary, now)
            return used is None or used < settings.sequential_threshold

        cands.sort(key=lambda a: not below(a.id))  # stable: balanced order within each group
        if current_account_id in healths and below(current_account_id):
            _move_first(cands, current_account_id)
        selection.preferred_current = cands[0].id if cands else None
    if affinity_account_id in healths:
        _move_first(cands, affinity_account_id)
    return selection


def next_current_account(selection: Selection, current_account_id: str | None) -> str | None:
    """The sequential-mode "current account" to persist: the order's pick, else keep the old one."""
    return selection.preferred_current or current_account_id
