"""HTTP/1.1 framing for the simulator: the stdlib server, reading requests, writing replies the way they ask.

Separate from `server` (which decides what to answer) because this part is about the wire: keep-alive,
chunked SSE written frame by frame with the scripted delays, a stall mid-stream, a cut without the final
chunk, a TCP reset. Those are the behaviours the proxy under test must survive, and they live in one place.
"""

from __future__ import annotations

import json
import os
import socket
import struct
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from accountpool.simulator.checks import Request
from accountpool.simulator.replies import Reply, error_reply

if TYPE_CHECKING:
    from accountpool.simulator.server import SimulatedUpstream


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%b\r\n" % (len(data), data)


class SimServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256
    sim: SimulatedUpstream


class SimHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "accountpool-simulator"
    sys_version = ""
    disable_nagle_algorithm = True  # small SSE chunks must leave at once
    timeout = 300
    server: SimServer

    def setup(self) -> None:
        super().setup()
        with self.server.sim._lock:
            self.server.sim._conns.add(self.connection)

    def finish(self) -> None:
        with self.server.sim._lock:
            self.server.sim._conns.discard(self.connection)
        try:
            super().finish()
        except OSError:
            pass

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: benchmarks push thousands of requests and tests read `requests()` instead."""

    def _handle(self) -> None:
        try:
            raw = self._read_body()
            url = urlsplit(self.path)
            headers = {k.lower(): v for k, v in self.headers.items()}
            req = Request(self.command, url.path, url.query, headers, raw)
            if raw:
                try:
                    req.body = json.loads(raw)
                except ValueError:
                    req.body = raw.decode("utf-8", "replace")
            try:
                reply = self.server.sim._respond(req)
            except Exception as exc:  # a simulator bug must look like an upstream 500, not a hang
                reply = error_reply(500, f"simulator error: {exc!r}", "server_error", None)
            self._send(reply)
        except OSError:  # the client went away mid-answer: nothing left to tell it
            self.close_connection = True

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _handle

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("transfer-encoding", "").lower():
            parts = []
            while size := int(self.rfile.readline().split(b";")[0].strip() or b"0", 16):
                parts.append(self.rfile.read(size))
                self.rfile.readline()
            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                pass
            return b"".join(parts)
        return self.rfile.read(int(self.headers.get("content-length") or 0))

    def _drop(self) -> None:
        self.close_connection = True
        try:
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def _send(self, r: Reply) -> None:
        if r.first_byte_delay_s:
            time.sleep(r.first_byte_delay_s)
        if r.reset:  # SO_LINGER 0 turns close() into a TCP RST; detach() so nothing sends a FIN first
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            os.close(self.connection.detach())
            self.close_connection = True
            return
        self.send_response(r.status)
        for name, value in r.headers.items():
            self.send_header(name, value)
        if r.events is None:
            self.send_header("content-length", str(len(r.body)))
            self.end_headers()
            self.wfile.write(r.body if r.cut_after is None else r.body[: len(r.body) // 2])
        else:
            self.send_header("content-type", "text/event-stream; charset=utf-8")
            self.send_header("cache-control", "no-cache")
            self.send_header("transfer-encoding", "chunked")
            self.end_headers()
            frames = r.events if r.cut_after is None else r.events[: r.cut_after]
            tail = b"" if r.cut_after is not None else b"0\r\n\r\n"
            if r.delta_delay_s <= 0 and r.stall_after is None:  # one syscall for the whole stream
                self.wfile.write(b"".join(chunk(f) for f, _ in frames) + tail)
            else:
                for i, (frame, is_delta) in enumerate(frames):
                    if i == r.stall_after:
                        time.sleep(r.stall_s)
                    if is_delta and r.delta_delay_s > 0:
                        time.sleep(r.delta_delay_s)
                    self.wfile.write(chunk(frame))
                self.wfile.write(tail)
        if r.cut_after is not None:
            self._drop()
