"""Bad input (issue 7 §4): each gets a clear error, the proxy keeps serving, nothing is lost.

Covered elsewhere and not repeated here: invalid options refuse to start with a message
(tests/test_addon_options.py::test_invalid_options_refuse_to_start), unknown ids and actions in dashboard forms
are a message in the page (tests/test_dashboard.py::test_unknown_account_id_is_a_message_not_an_error), a
corrupt secrets store through the CLI is one line (tests/test_secrets_store.py::test_corrupt_store_through_the_cli),
bad CLI input is one line and writes nothing (tests/test_cli.py::test_bad_input_is_one_clean_line_and_writes_nothing).
"""

from __future__ import annotations

import os
import shutil
import socket

import pytest
from harness import Mitmdump, drop_root_file_override, find_secrets

KEY_A = "sk-test-alpha-aaaaaaaaaaaaaaaaaaaa"
KEY_B = "sk-test-bravo-bbbbbbbbbbbbbbbbbbbb"
GOOD = {"model": "gpt-5.5", "input": "hi"}
MAX_BODY = 4096


def assert_openai_error(r, status: int, code: str | None = None, fragment: str = "") -> dict:
    assert r.status_code == status, (r.status_code, r.text[:300])
    error = r.json()["error"]
    assert isinstance(error["message"], str) and error["message"] and "type" in error and "code" in error
    if code is not None:
        assert error["code"] == code, error
    assert fragment in error["message"], error
    return error


def raw_request(port: int, head: bytes, body: bytes = b"", timeout: float = 10) -> bytes:
    """Send bytes on a fresh connection; return whatever comes back before the server closes or goes quiet."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        try:
            s.sendall(head + body)
        except OSError:
            pass  # the proxy may close while we still send
        out = b""
        try:
            while chunk := s.recv(65536):
                out += chunk
                if b"\r\n\r\n" in out and b"content-length: " in out.lower():
                    head_end = out.index(b"\r\n\r\n") + 4
                    length = int(out.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
                    if len(out) - head_end >= length:
                        break
        except OSError:
            pass
        return out


def test_bad_requests_get_clear_errors_and_the_proxy_keeps_serving(pool_env, sim):
    pool_env.add_key("a", KEY_A)
    pool_env.add_key("b", KEY_B)
    pool_env.add_login("login", "acct-bad")
    with Mitmdump(pool_env, options={"pool_max_body": MAX_BODY}) as proxy, proxy.client() as client:
        served = 0

        def good() -> None:
            nonlocal served
            for stream in (False, True):
                r = client.post("/v1/responses", json={**GOOD, "stream": stream})
                assert r.status_code == 200, r.text
                served += 1

        good()
        json_type = {"content-type": "application/json"}
        bad = [
            (client.post("/v1/responses", content=b'{"model": "gpt-5.5", "input":', headers=json_type), 400,
             "invalid_request", "not valid JSON"),
            (client.post("/v1/responses", content=b"\xff\xfe{not utf-8", headers=json_type), 400,
             "invalid_request", "not valid JSON"),
            (client.post("/v1/responses", json=["model", "gpt-5.5"]), 400, "invalid_request", "must be a JSON object"),
            (client.post("/v1/responses", json="just a string"), 400, "invalid_request", "must be a JSON object"),
            (client.post("/v1/responses", json={"model": 5, "input": "x"}), 400, "invalid_request",
             "`model` must be a string"),
            (client.post("/v1/responses", json={"model": ["gpt-5.5"], "input": "x"}), 400, "invalid_request",
             "`model` must be a string"),
            (client.post("/v1/responses", json={**GOOD, "stream": "yes"}), 400, "invalid_request",
             "`stream` must be a boolean"),
            (client.post("/v1/chat/completions", json={"model": "gpt-5.5", "messages": [], "stream": 1}), 400,
             "invalid_request", "`stream` must be a boolean"),
            # Over pool_max_body, announced by Content-Length and sent chunked (no length up front).
            (client.post("/v1/responses", json={**GOOD, "input": "x" * MAX_BODY}), 413, "request_too_large",
             f"exceeds the limit of {MAX_BODY}"),
            (client.post("/v1/responses", headers=json_type,
                         content=iter([b'{"model": "gpt-5.5", "input": "'] + [b"y" * 1000] * 6 + [b'"}'])),
             413, "request_too_large", f"exceeds the limit of {MAX_BODY}"),
            # Header floods: too many, or too big in total.
            (client.post("/v1/responses", json=GOOD, headers={f"x-flood-{i}": "v" * 20 for i in range(200)}), 431,
             "request_headers_too_large", "request headers exceed the limit"),
            (client.post("/v1/responses", json=GOOD, headers={"x-huge": "h" * 70_000}), 431,
             "request_headers_too_large", "exceed the limit"),
        ]
        for r, status, code, fragment in bad:
            assert_openai_error(r, status, code, fragment)
            good()
        upstream_before = len(sim.requests())
        assert upstream_before == served  # no bad request reached an upstream

        # A header flood far beyond anything reasonable: mitmproxy or the addon answers 4xx or closes; no 5xx.
        head = (b"POST /v1/responses HTTP/1.1\r\nhost: x\r\nauthorization: Bearer " + pool_env.client_key.encode()
                + b"\r\n" + b"".join(b"x-f%d: %s\r\n" % (i, b"z" * 100) for i in range(5000))
                + b"content-type: application/json\r\ncontent-length: 2\r\n\r\n")
        answer = raw_request(proxy.port, head, b"{}")
        assert answer == b"" or answer.startswith((b"HTTP/1.1 4", b"HTTP/1.0 4")), answer[:200]
        good()

        # An unknown path goes to an API-key account; the upstream's 404 comes back as is, with no failover.
        before = len(sim.requests())
        r = client.get("/v1/does-not-exist")
        assert_openai_error(r, 404, None, "Invalid URL")
        assert r.headers["x-accountpool-attempts"] == "1"
        assert [q["path"] for q in sim.requests()[before:]] == ["/v1/does-not-exist"]
        good()

        # Nothing lost: every request has its row, bad ones recorded as such; no account was cooled down.
        refused = len(bad) + (b" 431 " in answer[:20])  # the addon (not mitmproxy) refused the raw flood
        total = served + refused + 1
        rows = pool_env.wait_rows("select outcome, status from requests", total)
        assert len(rows) == total
        assert len([r for r in rows if r["outcome"] == "bad_client_request"]) == refused
        assert [r["status"] for r in rows if r["outcome"] == "invalid_request"] == [404]
        cooled = pool_env.query("select account_id from account_health where cooldown_until is not null "
                                "or last_error is not null")
        assert cooled == []
    assert find_secrets(proxy.log_text(), [*pool_env.all_secrets(), pool_env.client_key]) == []


def copy_pool(pool_env, name: str):
    d = pool_env.dir / name
    d.mkdir()
    shutil.copy(pool_env.db_path, d / "pool.db")
    shutil.copy(pool_env.secrets_path, d / "pool.secrets")
    return d


def test_corrupt_database_or_secrets_store_refuses_to_start(pool_env, sim):
    pool_env.add_key("a", KEY_A)
    corrupt_db = copy_pool(pool_env, "corrupt-db")
    (corrupt_db / "pool.db").write_bytes(os.urandom(16384))
    corrupt_secrets = copy_pool(pool_env, "corrupt-secrets")
    original = (corrupt_secrets / "pool.secrets").read_bytes()
    (corrupt_secrets / "pool.secrets").write_bytes(original[:100] + os.urandom(len(original) - 100))
    for d, message in ((corrupt_db, "is not a usable pool database: file is not a database"),
                       (corrupt_secrets, "is unreadable or corrupt")):
        code, output = Mitmdump(pool_env, options={"pool_db": str(d / "pool.db")}).run_to_exit()
        assert code != 0
        assert "accountpool: cannot open the pool" in output and message in output, output[-2000:]
        assert find_secrets(output, pool_env.all_secrets()) == []
    # The real pool was never touched and still serves.
    with Mitmdump(pool_env) as proxy, proxy.client() as client:
        assert client.post("/v1/responses", json=GOOD).status_code == 200


@pytest.mark.parametrize("what", ["file", "directory"])
def test_read_only_database_refuses_to_start(pool_env, sim, what):
    """Decision: refuse to start, rather than serve while every metrics row and shared cooldown is lost."""
    pool_env.add_key("a", KEY_A)
    d = copy_pool(pool_env, f"ro-{what}")
    db = d / "pool.db"
    before = db.read_bytes()
    os.chmod(db if what == "file" else d, 0o444 if what == "file" else 0o555)
    try:
        proxy = Mitmdump(pool_env, options={"pool_db": str(db)})
        proxy.args = drop_root_file_override(proxy.args)
        proxy.log = pool_env.dir / f"ro-{what}.log"
        code, output = proxy.run_to_exit()
    finally:
        os.chmod(d, 0o755)
        os.chmod(db, 0o644)
    assert code != 0
    # A read-only file opens and fails the write probe; a read-only directory already fails to open (WAL mode
    # needs its -wal/-shm files there). Either way: one message naming the file and the reason.
    assert (f"the pool database {db} is not writable" if what == "file" else
            f"cannot open the pool: {db} is not a usable pool database") in output, output[-2000:]
    assert "attempt to write a readonly database" in output
    assert db.read_bytes() == before
