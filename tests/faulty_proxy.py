"""A misbehaving HTTP proxy on 127.0.0.1, for proving the sync agent's delivery promises.

It sits between the agent and the reference cloud and, for a configurable share of requests, does
one of the things real networks and servers do:

- ``drop``: close the connection without forwarding or answering;
- ``error``: answer 500, 502 or 503 (503 with ``Retry-After: 0``) without forwarding;
- ``stall``: hold the connection without answering until the client gives up (its timeout);
- ``lost_ack``: forward, let the cloud commit, then close without passing the answer on;
- ``truncate``: forward, then pass on only half of the answer's body;
- ``garbage``: answer 200 with bytes that are not JSON, without forwarding.

Faults are drawn from a seeded ``random.Random``, one draw per request and nothing else from that
generator (the status of an ``error`` comes from a second one), so the first N requests get the
same N faults whatever their timing or order: a test that asserts on ``stats`` after N requests
cannot flake, and a failing run can be replayed. The proxy counts what it did per fault in
``stats`` (thread-safe), and a test waits for its n-th request with ``wait_for_requests`` (woken
by the request itself, never by polling).
"""

from __future__ import annotations

import http.client
import random
import select
import threading
import time
from collections import Counter
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

FAULTS = ("drop", "error", "stall", "lost_ack", "truncate", "garbage")
# Answer headers that describe the hop, not the message; http.server writes its own.
_HOP_HEADERS = {"connection", "keep-alive", "transfer-encoding", "content-length", "date", "server"}


class FaultyProxy:
    """``FaultyProxy(upstream_url, fault_rate=0.35, seed=1)``; ``start()`` returns its base URL.

    ``fault_rate`` is the share of requests that get a fault (0..1), spread evenly over
    ``faults``. ``stall_limit_s`` bounds how long a stalled connection is held if the client never
    gives up. Set ``fault_rate`` at any time (e.g. to 0 for a clean final drain).
    """

    def __init__(
        self,
        upstream_url: str,
        *,
        fault_rate: float = 0.35,
        seed: int = 1,
        faults: tuple[str, ...] = FAULTS,
        stall_limit_s: float = 5.0,
    ) -> None:
        parts = urlsplit(upstream_url)
        if parts.scheme != "http" or not parts.hostname or not parts.port:
            raise ValueError(f"upstream must be http://host:port, got {upstream_url!r}")
        unknown = set(faults) - set(FAULTS)
        if unknown:
            raise ValueError(f"unknown faults: {sorted(unknown)}")
        self.upstream = (parts.hostname, parts.port)
        self.fault_rate = fault_rate
        self.faults = faults
        self.stall_limit_s = stall_limit_s
        self.stats: Counter[str] = Counter()
        self._random = random.Random(seed)
        self._status_random = random.Random(seed + 1)
        self._lock = threading.Lock()
        self._arrived = threading.Condition(self._lock)  # notified as each request arrives
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    def choose(self) -> str:
        with self._lock:
            fault = "pass"
            if self._random.random() < self.fault_rate:
                fault = self._random.choice(self.faults)
            self.stats[fault] += 1
            self._arrived.notify_all()
            return fault

    def requests_seen(self) -> int:
        """Requests that have reached the proxy so far (a fault was chosen for each)."""
        with self._lock:
            return sum(self.stats.values())

    def wait_for_requests(
        self,
        count: int,
        timeout_s: float,
        what: str,
        *,
        unless: Callable[[], bool] = lambda: False,
        check_s: float = 0.1,
    ) -> bool:
        """Block until ``count`` requests in all have reached the proxy (True), woken by the
        request that makes it ``count``; or until ``unless()`` holds (False), looked at every
        ``check_s`` seconds (e.g. the client process has exited). Fails the test naming ``what``
        after ``timeout_s`` seconds: a bound on a hang, never a delay a test relies on."""
        deadline = time.monotonic() + timeout_s
        with self._arrived:
            while sum(self.stats.values()) < count:
                if unless():
                    return False
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")
                self._arrived.wait(min(check_s, left))
        return True

    def start(self) -> str:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def end_headers(self) -> None:
                # Every connection is closed after its answer (close_connection): say so, or a
                # quick client sends its next request on it before it sees the close, and fails.
                self.send_header("Connection", "close")
                super().end_headers()

            def log_message(self, *args: object) -> None:  # quiet: the test reads stats instead
                pass

            def _any(self) -> None:
                proxy._handle(self)

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _any

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, args=(0.05,), daemon=True
        )
        self._thread.start()
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> str:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- one request -------------------------------------------------------------------------------

    def _handle(self, req: BaseHTTPRequestHandler) -> None:
        length = int(req.headers.get("Content-Length") or 0)
        body = req.rfile.read(length) if length else b""
        fault = self.choose()
        req.close_connection = True
        if fault == "drop":
            return
        if fault == "error":
            status = self._random_status()
            payload = b'{"error": "injected", "detail": "fault injected by the test proxy"}'
            req.send_response(status)
            if status == 503:
                req.send_header("Retry-After", "0")
            req.send_header("Content-Type", "application/json")
            req.send_header("Content-Length", str(len(payload)))
            req.end_headers()
            req.wfile.write(payload)
            return
        if fault == "garbage":
            payload = b"\x00\xffnot json at all{{{"
            req.send_response(200)
            req.send_header("Content-Type", "application/json")
            req.send_header("Content-Length", str(len(payload)))
            req.end_headers()
            req.wfile.write(payload)
            return
        if fault == "stall":
            # Hold the connection until the client closes it (its timeout) or the limit passes.
            select.select([req.connection], [], [], self.stall_limit_s)
            return
        status, reason, headers, answer = self._forward(req, body)
        if fault == "lost_ack":
            return  # the cloud did its work; the client never hears of it
        if fault == "truncate":
            req.send_response(status, reason)
            for name, value in headers:
                req.send_header(name, value)
            req.send_header("Content-Length", str(len(answer)))
            req.end_headers()
            req.wfile.write(answer[: len(answer) // 2])
            return
        req.send_response(status, reason)
        for name, value in headers:
            req.send_header(name, value)
        req.send_header("Content-Length", str(len(answer)))
        req.end_headers()
        req.wfile.write(answer)

    def _random_status(self) -> int:
        with self._lock:
            return self._status_random.choice((500, 502, 503))

    def _forward(
        self, req: BaseHTTPRequestHandler, body: bytes
    ) -> tuple[int, str, list[tuple[str, str]], bytes]:
        conn = http.client.HTTPConnection(*self.upstream, timeout=30)
        try:
            headers = {k: v for k, v in req.headers.items() if k.lower() not in _HOP_HEADERS}
            headers["Content-Length"] = str(len(body))
            conn.request(req.command, req.path, body=body, headers=headers)
            resp = conn.getresponse()
            answer = resp.read()
            kept = [(k, v) for k, v in resp.getheaders() if k.lower() not in _HOP_HEADERS]
            return resp.status, resp.reason, kept, answer
        finally:
            conn.close()
