import pytest
from accountpool.models import Account, AccountHealth, AccountKind, PoolSettings, UsageWindow
from accountpool.routing.selection import can_serve, choose_candidates, endpoint_family, next_current_account

NOW = 1_700_000_000.0
RESPONSES = "/v1/responses"


def acct(id_: str, *, kind=AccountKind.CHATGPT, plan="plus", label=None, **kw) -> Account:
    return Account(id=id_, label=label or id_, kind=kind, plan=plan, **kw)


def hl(id_: str, *, p=None, s=None, p_reset=None, s_reset=None, **kw) -> AccountHealth:
    return AccountHealth(
        account_id=id_,
        primary=UsageWindow(used_percent=p, reset_at=p_reset),
        secondary=UsageWindow(used_percent=s, reset_at=s_reset),
        **kw,
    )


def choose(accounts, health=None, *, settings=None, path=RESPONSES, model="gpt-5.5", **kw):
    return choose_candidates(
        accounts, health or {}, settings=settings or PoolSettings(), path=path, model=model, now=NOW, **kw
    )


def ids(selection) -> list[str]:
    return [a.id for a in selection.candidates]


def reasons(selection) -> dict[str, str]:
    return {r.account_id: r.reason for r in selection.skipped}


# ------------------------------------------------------------------ endpoints


@pytest.mark.parametrize(
    ("path", "family"),
    [
        ("/v1/responses", "responses"),
        ("/v1/responses/?x=1", "responses"),
        ("/v1/responses/compact", "responses"),
        ("/v1/responses/resp_123", "v1"),
        ("/v1/models", "models"),
        ("/v1/chat/completions", "chat"),
        ("/v1/embeddings", "v1"),
        ("/backend-api/codex/responses", "codex"),
        ("/backend-api/codex/models?client_version=1", "codex"),
        ("/backend-api/wham/usage", "backend"),
        ("/healthz", "other"),
    ],
)
def test_endpoint_family(path, family):
    assert endpoint_family(path) == family


@pytest.mark.parametrize(
    ("path", "chatgpt", "api_key"),
    [
        ("/v1/responses", True, True),
        ("/v1/models", False, True),  # the Codex backend lists models in its own shape
        ("/v1/chat/completions", True, True),
        ("/v1/responses/resp_1", False, True),
        ("/v1/embeddings", False, True),
        ("/backend-api/codex/responses", True, False),
        ("/backend-api/wham/usage", False, False),
        ("/other", False, False),
    ],
)
def test_can_serve(path, chatgpt, api_key):
    assert can_serve(acct("c"), path) is chatgpt
    assert can_serve(acct("k", kind=AccountKind.API_KEY), path) is api_key


def test_chat_translation_flag():
    assert not can_serve(acct("c"), "/v1/chat/completions", translate_chat=False)
    assert can_serve(acct("k", kind=AccountKind.API_KEY), "/v1/chat/completions", translate_chat=False)
    sel = choose([acct("c")], path="/v1/chat/completions", translate_chat=False)
    assert reasons(sel) == {"c": "endpoint"}


# ------------------------------------------------------------------ filters


def test_each_filter_and_reason():
    accounts = [
        acct("disabled", enabled=False, auth_blocked=True),
        acct("apikey", kind=AccountKind.API_KEY),
        acct("blocked", auth_blocked=True, auth_error="invalid_grant"),
        acct("cooling"),
        acct("model"),
        acct("p_full"),
        acct("s_full"),
        acct("ok"),
    ]
    health = {
        "cooling": hl("cooling", cooldown_until=NOW + 5, cooldown_reason="rate limited"),
        "model": hl("model", model_cooldowns={"gpt-5.5": NOW + 60, "other": NOW + 99}),
        "p_full": hl("p_full", p=100, p_reset=NOW + 10),
        "s_full": hl("s_full", s=100.0),
    }
    sel = choose(accounts, health, path="/backend-api/codex/responses")
    assert ids(sel) == ["ok"]
    assert reasons(sel) == {
        "disabled": "disabled",
        "apikey": "endpoint",
        "blocked": "auth_blocked",
        "cooling": "cooldown",
        "model": "model_cooldown",
        "p_full": "usage_exhausted",
        "s_full": "usage_exhausted",
    }
    by_id = {r.account_id: r for r in sel.skipped}
    assert by_id["cooling"].until == NOW + 5 and by_id["cooling"].detail == "rate limited"
    assert by_id["model"].until == NOW + 60
    assert by_id["p_full"].until == NOW + 10 and "5-hour" in by_id["p_full"].detail
    assert by_id["blocked"].detail == "invalid_grant"
    assert by_id["cooling"].label == "cooling"


def test_expired_cooldowns_and_resets_do_not_filter():
    health = {
        "a": hl("a", cooldown_until=NOW, model_cooldowns={"gpt-5.5": NOW - 1}, p=100, p_reset=NOW - 1),
    }
    assert ids(choose([acct("a")], health)) == ["a"]


def test_model_cooldown_only_for_that_model():
    health = {"a": hl("a", model_cooldowns={"gpt-5.5": NOW + 60})}
    assert ids(choose([acct("a")], health, model="gpt-4o")) == ["a"]
    assert ids(choose([acct("a")], health, model=None)) == ["a"]


def test_pinned_by_id_or_upstream_id():
    accounts = [acct("a", upstream_account_id="up-a"), acct("b", upstream_account_id="up-b")]
    assert ids(choose(accounts, pinned_account_id="b")) == ["b"]
    sel = choose(accounts, pinned_account_id="up-a")
    assert ids(sel) == ["a"] and reasons(sel) == {"b": "not_pinned"}
    assert ids(choose(accounts, pinned_account_id="nobody")) == []


def test_pinned_reports_earlier_filter_first():
    accounts = [acct("a", enabled=False), acct("b")]
    sel = choose(accounts, pinned_account_id="a")
    assert ids(sel) == [] and reasons(sel) == {"a": "disabled", "b": "not_pinned"}


def test_missing_health_means_healthy():
    assert ids(choose([acct("a")], {})) == ["a"]


# ------------------------------------------------------------------ balanced order


def test_paid_before_free_and_unknown_counts_as_paid():
    accounts = [acct("free", plan="free"), acct("unknown", plan="unknown"), acct("pro", plan="pro")]
    assert ids(choose(accounts)) == ["pro", "unknown", "free"]


def test_free_first_flips():
    accounts = [acct("pro", plan="pro"), acct("free", plan="Free")]
    assert ids(choose(accounts, settings=PoolSettings(free_first=True))) == ["free", "pro"]


def test_weekly_before_five_hour():
    accounts = [acct("a"), acct("b")]
    health = {"a": hl("a", s=50, p=0), "b": hl("b", s=10, p=90)}
    assert ids(choose(accounts, health)) == ["b", "a"]


def test_five_hour_breaks_weekly_tie():
    accounts = [acct("a"), acct("b")]
    health = {"a": hl("a", s=10, p=60), "b": hl("b", s=10, p=20)}
    assert ids(choose(accounts, health)) == ["b", "a"]


def test_unknown_usage_after_known():
    accounts = [acct("unknown"), acct("known")]
    health = {"known": hl("known", s=99, p=99)}
    assert ids(choose(accounts, health)) == ["known", "unknown"]


def test_label_breaks_ties():
    accounts = [acct("1", label="zeta"), acct("2", label="Alpha")]
    assert ids(choose(accounts)) == ["2", "1"]


def test_reset_window_counts_as_unused():
    accounts = [acct("a"), acct("b")]
    health = {"a": hl("a", s=80, s_reset=NOW - 1), "b": hl("b", s=10, s_reset=NOW + 100)}
    assert ids(choose(accounts, health)) == ["a", "b"]


def test_paid_beats_usage():
    accounts = [acct("free", plan="free"), acct("paid")]
    health = {"free": hl("free", s=0, p=0), "paid": hl("paid", s=95, p=95)}
    assert ids(choose(accounts, health)) == ["paid", "free"]


# ------------------------------------------------------------------ sequential


SEQ = PoolSettings(mode="sequential", sequential_threshold=90)


def test_sequential_keeps_current_below_threshold():
    accounts = [acct("a"), acct("b")]
    health = {"a": hl("a", p=10, s=10), "b": hl("b", p=89, s=80)}
    sel = choose(accounts, health, settings=SEQ, current_account_id="b")
    assert ids(sel) == ["b", "a"]
    assert next_current_account(sel, "b") == "b"


def test_sequential_switches_at_threshold():
    accounts = [acct("a"), acct("b"), acct("c")]
    health = {"a": hl("a", p=50, s=50), "b": hl("b", p=90, s=0), "c": hl("c", p=10, s=20)}
    sel = choose(accounts, health, settings=SEQ, current_account_id="b")
    assert ids(sel) == ["c", "a", "b"]
    assert next_current_account(sel, "b") == "c"


def test_sequential_unknown_usage_counts_as_below():
    accounts = [acct("a"), acct("b")]
    health = {"a": hl("a", p=1, s=1)}
    assert ids(choose(accounts, health, settings=SEQ, current_account_id="b")) == ["b", "a"]


def test_sequential_current_not_a_candidate():
    accounts = [acct("a"), acct("b", enabled=False)]
    sel = choose(accounts, settings=SEQ, current_account_id="b")
    assert ids(sel) == ["a"]
    assert next_current_account(sel, "b") == "a"


def test_sequential_no_candidates_keeps_current():
    sel = choose([acct("a", enabled=False)], settings=SEQ, current_account_id="a")
    assert next_current_account(sel, "a") == "a"


def test_balanced_ignores_current():
    accounts = [acct("a"), acct("b")]
    health = {"a": hl("a", p=1, s=1), "b": hl("b", p=5, s=5)}
    sel = choose(accounts, health, current_account_id="b")
    assert ids(sel) == ["a", "b"]
    assert next_current_account(sel, "b") == "b"


# ------------------------------------------------------------------ affinity


@pytest.mark.parametrize("settings", [PoolSettings(), SEQ])
def test_affinity_goes_first_in_both_modes(settings):
    accounts = [acct("a"), acct("b"), acct("c")]
    health = {"a": hl("a", p=1, s=1), "b": hl("b", p=50, s=50), "c": hl("c", p=20, s=20)}
    sel = choose(accounts, health, settings=settings, affinity_account_id="b", current_account_id="a")
    assert ids(sel) == ["b", "a", "c"]


def test_affinity_does_not_move_sequential_current():
    accounts = [acct("a"), acct("b")]
    sel = choose(accounts, settings=SEQ, affinity_account_id="b", current_account_id="a")
    assert ids(sel) == ["b", "a"]
    assert next_current_account(sel, "a") == "a"


def test_unhealthy_affinity_is_ignored():
    accounts = [acct("a"), acct("b")]
    health = {"b": hl("b", cooldown_until=NOW + 30)}
    sel = choose(accounts, health, affinity_account_id="b")
    assert ids(sel) == ["a"] and reasons(sel) == {"b": "cooldown"}


def test_sequential_prefers_accounts_below_threshold():
    accounts = [acct("cur"), acct("nearly_full"), acct("fresh")]
    health = {
        "cur": hl("cur", p=95, s=30),
        "nearly_full": hl("nearly_full", p=92, s=0),
        "fresh": hl("fresh", p=5, s=60),
    }
    sel = choose(accounts, health, settings=SEQ, current_account_id="cur")
    assert ids(sel) == ["fresh", "nearly_full", "cur"]


def test_sequential_all_past_threshold_uses_balanced_order():
    accounts = [acct("a"), acct("b")]
    health = {"a": hl("a", p=95, s=10), "b": hl("b", p=91, s=50)}
    sel = choose(accounts, health, settings=SEQ, current_account_id="b")
    assert ids(sel) == ["a", "b"]
