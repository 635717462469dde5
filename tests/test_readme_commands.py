"""The README's commands for real use, run exactly as written (issue 12 §1 and its proof).

The commands are read out of README.md, so a change there changes what runs here. They run in a
fresh directory with a pool at the default `data/pool.db`, `HOME` pointing there too (mitmproxy's CA
in `~/.mitmproxy`), and the venv's `bin` on PATH (where `pip install` puts `accountpool`, `mitmdump`,
`mitmweb` and `datasette`; Codex CLI's, from `make codex-cli`, for the `codex` line), with the client
key in `$ACCOUNTPOOL_CLIENT_KEY` where the README reads it from there. Nothing is rewritten: not the
ports, not the reverse target (`https://api.openai.com`, which this machine cannot reach — the case a
new user hit: every client was dropped before the addon ran). The pool's API keys point at the simulated
upstream, so no pooled request can reach a real OpenAI host, and the logs prove mitmproxy never connected
to one (Codex CLI's own other traffic, which regular mode passes through by design, excepted).
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import select
import shutil
import signal
import struct
import subprocess
import termios
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
CODEX_BIN = Path(__file__).resolve().parent / ".codex-cli" / "node_modules" / ".bin"  # `make codex-cli`
CODEX_OWN_KEY = "sk-codex-own-login-key-cccccccccccc"
DEAD_PROXY = "http://127.0.0.1:9"


def readme_code(heading: str, lang: str) -> str:
    """The first ```lang block under `heading`, as written."""
    text = README.read_text()
    start = text.index(f"\n{heading}\n")
    block = re.search(rf"```{lang}\n(.*?)```", text[start:], re.S)
    assert block, f"no {lang} block under {heading!r}"
    return block.group(1)


def readme_block(heading: str) -> list[str]:
    """The shell commands of the first ```bash block under `heading`, continuation lines joined."""
    commands = readme_code(heading, "bash").replace("\\\n", " ").splitlines()
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
        # The README's SDK snippet as written, plus one call, on a machine whose proxy variables point at a
        # proxy that cannot reach this loopback address (the snippet must not go through it).
        snippet = readme_code("### Reverse mode (OpenAI SDK, curl, Codex CLI with a custom provider)", "python")
        call = "print(client.responses.create(model='gpt-5.5', input='hi from the sdk').output_text)"
        proxies = {name: DEAD_PROXY for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy",
                                                  "https_proxy", "all_proxy")}
        out = subprocess.run([str(BIN / "python"), "-c", snippet + call], cwd=cwd, capture_output=True, text=True,
                             timeout=120, env={**env, **proxies, "ACCOUNTPOOL_CLIENT_KEY": pool.client_key})
        assert out.returncode == 0 and "Simulated reply" in out.stdout, out.stderr[-2000:]
    assert [q["path"] for q in sim.requests()] == ["/v1/responses"] * 3
    assert "setting connection_strategy=lazy" in log.read_text()
    never_connected_to_openai(log)


@contextmanager
def regular_mode_proxy(cwd: Path, pool: Pool, env: dict[str, str]) -> Iterator[tuple[list[str], dict[str, str], Path]]:
    """The README's regular-mode `mitmdump` line, running: yields the block's client lines (the two exports,
    then `codex`), the environment they run in (the user's `$ACCOUNTPOOL_CLIENT_KEY` set) and the proxy's log."""
    commands = readme_block("### Regular mode (the client trusts mitmproxy's CA)")
    [proxy_command] = [c for c in commands if c.startswith("mitmdump")]
    client_lines = commands[commands.index(proxy_command) + 1:]
    assert [c.split()[0] for c in client_lines] == ["export", "export", "codex"], commands
    env = {**env, "ACCOUNTPOOL_CLIENT_KEY": pool.client_key}
    log = cwd / "mitmdump.log"
    with running(proxy_command, cwd, env, 8080, log):
        # mitmproxy 12 may write its CA just after it starts listening; a person reads it after that anyway.
        ca, deadline = cwd / ".mitmproxy" / "mitmproxy-ca-cert.pem", time.monotonic() + 15
        while not ca.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        yield client_lines, env, log


def test_regular_mode_commands_as_written(home, sim):
    """The exports as written, then a client that honours the same variables (httpx with trust_env reads
    HTTPS_PROXY and SSL_CERT_FILE); the `codex` line itself is run by the next test."""
    cwd, pool, env = home
    probe = ("import httpx, json; r = httpx.post('https://api.openai.com/v1/responses', json=" + repr(BODY) +
             ", timeout=30, headers={'authorization': 'Bearer codex-own-login-token'}); "
             "print(json.dumps({'status': r.status_code, 'account': r.headers.get('x-accountpool-account')}))")
    with regular_mode_proxy(cwd, pool, env) as (client_lines, env, log):
        client_script = "; ".join([*client_lines[:-1], f"exec {BIN / 'python'} -c {_quote(probe)}"])
        out = subprocess.run(["bash", "-c", client_script], cwd=cwd, capture_output=True, text=True, timeout=60,
                             env=env)
        assert out.returncode == 0, out.stderr[-2000:]
        assert '"status": 200' in out.stdout and "work (...rrrr)" in out.stdout, out.stdout
    [q] = sim.requests()
    assert q["auth"] == f"Bearer {KEY}"  # the client's own Authorization was replaced, never forwarded
    never_connected_to_openai(log)


class Terminal:
    """A command through bash on a pseudo-terminal (an interactive full-screen program needs one), 120x40.

    Answers the cursor-position query such a program sends when it starts; everything else it asks of
    the terminal goes unanswered, as on a minimal terminal."""

    def __init__(self, command: str, cwd: Path, env: dict[str, str]) -> None:
        self.fd, child = os.openpty()
        fcntl.ioctl(child, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
        self.proc = subprocess.Popen(["bash", "-c", command], cwd=cwd, env=env, stdin=child, stdout=child,
                                     stderr=child, start_new_session=True)
        os.close(child)
        self.output = b""

    def pump(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            if not select.select([self.fd], [], [], min(left, 0.1))[0]:
                continue
            try:
                data = os.read(self.fd, 65536)
            except OSError:  # the program has gone and closed the terminal
                data = b""
            if not data:
                time.sleep(left)
                return
            self.output += data
            if b"\x1b[6n" in data:
                os.write(self.fd, b"\x1b[1;1R")

    def type(self, text: str) -> None:
        os.write(self.fd, text.encode())

    def close(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        os.close(self.fd)


def stop_codex_daemon(home: Path) -> None:
    """Interactive Codex starts a background app server (and its updater) that outlive it, for the next `codex`.
    End the ones this test started: every process running from under the test's own HOME, by pid (not with
    `codex app-server daemon stop`, which waits for the pid to vanish, and a zombie never does where nothing
    reaps orphans). Then drop the copy of Codex (some 400 MB) the daemon installed there."""
    def ours() -> list[int]:
        pids = []
        for proc in Path("/proc").iterdir():
            try:
                if proc.name.isdigit() and str(home).encode() in (proc / "cmdline").read_bytes():
                    pids.append(int(proc.name))
            except OSError:
                continue
        return pids

    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in ours():
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + 10
        while ours() and time.monotonic() < deadline:
            time.sleep(0.1)
    shutil.rmtree(home / ".codex" / "packages", ignore_errors=True)


@pytest.mark.skipif(not (CODEX_BIN / "codex").exists(),
                    reason="Codex CLI is not installed (`make codex-cli` installs it from npm into tests/.codex-cli); "
                           "the regular-mode block's other lines still run in test_regular_mode_commands_as_written")
def test_regular_mode_codex_line_as_written(home, sim):
    """The block's last line, `codex`, as written: interactive Codex CLI on a terminal, after the two exports as
    written, signed in with its own API key (`codex login --with-api-key`), answering one typed prompt."""
    cwd, pool, env = home
    env = {**env, "PATH": f"{CODEX_BIN}{os.pathsep}{env['PATH']}", "TERM": "xterm-256color",
           "CODEX_OWN_KEY": CODEX_OWN_KEY}
    login = subprocess.run(["bash", "-c", "printenv CODEX_OWN_KEY | codex login --with-api-key"], cwd=cwd, env=env,
                           capture_output=True, text=True, timeout=60)
    assert login.returncode == 0, login.stderr[-2000:]
    # Codex's own traffic beyond the pooled API passes through untouched; keep a test run from phoning home.
    (cwd / ".codex" / "config.toml").write_text("check_for_update_on_startup = false\n[analytics]\nenabled = false\n")
    prompt = "say hello to the pool"

    def answered() -> bool:
        turns = [q for q in sim.requests() if (q["method"], q["path"]) == ("POST", "/v1/responses")]
        done = len(re.findall(r"POST https://api\.openai\.com/v1/responses \S+\s+<< HTTP/1\.1 200", log.read_text()))
        return any(prompt in json.dumps(q["body"]) for q in turns) and done >= len(turns)

    try:
        with regular_mode_proxy(cwd, pool, env) as (client_lines, env, log):
            terminal = Terminal("; ".join(client_lines), cwd, env)
            try:
                deadline = time.monotonic() + 60
                # Until the composer is up (typed before that, the prompt is queued anyway).
                while b"Ask Codex" not in terminal.output and time.monotonic() < deadline \
                        and terminal.proc.poll() is None:
                    terminal.pump(0.5)
                terminal.type(prompt)
                terminal.pump(0.5)
                terminal.type("\r")
                deadline = time.monotonic() + 150
                while not answered():
                    assert time.monotonic() < deadline and terminal.proc.poll() is None, \
                        (log.read_text()[-3000:], terminal.output[-3000:])
                    terminal.pump(0.5)
            finally:
                terminal.close()
    finally:
        stop_codex_daemon(cwd)
    # Every request that reached the upstream carried the account's key, never Codex's own.
    assert sim.requests() and {q["auth"] for q in sim.requests()} == {f"Bearer {KEY}"}
    assert CODEX_OWN_KEY not in json.dumps(sim.requests()) and pool.client_key not in json.dumps(sim.requests())
    assert find_secrets(log.read_text(errors="replace"), [KEY]) == []
    # Codex tried its WebSocket transport first; the pool answered 426 and Codex went to HTTP at once: no upgrade
    # reached the upstream with the account's key.
    assert [q for q in sim.requests() if q["method"] == "GET" and q["path"] == "/v1/responses"] == []


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
    # The line's comment says where to go once signed in ("open the printed sign-in URL, then /-/pool").
    [named] = re.findall(r"then (/\S+)", readme_code("### Datasette", "bash"))
    log = cwd / "datasette.log"
    with running(command, cwd, env, 8001, log):
        deadline = time.monotonic() + 30
        while not (sign_in := re.search(r"(http://\S+/-/auth-token\?token=\S+)", log.read_text())):
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        with httpx.Client(base_url="http://127.0.0.1:8001", trust_env=False, timeout=30) as anonymous:
            for path in (named, "/", "/pool", "/pool/requests", "/pool/client_keys.json",
                         "/pool?sql=select+*+from+accounts"):
                assert anonymous.get(path).status_code == 403, path  # installing the plugin publishes nothing
        with httpx.Client(trust_env=False, timeout=30, follow_redirects=True) as browser:
            browser.get(sign_in.group(1))
            overview = browser.get(f"http://127.0.0.1:8001{named}")
            assert overview.status_code == 200 and "work" in overview.text, overview.text[:500]
            page = browser.get("http://127.0.0.1:8001/-/pool/accounts")
            assert page.status_code == 200 and "work" in page.text
            assert find_secrets(overview.text + page.text, [KEY]) == []


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
