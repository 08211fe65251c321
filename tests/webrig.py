"""Pieces of the real-browser tests of the owner page (tests/test_web_browser.py).

- ``launch_chromium``: Debian's Chromium driven by Playwright (never a downloaded browser).
- ``OutputLines``: a child process's standard output, read line by line in a thread, waited on
  with a deadline (a continuous ``kiosk demo`` never closes its output).
- ``DemoProcess`` / ``start_demo``: ``kiosk demo --web-port N`` as a subprocess, with the owner
  page's address and password read from what it prints.
- ``WebProcess`` / ``start_web``: ``kiosk web --config FILE`` as a subprocess on a database holding
  the demo's replica, with or without an owner password.
- ``HostileSite``: another web server on loopback serving one attacker's page.
- ``ThreadedPage``: an ASGI app served in a thread by the page's own server settings
  (``kiosk.web.serve.server_config``) with injected limits; ``connect``, ``http_get``,
  ``read_response`` and ``read_until_closed`` talk to it over raw sockets from any loopback
  address.
- ``log_in``, ``screenshot_folder``.

Nothing here sleeps blindly: every wait is for a condition, with a deadline.
"""

from __future__ import annotations

import http.server
import json
import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO

from fakes import clean_env

CHROMIUM = Path("/usr/bin/chromium")
# No sandbox: CI runs as root in a container. The rest keeps Chromium off the network (no
# updates, sync or QUIC probes) so a test talks only to the servers it started.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
START_TIMEOUT_S = 60.0  # a demo's first start builds the cloud and the replica
STOP_TIMEOUT_S = 20.0
# How long a raw-socket read may block before the test fails: a deadline for an event that comes
# much sooner (a response, the server's close), never a delay the test relies on.
SOCKET_WAIT_S = 30.0
PHONE = {"width": 390, "height": 844}
LAPTOP = {"width": 1280, "height": 900}
WEB_LINE = re.compile(r"^owner page: (http://127\.0\.0\.1:(\d+)/)  \(password: (\S+)\)$")


def launch_chromium(playwright):
    """Debian's Chromium under Playwright's control. Fails (never skips) when it is missing:
    these tests are the proof that the page works in a real browser."""
    if not CHROMIUM.exists():
        raise AssertionError(
            f"{CHROMIUM} is missing: the owner page's browser tests need Debian's Chromium "
            "(sudo apt-get install chromium)"
        )
    return playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class OutputLines:
    """A text stream read line by line in a daemon thread; ``wait_for`` returns the first line
    (from ``start``) that a predicate accepts, or fails the test after ``timeout_s``."""

    def __init__(self, stream: IO[str]) -> None:
        self.lines: list[str] = []
        self._fresh: queue.Queue[str | None] = queue.Queue()
        self._thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self._thread.start()

    def _read(self, stream: IO[str]) -> None:
        for line in stream:
            self._fresh.put(line.rstrip("\n"))
        self._fresh.put(None)  # end of output

    def _drain(self, timeout_s: float) -> bool:
        """Move what arrived into ``lines`` (waiting up to ``timeout_s`` for one); False at the
        end of the output."""
        try:
            line = self._fresh.get(timeout=max(0.0, timeout_s))
        except queue.Empty:
            return True
        while True:
            if line is None:
                return False
            self.lines.append(line)
            try:
                line = self._fresh.get_nowait()
            except queue.Empty:
                return True

    def wait_for(self, accept: Callable[[str], object], timeout_s: float, what: str, start=0):
        """The first line from index ``start`` for which ``accept`` is truthy."""
        deadline = time.monotonic() + timeout_s
        checked = start
        open_ = True
        while True:
            for line in self.lines[checked:]:
                if accept(line):
                    return line
            checked = max(checked, len(self.lines))
            left = deadline - time.monotonic()
            if left <= 0 or not open_:
                shown = "\n".join(self.lines[-20:])
                raise AssertionError(f"no line with {what} within {timeout_s:.0f} s:\n{shown}")
            open_ = self._drain(min(left, 0.5))


def _stop(process: subprocess.Popen, how: int = signal.SIGINT) -> int:
    """Stop a child we started (SIGINT, as Ctrl-C; SIGKILL if it hangs); its exit status."""
    if process.poll() is None:
        process.send_signal(how)
        try:
            process.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(STOP_TIMEOUT_S)
    return process.returncode


@dataclass
class DemoProcess:
    """A running ``kiosk demo`` (human output): its page's ``url`` and ``password``, its database
    and its output so far."""

    process: subprocess.Popen
    output: OutputLines
    stderr_path: Path
    db: Path
    url: str
    password: str

    def stop(self) -> int:
        return _stop(self.process)

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")


def start_demo(folder: Path, web_port: int) -> DemoProcess:
    """``kiosk demo --db FOLDER/demo.db --web-port WEB_PORT`` (continuous, real time), once it
    printed where its owner page is."""
    db = folder / "demo.db"
    stderr_path = folder / "demo-stderr.txt"
    with stderr_path.open("w") as stderr:
        process = subprocess.Popen(
            [sys.executable, "-m", "kiosk", "demo", "--db", str(db), "--web-port", str(web_port)],
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
            env=clean_env(),
        )
    assert process.stdout is not None
    output = OutputLines(process.stdout)
    try:
        line = output.wait_for(WEB_LINE.match, START_TIMEOUT_S, "the owner page's address")
    except AssertionError:
        _stop(process)
        raise AssertionError(f"{stderr_path.read_text()}") from None
    match = WEB_LINE.match(line)
    assert match is not None
    return DemoProcess(process, output, stderr_path, db, match.group(1), match.group(3))


def demo_database(path: Path) -> Path:
    """A new door database holding the demo's member replica (as a synced device has)."""
    from devtools.seed import demo_snapshot
    from kiosk.config import default_config
    from kiosk.data.store import Store

    path.parent.mkdir(parents=True, exist_ok=True)
    with Store.open(path) as store:
        store.replace_replica(demo_snapshot(datetime.now(UTC), default_config().site.timezone))
    return path


@dataclass
class WebProcess:
    """A running ``kiosk web``: its ``url``, configuration file and password file."""

    process: subprocess.Popen
    config: Path
    password_file: Path
    url: str
    stderr_path: Path

    def stop(self) -> int:
        return _stop(self.process, signal.SIGTERM)

    def set_password(self, password: str) -> subprocess.CompletedProcess:
        """``kiosk web set-password --config CFG --password-file -`` with it on standard input."""
        return subprocess.run(
            [sys.executable, "-m", "kiosk", "web", "set-password", "--config", str(self.config),
             "--password-file", "-"],
            input=password + "\n", capture_output=True, text=True, timeout=60, check=False,
            env=clean_env(),
        )  # fmt: skip


def start_web(folder: Path, web_extra: str = "") -> WebProcess:
    """``kiosk web --config FOLDER/kiosk.toml`` on 127.0.0.1 and a free port, on a database with
    the demo's replica, with no owner password yet; returned once it says where it listens (its
    socket is listening by then). ``web_extra``: more lines of the ``[web]`` table."""
    folder.mkdir(parents=True, exist_ok=True)
    db = demo_database(folder / "data" / "kiosk.db")
    password_file = folder / "data" / "owner-password"
    port = free_port()
    config = folder / "kiosk.toml"
    config.write_text(
        f"[store]\npath = {json.dumps(str(db))}\n"
        f'[web]\nhost = "127.0.0.1"\nport = {port}\n'
        f"password_file = {json.dumps(str(password_file))}\n{web_extra}"
    )
    stderr_path = folder / "web-stderr.txt"
    with stderr_path.open("w") as stderr:
        process = subprocess.Popen(
            [sys.executable, "-m", "kiosk", "web", "--config", str(config)],
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
            env=clean_env(),
        )
    assert process.stdout is not None
    output = OutputLines(process.stdout)
    url = f"http://127.0.0.1:{port}/"
    try:
        output.wait_for(lambda line: url in line, START_TIMEOUT_S, "the page's address")
    except AssertionError:
        _stop(process, signal.SIGTERM)
        raise AssertionError(stderr_path.read_text()) from None
    return WebProcess(process, config, password_file, url, stderr_path)


class HostileSite:
    """An attacker's web site on 127.0.0.1 (another port than the page's): serves ``html`` at
    every path. Visit it as ``http://localhost:PORT/`` for another site (Chromium counts hosts,
    not ports, and localhost is not 127.0.0.1), as ``http://127.0.0.1:PORT/`` for the same site."""

    def __init__(self, html: str) -> None:
        body = html.encode()

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "text/html; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass  # no access log on the test's output

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> HostileSite:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(STOP_TIMEOUT_S)


class ThreadedPage:
    """``app`` served in a daemon thread on 127.0.0.1 and a free ``port`` with the page's server
    settings (``server_config(app, limits)``: the same protocol, guard and timeouts as
    ``kiosk web``); ``guard`` is its connection guard. A context manager: ready on entry,
    stopped on exit."""

    def __init__(self, app, limits) -> None:
        import uvicorn

        from kiosk.web.serve import bind, connection_guard, server_config

        self.app = app
        self._sock = bind("127.0.0.1", 0)
        self.port: int = self._sock.getsockname()[1]
        config = server_config(app, limits)
        config.timeout_graceful_shutdown = 1  # a held connection must not hold up the teardown
        self.guard = connection_guard(config)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [self._sock]}, daemon=True
        )

    def __enter__(self) -> ThreadedPage:
        self._thread.start()
        deadline = time.monotonic() + START_TIMEOUT_S
        while not self._server.started:
            assert self._thread.is_alive(), "the server thread ended before it started"
            assert time.monotonic() < deadline, "the server did not start"
            time.sleep(0.01)
        return self

    def __exit__(self, *_exc: object) -> None:
        self._server.should_exit = True
        self._thread.join(STOP_TIMEOUT_S)
        self._sock.close()

    def wait_for_open(self, expected: dict[str, int]) -> None:
        """Wait until the guard counts exactly ``expected`` open connections per client key
        (it counts on the server's thread: a close is seen there a moment after the client's)."""
        deadline = time.monotonic() + SOCKET_WAIT_S
        while (counts := self.guard.connections.counts()) != expected:
            assert time.monotonic() < deadline, f"the guard counts {counts}, not {expected}"
            time.sleep(0.01)


def connect(port: int, source: str = "127.0.0.1") -> socket.socket:
    """A TCP connection to 127.0.0.1:``port`` from the loopback address ``source`` (Linux routes
    all of 127.0.0.0/8 to the loopback interface, so 127.0.0.2 is another client)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.settimeout(SOCKET_WAIT_S)
    try:
        sock.bind((source, 0))
        sock.connect(("127.0.0.1", port))
    except OSError:
        sock.close()
        raise
    return sock


def read_until_closed(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection (end of file, or a reset);
    fails the test when it has not closed it within ``SOCKET_WAIT_S``."""
    received = b""
    while True:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            return received
        except TimeoutError:
            raise AssertionError(
                f"the server kept the connection open for {SOCKET_WAIT_S:.0f} s"
            ) from None
        if not chunk:
            return received
        received += chunk


def read_response(sock: socket.socket) -> tuple[int, bytes]:
    """One HTTP/1.1 response from ``sock``: its status and body (by Content-Length)."""
    received = b""
    while b"\r\n\r\n" not in received:
        chunk = sock.recv(65536)
        assert chunk, f"the server closed the connection before answering: {received!r}"
        received += chunk
    head, _, body = received.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    length = next(
        int(line.split(":", 1)[1])
        for line in lines[1:]
        if line.lower().startswith("content-length:")
    )
    while len(body) < length:
        chunk = sock.recv(65536)
        assert chunk, "the server closed the connection in the middle of a body"
        body += chunk
    return status, body


def http_get(sock: socket.socket, path: str = "/") -> tuple[int, bytes]:
    """One keep-alive ``GET path`` on ``sock``: the status and the body."""
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
    return read_response(sock)


def auto_post_page(action: str, fields: dict[str, str]) -> str:
    """An attacker's page whose form POSTs ``fields`` to ``action`` as soon as it loads (a
    classic cross-site request forgery: no click needed)."""
    inputs = "".join(
        f'<input type="hidden" name="{name}" value="{value}">' for name, value in fields.items()
    )
    return (
        "<!doctype html><title>Win a free month</title>"
        f'<form id="f" method="post" action="{action}">{inputs}</form>'
        "<script>document.getElementById('f').submit();</script>"
    )


def log_in(page, url: str, password: str) -> None:
    """Sign in through the login form and wait for the dashboard."""
    from playwright.sync_api import expect

    page.goto(url + "login")
    page.get_by_test_id("login-password").fill(password)
    page.get_by_test_id("login-submit").click()
    expect(page.get_by_test_id("section-decisions")).to_be_visible()
    assert page.url == url


def screenshot_folder(tmp_path: Path) -> Path:
    """Where screenshots go: ``$FITFLOW_SCREENSHOTS`` when set (how docs/screenshots/ is
    refreshed), else the test's own folder."""
    named = os.environ.get("FITFLOW_SCREENSHOTS")
    folder = Path(named) if named else tmp_path / "screenshots"
    folder.mkdir(parents=True, exist_ok=True)
    return folder
