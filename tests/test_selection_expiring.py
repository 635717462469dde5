"""`prefer_expiring_windows` ("use it or lose it"): the ordering rule of `selection.expiring_rank`, pure.

Every case builds accounts with the latest usage observation (what routing has in memory) and checks
the candidate order `choose_candidates` returns.
"""

from __future__ import annotations

import pytest
from accountpool.models import Account, AccountHealth, AccountKind, PoolSettings, UsageWindow
from accountpool.routing.selection import choose_candidates, expiring_rank

NOW = 1_700_000_000.0
H = 3600.0
WEEK_MIN = 10_080


def acct(id_: str, *, kind: AccountKind = AccountKind.CHATGPT, plan: str = "plus", **kw) -> Account:
    return Account(id=id_, label=id_, kind=kind, plan=plan, **kw)


def hl(id_: str, *, weekly: float | None, resets_in_h: float | None, five_h: float | None = 10,
       minutes: int | None = WEEK_MIN, **kw) -> AccountHealth:
    """Weekly window `weekly` % used, resetting in `resets_in_h` hours; 5-hour window `five_h` %."""
    return AccountHealth(
        account_id=id_, usage_seen_at=NOW - 60,
        primary=UsageWindow(used_percent=five_h, window_minutes=300, reset_at=NOW + 2 * H),
        secondary=UsageWindow(used_percent=weekly, window_minutes=minutes,
                              reset_at=None if resets_in_h is None else NOW + resets_in_h * H),
        **kw)


# A login whose week ends in 6 h with 40 % left (it used 60 % in 162 h: ~0.37 %/h, ~62 % at reset).
EXPIRING = dict(weekly=60, resets_in_h=6)
# A login at 10 % whose week has 5 days to go: its quota keeps.
FRESH = dict(weekly=10, resets_in_h=120)

CASES = [
    ("expiring weekly quota goes first", [("fresh", FRESH), ("expiring", EXPIRING)], {}, ["expiring", "fresh"]),
    ("setting off: plain weekly-use order", [("fresh", FRESH), ("expiring", EXPIRING)],
     {"prefer_expiring_windows": False}, ["fresh", "expiring"]),
    ("two expiring: the sooner reset first", [("later", dict(weekly=20, resets_in_h=20)),
                                              ("sooner", dict(weekly=50, resets_in_h=3)), ("fresh", FRESH)],
     {}, ["sooner", "later", "fresh"]),
    # 99 % after 148 h is ~0.67 %/h: it reaches 100 % in ~1.5 h, before its reset in 20 h: nothing to save
    ("runs out before its reset anyway", [("fresh", FRESH), ("burning", dict(weekly=99, resets_in_h=20))],
     {}, ["fresh", "burning"]),
    ("reset more than 24 h away", [("fresh", FRESH), ("far", dict(weekly=60, resets_in_h=30))],
     {}, ["fresh", "far"]),
    ("its 5-hour window is nearly full", [("fresh", FRESH), ("hot", dict(EXPIRING, five_h=92))],
     {}, ["fresh", "hot"]),
    ("window length unknown: no forecast, no preference", [("fresh", FRESH), ("unknown", dict(EXPIRING, minutes=None))],
     {}, ["fresh", "unknown"]),
    ("reset time unknown", [("fresh", FRESH), ("unknown", dict(weekly=60, resets_in_h=None))],
     {}, ["fresh", "unknown"]),
    ("reset already passed: 0 % used, ordinary", [("fresh", FRESH), ("reset", dict(weekly=60, resets_in_h=-1))],
     {}, ["reset", "fresh"]),  # (first because its stale 60 % counts as 0 %, not because it expires)
]


@pytest.mark.parametrize(("name", "setup", "settings", "order"), CASES, ids=[c[0] for c in CASES])
def test_expiring_order(name, setup, settings, order):
    accounts = [acct(i) for i, _ in setup]
    health = {i: hl(i, **kw) for i, kw in setup}
    sel = choose_candidates(accounts, health, settings=PoolSettings(**settings), path="/v1/responses",
                            model="gpt-5.5", now=NOW)
    assert [a.id for a in sel.candidates] == order


def choose(accounts, health, **kw):
    settings = kw.pop("settings", PoolSettings())
    return [a.id for a in choose_candidates(accounts, health, settings=settings, path="/v1/responses",
                                            model="gpt-5.5", now=NOW, **kw).candidates]


def test_plan_rank_comes_before_expiry():
    accounts = [acct("free-expiring", plan="free"), acct("paid-fresh")]
    health = {"free-expiring": hl("free-expiring", **EXPIRING), "paid-fresh": hl("paid-fresh", **FRESH)}
    assert choose(accounts, health) == ["paid-fresh", "free-expiring"]
    # free_first flips the plan rank, and then the expiring free account leads its rank
    accounts.append(acct("free-fresh", plan="free"))
    health["free-fresh"] = hl("free-fresh", **FRESH)
    assert choose(accounts, health, settings=PoolSettings(free_first=True)) == [
        "free-expiring", "free-fresh", "paid-fresh"]


def test_api_keys_never_count_as_expiring():
    accounts = [acct("key", kind=AccountKind.API_KEY), acct("fresh")]
    health = {"key": hl("key", weekly=None, resets_in_h=6), "fresh": hl("fresh", **FRESH)}
    health["key"] = health["key"].model_copy(update={"secondary": UsageWindow(
        used_percent=60, window_minutes=WEEK_MIN, reset_at=NOW + 6 * H)})
    assert expiring_rank(accounts[0], health["key"], NOW) == (1, 0.0)
    assert choose(accounts, health) == ["fresh", "key"]


def test_never_overrides_filters_affinity_pinning_or_sequential_current():
    accounts = [acct("expiring"), acct("fresh"), acct("other")]
    health = {"expiring": hl("expiring", **EXPIRING), "fresh": hl("fresh", **FRESH),
              "other": hl("other", weekly=30, resets_in_h=100)}
    assert choose(accounts, health) == ["expiring", "fresh", "other"]
    # disabled / cooling down: filtered before any ordering
    disabled = [acct("expiring", enabled=False), *accounts[1:]]
    assert choose(disabled, health) == ["fresh", "other"]
    cooling = dict(health, expiring=health["expiring"].model_copy(update={"cooldown_until": NOW + 60}))
    assert choose(accounts, cooling) == ["fresh", "other"]
    # session affinity and pinning win
    assert choose(accounts, health, affinity_account_id="other")[0] == "other"
    assert choose(accounts, health, pinned_account_id="fresh") == ["fresh"]
    # sequential mode keeps its current account; the expiring one is the best *other*
    sequential = PoolSettings(mode="sequential")
    assert choose(accounts, health, settings=sequential, current_account_id="other") == ["other", "expiring", "fresh"]
