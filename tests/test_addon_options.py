"""Client keys (docs/BEHAVIOUR.md §4) and the addon's options: what a misconfigured proxy refuses to do."""

from __future__ import annotations

import os

import openai
import pytest
from harness import Mitmdump, openai_client
from helpers_pool import run_cli

KEY_A = "sk-test-alpha-aaaaaaaaaaaaaaaaaaaa"
BODY = {"model": "gpt-5.5", "input": "hi"}


def assert_client_auth_error(r) -> None:
    assert r.status_code == 401, r.text
    error = r.json()["error"]
    assert error["code"] == "invalid_client_key" and error["type"] == "invalid_request_error"
    assert "accountpool" in error["message"]


def test_client_keys_wrong_missing_revoked_and_header_forms(pool_env, sim):
    pool_env.add_key("a", KEY_A)
    with Mitmdump(pool_env) as proxy, proxy.client() as client:
        assert_client_auth_error(client.post("/v1/responses", json=BODY, headers={"authorization": "Bearer nope"}))
        r = client.post("/v1/responses", json=BODY, headers={"authorization": ""})
        assert_client_auth_error(r)
        assert "missing client key" in r.json()["error"]["message"]
        with pytest.raises(openai.AuthenticationError):
            openai_client(proxy, key="sk-pool-wrong").responses.create(**BODY)
        assert sim.requests() == []  # nothing reached the upstream
        # The three accepted header forms.
        for name, value in (("authorization", f"Bearer {pool_env.client_key}"), ("x-api-key", pool_env.client_key),
                            ("api-key", pool_env.client_key)):
            r = client.post("/v1/responses", json=BODY, headers={"authorization": "", name: value})
            assert r.status_code == 200, (name, r.text)
        assert len(sim.requests()) == 3
        for q in sim.requests():
            assert pool_env.client_key not in repr(q["headers"])
            assert "x-api-key" not in q["headers"] and "api-key" not in q["headers"]
        # Revoked with the CLI while the proxy runs: refused from the next request.
        result = run_cli(pool_env.db_path, "client-key", "revoke", "tests")
        assert result.returncode == 0, result.stderr
        assert_client_auth_error(client.post("/v1/responses", json=BODY))
        assert len(sim.requests()) == 3
        rows = pool_env.wait_rows("select * from requests where outcome = 'client_auth_failed'", 4)
        assert all(r["status"] == 401 and r["attempts"] == 0 for r in rows)


def test_client_keys_off_on_loopback(pool_env, sim):
    pool_env.add_key("a", KEY_A)
    with Mitmdump(pool_env, options={"pool_require_client_keys": False}) as proxy, proxy.client() as client:
        r = client.post("/v1/responses", json=BODY, headers={"authorization": ""})
        assert r.status_code == 200, r.text
        # A key the client sends anyway is still never forwarded.
        r = client.post("/v1/responses", json=BODY, headers={"authorization": "Bearer sk-client-own-key-123456"})
        assert r.status_code == 200
        assert all(q["auth"] == f"Bearer {KEY_A}" for q in sim.requests())


@pytest.mark.parametrize(("options", "listen_host", "message"), [
    ({"pool_max_attempts": 0}, "127.0.0.1", "pool_max_attempts must be between 1 and 20"),
    ({"pool_chatgpt_base_url": "chatgpt.com/backend-api"}, "127.0.0.1",
     "pool_chatgpt_base_url must be an http:// or https:// URL"),
    ({"pool_require_client_keys": False}, "0.0.0.0", "refusing to run without client keys while listening on"),
    ({"pool_db": "/nonexistent/pool.db"}, "127.0.0.1", "no pool database at /nonexistent/pool.db"),
    ({"pool_max_wait": -1}, "127.0.0.1", "pool_max_wait must be between 0 (off) and 100000"),
    ({"pool_max_waiting": -5}, "127.0.0.1", "pool_max_waiting must be between 0 (off) and 100000"),
    ({"pool_listen_backlog": -1}, "127.0.0.1", "pool_listen_backlog must be between 0 (off) and 100000"),
    ({"pool_gc_threshold": -1}, "127.0.0.1", "pool_gc_threshold must be between 0 (off) and 100000"),
])
def test_invalid_options_refuse_to_start(pool_env, options, listen_host, message):
    code, output = Mitmdump(pool_env, options=options, listen_host=listen_host).run_to_exit()
    assert code != 0
    assert message in output


def test_a_script_reload_frees_the_old_relay_and_keeps_serving(pool_env, sim):
    """Editing the script makes mitmproxy reload it: the old addon's `done` closes its relay and sessions
    (nothing left listening, nothing reported unclosed) and the new one serves at once."""
    import re
    import shutil
    import socket
    import time

    from harness import ADDON, wait_until

    pool_env.add_key("a", "sk-test-alpha-aaaaaaaaaaaaaaaaaaaa")
    script = pool_env.dir / "accountpool_script.py"
    shutil.copy(ADDON, script)
    proxy = Mitmdump(pool_env)
    proxy.args[proxy.args.index(str(ADDON))] = str(script)
    body = {"model": "gpt-5.5", "input": "hi", "stream": True}

    def relay_ports() -> list[str]:  # every loopback server mitmproxy connected to, but the simulator
        sim_port = sim.url.rsplit(":", 1)[1]
        return [p for p in re.findall(r"server connect 127\.0\.0\.1:(\d+)", proxy.log_text()) if p != sim_port]

    with proxy, proxy.client() as client:
        assert client.post("/v1/responses", json=body).status_code == 200
        [old_port] = relay_ports()
        later = time.time() + 5
        os.utime(script, (later, later))  # mitmproxy polls the script's mtime once a second
        wait_until(lambda: proxy.log_text().count("Loading script") >= 2, timeout=15)
        for stream in (True, False):
            r = client.post("/v1/responses", json={**body, "stream": stream}, headers={"connection": "close"})
            assert r.status_code == 200 and r.headers["x-accountpool-account"] == "a (...aaaa)"
        new_port = relay_ports()[-1]
        assert new_port != old_port
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", int(old_port)), timeout=2).close()
    log = proxy.log_text()  # after a clean shutdown too: the second addon's `done` ran at exit
    assert "Unclosed" not in log and "Traceback" not in log, log
