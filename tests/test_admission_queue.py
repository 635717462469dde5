"""`admission_queue.py` (wait or refuse, FIFO wake-ups) and `trial_claims.py` (one trial across connections)."""

from __future__ import annotations

import asyncio
import time

import pytest
from accountpool.models import AccountHealth, SkipReason
from accountpool.routing.admission_queue import AdmissionQueue, earliest_available, refusal
from accountpool.storage import schema, store
from accountpool.storage.metrics_writer import HealthUpdate, MetricsWriter, TrialRelease
from accountpool.storage.trial_claims import TrialClaims

NOW = 1_000_000.0


def skip(reason: str, until: float | None = None) -> SkipReason:
    return SkipReason(account_id=reason, label=reason, reason=reason, until=until)


def test_only_limits_with_a_known_end_are_worth_waiting_for():
    skipped = [skip("disabled"), skip("auth_blocked"), skip("endpoint"), skip("cooldown", NOW + 9),
               skip("usage_exhausted", NOW + 5), skip("model_cooldown", NOW + 2), skip("cooldown", NOW - 1)]
    assert earliest_available(skipped, NOW) == NOW + 5
    assert earliest_available([skip("disabled"), skip("auth_blocked"), skip("cooldown", None)], NOW) is None
    # A cooldown after an auth failure or an upstream error is our guess, not a limit: not waited for.
    cooling = [SkipReason(account_id=c, label=c, reason="cooldown", until=NOW + n)
               for n, c in ((1, "auth"), (2, "upstream"), (3, "quota"), (4, "rate"))]
    classes = {"auth": "auth_failed", "upstream": "upstream_error", "quota": "quota_exceeded", "rate": "rate_limited"}
    assert earliest_available(cooling, NOW, classes) == NOW + 3
    assert earliest_available(cooling[:2], NOW, classes) is None


@pytest.mark.parametrize(("earliest", "wait_left", "waiting", "queued", "waits"), [
    (NOW + 3, 20, 0, False, True),
    (NOW + 3, 0, 0, False, False),      # pool_max_wait=0: today's 429 at once
    (NOW + 30, 20, 0, False, False),    # back later than the wait limit
    (None, 20, 0, False, False),        # nothing comes back at a known time (disabled, auth_blocked …)
    (NOW + 3, 20, 256, False, False),   # the queue is full
    (NOW + 3, 20, 256, True, True),     # … but a request already holding a place keeps it
    (NOW + 3, 2, 0, True, False),       # its remaining wait is too short
])
def test_refusal(earliest, wait_left, waiting, queued, waits):
    why = refusal(earliest, now=NOW, wait_left_s=wait_left, waiting=waiting, max_waiting=256, queued=queued)
    assert (why is None) is waits, why


def test_waiters_take_the_turn_in_arrival_order_and_leaving_frees_the_place():
    """Each waiter polls with its own short timeout (as the router's does, to notice a client that left);
    the turn must still go 0, 1, 2, … and never to two waiters at once."""
    async def scenario() -> tuple[list[int], int]:
        queue = AdmissionQueue()
        order: list[int] = []
        holding = {"now": 0, "max": 0}
        waiters = [queue.enter() for _ in range(5)]

        async def wait(n: int) -> None:
            while not await waiters[n].wait(0.01):   # the timeout fires many times before the turn comes
                pass
            holding["now"] += 1
            holding["max"] = max(holding["max"], holding["now"])
            order.append(n)
            await asyncio.sleep(0.005)                # re-running the selection takes a while
            holding["now"] -= 1
            if n % 2:
                queue.done_turn(waiters[n])           # found nothing: keeps its place, passes the turn
            else:
                waiters[n].leave()                    # has its account: leaves, the next one gets the turn

        tasks = [asyncio.create_task(wait(n)) for n in (3, 0, 4, 1, 2)]  # started out of order on purpose
        await asyncio.sleep(0.03)
        assert order == []                            # nothing moves before the pass
        queue.wake_at(time.monotonic() + 0.05)        # one timer starts the pass
        await asyncio.gather(*tasks)
        assert len(queue) == 2                        # 1 and 3 wait on
        for w in waiters:
            w.leave()
        assert len(queue) == 0
        return order, holding["max"]

    assert asyncio.run(scenario()) == ([0, 1, 2, 3, 4], 1)


def test_a_notify_during_a_pass_runs_another_pass_after_it():
    async def scenario() -> list[int]:
        queue = AdmissionQueue()
        a, b = queue.enter(), queue.enter()
        seen: list[int] = []
        queue.notify()
        assert await a.wait(1)
        seen.append(0)
        queue.notify()                                # e.g. a trial ended while `a` re-checks
        queue.done_turn(a)
        assert await b.wait(1)
        seen.append(1)
        queue.done_turn(b)
        assert await a.wait(1)                        # the second pass starts at the head again
        seen.append(0)
        queue.done_turn(a)
        assert await b.wait(1)
        seen.append(1)
        queue.done_turn(b)
        assert not await a.wait(0.02)                 # and then nothing until the next notify
        return seen

    assert asyncio.run(scenario()) == [0, 1, 0, 1]


def test_a_waiter_times_out_without_a_wake_up():
    async def scenario() -> bool:
        queue = AdmissionQueue()
        waiter = queue.enter()
        try:
            return await waiter.wait(0.01)
        finally:
            waiter.leave()

    assert asyncio.run(scenario()) is False


# ---------------------------------------------------------------- trial claims


def test_one_claim_wins_across_connections_until_released_or_expired(pool_paths):
    db_path, _ = pool_paths
    schema.connect(db_path).conn.close()
    one, two = TrialClaims(db_path, lease_s=30), TrialClaims(db_path, lease_s=30)
    try:
        now = time.time()
        owner = one.new_owner()
        assert one.claim_sync("acct", owner, now)
        assert not two.claim_sync("acct", two.new_owner(), now)
        assert not one.claim_sync("acct", one.new_owner(), now)
        # A process that died holding it does not wedge the account: the lease expires.
        assert two.claim_sync("acct", two.new_owner(), now + 31)
    finally:
        one.close()
        two.close()


def test_no_trial_while_the_stored_cooldown_is_still_running(pool_paths):
    # Another process's trial just failed and wrote a new cooldown: no second trial.
    db_path, _ = pool_paths
    db = schema.connect(db_path)
    now = time.time()
    store.save_health(db, [AccountHealth(account_id="acct", cooldown_until=now + 60, recovering=True)])
    db.close()
    claims = TrialClaims(db_path)
    try:
        assert not claims.claim_sync("acct", claims.new_owner(), now)
        assert claims.claim_sync("acct", claims.new_owner(), now + 61)
    finally:
        claims.close()


def test_release_goes_through_the_writer_after_the_health_outcome(pool_paths):
    db_path, _ = pool_paths
    schema.connect(db_path).conn.close()
    claims = TrialClaims(db_path)
    writer = MetricsWriter(db_path, flush_interval=0.01)
    writer.start()
    try:
        now = time.time()
        owner = claims.new_owner()
        assert claims.claim_sync("acct", owner, now)
        writer.submit(TrialRelease("acct", "someone-else"))  # not the owner: ignored
        writer.submit(HealthUpdate(AccountHealth(account_id="acct", recovering=True, recovery_at=now)))
        assert writer.flush()
        assert not claims.claim_sync("acct", claims.new_owner(), now)
        writer.submit(TrialRelease("acct", owner))
        assert writer.flush()
        db = schema.connect(db_path)
        [row] = db.query("select trial_until, trial_owner, recovering from account_health")
        db.close()
        assert row == {"trial_until": None, "trial_owner": None, "recovering": 1}  # the health upsert kept out
        assert claims.claim_sync("acct", claims.new_owner(), now)
    finally:
        writer.stop()
        claims.close()
