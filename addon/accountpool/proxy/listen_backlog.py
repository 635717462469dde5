"""A deeper accept queue for mitmproxy's listening sockets, so a burst of agents is not dropped.

mitmproxy listens with asyncio's default backlog of 100 and has no option for it. When a fleet of
agents connects at once (a team starting its Codex sessions, a CI matrix), connections beyond the
queue are dropped by the kernel; clients retry on the SYN back-off (1, 2, 4, 8 … s) and some give
up with no answer at all (benchmarks/README.md, the 5,000-stream fleet). Calling `listen()` again
on a listening socket only changes its backlog (POSIX), so the addon does that once mitmproxy's
servers are up, for the addresses mitmproxy reports (`proxyserver.listen_addrs()`, public API).

The sockets are found through the process's own descriptor table (`/dev/fd`, Linux and macOS)
rather than mitmproxy's private server objects: each socket descriptor (checked with `fstat` first:
only sockets are ever duplicated) is duplicated, checked to be a listening TCP socket on one of
mitmproxy's ports, `listen()`-ed on and the duplicate closed, which leaves mitmproxy's own socket
object untouched. The kernel caps the backlog at `net.core.somaxconn` (4096 on current Linux).
"""

from __future__ import annotations

import os
import socket
import stat
from collections.abc import Iterable

FD_DIR = "/dev/fd"


def deepen_accept_queues(ports: Iterable[int], backlog: int) -> list[tuple[str, int]]:
    """`listen(backlog)` on every listening TCP socket of this process bound to one of `ports`.

    Returns the (host, port) of each socket changed; an empty list where there is none or the
    platform has no `/dev/fd` (the backlog then stays mitmproxy's)."""
    wanted = {p for p in ports if p}
    if backlog <= 0 or not wanted:
        return []
    try:
        fds = [int(name) for name in os.listdir(FD_DIR) if name.isdigit()]
    except OSError:
        return []
    changed = []
    for fd in fds:
        try:
            if not stat.S_ISSOCK(os.fstat(fd).st_mode):
                # Never duplicate anything else: closing a duplicate of a file's descriptor drops every
                # POSIX lock the process holds on that file, SQLite's included (pool.db would lose its locks).
                continue
            dup = os.dup(fd)
        except OSError:
            continue  # closed since the listing (the listing's own descriptor, for one)
        try:
            sock = socket.socket(fileno=dup)  # detects family and type; owns `dup` from here
        except OSError:
            os.close(dup)  # a socket family Python cannot wrap
            continue
        with sock:
            try:
                if sock.type != socket.SOCK_STREAM or sock.family not in (socket.AF_INET, socket.AF_INET6):
                    continue
                if not sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
                    continue
                host, port = sock.getsockname()[:2]
                if port in wanted:
                    sock.listen(backlog)
                    changed.append((host, port))
            except OSError:
                continue
    return changed
