"""Loopback ports for the processes the demo, the tests and the benchmarks start.

All three start the simulator, mitmdump and Datasette as child processes: each needs a port no other run
holds (runs go in parallel) and must not send traffic before the child listens. One copy for the three, in
the package because the demo needs it and the package cannot import `tests/` or `benchmarks/`.
"""

from __future__ import annotations

import socket
import subprocess
import time
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_open(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def wait_for_port(port: int, proc: subprocess.Popen | None = None, timeout: float = 30.0,
                  log: Path | None = None) -> None:
    """Until something listens on 127.0.0.1:port; a process that exits first fails with its log's tail."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            text = log.read_text(errors="replace") if log and log.exists() else ""
            raise RuntimeError(f"{proc.args[0]} exited with {proc.returncode} before listening:\n{text[-3000:]}")
        if port_open(port):
            return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listening on 127.0.0.1:{port} after {timeout}s")
