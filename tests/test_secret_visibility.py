"""No upstream credential in mitmproxy's views (docs/BEHAVIOUR.md §15): mitmweb live, `-w` flow files, --flow-detail.

Traffic mixes everything that handles credentials: an API key, a ChatGPT login whose token is
refreshed (so rotated tokens are in play), failover, streaming and not, a client-key failure.
The scan covers every secret the pool ever held (`Pool.all_secrets`) and the client key.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time

import httpx
from harness import Mitmdump, find_secrets, free_port, openai_client
from mitmproxy import io as mitm_io
from mitmproxy import version as mitmproxy_version

KEY_A = "sk-test-alpha-aaaaaaaaaaaaaaaaaaaa"
KEY_B = "sk-test-bravo-bbbbbbbbbbbbbbbbbbbb"


def drive_traffic(pool_env, sim, proxy: Mitmdump) -> None:
    sim.script(KEY_A, [{"kind": "rate_limit", "retry_after": 1}])
    sim.script("acct-login", [{"kind": "expired"}])
    with proxy.client() as client:
        for stream in (True, False):
            r = client.post("/v1/responses", json={"model": "gpt-5.5", "input": "hi", "stream": stream})
            assert r.status_code == 200, r.text
        r = client.post("/v1/responses", json={"model": "gpt-5.5", "input": "hi"},
                        headers={"authorization": "Bearer wrong-key"})
        assert r.status_code == 401
        r = client.get("/v1/models")
        assert r.status_code == 200
    # The login (refreshed on its first 401) serves the SDK's stream.
    db = pool_env.db()
    from accountpool.storage import store

    for label in ("a", "b"):
        store.set_enabled(db, store.get_account(db, label).id, False, actor="tests")
    db.close()
    events = list(openai_client(proxy).responses.create(model="gpt-5.5", input="hi", stream=True))
    assert events[-1].type == "response.completed"
    assert sim.refresh_count("acct-login") == 1


def setup_pool(pool_env) -> None:
    pool_env.add_key("a", KEY_A)
    pool_env.add_key("b", KEY_B)
    pool_env.add_login("login", "acct-login")


def secrets_of(pool_env) -> list[str]:
    return [*pool_env.all_secrets(), pool_env.client_key]


def flow_file_text(path) -> tuple[str, list]:
    with open(path, "rb") as fh:
        flows = list(mitm_io.FlowReader(fh).stream())
    parts = []
    for f in flows:
        parts.append(repr(f.get_state()))
    return "\n".join(parts), flows


def test_flow_file_and_flow_detail_output_hold_no_credential(pool_env, sim):
    setup_pool(pool_env)
    path = pool_env.dir / "flows.mitm"
    with Mitmdump(pool_env, extra_args=["-w", str(path), "--set", "flow_detail=4"]) as proxy:
        drive_traffic(pool_env, sim, proxy)
    text, flows = flow_file_text(path)
    assert len(flows) >= 5
    raw = path.read_bytes()
    secrets = secrets_of(pool_env)
    assert find_secrets(raw, secrets) == [] and find_secrets(text, secrets) == []
    assert find_secrets(proxy.log_text(), secrets) == []
    # Which account served is visible, as label and last four characters.
    served = [f.response.headers.get("x-accountpool-account") for f in flows if f.response]
    assert "b (...bbbb)" in served
    assert any(f.comment.startswith("accountpool: served by b (...bbbb)") for f in flows)
    [login] = pool_env.query("select secret_hint from accounts where label = 'login'")
    assert f"login (...{login['secret_hint']})" in served


MITMWEB_NEEDS_TOKEN = tuple(int(p) for p in mitmproxy_version.VERSION.split(".")[:2]) >= (11, 1)


class MitmwebWatcher:
    """Records every websocket broadcast of mitmweb and polls its flow API, while traffic runs."""

    def __init__(self, web_port: int, token: str | None = None) -> None:
        self.base = f"http://127.0.0.1:{web_port}"
        self.token = token
        self.auth = {"authorization": f"Bearer {token}"} if token else {}
        self.messages: list[str] = []
        self.polled: list[str] = []
        self.polls = 0
        self._stop = threading.Event()
        self._ws_ready = threading.Event()
        self._threads = [threading.Thread(target=self._ws, daemon=True),
                         threading.Thread(target=self._poll, daemon=True)]

    def __enter__(self) -> MitmwebWatcher:
        for t in self._threads:
            t.start()
        assert self._ws_ready.wait(15), "mitmweb's websocket did not open"
        return self

    def __exit__(self, *exc: object) -> None:
        deadline = time.monotonic() + 2
        n = len(self.messages)
        while time.monotonic() < deadline:  # wait until the stream of updates goes quiet
            time.sleep(0.2)
            if len(self.messages) == n:
                break
            n = len(self.messages)
        self._stop.set()
        for t in self._threads:
            t.join(10)

    def _ws(self) -> None:
        from tornado.websocket import websocket_connect

        async def run() -> None:
            query = f"?token={self.token}" if self.token else ""
            conn = await websocket_connect(self.base.replace("http", "ws") + "/updates" + query)
            self._ws_ready.set()
            while not self._stop.is_set():
                try:
                    msg = await asyncio.wait_for(conn.read_message(), 0.2)
                except TimeoutError:
                    continue
                if msg is None:
                    return
                self.messages.append(msg if isinstance(msg, str) else msg.decode("utf-8", "replace"))
            conn.close()

        asyncio.run(run())

    def _poll(self) -> None:
        with httpx.Client(base_url=self.base, trust_env=False, timeout=10, headers=self.auth) as web:
            while not self._stop.wait(0.02):
                self.poll_once(web)

    def poll_once(self, web: httpx.Client) -> None:
        flows = web.get("/flows").json()
        self.polled.append(json.dumps(flows))
        for f in flows:
            for part in ("request", "response"):
                r = web.get(f"/flows/{f['id']}/{part}/content.data")
                if r.status_code == 200:
                    self.polled.append(r.text)
        self.polled.append(web.get("/flows/dump").content.decode("utf-8", "replace"))
        self.polls += 1


def test_mitmweb_live_views_hold_no_credential(pool_env, sim):
    setup_pool(pool_env)
    web_port = free_port()
    path = pool_env.dir / "web-flows.mitm"
    # mitmweb 11.1+ (mitmproxy 12 on Python 3.12+) requires a token for its API; 11.0 has none.
    token = "accountpool-test-web-token" if MITMWEB_NEEDS_TOKEN else None
    proxy = Mitmdump(pool_env, tool="mitmweb", extra_args=[
        "--set", f"web_port={web_port}", "--set", "web_open_browser=false", "--set", "web_host=127.0.0.1",
        *(["--set", f"web_password={token}"] if token else []), "-w", str(path)])
    with proxy:
        from harness import wait_for_port

        wait_for_port(web_port, proxy.proc, log=proxy.log)
        with MitmwebWatcher(web_port, token) as watcher:
            drive_traffic(pool_env, sim, proxy)
            with httpx.Client(base_url=watcher.base, trust_env=False, timeout=10, headers=watcher.auth) as web:
                watcher.poll_once(web)  # one complete pass after the traffic, too
    secrets = secrets_of(pool_env)
    assert watcher.polls >= 2 and len(watcher.messages) >= 10
    live = "\n".join(watcher.messages)
    assert find_secrets(live, secrets) == []
    assert find_secrets("\n".join(watcher.polled), secrets) == []
    assert find_secrets(path.read_bytes(), secrets) == []
    assert find_secrets(proxy.log_text(), secrets) == []
    # mitmweb shows who served: the response header and the flow comment.
    assert "b (...bbbb)" in live
    assert "accountpool: served by b (...bbbb)" in live
