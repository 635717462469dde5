"""`accountpool demo` starts everything, serves traffic, prints where to look, and stops cleanly."""

import os
import re
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import httpx
from accountpool.admin.local_ports import port_open
from harness import free_port


def test_demo_runs_end_to_end(tmp_path):
    proxy_port, ds_port = free_port(), free_port()
    db = tmp_path / "pool.db"
    proc = subprocess.Popen(
        [sys.executable, "-m", "accountpool.admin.cli", "--db", str(db), "demo", "--seconds", "10",
         "--proxy-port", str(proxy_port), "--datasette-port", str(ds_port)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    out = []
    sign_in = None
    assert proc.stdout is not None
    for line in proc.stdout:
        out.append(line)
        if "sign in as root" in line:
            sign_in = re.search(r"(http://\S+)", line).group(1)
            # While the demo runs: the dashboard answers for root and the proxy serves with the printed key.
            with httpx.Client(trust_env=False, follow_redirects=True, timeout=30) as client:
                client.get(sign_in)
                page = client.get(f"http://127.0.0.1:{ds_port}/-/pool")
                assert page.status_code == 200 and "accountpool" in page.text.lower()
        if "client key:" in line:
            key = line.rsplit("client key:", 1)[1].strip()
            r = httpx.post(f"http://127.0.0.1:{proxy_port}/v1/responses", json={"model": "gpt-5.5", "input": "hi"},
                           headers={"authorization": f"Bearer {key}"}, trust_env=False, timeout=30)
            assert r.status_code == 200, r.text
    assert proc.wait(60) == 0, "".join(out)
    text = "".join(out)
    assert sign_in and "/-/auth-token?token=" in sign_in
    answered = int(re.search(r"demo traffic: (\d+) answered", text).group(1))
    assert answered > 0
    demo_db = tmp_path / "demo" / "pool.db"
    with sqlite3.connect(demo_db) as conn:
        rows = conn.execute("select count(*) from requests").fetchone()[0]
        failovers = conn.execute("select count(*) from requests where attempts > 1").fetchone()[0]
    assert rows >= answered
    assert failovers > 0  # the scripted faults make the demo show failover
    assert_demo_shows_what_the_product_is_for(demo_db)


def assert_demo_shows_what_the_product_is_for(demo_db: Path) -> None:
    """Upstream faults of several classes on several accounts, absorbed by failover; the demo client almost never
    sees a failure; the stale-key client is refused (401) but never throttled; more than one account serves.

    Counts, not timings: the faults that make these true are scripted at start-up and met by the first few
    requests (`build_demo_pool`), so a slow machine sends fewer requests but not a different story."""
    with sqlite3.connect(demo_db) as conn:
        absorbed = conn.execute(
            "select a.class, a.account_id from attempts a join requests r on r.id = a.request_id "
            "where a.class != 'ok' and r.outcome = 'ok'").fetchall()
        outcomes = dict(conn.execute("select outcome, count(*) from requests group by outcome").fetchall())
        client = conn.execute("select count(*), coalesce(sum(outcome != 'ok'), 0) from requests "
                              "where client_key_label = 'demo-client'").fetchone()
        refusals = dict(conn.execute("select status, count(*) from requests where outcome = 'client_auth_failed' "
                                     "group by status").fetchall())
        served = conn.execute("select count(distinct account_id) from requests where outcome = 'ok'").fetchone()[0]
    classes, accounts = {c for c, _ in absorbed}, {a for _, a in absorbed}
    assert len(classes) >= 3 and len(accounts) >= 2, absorbed
    assert client[0] >= 10 and client[1] / client[0] < 0.05, (client, outcomes)
    # The stale key: visible (401), and harmless: never a 429 `client_auth_throttled`, for it or anyone.
    assert refusals.get(401, 0) >= 1 and set(refusals) == {401}, refusals
    assert served >= 2


def test_make_demo_as_written_until_ctrl_c():
    """The README's first command, `make demo`, exactly: it sets up (the venv is current, so that is quick),
    serves on the documented ports until Ctrl-C, and then stops everything it started."""
    root = Path(__file__).resolve().parent.parent
    env = {k: v for k, v in os.environ.items() if k not in ("ACCOUNTPOOL_DB", "ACCOUNTPOOL_SECRETS", "MAKEFLAGS")}
    proc = subprocess.Popen(["make", "demo"], cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)
    out: list[str] = []
    key = sign_in = None
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            out.append(line)
            if "client key:" in line:
                key = line.rsplit("client key:", 1)[1].strip()
            if "sign in as root" in line:
                sign_in = re.search(r"(http://\S+)", line).group(1)
            if "Demo traffic is flowing" in line:
                break
        assert key and sign_in, "".join(out)
        r = httpx.post("http://127.0.0.1:8080/v1/responses", json={"model": "gpt-5.5", "input": "hi"},
                       headers={"authorization": f"Bearer {key}"}, trust_env=False, timeout=30)
        assert r.status_code == 200, r.text
        with httpx.Client(trust_env=False, follow_redirects=True, timeout=30) as browser:
            browser.get(sign_in)
            assert browser.get("http://127.0.0.1:8001/-/pool").status_code == 200
    finally:
        os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in the terminal does
        rest, _ = proc.communicate(timeout=60)
        out.append(rest)
    text = "".join(out)
    assert re.search(r"demo traffic: \d+ answered", text), text[-2000:]
    for port in (8080, 8001):
        assert not port_open(port), f"port {port} still open after Ctrl-C"
