"""``kiosk bench --web``: the owner page's figures, measured on loopback against ``kiosk web``.

Two journals are prepared side by side in one run: an empty one (the baseline) and one holding
``checkins`` check-ins (100,000 by default: months at a busy door). For each, a real ``kiosk web``
process is started on 127.0.0.1, the bench logs in the way a browser does (login form, CSRF
token, session cookie) and then asks, one request after another on one keep-alive connection, for
the status JSON (``/api/overview``), the fragment the open page polls (``/live``) and ``/healthz``.
Reported: medians and 95th percentiles per route, the ratio of the full journal to the empty one,
and the page process's resident memory (now and peak, from ``/proc``). Targets: status
JSON under 20 ms with 100,000 check-ins; page process RSS under 60 MB.

Standard library HTTP only (``http.client``): the figures are the server's, not a client
library's.
"""

from __future__ import annotations

import http.client
import json
import re
import secrets
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


def measure_page(config: Path, password: str, requests: int) -> dict[str, Any]:
    """Start ``kiosk web`` with ``config``, log in, time ``requests`` GETs per route; the
    medians, 95th percentiles (ms) and the process's memory (MB)."""
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


def collect_web(checkins: int, requests: int, progress: ProgressFn) -> dict[str, Any]:
    from devtools.bench.run import machine

    with tempfile.TemporaryDirectory(prefix="kiosk-bench-web-") as tmp:
        progress("preparing an empty journal (the baseline)")
        empty = prepare_device(Path(tmp) / "empty", 0)
        progress(f"journaling {checkins:,} check-ins (one durable commit each)")
        full = prepare_device(Path(tmp) / "full", checkins)
        progress("timing the page on the empty journal")
        baseline = measure_page(*empty, requests)
        progress(f"timing the page on {checkins:,} check-ins")
        loaded = measure_page(*full, requests)
    base = baseline["/api/overview"]["p50_ms"]
    return {
        "machine": machine(),
        "checkins": checkins,
        "requests": requests,
        "empty": baseline,
        "full": loaded,
        "overview_ratio": round(loaded["/api/overview"]["p50_ms"] / base, 2) if base else None,
    }


def web_checks(r: dict[str, Any]) -> list[tuple[str, bool]]:
    """The targets, each as (plain words with the figures, met). Pure."""
    full = r["full"]
    status_ms = full["/api/overview"]["p50_ms"]
    rss = max(full["peak_rss_mb"], r["empty"]["peak_rss_mb"])
    return [
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
        f" full {r['full']['rss_mb']} MB (peak {r['full']['peak_rss_mb']})\n\n"
    )
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
