"""A first end-to-end check: a real mitmdump with the addon, a rate-limited first account."""

from harness import Mitmdump


def test_failover_from_rate_limited_account(pool_env, sim):
    first = pool_env.add_key("a-first", "sk-test-first-aaaaaaaaaaaaaaaa")
    second = pool_env.add_key("b-second", "sk-test-second-bbbbbbbbbbbbbbb")
    sim.script("sk-test-first-aaaaaaaaaaaaaaaa", [{"kind": "rate_limit", "retry_after": 7}])
    with Mitmdump(pool_env) as proxy, proxy.client() as client:
        r = client.post("/v1/responses", json={"model": "gpt-5.5", "input": "hello"})
        assert r.status_code == 200, r.text
        assert r.headers["x-accountpool-attempts"] == "2"
        assert r.headers["x-accountpool-account"].startswith("b-second")
        auths = [q["auth"] for q in sim.requests()]
        assert auths == ["Bearer sk-test-first-aaaaaaaaaaaaaaaa", "Bearer sk-test-second-bbbbbbbbbbbbbbb"]
        rows = pool_env.wait_rows("select * from requests", 1)
        assert rows[0]["account_id"] == second and rows[0]["attempts"] == 2
        attempts = pool_env.query("select * from attempts order by n")
        assert [(a["account_id"], a["class"]) for a in attempts] == [(first, "rate_limited"), (second, "ok")]
