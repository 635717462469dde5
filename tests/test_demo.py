"""`accountpool demo` starts everything, serves traffic, prints where to look, and stops cleanly."""

import re
import sqlite3
import subprocess
import sys

import httpx
from harness import free_port


def test_demo_runs_end_to_end(tmp_path):
    proxy_port, ds_port = free_port(), free_port()
    db = tmp_path / "pool.db"
    proc = subprocess.Popen(
        [sys.executable, "-m", "accountpool.cli", "--db", str(db), "demo", "--seconds", "8",
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
