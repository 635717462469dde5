"""The addon raises the collector's young-generation threshold while it runs (proxy/gc_tuning.py).

Why it matters is a benchmark's figure (benchmarks/README.md, fifth pass: full collections of a heap
of 650,000 objects stalled the loop with 2,000 streams open); what is tested here is that the addon
sets the threshold it is configured with, never lowers one set higher, and gives the old one back.
"""

from __future__ import annotations

import gc

import pytest
from accountpool.proxy import gc_tuning
from accountpool.proxy.mitm_addon import AccountPool
from accountpool.storage import schema
from accountpool.storage.secrets_store import SecretsStore
from mitmproxy.test import taddons


@pytest.fixture(autouse=True)
def python_defaults():
    """Every test starts from CPython's thresholds and leaves the process as it found it."""
    before = gc.get_threshold()
    gc.set_threshold(700, 10, 10)
    yield
    gc.set_threshold(*before)


def test_raises_only_the_young_generation_and_restores_all_three():
    previous = gc_tuning.raise_young_threshold(10_000)
    assert previous == (700, 10, 10)
    assert gc.get_threshold() == (10_000, 10, 10)
    gc_tuning.restore(previous)
    assert gc.get_threshold() == (700, 10, 10)


@pytest.mark.parametrize("threshold, start", [
    (0, (700, 10, 10)),  # 0: the collector is left alone
    (500, (700, 10, 10)),  # never lowered
    (10_000, (20_000, 10, 10)),  # a higher one someone else set is kept
    (10_000, (0, 10, 10)),  # automatic collection switched off stays off
])
def test_leaves_the_collector_alone(threshold, start):
    gc.set_threshold(*start)
    assert gc_tuning.raise_young_threshold(threshold) is None
    gc_tuning.restore(None)
    assert gc.get_threshold() == start


@pytest.fixture
def pool_db(tmp_path):
    schema.connect(tmp_path / "pool.db").close()
    SecretsStore(tmp_path / "pool.secrets").close()
    return tmp_path / "pool.db"


async def test_the_addon_sets_it_while_running_follows_the_option_and_restores_it_when_done(pool_db):
    addon = AccountPool()
    with taddons.context(addon) as tctx:
        tctx.configure(addon, pool_db=str(pool_db))
        assert gc.get_threshold()[0] == 700  # nothing before `running`: loading the script changes nothing
        addon.running()
        assert gc.get_threshold() == (gc_tuning.DEFAULT_YOUNG_THRESHOLD, 10, 10)
        tctx.configure(addon, pool_gc_threshold=50_000)
        assert gc.get_threshold() == (50_000, 10, 10)
        tctx.configure(addon, pool_gc_threshold=0)
        assert gc.get_threshold() == (700, 10, 10)
        tctx.configure(addon, pool_gc_threshold=20_000)
        closing = addon.done()
        assert gc.get_threshold() == (700, 10, 10)
        if closing is not None:
            await closing
