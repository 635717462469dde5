"""The wrong-key throttle (issue 12 §4): a valid key is never its business; wrong keys are counted per key and
per source address, and the refusal says which. Pure."""

from __future__ import annotations

from accountpool.proxy.client_auth import FailedAuthThrottle, key_fingerprint


def fail(t: FailedAuthThrottle, fingerprint: str | None, source: str, times: int, at: float) -> None:
    for i in range(times):
        assert t.check(fingerprint, source, at + i * 0.01) is None
        t.failed(fingerprint, source, at + i * 0.01)


def test_one_stale_key_is_throttled_by_its_fingerprint_everywhere():
    t = FailedAuthThrottle(limit=3, window_s=10)
    stale = key_fingerprint("ap-stale")
    fail(t, stale, "10.0.0.1", 2, 100)
    fail(t, stale, "10.0.0.2", 1, 100)  # the same wrong key from elsewhere counts towards the same limit
    refused = t.check(stale, "10.0.0.3", 101)
    assert refused is not None and "this client key was refused 3 times" in refused.message
    assert "valid client key are not affected" in refused.message
    assert 1 <= refused.retry_after_s <= 10
    # Another wrong key from a fresh address is not throttled by it.
    assert t.check(key_fingerprint("ap-other"), "10.0.0.4", 101) is None


def test_many_unknown_keys_from_one_address_throttle_that_address_only():
    t = FailedAuthThrottle(limit=3, window_s=10)
    for i in range(3):
        fail(t, key_fingerprint(f"ap-guess-{i}"), "127.0.0.1", 1, 100 + i)
    fail(t, None, "127.0.0.2", 2, 100)  # missing keys count per address too
    refused = t.check(key_fingerprint("ap-guess-new"), "127.0.0.1", 103)
    assert refused is not None and "came from 127.0.0.1" in refused.message
    assert t.check(None, "127.0.0.1", 103) is not None
    assert t.check(key_fingerprint("ap-guess-new"), "127.0.0.2", 103) is None  # 2 < limit there


def test_the_window_slides_and_retry_after_is_when_it_opens():
    t = FailedAuthThrottle(limit=3, window_s=10)
    for at in (100, 104, 108):
        t.failed(None, "s", at)
    refused = t.check(None, "s", 109)
    assert refused is not None and refused.retry_after_s == 1  # the failure at 100 leaves the window at 110
    assert t.check(None, "s", 110.5) is None  # two left in the window: below the limit again
    t.failed(None, "s", 110.5)
    refused = t.check(None, "s", 111)
    assert refused is not None and refused.retry_after_s == 3  # now the one at 104 must leave (at 114)


def test_fingerprints_do_not_hold_the_key():
    fp = key_fingerprint("ap-secret-key-value")
    assert "secret" not in fp and len(fp) == 32 and fp == key_fingerprint("ap-secret-key-value")
