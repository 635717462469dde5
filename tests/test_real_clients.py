"""Real clients, unchanged, through a real mitmdump with the addon (issue 7 §6).

The first account is rate limited in every test, so each run shows a failover.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
from harness import Mitmdump, sse_events
from openai import OpenAI

FIRST = "sk-test-clients-first-aaaaaaaaaaaa"
SECOND = "sk-test-clients-second-bbbbbbbbbbb"
CODEX = Path(__file__).parent / ".codex-cli" / "node_modules" / ".bin" / "codex"


@pytest.fixture
def proxy(pool_env, sim):
    pool_env.add_key("a-first", FIRST)
    pool_env.add_key("b-second", SECOND)
    sim.script(FIRST, [{"kind": "rate_limit", "retry_after": 1, "count": None}])
    with Mitmdump(pool_env) as p:
        yield p


def served_by_second(sim) -> bool:
    auths = [r["auth"] for r in sim.requests() if r["path"].startswith("/v1/")]
    return auths[:1] == [f"Bearer {FIRST}"] and auths[-1] == f"Bearer {SECOND}"


def sdk(proxy, pool_env) -> OpenAI:
    return OpenAI(base_url=proxy.url + "/v1", api_key=pool_env.client_key, max_retries=0)


def test_openai_sdk_responses(proxy, pool_env, sim):
    client = sdk(proxy, pool_env)
    raw = client.responses.with_raw_response.create(model="gpt-5.5", input="hello sdk")
    assert raw.headers["x-accountpool-account"].startswith("b-second")
    assert raw.parse().output_text.startswith("Simulated reply")
    assert served_by_second(sim)
    with client.responses.stream(model="gpt-5.5", input="hello stream") as stream:
        text = "".join(e.delta for e in stream if e.type == "response.output_text.delta")
        final = stream.get_final_response()
    assert text == final.output_text and text.startswith("Simulated reply")
    assert final.usage.total_tokens > 0


def test_openai_sdk_chat_completions(proxy, pool_env, sim):
    client = sdk(proxy, pool_env)
    chat = client.chat.completions.create(model="gpt-5.5", messages=[{"role": "user", "content": "hi there"}])
    assert chat.choices[0].message.content.startswith("Simulated reply")
    chunks = list(client.chat.completions.create(
        model="gpt-5.5", messages=[{"role": "user", "content": "hi stream"}], stream=True,
        stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.startswith("Simulated reply")
    assert chunks[-1].usage is not None and chunks[-1].usage.total_tokens > 0
    assert served_by_second(sim)


def test_curl(proxy, pool_env, sim):
    curl = shutil.which("curl")
    if curl is None:
        pytest.skip("curl is not installed")
    out = subprocess.run(
        [curl, "-sS", "-N", f"{proxy.url}/v1/responses", "-H", f"Authorization: Bearer {pool_env.client_key}",
         "-H", "content-type: application/json", "-d", '{"model":"gpt-5.5","input":"hi curl","stream":true}'],
        capture_output=True, text=True, timeout=60, check=True).stdout
    names = [name for name, _ in sse_events(out)]
    assert names[0] == "response.created" and names[-1] == "response.completed"
    assert served_by_second(sim)


@pytest.mark.skipif(not CODEX.exists(), reason="Codex CLI not installed (make codex-cli installs it from npm)")
def test_codex_cli_exec(proxy, pool_env, sim, tmp_path):
    home = tmp_path / "codex-home"
    home.mkdir()
    provider = (f'model_providers.pool={{name="accountpool",base_url="{proxy.url}/v1",'
                f'env_key="ACCOUNTPOOL_CLIENT_KEY",wire_api="responses"}}')
    env = {**os.environ, "CODEX_HOME": str(home), "ACCOUNTPOOL_CLIENT_KEY": pool_env.client_key,
           "NO_COLOR": "1"}
    for var in ("OPENAI_API_KEY", "HTTPS_PROXY", "HTTP_PROXY", "https_proxy", "http_proxy"):
        env.pop(var, None)
    done = subprocess.run(
        [str(CODEX), "exec", "--skip-git-repo-check", "-c", "model_provider=pool", "-c", provider,
         "-m", "gpt-5.5", "say hello to the pool"],
        cwd=tmp_path, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "Simulated reply" in done.stdout
    assert served_by_second(sim)
    codex_calls = [r for r in sim.requests() if r["path"] == "/v1/responses"]
    assert all(r["body"].get("stream") is True for r in codex_calls)  # Codex streams
    assert pool_env.client_key not in str(sim.requests())
