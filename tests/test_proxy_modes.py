"""Regular proxy mode with mitmproxy's CA trusted by the client, and what is not pooled (docs/BEHAVIOUR.md §5).

No test may reach the real OpenAI or ChatGPT hosts: the pooled hosts are served by the relay
(the flow is pointed at it before mitmproxy connects anywhere, and the addon sets
`connection_strategy=lazy`, which keeps mitmproxy from opening an upstream connection for the CONNECT itself), and the
simulator's request log proves where each request went.
"""

from __future__ import annotations

import re
import ssl

import httpx
import openai
from harness import Mitmdump, sse_events

KEY_A = "sk-test-alpha-aaaaaaaaaaaaaaaaaaaa"
REGULAR = {"pool_upstream_hosts": "api.openai.com,chatgpt.com"}  # the addon makes connections lazy itself


def regular_client(proxy: Mitmdump, *, proxy_url: str | None = None, **kw) -> httpx.Client:
    ca = ssl.create_default_context(cafile=str(proxy.confdir / "mitmproxy-ca-cert.pem"))
    return httpx.Client(proxy=proxy_url or proxy.url, verify=ca,
                        trust_env=False, timeout=30, **kw)


def test_regular_mode_pools_the_openai_host(pool_env, sim):
    pool_env.add_key("a", KEY_A)
    with Mitmdump(pool_env, mode="regular", options=REGULAR) as proxy:
        auth = {"authorization": f"Bearer {pool_env.client_key}"}
        with regular_client(proxy, headers=auth) as client:
            r = client.post("https://api.openai.com/v1/responses",
                            json={"model": "gpt-5.5", "input": "hi", "stream": True})
            assert r.status_code == 200, r.text
            assert r.headers["x-accountpool-account"] == "a (...aaaa)"
            assert sse_events(r.text)[-1][0] == "response.completed"
            # Wrong key: refused by the proxy, nothing upstream.
            r = client.post("https://api.openai.com/v1/responses", json={"model": "gpt-5.5", "input": "hi"},
                            headers={"authorization": "Bearer wrong"})
            assert r.status_code == 401
        # The SDK, pointed at the real base URL, through the proxy.
        http_client = regular_client(proxy)
        sdk = openai.OpenAI(api_key=pool_env.client_key, max_retries=0, http_client=http_client)
        assert sdk.responses.create(model="gpt-5.5", input="hi").output_text
        requests = sim.requests()
        assert [(q["path"], q["auth"]) for q in requests] == [("/v1/responses", f"Bearer {KEY_A}")] * 2
        # Flows show the URL the client used, but mitmproxy only ever connected to the loopback relay.
        connects = re.findall(r"server connect (\S+)", proxy.log_text())
        assert connects and all(c.startswith("127.0.0.1:") for c in connects), connects


def test_regular_mode_client_key_as_proxy_credentials(pool_env, sim):
    """Codex CLI keeps its own Authorization (its ChatGPT login) and authenticates to the proxy instead."""
    pool_env.add_login("work", "acct-work")
    with Mitmdump(pool_env, mode="regular", options=REGULAR) as proxy:
        proxy_url = f"http://pool:{pool_env.client_key}@127.0.0.1:{proxy.port}"
        own = {"authorization": "Bearer codex-own-login-token-0123456789", "chatgpt-account-id": "someone-else"}
        with regular_client(proxy, proxy_url=proxy_url, headers=own) as client:
            body = {"model": "gpt-5.5", "input": "hi", "stream": True, "store": False, "instructions": "x"}
            r = client.post("https://chatgpt.com/backend-api/codex/responses", json=body)
            assert r.status_code == 200, r.text
            assert r.headers["x-accountpool-account"].startswith("work")
            r = client.post("https://api.openai.com/v1/responses", json=body)
            assert r.status_code == 200, r.text
        codex = sim.requests()
        assert [q["path"] for q in codex] == ["/backend-api/codex/responses"] * 2
        assert {q["account_header"] for q in codex} == {"acct-work"}
        everything = repr([q["headers"] for q in codex])
        assert "codex-own-login-token" not in everything and pool_env.client_key not in everything
        assert "proxy-authorization" not in everything
        # Wrong proxy credentials: 401, nothing upstream.
        bad = f"http://pool:wrong@127.0.0.1:{proxy.port}"
        with regular_client(proxy, proxy_url=bad, headers=own) as client:
            r = client.post("https://chatgpt.com/backend-api/codex/responses", json=body)
            assert r.status_code == 401
        assert len(sim.requests()) == 2


def test_regular_mode_other_hosts_pass_through_untouched(pool_env, sim):
    pool_env.add_key("a", KEY_A)
    with Mitmdump(pool_env, mode="regular", options=REGULAR) as proxy, regular_client(proxy) as client:
        # The simulator's own address is not a pooled host: the client's request goes there unchanged.
        r = client.post(f"{sim.url}/v1/responses", json={"model": "gpt-5.5", "input": "hi"},
                        headers={"authorization": f"Bearer {KEY_A}", "x-custom": "kept"})
        assert r.status_code == 200
        assert "x-accountpool-account" not in r.headers
        [q] = sim.requests()
        assert q["auth"] == f"Bearer {KEY_A}" and q["headers"]["x-custom"] == "kept"


def test_the_addon_makes_connections_lazy(pool_env, sim):
    """Without `connection_strategy=lazy` on the command line, the addon sets it: mitmproxy never connects to a
    reverse target (here one that cannot be resolved) before a request is seen. tests/test_readme_commands.py
    runs the README's own commands."""
    pool_env.add_key("a", KEY_A)
    with Mitmdump(pool_env, mode="reverse:https://api.openai.invalid") as proxy, proxy.client() as client:
        r = client.post("/v1/responses", json={"model": "gpt-5.5", "input": "hi"})
        assert r.status_code == 200, r.text
    assert "setting connection_strategy=lazy" in proxy.log_text()
    assert "api.openai.invalid" not in "".join(re.findall(r"server connect \S+", proxy.log_text()))
