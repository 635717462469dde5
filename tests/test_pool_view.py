"""The proxy's in-memory pool view: what a reload leaves in it."""

from __future__ import annotations

import time

from accountpool.models import AccountHealth
from accountpool.routing import selection
from accountpool.storage import store
from accountpool.storage.pool_view import PoolView


def test_every_account_has_health_so_selection_builds_none_per_request(pool_env, monkeypatch):
    first = pool_env.add_key("first", "sk-test-view-first-aaaaaaaaaaaa")
    view = PoolView(pool_env.db_path, pool_env.secrets_path)
    try:
        assert set(view.health) == {first}  # no observation stored yet, an entry all the same
        built: list[str] = []

        class Counting(AccountHealth):
            def __init__(self, **data):
                built.append(data["account_id"])
                super().__init__(**data)

        monkeypatch.setattr(selection, "AccountHealth", Counting)
        for _ in range(3):
            chosen = selection.choose_candidates(view.accounts, view.health, settings=view.settings,
                                                 path="/v1/responses", model=None, now=time.time())
            assert [a.id for a in chosen.candidates] == [first]
        assert built == []

        # An account added elsewhere gets its entry at the next reload; an observation stored later by another
        # process replaces the blank one (nothing of the blank is merged over it).
        second = pool_env.add_key("second", "sk-test-view-second-bbbbbbbbbbb")
        assert view.refresh()
        assert set(view.health) == {first, second}
        db = pool_env.db()
        store.save_health(db, [AccountHealth(account_id=second, cooldown_until=time.time() + 60,
                                             cooldown_reason="rate limited", cooldown_class="rate_limited")])
        db.close()
        assert view.refresh()
        assert view.health[second].cooldown_class == "rate_limited"
    finally:
        view.close()
