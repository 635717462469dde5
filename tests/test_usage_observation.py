"""How often the router stores what an answer's usage headers say (routing/router.py, USAGE_REFRESH_S)."""

from __future__ import annotations

import pytest
from accountpool.routing import router as router_module
from accountpool.routing.router import USAGE_REFRESH_S, Router, RouterConfig
from accountpool.storage.metrics_writer import HealthUpdate
from accountpool.storage.pool_view import PoolView
from multidict import CIMultiDict, CIMultiDictProxy


class Ops:
    """Stands in for the metrics writer: the router only submits to it."""

    def __init__(self) -> None:
        self.ops: list[object] = []

    def submit(self, op: object) -> None:
        self.ops.append(op)


def answer(**headers: str) -> CIMultiDictProxy[str]:
    return CIMultiDictProxy(CIMultiDict({k.replace("_", "-"): v for k, v in headers.items()}))


@pytest.fixture
def observed(pool_env, monkeypatch):
    key = pool_env.add_key("key", "sk-test-observe-aaaaaaaaaaaaaaaa")
    login = pool_env.add_login("login", "acct-observe")
    view = PoolView(pool_env.db_path, pool_env.secrets_path)
    ops = Ops()
    router = Router(view, ops, RouterConfig(chatgpt_base="http://127.0.0.1:9", token_url="http://127.0.0.1:9"),
                    client=None)  # type: ignore[arg-type]
    clock = [1_000_000.0]
    monkeypatch.setattr(router_module.time, "time", lambda: clock[0])
    accounts = {a.id: a for a in view.accounts}
    yield router, view, ops, clock, accounts[key], accounts[login]
    view.close()


def test_rate_limit_counters_are_stored_at_most_once_a_second(observed):
    router, view, ops, clock, key, _ = observed
    for remaining in (4999, 4998, 4997):
        router._observe_usage(key, answer(x_ratelimit_limit_requests="5000",
                                          x_ratelimit_remaining_requests=str(remaining)))
        clock[0] += 0.2
    assert view.health_of(key.id).ratelimit.remaining_requests == 4999
    assert sum(isinstance(op, HealthUpdate) for op in ops.ops) == 1
    clock[0] += USAGE_REFRESH_S
    router._observe_usage(key, answer(x_ratelimit_limit_requests="5000", x_ratelimit_remaining_requests="4990"))
    assert view.health_of(key.id).ratelimit.remaining_requests == 4990
    assert sum(isinstance(op, HealthUpdate) for op in ops.ops) == 2


def test_a_window_whose_used_percent_moves_is_taken_from_that_very_answer(observed):
    router, view, ops, clock, _, login = observed
    router._observe_usage(login, answer(x_codex_primary_used_percent="49", x_codex_primary_window_minutes="300",
                                        x_codex_primary_reset_after_seconds="600"))
    clock[0] += 0.1
    # Same used % and length, a reset time 0.1 s later: nothing new to store.
    router._observe_usage(login, answer(x_codex_primary_used_percent="49", x_codex_primary_window_minutes="300",
                                        x_codex_primary_reset_after_seconds="600"))
    assert sum(isinstance(op, HealthUpdate) for op in ops.ops) == 1
    clock[0] += 0.1
    router._observe_usage(login, answer(x_codex_primary_used_percent="55", x_codex_primary_window_minutes="300"))
    assert view.health_of(login.id).primary.used_percent == 55.0
    assert sum(isinstance(op, HealthUpdate) for op in ops.ops) == 2
