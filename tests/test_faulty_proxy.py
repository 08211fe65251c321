"""The fault-injecting proxy does what the end-to-end sync tests rely on."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from faulty_proxy import FaultyProxy


@pytest.fixture
def upstream():
    """A tiny upstream that counts the requests it served and echoes a JSON body."""
    served: list[bytes] = []

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: object) -> None:
            pass

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            served.append(body)
            answer = json.dumps({"echo": body.decode(), "pad": "x" * 200}).encode()
            self.send_response(201)
            self.send_header("Content-Type", "application/json")
            self.send_header("X-Upstream", "yes")
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", served
    server.shutdown()
    server.server_close()


def _post(url: str, *, read_timeout_s: float = 60.0) -> httpx.Response:
    """POST through the proxy. The default timeout only bounds a hang: an answer on a busy
    machine may take a while, and that is not a fault."""
    timeout = httpx.Timeout(60.0, read=read_timeout_s)
    return httpx.post(url + "/v1/x", content=b"hello", timeout=timeout)


def test_pass_forwards_request_and_answer(upstream):
    url, served = upstream
    with FaultyProxy(url, fault_rate=0.0) as proxy:
        resp = _post(proxy)
    assert resp.status_code == 201 and resp.json()["echo"] == "hello"
    assert resp.headers["X-Upstream"] == "yes"
    assert served == [b"hello"]


@pytest.mark.parametrize(
    ("fault", "reaches_upstream"),
    [("drop", False), ("stall", False), ("lost_ack", True), ("truncate", True)],
)
def test_transport_faults_fail_the_client(upstream, fault, reaches_upstream):
    url, served = upstream
    # A stall holds the connection far longer than the client waits: the client's timeout is
    # what ends it, however late the proxy's thread runs.
    proxy = FaultyProxy(url, fault_rate=1.0, faults=(fault,), stall_limit_s=300.0)
    with proxy as base, pytest.raises(httpx.TransportError):
        _post(base, read_timeout_s=0.3 if fault == "stall" else 60.0)
    assert len(served) == (1 if reaches_upstream else 0)
    assert proxy.stats[fault] == 1


def test_error_and_garbage_answer_without_forwarding(upstream):
    url, served = upstream
    with FaultyProxy(url, fault_rate=1.0, faults=("error",)) as base:
        assert _post(base).status_code in (500, 502, 503)
    with FaultyProxy(url, fault_rate=1.0, faults=("garbage",)) as base:
        resp = _post(base)
        assert resp.status_code == 200
        with pytest.raises(ValueError):
            resp.json()
    assert served == []


def test_fault_rate_is_respected_and_seeded(upstream):
    url, _ = upstream
    draws = []
    for _ in range(2):
        proxy = FaultyProxy(url, fault_rate=0.4, seed=7)
        draws.append([proxy.choose() for _ in range(500)])
    assert draws[0] == draws[1]
    faulted = sum(1 for d in draws[0] if d != "pass") / 500
    assert 0.33 < faulted < 0.47


def test_a_wait_for_requests_ends_with_the_request_that_completes_the_count(upstream):
    url, _ = upstream
    proxy = FaultyProxy(url, fault_rate=0.0)
    with proxy as base:
        posted = threading.Thread(target=lambda: [_post(base) for _ in range(3)])
        posted.start()
        assert proxy.wait_for_requests(3, 60.0, "three requests") is True
        posted.join()
        assert proxy.requests_seen() == 3
        # A count already reached returns at once; one never reached ends by ``unless`` (the
        # client is gone) or, past the deadline, fails the test saying what never happened.
        assert proxy.wait_for_requests(2, 0.0, "two requests") is True
        assert proxy.wait_for_requests(4, 60.0, "a fourth", unless=lambda: True) is False
        with pytest.raises(AssertionError, match="waiting for a fourth request"):
            proxy.wait_for_requests(4, 0.0, "a fourth request")
