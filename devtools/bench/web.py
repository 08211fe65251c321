"""``kiosk bench --web``: the owner page's figures, measured on loopback against ``kiosk web``.

Two journals are prepared side by side in one run: an empty one (the baseline) and one holding
``checkins`` check-ins (100,000 by default: months at a busy door). For each, a real ``kiosk web``
process is started on 127.0.0.1, the bench logs in the way a browser does (login form, CSRF
token, session cookie) and then asks, one request after another on one keep-alive connection, for
the status JSON (``/api/overview``), the fragment the open page polls (``/live``) and ``/healthz``.
Reported: medians and 95th percentiles per route, the ratio of the full journal to the empty one,
and the page process's resident memory (now and peak, from ``/proc``). On the full journal the
status JSON is timed once more while a stranger on another loopback address (127.0.0.2) has
opened ``BENCH_IDLE`` connections that never send a request (``IdleConnections``): the page
keeps its per-address number of them and closes the rest, and the owner's requests are answered
as before. Targets: status JSON under 20 ms with 100,000 check-ins, also with the stranger's
connections open; page process RSS under 60 MB.

Standard library HTTP only (``http.client``): the figures are the server's, not a client
library's.
"""

from __future__ import annotations

import http.client
import json
import re
import secrets
import selectors
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

TARGET_STATUS_MS = 20.0
TARGET_RSS_MB = 60.0
BENCH_CHECKINS = 100_000
BENCH_REQUESTS = 300
WARMUP_REQUESTS = 20
START_TIMEOUT_S = 30.0
ROUTES = ("/api/overview", "/live", "/healthz")
# The stranger's idle connections held open while the status JSON is timed again.
BENCH_IDLE = 200
STRANGER_ADDRESS = "127.0.0.2"
SETTLE_TIMEOUT_S = 60.0

ProgressFn = Callable[[str], None]


class WebBenchError(RuntimeError):
    """The bench could not run; the message says why."""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def prepare_device(folder: Path, checkins: int) -> tuple[Path, str]:
    """A device folder: the demo replica, ``checkins`` journaled check-ins, an owner password and
    a config for ``kiosk web`` on a free loopback port. Returns (config path, password)."""
    from devtools.bench.sync import journal_backlog
    from devtools.seed import demo_snapshot
    from kiosk.data.store import Store
    from kiosk.ops.owner_password import hash_password, save_password_hash

    folder.mkdir(parents=True, exist_ok=True)
    db = folder / "kiosk.db"
    with Store.open(db) as store:
        store.replace_replica(demo_snapshot(datetime.now(UTC), "Europe/Berlin"))
    if checkins:
        journal_backlog(db, checkins, members=10_000)
    password = secrets.token_urlsafe(12)
    save_password_hash(folder / "owner-password", hash_password(password))
    config = folder / "kiosk.toml"
    config.write_text(
        f'[store]\npath = "{db}"\n\n'
        f'[web]\nhost = "127.0.0.1"\nport = {_free_port()}\n'
        f'password_file = "{folder / "owner-password"}"\n',
        encoding="utf-8",
    )
    return config, password


def _port(config: Path) -> int:
    match = re.search(r"^port = (\d+)$", config.read_text(encoding="utf-8"), re.MULTILINE)
    if match is None:
        raise WebBenchError(f"no port in {config}")
    return int(match.group(1))


class PageClient:
    """A browser's conversation with the page, in the standard library: one keep-alive
    connection, the session cookie, the CSRF token from the login form."""

    def __init__(self, port: int) -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        self.cookie = ""

    def request(
        self, method: str, path: str, body: str | None = None
    ) -> tuple[int, dict[str, str], bytes]:
        headers = {"Cookie": self.cookie} if self.cookie else {}
        if body is not None:
            headers["Content-Type"] = "application/x-www-form-urlencoded"
        self.conn.request(method, path, body=body, headers=headers)
        response = self.conn.getresponse()
        data = response.read()
        for name, value in response.getheaders():
            if name.lower() == "set-cookie" and value.startswith("fitflow_session="):
                self.cookie = value.split(";", 1)[0]
        return response.status, {k.lower(): v for k, v in response.getheaders()}, data

    def log_in(self, password: str) -> None:
        from urllib.parse import urlencode

        status, _, page = self.request("GET", "/login")
        match = re.search(rb'name="csrf" value="([^"]+)"', page)
        if status != 200 or match is None:
            raise WebBenchError(f"the login form did not load (HTTP {status})")
        form = urlencode({"csrf": match.group(1).decode(), "password": password})
        status, _, _ = self.request("POST", "/login", form)
        if status not in (302, 303):
            raise WebBenchError(f"logging in failed (HTTP {status})")

    def timed_get(self, path: str) -> float:
        """One GET of ``path``; its wall time in ms. Raises WebBenchError on an error answer
        (``/healthz`` may say 503: no scanner runs during the bench, and it says so)."""
        start = time.perf_counter_ns()
        status, _, _ = self.request("GET", path)
        elapsed_ms = (time.perf_counter_ns() - start) / 1e6
        if status >= 300 and not (path == "/healthz" and status == 503):
            raise WebBenchError(f"GET {path} answered HTTP {status}")
        return elapsed_ms

    def close(self) -> None:
        self.conn.close()


class IdleConnections:
    """A stranger on the LAN: TCP connections to the page from another loopback address
    (``source``, 127.0.0.2 by default: Linux routes all of 127.0.0.0/8 to the loopback
    interface) that never send a byte. The page keeps at most its per-address number of them
    and closes the rest at once; ``hold`` says how many it kept."""

    def __init__(self, port: int, source: str = STRANGER_ADDRESS) -> None:
        self.port = port
        self.source = source
        self._open: list[socket.socket] = []

    def hold(self, count: int, at_most: int, timeout_s: float = SETTLE_TIMEOUT_S) -> int:
        """Open connections until ``count`` are open on this side (replacing those the page
        closed since), then wait until the page has closed all but at most ``at_most`` of them;
        how many it still holds. Raises WebBenchError when a connection cannot be opened or the
        page still holds more than ``at_most`` after ``timeout_s``."""
        self._forget_closed(wait_s=0)
        while len(self._open) < count:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.settimeout(timeout_s)
            try:
                sock.bind((self.source, 0))
                sock.connect(("127.0.0.1", self.port))
            except OSError as exc:
                sock.close()
                raise WebBenchError(
                    f"cannot open an idle connection from {self.source} to port {self.port}: "
                    f"{exc.strerror or exc}"
                ) from None
            self._open.append(sock)
        deadline = time.monotonic() + timeout_s
        while len(self._open) > at_most:
            left = deadline - time.monotonic()
            if left <= 0:
                raise WebBenchError(
                    f"the page still holds {len(self._open)} idle connections from {self.source} "
                    f"after {timeout_s:.0f} s (expected at most {at_most})"
                )
            self._forget_closed(wait_s=left)
        return len(self._open)

    def _forget_closed(self, wait_s: float) -> None:
        """Drop the connections the page has closed, waiting up to ``wait_s`` for one."""
        if not self._open:
            return
        with selectors.DefaultSelector() as selector:
            for sock in self._open:
                selector.register(sock, selectors.EVENT_READ)
            ready = selector.select(timeout=wait_s)
        for key, _ in ready:
            sock = key.fileobj
            try:
                closed = sock.recv(1) == b""  # type: ignore[union-attr]
            except OSError:  # reset: closed as well
                closed = True
            if closed:
                self._open.remove(sock)  # type: ignore[arg-type]
                sock.close()  # type: ignore[union-attr]

    def close(self) -> None:
        for sock in self._open:
            sock.close()
        self._open.clear()


def _rss_kib(pid: int) -> dict[str, int]:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            fields[name] = int(value.split()[0])
    return fields


def _wait_until_up(port: int, process: subprocess.Popen) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise WebBenchError(
                f"kiosk web exited with {process.returncode}:\n{process.stderr.read()[-2000:]}"
            )
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise WebBenchError(f"kiosk web did not answer on port {port} within {START_TIMEOUT_S:.0f} s")


def _time_overview_under_idle(port: int, cookie: str, idle: int, requests: int) -> dict[str, Any]:
    """The status JSON timed again (on a new connection, as a browser coming back would) while a
    stranger has opened ``idle`` idle connections from another address."""
    from kiosk.web.serve import PER_CLIENT_CONNECTIONS

    stranger = IdleConnections(port)
    try:
        held = stranger.hold(idle, at_most=PER_CLIENT_CONNECTIONS)
        client = PageClient(port)
        client.cookie = cookie
        try:
            for _ in range(WARMUP_REQUESTS):
                client.timed_get("/api/overview")
            times = sorted(client.timed_get("/api/overview") for _ in range(requests))
        finally:
            client.close()
    finally:
        stranger.close()
    return {
        "connections": idle,
        "held": held,
        "p50_ms": round(statistics.median(times), 2),
        "p95_ms": round(times[int(0.95 * (len(times) - 1))], 2),
    }


def measure_page(config: Path, password: str, requests: int, idle: int = 0) -> dict[str, Any]:
    """Start ``kiosk web`` with ``config``, log in, time ``requests`` GETs per route; the
    medians, 95th percentiles (ms) and the process's memory (MB). With ``idle``, then the status
    JSON again while a stranger opens that many idle connections (``"idle"``)."""
    port = _port(config)
    process = subprocess.Popen(  # noqa: S603 - our own interpreter and module, no shell
        [sys.executable, "-m", "kiosk", "web", "--config", str(config)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        _wait_until_up(port, process)
        client = PageClient(port)
        try:
            client.log_in(password)
            figures: dict[str, Any] = {}
            for path in ROUTES:
                for _ in range(WARMUP_REQUESTS):
                    client.timed_get(path)
                times = sorted(client.timed_get(path) for _ in range(requests))
                figures[path] = {
                    "p50_ms": round(statistics.median(times), 2),
                    "p95_ms": round(times[int(0.95 * (len(times) - 1))], 2),
                }
        finally:
            client.close()
        if idle:
            figures["idle"] = _time_overview_under_idle(port, client.cookie, idle, requests)
        memory = _rss_kib(process.pid)
        figures["rss_mb"] = round(memory["VmRSS"] / 1024, 1)
        figures["peak_rss_mb"] = round(memory["VmHWM"] / 1024, 1)
        return figures
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def collect_web(
    checkins: int, requests: int, progress: ProgressFn, idle: int = BENCH_IDLE
) -> dict[str, Any]:
    """Both journals' figures; on the full one also the status JSON while a stranger opens
    ``idle`` idle connections (0: not measured)."""
    from devtools.bench.run import machine

    with tempfile.TemporaryDirectory(prefix="kiosk-bench-web-") as tmp:
        progress("preparing an empty journal (the baseline)")
        empty = prepare_device(Path(tmp) / "empty", 0)
        progress(f"journaling {checkins:,} check-ins (one durable commit each)")
        full = prepare_device(Path(tmp) / "full", checkins)
        progress("timing the page on the empty journal")
        baseline = measure_page(*empty, requests)
        progress(f"timing the page on {checkins:,} check-ins")
        loaded = measure_page(*full, requests, idle=idle)
    base = baseline["/api/overview"]["p50_ms"]
    result = {
        "machine": machine(),
        "checkins": checkins,
        "requests": requests,
        "empty": baseline,
        "full": loaded,
        "overview_ratio": round(loaded["/api/overview"]["p50_ms"] / base, 2) if base else None,
    }
    if "idle" in loaded:
        undisturbed = loaded["/api/overview"]["p50_ms"]
        result["idle_ratio"] = (
            round(loaded["idle"]["p50_ms"] / undisturbed, 2) if undisturbed else None
        )
    return result


def web_checks(r: dict[str, Any]) -> list[tuple[str, bool]]:
    """The targets, each as (plain words with the figures, met). Pure."""
    full = r["full"]
    status_ms = full["/api/overview"]["p50_ms"]
    rss = max(full["peak_rss_mb"], r["empty"]["peak_rss_mb"])
    checks = [
        (
            f"status JSON with {r['checkins']:,} check-ins: median {status_ms:.2f} ms "
            f"(target < {TARGET_STATUS_MS:.0f} ms)",
            status_ms < TARGET_STATUS_MS,
        ),
        (
            f"page process peak RSS {rss:.1f} MB (target < {TARGET_RSS_MB:.0f} MB)",
            rss < TARGET_RSS_MB,
        ),
    ]
    idle = full.get("idle")
    if idle is not None:
        checks.append(
            (
                f"status JSON while a stranger opened {idle['connections']} idle connections: "
                f"median {idle['p50_ms']:.2f} ms (target < {TARGET_STATUS_MS:.0f} ms)",
                idle["p50_ms"] < TARGET_STATUS_MS,
            )
        )
    return checks


def report_web(r: dict[str, Any], out: TextIO) -> None:
    m = r["machine"]
    out.write(f"machine: {m['cpu']}, {m['cores']} cores, Python {m['python']}\n")
    out.write(
        f"owner page on loopback, {r['requests']} sequential requests per route after "
        f"{WARMUP_REQUESTS} warm-up ones, one keep-alive connection\n\n"
    )
    out.write(f"{'route':<16}{'empty p50':>11}{'p95':>9}{'full p50':>11}{'p95':>9}  ms\n")
    for path in ROUTES:
        e, f = r["empty"][path], r["full"][path]
        out.write(
            f"{path:<16}{e['p50_ms']:>11.2f}{e['p95_ms']:>9.2f}{f['p50_ms']:>11.2f}"
            f"{f['p95_ms']:>9.2f}\n"
        )
    out.write(
        f"\nstatus JSON, {r['checkins']:,} check-ins vs empty: {r['overview_ratio']}x\n"
        f"page process RSS: empty {r['empty']['rss_mb']} MB (peak {r['empty']['peak_rss_mb']}),"
        f" full {r['full']['rss_mb']} MB (peak {r['full']['peak_rss_mb']})\n"
    )
    idle = r["full"].get("idle")
    if idle is not None:
        out.write(
            f"status JSON, {r['checkins']:,} check-ins, while a stranger opened "
            f"{idle['connections']} idle connections from {STRANGER_ADDRESS} ({idle['held']} "
            f"held by the page, the rest closed at once): p50 {idle['p50_ms']:.2f} ms, p95 "
            f"{idle['p95_ms']:.2f} ms ({r['idle_ratio']}x undisturbed)\n"
        )
    out.write("\n")
    for words, ok in web_checks(r):
        out.write(f"  {'PASS' if ok else 'FAIL'}  {words}\n")


def run_web_bench(*, as_json: bool, checkins: int, requests: int, out: TextIO) -> int:
    """Run the bench; exit code 0 when every target is met, 1 otherwise."""

    def progress(words: str) -> None:
        print(f"bench: {words}", file=sys.stderr, flush=True)

    result = collect_web(checkins, requests, progress)
    met = all(ok for _, ok in web_checks(result))
    if as_json:
        out.write(json.dumps({**result, "targets_met": met}) + "\n")
    else:
        report_web(result, out)
    return 0 if met else 1
