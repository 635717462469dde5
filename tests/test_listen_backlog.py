"""A burst of connections is queued, not dropped: the addon deepens mitmproxy's accept queue (listen_backlog.py).

Measured by behaviour: connections whose handshake the kernel completes while nobody accepts. With a
backlog of b the kernel queues b + 1 of them and drops the SYNs of the rest (the client would retry
on its SYN back-off, 1 s at the earliest).
"""

from __future__ import annotations

import fcntl
import os
import select
import signal
import socket
import subprocess
import sys
import textwrap
import time

from accountpool.proxy.listen_backlog import deepen_accept_queues
from harness import Mitmdump

BODY = {"model": "gpt-5.4-mini", "input": "hi"}


def handshakes_completed(port: int, n: int, within_s: float = 0.5) -> int:
    """Open `n` connections at once; how many complete their handshake within `within_s`."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.setblocking(False)
            s.connect_ex(("127.0.0.1", port))
            socks.append(s)
        done: set[socket.socket] = set()
        deadline = time.monotonic() + within_s
        while time.monotonic() < deadline and len(done) < n:
            _, writable, _ = select.select([], [s for s in socks if s not in done], [], 0.05)
            done.update(s for s in writable if s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0)
        return len(done)
    finally:
        for s in socks:
            s.close()


def listening(backlog: int) -> socket.socket:
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(backlog)
    return srv


def test_a_listening_socket_gets_the_deeper_queue():
    with listening(1) as shallow:
        assert handshakes_completed(shallow.getsockname()[1], 20) <= 3  # the control: the queue holds 2
    with listening(1) as srv:
        port = srv.getsockname()[1]
        assert deepen_accept_queues([port], 64) == [("127.0.0.1", port)]
        assert handshakes_completed(port, 20) == 20


def test_only_the_given_ports_and_only_listening_sockets_change():
    with listening(1) as other, listening(1) as target, socket.create_connection(target.getsockname()):
        accepted, _ = target.accept()  # a connected socket on the same port: not a listening one
        with accepted:
            assert accepted.getsockname() == target.getsockname()
            changed = deepen_accept_queues([target.getsockname()[1]], 64)
        assert changed == [target.getsockname()]
        assert handshakes_completed(other.getsockname()[1], 20) <= 3
    assert deepen_accept_queues([], 64) == [] and deepen_accept_queues([1], 0) == []


def test_the_process_keeps_its_file_locks(tmp_path):
    """Closing a duplicate of a file's descriptor drops the process's POSIX locks on that file (SQLite's locks on
    pool.db among them): the scan must only ever duplicate sockets."""
    locked = tmp_path / "locked"
    with open(locked, "wb") as fh, listening(1) as srv:
        fcntl.lockf(fh, fcntl.LOCK_EX)
        assert deepen_accept_queues([srv.getsockname()[1]], 64)
        probe = subprocess.run([sys.executable, "-c", textwrap.dedent(f"""
            import fcntl
            with open({str(locked)!r}, "wb") as fh:
                try:
                    fcntl.lockf(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except OSError:
                    print("held")
                else:
                    print("free")
            """)], capture_output=True, text=True, check=True)
        assert probe.stdout.strip() == "held"


def accepted_while_stopped(proxy: Mitmdump, n: int) -> int:
    """Handshakes the kernel completes for mitmdump while the process is stopped and cannot accept."""
    assert proxy.proc is not None
    os.kill(proxy.proc.pid, signal.SIGSTOP)
    try:
        return handshakes_completed(proxy.port, n)
    finally:
        os.kill(proxy.proc.pid, signal.SIGCONT)


def test_mitmdump_with_the_addon_queues_a_burst_that_bare_mitmproxy_drops(pool_env, sim):
    pool_env.add_key("a", "sk-test-alpha-aaaaaaaaaaaaaaaaaaaa")
    for options, expected in (({}, 300), ({"pool_listen_backlog": 0}, 101)):
        with Mitmdump(pool_env, options=options) as proxy:
            with proxy.client() as client:  # the addon is running (mitmproxy listens before it runs)
                assert client.post("/v1/responses", json=BODY).status_code == 200
            completed = accepted_while_stopped(proxy, 300)
            if expected == 300:
                assert completed == 300, completed  # default 4096 (capped by somaxconn, 4096 here)
            else:
                assert completed <= expected, completed  # mitmproxy's own backlog of 100: the rest dropped
            with proxy.client() as client:  # and it serves on afterwards
                assert client.post("/v1/responses", json=BODY).status_code == 200
