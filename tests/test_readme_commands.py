"""The README's commands for real use, run exactly as written (issue 12 §1 and its proof).

The commands are read out of README.md, so a change there changes what runs here. They run in a
fresh directory with a pool at the default `data/pool.db`, `HOME` pointing there too (mitmproxy's CA
in `~/.mitmproxy`), and the venv's `bin` on PATH (where `pip install` puts `accountpool`, `mitmdump`,
`mitmweb` and `datasette`). Nothing is rewritten: not the ports, not the reverse target
(`https://api.openai.com`, which this machine cannot reach — the case a new user hit: every client was
dropped before the addon ran). The pool's API keys point at the simulated upstream, so no request can
reach a real OpenAI host, and the logs prove mitmproxy never connected to one.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from accountpool.admin.local_ports import wait_for_port
from harness import BIN, Pool, find_secrets

README = Path(__file__).resolve().parent.parent / "README.md"
KEY = "sk-test-readme-rrrrrrrrrrrrrrrrrrrr"
BODY = {"model": "gpt-5.5", "input": "hi"}


def readme_block(heading: str) -> list[str]:
    """The shell commands of the first ```bash block under `heading`, continuation lines joined."""
    text = README.read_text()
    start = text.index(f"\n{heading}\n")
    block = re.search(r"```bash\n(.*?)```", text[start:], re.S)
    assert block, f"no bash block under {heading!r}"
    commands = block.group(1).replace("\\\n", " ").splitlines()
    return [re.sub(r"\s+#.*$", "", c).strip() for c in commands if c.strip()]


@pytest.fixture
def home(tmp_path: Path, sim) -> Iterator[tuple[Path, Pool, dict[str, str]]]:
    (tmp_path / "data").mkdir()
    pool = Pool(tmp_path / "data", sim)
    pool.add_key("work", KEY)
    env = {**os.environ, "HOME": str(tmp_path), "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
           "PYTHONUNBUFFERED": "1", "BROWSER": "true"}  # BROWSER: mitmweb's "open a browser" runs /bin/true
    for name in ("ACCOUNTPOOL_DB", "ACCOUNTPOOL_SECRETS", "HTTPS_PROXY", "HTTP_PROXY", "ALL_PROXY"):
        env.pop(name, None)
    yield tmp_path, pool, env


@contextmanager
def running(command: str, cwd: Path, env: dict[str, str], port: int, log: Path) -> Iterator[subprocess.Popen]:
    """`command` through bash as written, until the block ends; its output goes to `log`."""
    with open(log, "wb") as fh:
        proc = subprocess.Popen(["bash", "-c", command], cwd=cwd, env=env, stdout=fh, stderr=subprocess.STDOUT,
                                start_new_session=True)
        try:
            wait_for_port(port, proc, timeout=60, log=log)
            yield proc
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(15)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait(5)


def never_connected_to_openai(log: Path) -> None:
    text = log.read_text(errors="replace")
    connects = re.findall(r"server connect (\S+)", text)
    assert not any("openai.com" in c or "chatgpt.com" in c for c in connects), connects
    assert find_secrets(text, [KEY]) == []


def test_reverse_mode_command_as_written(home, sim):
    cwd, pool, env = home
    [command] = [c for c in readme_block("### Reverse mode (OpenAI SDK, curl, Codex CLI with a custom provider)")
                 if c.startswith("mitmdump")]
    assert "reverse:https://api.openai.com" in command and "connection_strategy" not in command
    log = cwd / "mitmdump.log"
    with running(command, cwd, env, 8080, log), \
            httpx.Client(base_url="http://127.0.0.1:8080", trust_env=False, timeout=30) as client:
        auth = {"authorization": f"Bearer {pool.client_key}"}
        r = client.post("/v1/responses", json=BODY, headers=auth)
        assert r.status_code == 200, r.text
        assert r.headers["x-accountpool-account"] == "work (...rrrr)"
        r = client.post("/v1/responses", json={**BODY, "stream": True}, headers=auth)
        assert r.status_code == 200 and "response.completed" in r.text
        # The README's SDK snippet, pointed the same way.
        from openai import OpenAI

        sdk = OpenAI(base_url="http://127.0.0.1:8080/v1", api_key=pool.client_key, max_retries=0,
                     http_client=httpx.Client(trust_env=False))
        assert sdk.responses.create(model="gpt-5.5", input="hi").output_text
    assert [q["path"] for q in sim.requests()] == ["/v1/responses"] * 3
    assert "setting connection_strategy=lazy" in log.read_text()
    never_connected_to_openai(log)


def test_regular_mode_commands_as_written(home, sim):
    cwd, pool, env = home
    commands = readme_block("### Regular mode (the client trusts mitmproxy's CA)")
    [proxy_command] = [c for c in commands if c.startswith("mitmdump")]
    exports = [c for c in commands if c.startswith("export ")]
    assert len(exports) == 2 and commands[-1].startswith("codex"), commands
    log = cwd / "mitmdump.log"
    # The client side: the README's exports as written, then (instead of an interactive `codex`) a client
    # that honours the same variables: httpx with trust_env reads HTTPS_PROXY and SSL_CERT_FILE.
    probe = ("import httpx, json; r = httpx.post('https://api.openai.com/v1/responses', json=" + repr(BODY) +
             ", timeout=30, headers={'authorization': 'Bearer codex-own-login-token'}); "
             "print(json.dumps({'status': r.status_code, 'account': r.headers.get('x-accountpool-account')}))")
    client_script = "; ".join([*exports, f"exec {BIN / 'python'} -c {_quote(probe)}"])
    with running(proxy_command, cwd, {**env, "ACCOUNTPOOL_CLIENT_KEY": pool.client_key}, 8080, log):
        # mitmproxy 12 may write its CA just after it starts listening; a person reads it after that anyway.
        ca, deadline = cwd / ".mitmproxy" / "mitmproxy-ca-cert.pem", time.monotonic() + 15
        while not ca.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        out = subprocess.run(["bash", "-c", client_script], cwd=cwd, capture_output=True, text=True, timeout=60,
                             env={**env, "ACCOUNTPOOL_CLIENT_KEY": pool.client_key})
        assert out.returncode == 0, out.stderr[-2000:]
        assert '"status": 200' in out.stdout and "work (...rrrr)" in out.stdout, out.stdout
    [q] = sim.requests()
    assert q["auth"] == f"Bearer {KEY}"  # the client's own Authorization was replaced, never forwarded
    never_connected_to_openai(log)


def test_mitmweb_command_as_written(home, sim):
    cwd, pool, env = home
    [command] = [c for c in readme_block("### mitmweb") if c.startswith("mitmweb")]
    log = cwd / "mitmweb.log"
    with running(command, cwd, env, 8080, log) as proc:
        wait_for_port(8081, proc, timeout=60, log=log)
        with httpx.Client(base_url="http://127.0.0.1:8080", trust_env=False, timeout=30) as client:
            r = client.post("/v1/responses", json=BODY, headers={"authorization": f"Bearer {pool.client_key}"})
            assert r.status_code == 200, r.text
        token = re.search(r"token=([\w-]+)", log.read_text())  # mitmweb 11.1+ prints its API token
        headers = {"authorization": f"Bearer {token.group(1)}"} if token else {}
        deadline = time.monotonic() + 10
        while True:
            flows = httpx.get("http://127.0.0.1:8081/flows", headers=headers, trust_env=False, timeout=10)
            assert flows.status_code == 200, flows.text[:300]
            if flows.json() or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        [flow] = flows.json()
        assert flow["request"]["path"] == "/v1/responses" and flow["response"]["status_code"] == 200
        assert "served by work (...rrrr)" in flow["comment"]
        assert find_secrets(flows.text, [KEY, pool.client_key]) == []
    never_connected_to_openai(log)


def test_datasette_command_as_written(home, sim):
    cwd, _pool, env = home
    [command] = [c for c in readme_block("### Datasette") if c.startswith("datasette")]
    log = cwd / "datasette.log"
    with running(command, cwd, env, 8001, log):
        deadline = time.monotonic() + 30
        while not (sign_in := re.search(r"(http://\S+/-/auth-token\?token=\S+)", log.read_text())):
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        with httpx.Client(base_url="http://127.0.0.1:8001", trust_env=False, timeout=30) as anonymous:
            for path in ("/-/pool", "/", "/pool", "/pool/requests", "/pool/client_keys.json",
                         "/pool?sql=select+*+from+accounts"):
                assert anonymous.get(path).status_code == 403, path  # installing the plugin publishes nothing
        with httpx.Client(trust_env=False, timeout=30, follow_redirects=True) as browser:
            browser.get(sign_in.group(1))
            page = browser.get("http://127.0.0.1:8001/-/pool/accounts")
            assert page.status_code == 200 and "work" in page.text
            assert find_secrets(page.text, [KEY]) == []


def _quote(text: str) -> str:
    return "'" + text.replace("'", "'\"'\"'") + "'"



def test_install_and_set_up_commands_as_written(tmp_path, sim):
    """`accountpool init` and the "Set up a pool" block, line by line, in a fresh directory and HOME. (The
    `pip install` line is what `make test` itself runs to build the venv these tests run from.)"""
    env = {**os.environ, "HOME": str(tmp_path), "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    for name in ("ACCOUNTPOOL_DB", "ACCOUNTPOOL_SECRETS"):
        env.pop(name, None)
    (tmp_path / ".codex").mkdir()
    auth = sim.add_chatgpt_login("acct-readme", email="me@example.com", plan="plus")
    (tmp_path / ".codex" / "auth.json").write_text(json.dumps(auth))
    (tmp_path / "key.txt").write_text("sk-test-readme-key-from-a-file-0000\n")
    install = [c for c in readme_block("## Install") if c.startswith("accountpool")]
    setup = readme_block("## Set up a pool")
    assert install == ["accountpool init"] and len(setup) == 8, (install, setup)
    outputs = []
    for command in [*install, *setup]:
        out = subprocess.run(["bash", "-c", command], cwd=tmp_path, env=env, capture_output=True, text=True,
                             timeout=60)
        assert out.returncode == 0, (command, out.stdout, out.stderr)
        outputs.append(out.stdout + out.stderr)
    listing = outputs[1 + setup.index("accountpool list")]
    for label in ("work", "personal", "me@example.com"):
        assert label in listing or label.split("@")[0] in listing, listing
    exported = json.loads(outputs[1 + setup.index("accountpool export")])
    everything = "\n".join(outputs)
    tokens = [auth["tokens"][t] for t in ("access_token", "refresh_token", "id_token")]
    for secret in ("sk-test-readme-key-from-a-file-0000", "sk-your-key", *tokens):
        assert secret not in everything, "a secret was printed"
    assert exported and (tmp_path / "data" / "pool.db").exists()
    assert (tmp_path / "data" / "pool.secrets").stat().st_mode & 0o077 == 0
