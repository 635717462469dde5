"""The addon's pure helpers and its hooks in isolation (mitmproxy.test.taddons / tflow)."""

from __future__ import annotations

import base64
import json

import pytest
from accountpool.proxy.addon_options import is_loopback
from accountpool.proxy.client_auth import bearer_value, proxy_auth_key
from accountpool.proxy.mitm_addon import POOLED, AccountPool, BadRequest, parse_body, session_key
from accountpool.storage import schema
from accountpool.storage.secrets_store import SecretsStore
from mitmproxy import exceptions, http
from mitmproxy.flow import Error
from mitmproxy.proxy.mode_specs import ProxyMode
from mitmproxy.test import taddons, tflow, tutils


def test_bearer_value():
    assert bearer_value("Bearer abc") == "abc"
    assert bearer_value("bearer   abc ") == "abc"
    assert bearer_value("abc") == "abc"  # x-api-key / api-key carry the bare key
    assert bearer_value("  ") == ""


def basic(user_pass: str) -> str:
    return "Basic " + base64.b64encode(user_pass.encode()).decode()


def test_proxy_auth_key():
    assert proxy_auth_key(basic("pool:sk-pool-123")) == "sk-pool-123"
    assert proxy_auth_key(basic("pool:with:colon")) == "with:colon"
    assert proxy_auth_key(basic("only-a-key")) == "only-a-key"
    assert proxy_auth_key("Bearer x") is None
    assert proxy_auth_key(None) is None and proxy_auth_key("") is None
    assert proxy_auth_key("Basic !!!not-base64") is None


def hdrs(**fields: str) -> http.Headers:
    return http.Headers([(k.encode(), v.encode()) for k, v in fields.items()])


def test_session_key_from_headers_then_body():
    h = hdrs(session_id="s1")
    assert session_key(h, None) == session_key(hdrs(session_id="s1"), {"prompt_cache_key": "other"})
    assert session_key(h, None) != session_key(hdrs(session_id="s2"), None)
    for name in ("x-session-id", "conversation-id"):
        assert session_key(hdrs(**{name: "s1"}), None) == session_key(h, None)
    by_cache = session_key(hdrs(), {"prompt_cache_key": "conv"})
    by_prev = session_key(hdrs(), {"previous_response_id": "conv"})
    assert by_cache and by_prev and by_cache != by_prev  # field name is part of the identity
    assert session_key(hdrs(), {"prompt_cache_key": ""}) is None
    assert session_key(hdrs(), {"prompt_cache_key": 5}) is None
    assert session_key(hdrs(), None) is None
    assert len(by_cache) == 24 and "conv" not in by_cache  # a hash, not the raw value


def test_parse_body():
    assert parse_body("GET", b'{"model": "x"}', "application/json") is None
    assert parse_body("POST", b"", "application/json") is None
    assert parse_body("POST", b"a=b", "application/x-www-form-urlencoded") is None
    assert parse_body("POST", b' {"model": "m", "stream": true}', "") == {"model": "m", "stream": True}
    assert parse_body("POST", b'{"stream": null}', "application/json") == {"stream": None}
    for content, message in ((b"{nope", "not valid JSON"), (b"[1, 2]", "must be a JSON object"),
                             (b'{"model": 5}', "`model` must be a string"),
                             (b'{"stream": "yes"}', "`stream` must be a boolean"),
                             (b"\xff\xfe{", "not valid JSON")):
        with pytest.raises(BadRequest) as info:
            parse_body("POST", content, "application/json")
        assert info.value.answer.status == 400
        assert message in json.loads(info.value.answer.body)["error"]["message"]


def test_is_loopback():
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert is_loopback("127.8.9.10")
    assert not is_loopback("0.0.0.0") and not is_loopback("::") and not is_loopback("192.168.1.2")
    assert not is_loopback("example.com")


@pytest.fixture
def pool_db(tmp_path):
    db = schema.connect(tmp_path / "pool.db")
    db.close()
    SecretsStore(tmp_path / "pool.secrets").close()
    return tmp_path / "pool.db"


def test_configure_validates_options(pool_db):
    addon = AccountPool()
    with taddons.context(addon) as tctx:
        tctx.configure(addon, pool_db=str(pool_db))
        assert addon.view is not None
        with pytest.raises(exceptions.OptionsError, match="between 1 and 20"):
            tctx.configure(addon, pool_max_attempts=0)
        with pytest.raises(exceptions.OptionsError, match="http:// or https://"):
            tctx.configure(addon, pool_oauth_token_url="auth.openai.com/oauth/token")
        with pytest.raises(exceptions.OptionsError, match="must be positive"):
            tctx.configure(addon, pool_connect_timeout=0)
        with pytest.raises(exceptions.OptionsError, match="refusing to run without client keys"):
            tctx.configure(addon, listen_host="0.0.0.0", pool_require_client_keys=False)
        tctx.configure(addon, listen_host="127.0.0.1", pool_require_client_keys=False)
        with pytest.raises(exceptions.OptionsError, match="cannot open the pool"):
            tctx.configure(addon, pool_db=str(pool_db.parent / "missing.db"))
        addon.done()


def pooled_flow(path: str = "/v1/responses", **headers: str) -> http.HTTPFlow:
    f = tflow.tflow(req=tutils.treq(host="api.openai.com", port=443, scheme=b"https", path=path.encode(),
                                    method=b"POST", content=b'{"model": "gpt-5.5"}'))
    f.client_conn.proxy_mode = ProxyMode.parse("regular")
    for k, v in headers.items():
        f.request.headers[k.replace("_", "-")] = v
    return f


async def test_requestheaders_scope_and_fail_closed_without_relay(pool_db, monkeypatch):
    """Before `running` (mitmproxy listens first) a pooled flow waits for the relay; if it never comes, the
    flow dies rather than going anywhere."""
    from accountpool.proxy import mitm_addon

    monkeypatch.setattr(mitm_addon, "STARTUP_WAIT_S", 0.05)
    addon = AccountPool()
    with taddons.context(addon) as tctx:
        tctx.configure(addon, pool_db=str(pool_db))
        other = pooled_flow("/dashboard")
        assert addon.requestheaders(other) is None
        assert POOLED not in other.metadata and other.request.host == "api.openai.com"
        f = pooled_flow(authorization="Bearer sk-pool-secret", x_api_key="sk-pool-secret")
        waiting = addon.requestheaders(f)
        assert waiting is not None and POOLED not in f.metadata  # nothing decided while it waits
        await waiting
        assert f.metadata[POOLED]
        # The client key is out of the flow before any view sees it, and with no relay the flow dies.
        assert "authorization" not in f.request.headers and "x-api-key" not in f.request.headers
        assert f.error is not None and f.error.msg == Error.KILLED_MESSAGE
        addon.done()


async def test_request_hook_that_raises_answers_500_and_never_forwards(pool_db):
    addon = AccountPool()
    with taddons.context(addon) as tctx:
        tctx.configure(addon, pool_db=str(pool_db), pool_fault_inject="request_hook")
        f = pooled_flow()
        f.metadata[POOLED] = True
        await addon.request(f)
        assert f.response is not None and f.response.status_code == 500
        error = json.loads(f.response.content)["error"]
        assert error["code"] == "accountpool_internal_error" and "not forwarded" in error["message"]
        addon.done()


def _admitted(json_body, stream):
    from accountpool.routing.admitted import Admitted

    return Admitted(request_id="req_1", started_at=0.0, t0=0.0, method="POST", path="/v1/responses",
                    endpoint="/v1/responses", client_label=None, headers=[], body=b"", json_body=json_body,
                    model=None, stream=stream, session_key=None, pinned_account=None)


def test_only_non_streamed_json_requests_are_answered_whole():
    from accountpool.proxy.relay import answers_whole

    assert answers_whole(_admitted({"model": "m"}, stream=False))
    assert not answers_whole(_admitted({"model": "m", "stream": True}, stream=True))
    assert not answers_whole(_admitted(None, stream=False))  # GET listings, file downloads: streamed through


async def test_buffered_responder_refuses_to_hold_more_than_its_limit():
    from accountpool.proxy.relay import BufferedResponder

    answer = BufferedResponder(limit=10)
    await answer.start(200, [("content-type", "application/json")])
    await answer.send(b"0123456789")
    assert answer.committed and not answer.client_gone
    await answer.send(b"x")
    assert answer.client_gone and "larger than 10 bytes" in answer.gone_reason
    whole = BufferedResponder()
    await whole.whole(404, [], b"{}")
    assert (whole.status, bytes(whole.body), whole.finished, whole.cut) == (404, b"{}", True, False)
    whole.abort()
    assert whole.cut


def test_relay_tickets_expire_and_a_burst_does_not_rescan_the_live_ones(monkeypatch):
    from accountpool.proxy import relay as relay_module

    clock = [1000.0]
    monkeypatch.setattr(relay_module.time, "monotonic", lambda: clock[0])
    relay = relay_module.Relay(router=None)  # type: ignore[arg-type]
    forgotten = relay.admit(_admitted({"model": "m"}, stream=True))  # its client left before the relay read it
    clock[0] += relay_module.TICKET_TTL_S + 1
    scans = []
    # A burst the relay has not picked up yet: 5,000 live tickets.
    live = []
    for _ in range(5_000):
        before = relay._tickets
        live.append(relay.admit(_admitted({"model": "m"}, stream=True)))
        if relay._tickets is not before:
            scans.append(len(relay._tickets))
    assert forgotten not in relay._tickets  # expired, pruned at the first scan
    assert all(t in relay._tickets for t in live)
    # The bound doubles with what stays live: a handful of scans, not one per admission past 1,000.
    assert len(scans) <= 4, scans
