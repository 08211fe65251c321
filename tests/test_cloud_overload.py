"""The cloud under more device load than it serves in good time: past its budget a device request
is answered 503 with Retry-After at once (and the door's agent waits that long), the admin API,
the console and /healthz go on answering, and a client that went away is one log line.

Requests are held in flight by a test route under /v1/ that waits for the test's word (an event),
so "N in flight" is a fact when the next request is sent, never a matter of timing; the budget's
clock is injected where the age of the queue matters.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any

import anyio
import anyio.to_thread
import httpx
import pytest
from fastapi import FastAPI
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from cloud import admin, cli, serve
from cloud.app import (
    DEFAULT_MAX_IN_FLIGHT,
    REQUEST_THREADS,
    DeviceLoad,
    create_app,
)
from kiosk.sync.client import CloudClient, RetryableError
from pg import (
    cloud_db_url_fixture,  # noqa: F401
    pg_server_fixture,  # noqa: F401
)
from sync.protocol import PROTOCOL_HEADER, PROTOCOL_VERSION

NOW = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)
GUARD_S = 30.0  # only ever reached when a test is broken: no wait below depends on it


class FakeMonotonic:
    """The budget's clock: seconds that move only when told."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def _app(url: str, load: DeviceLoad) -> tuple[FastAPI, str]:
    """The cloud on ``url`` with ``load`` as its budget, and an admin token of its organisation."""
    app = create_app(url, clock=lambda: NOW, device_load=load)
    made = admin.create_organization(app.state.cloud.database, "Acme", "Main", "Europe/Berlin", NOW)
    app.state.org = made
    return app, made.admin_token


@pytest.fixture
def sqlite_url(tmp_path) -> str:
    return f"sqlite:///{tmp_path / 'cloud.db'}"


# -- plain ASGI calls, all on one event loop ---------------------------------------------------------


class AsyncGates:
    """``GET /v1/test/held?gate=NAME``: a device request that stays in flight until ``open(NAME)``.
    ``arrived(NAME)`` is awaited until that request is inside the route (past the budget)."""

    def __init__(self, app: FastAPI) -> None:
        self._open: dict[str, asyncio.Event] = {}
        self._in: dict[str, asyncio.Event] = {}

        async def held(gate: str) -> dict[str, str]:
            self._event(self._in, gate).set()
            await self._event(self._open, gate).wait()
            return {"gate": gate}

        app.add_api_route("/v1/test/held", held, methods=["GET"])

    @staticmethod
    def _event(events: dict[str, asyncio.Event], gate: str) -> asyncio.Event:
        return events.setdefault(gate, asyncio.Event())

    async def arrived(self, gate: str) -> None:
        await asyncio.wait_for(self._event(self._in, gate).wait(), GUARD_S)

    def open(self, gate: str) -> None:
        self._event(self._open, gate).set()


async def call(
    app: FastAPI,
    method: str,
    path: str,
    *,
    headers: dict[str, str] | None = None,
    body: bytes = b"",
    query: str = "",
    receive: Callable[[], Any] | None = None,
) -> tuple[int, dict[str, str], bytes]:
    """One request through the app's ASGI interface: (status, headers, body)."""
    sent: list[dict[str, Any]] = []
    given = False

    async def whole_body() -> dict[str, Any]:
        nonlocal given
        if given:
            await asyncio.Event().wait()  # the client says nothing more
        given = True
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    raw = [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": query.encode(),
        "root_path": "",
        "headers": [(b"host", b"cloud.test"), *raw],
        "client": ("127.0.0.1", 40000),
        "server": ("cloud.test", 80),
    }
    await asyncio.wait_for(app(scope, receive or whole_body, send), GUARD_S)
    if not sent:
        return 0, {}, b""
    start = sent[0]
    answer_headers = {k.decode(): v.decode() for k, v in start["headers"]}
    return start["status"], answer_headers, b"".join(m.get("body", b"") for m in sent[1:])


def _held(app: FastAPI, gate: str):
    return asyncio.create_task(call(app, "GET", "/v1/test/held", query=f"gate={gate}"))


def test_past_its_cap_a_device_request_is_answered_503_at_once_and_others_pass(sqlite_url):
    load = DeviceLoad(2, retry_after=lambda: 3)
    app, admin_token = _app(sqlite_url, load)
    gates = AsyncGates(app)

    async def scenario() -> None:
        first, second = _held(app, "a"), _held(app, "b")
        await gates.arrived("a")
        await gates.arrived("b")
        assert load.in_flight == 2

        # The third is refused before its body is read: the client never sends one here, and
        # the answer comes all the same, without a single receive().
        reads = 0

        async def no_body() -> dict[str, Any]:
            nonlocal reads
            reads += 1
            await asyncio.Event().wait()
            raise AssertionError("unreachable")

        status, headers, body = await call(
            app,
            "POST",
            "/v1/checkins",
            headers={"Authorization": "Bearer ffd_x", "Content-Length": "100"},
            receive=no_body,
        )
        assert (status, reads) == (503, 0)
        assert headers["retry-after"] == "3"
        assert headers[PROTOCOL_HEADER.lower()] == str(PROTOCOL_VERSION)
        assert headers["content-type"] == "application/json"
        answer = json.loads(body)
        assert answer["error"] == "unavailable" and "busy" in answer["detail"]
        assert load.shed == 1

        # Everything that is not the device API is served meanwhile.
        assert (await call(app, "GET", "/healthz"))[0] == 200
        auth = {"Authorization": f"Bearer {admin_token}"}
        status, _, body = await call(app, "GET", "/admin/v1/gyms", headers=auth)
        assert status == 200 and json.loads(body)["items"][0]["name"] == "Main"
        assert (await call(app, "GET", "/console/login"))[0] == 200
        assert (await call(app, "GET", "/openapi.json"))[0] == 200
        assert load.shed == 1 and load.in_flight == 2

        gates.open("a")
        gates.open("b")
        assert [(await first)[0], (await second)[0]] == [200, 200]
        assert load.in_flight == 0

        # Served again: the held route, and a real device route answering for itself.
        gates.open("c")
        assert (await _held(app, "c"))[0] == 200
        code = {"code": "NOPE-NOPE-NOPE", "name": "door", "software_version": "1"}
        status, _, body = await call(
            app, "POST", "/v1/enrol", body=json.dumps(code).encode(), headers={}
        )
        assert status == 403 and json.loads(body)["error"] == "enrolment_refused"
        assert load.shed == 1 and load.in_flight == 0

    try:
        asyncio.run(scenario())
    finally:
        app.state.cloud.database.close()


def test_the_shed_report_names_the_cap_when_the_cap_sheds(caplog):
    clock = FakeMonotonic()
    load = DeviceLoad(2, max_wait_s=2.0, wait_floor=1, retry_after=lambda: 1, clock=clock)
    tickets = [load.admit(), load.admit()]
    assert None not in tickets
    with caplog.at_level(logging.WARNING, logger="cloud"):
        assert load.admit() is None  # two in flight, the oldest 0 s old: the cap, not the age
    (report,) = [r.getMessage() for r in caplog.records if "device API busy" in r.getMessage()]
    assert "(the cap of requests in flight)" in report and "2 in flight (cap 2)" in report
    load.done(tickets[0])
    assert load.admit() is not None and load.shed == 1


def test_a_queue_that_no_longer_drains_is_shed_before_the_cap(sqlite_url, caplog):
    clock = FakeMonotonic()
    load = DeviceLoad(10, max_wait_s=2.0, wait_floor=2, retry_after=lambda: 1, clock=clock)
    app, _ = _app(sqlite_url, load)
    gates = AsyncGates(app)

    async def held(gate: str) -> asyncio.Task:
        task = _held(app, gate)
        await gates.arrived(gate)
        return task

    async def scenario() -> None:
        # One old request alone is not a queue (below the floor: fewer than the pool's
        # connections are in flight): the next is admitted however old the first is.
        slow = await held("slow")
        clock.advance(5.0)
        young = await held("young")
        # Now the floor's worth are in flight and the oldest has been for 5 s > 2 s: shed.
        with caplog.at_level(logging.WARNING, logger="cloud"):
            assert (await call(app, "GET", "/v1/replica/changes"))[0] == 503
            assert (await call(app, "GET", "/v1/replica/changes"))[0] == 503
        assert load.shed == 2
        # Logged once, not per request; the next report, 10 s on, counts what came since.
        reports = [r for r in caplog.records if "device API busy" in r.getMessage()]
        assert len(reports) == 1 and "1 request(s)" in reports[0].getMessage()
        assert "oldest for 5.0 s" in reports[0].getMessage()
        assert "(the oldest request waited too long)" in reports[0].getMessage()
        clock.advance(10.0)
        with caplog.at_level(logging.WARNING, logger="cloud"):
            assert (await call(app, "GET", "/v1/replica/changes"))[0] == 503
        reports = [r for r in caplog.records if "device API busy" in r.getMessage()]
        assert len(reports) == 2 and "2 request(s)" in reports[1].getMessage()

        # When the old ones end the queue is young again: admitted past the floor...
        for gate, task in (("slow", slow), ("young", young)):
            gates.open(gate)
            assert (await task)[0] == 200
        first, second = await held("first"), await held("second")
        clock.advance(1.0)
        third = await held("third")  # the floor's worth in flight, the oldest for 1 s <= 2 s
        assert load.in_flight == 3 and load.shed == 3
        # ... until the oldest has been in flight longer than allowed.
        clock.advance(1.5)
        assert (await call(app, "GET", "/v1/replica/changes"))[0] == 503
        for gate, task in (("first", first), ("second", second), ("third", third)):
            gates.open(gate)
            assert (await task)[0] == 200
        assert load.in_flight == 0
        assert (await call(app, "GET", "/v1/replica/changes"))[0] == 401  # the route's own answer

    try:
        asyncio.run(scenario())
    finally:
        app.state.cloud.database.close()


def test_the_default_budget_leaves_threads_to_the_admin_api_and_the_console(sqlite_url, capsys):
    app = create_app(sqlite_url, pool_size=5)

    async def threads_while_serving() -> int:
        # What Starlette's thread pool holds once the app has started, as uvicorn starts it.
        async with app.router.lifespan_context(app):
            return int(anyio.to_thread.current_default_thread_limiter().total_tokens)

    assert anyio.run(threads_while_serving) == REQUEST_THREADS
    assert 0 < DEFAULT_MAX_IN_FLIGHT < REQUEST_THREADS
    app = create_app(sqlite_url, pool_size=5)
    try:
        load = app.state.device_load
        assert (load.max_in_flight, load.wait_floor) == (DEFAULT_MAX_IN_FLIGHT, 5)
    finally:
        app.state.cloud.database.close()
    with pytest.raises(ValueError, match="at least 1"):
        DeviceLoad(0)
    # The option's help names the default (docs/cli.md is rendered from it).
    with pytest.raises(SystemExit):
        cli.main(["serve", "--help"])
    assert f"else {DEFAULT_MAX_IN_FLIGHT})" in " ".join(capsys.readouterr().out.split())


# -- a client that went away --------------------------------------------------------------------------


async def _gone() -> dict[str, Any]:
    return {"type": "http.disconnect"}


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/v1/enrol"),  # read by the route itself (starlette's ClientDisconnect)
        ("POST", "/admin/v1/gyms"),  # read by FastAPI for a model, which makes it a 400
    ],
)
def test_a_client_that_went_away_is_one_log_line_not_an_internal_error(
    sqlite_url, caplog, method, path
):
    app, _ = _app(sqlite_url, DeviceLoad())
    secret = "ffd_do-not-log-me"  # noqa: S105 (a made-up token that must stay out of the log)
    headers = {"Authorization": f"Bearer {secret}", "Content-Type": "application/json"}
    try:
        with caplog.at_level(logging.DEBUG):
            # The app returns normally: nothing is raised for uvicorn to log as an error.
            asyncio.run(call(app, method, path, headers=headers, query="x=1", receive=_gone))
    finally:
        app.state.cloud.database.close()
    ours = ("cloud", "uvicorn", "fastapi", "starlette")
    lines = [r for r in caplog.records if r.name.startswith(ours)]
    assert len(lines) == 1, [r.getMessage() for r in lines]
    (line,) = lines
    assert line.levelno == logging.INFO and line.exc_info is None
    assert line.getMessage() == f"client went away before its request arrived: {method} {path}"
    assert secret not in caplog.text and "x=1" not in caplog.text
    assert app.state.device_load.in_flight == 0


# -- a real server, the real device client ------------------------------------------------------------


class ThreadGates:
    """``GET /v1/test/held``, a sync route (it holds one of the server's threads, as the device
    routes do), in flight until ``release``; ``wait_arrivals(n)`` returns once n are inside."""

    def __init__(self, app: FastAPI) -> None:
        self.released = threading.Event()
        self._arrivals = threading.Semaphore(0)

        def held() -> dict[str, bool]:
            self._arrivals.release()
            assert self.released.wait(GUARD_S)
            return {"held": True}

        async def loop_kind() -> dict[str, str]:
            return {"loop": type(asyncio.get_running_loop()).__module__}

        app.add_api_route("/v1/test/held", held, methods=["GET"])
        app.add_api_route("/v1/test/loop", loop_kind, methods=["GET"])

    def wait_arrivals(self, count: int) -> None:
        for _ in range(count):
            assert self._arrivals.acquire(timeout=GUARD_S)


class Served:
    """``app`` served as ``kiosk cloud serve`` serves it (cloud.serve's uvicorn settings and
    server, its socket) in a thread, on 127.0.0.1 at a free port."""

    def __init__(self, app: FastAPI) -> None:
        self.sock = serve.listen("127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.server = serve.uvicorn_server(serve._uvicorn_config(app, "warning"))
        self.thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True
        )

    def __enter__(self) -> Served:
        self.thread.start()
        _until(lambda: self.server.started or not self.thread.is_alive(), "the server to start")
        assert self.server.started
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(GUARD_S)
        self.sock.close()


def _until(condition: Callable[[], Any], what: str) -> None:
    """Waits for progress another thread makes (a server starting, a request ending)."""
    deadline = time.monotonic() + GUARD_S
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.005)


def test_a_door_told_to_wait_retries_later_and_is_served(cloud_db_url):
    load = DeviceLoad(2, retry_after=lambda: 4)
    app, _ = _app(cloud_db_url, load)
    gates = ThreadGates(app)
    made = app.state.org
    try:
        with Served(app) as served, ThreadPoolExecutor(2) as pool:
            # `kiosk cloud serve` runs on uvloop and httptools (the cloud extra installs them).
            assert served.server.config.http_protocol_class is HttpToolsProtocol
            loop = httpx.get(f"{served.url}/v1/test/loop", timeout=GUARD_S).json()["loop"]
            assert loop.startswith("uvloop"), loop

            held = [
                pool.submit(httpx.get, f"{served.url}/v1/test/held", timeout=GUARD_S)
                for _ in range(2)
            ]
            gates.wait_arrivals(2)
            with CloudClient(served.url, None) as client:
                with pytest.raises(RetryableError) as refused:
                    client.enrol("NOPE-NOPE-NOPE", "front door", "1")
                assert refused.value.status == 503 and refused.value.retry_after == 4.0
                assert httpx.get(f"{served.url}/healthz", timeout=GUARD_S).json() == {"ok": True}

                gates.released.set()
                assert [f.result(GUARD_S).status_code for f in held] == [200, 200]
                _until(lambda: load.in_flight == 0, "the held requests to end")

                code = app.state.cloud.database.transact(
                    lambda tx: admin.create_enrolment_code(
                        tx, made.organization_id, made.gym_id, 60, NOW
                    )
                )["code"]
                enrolment = client.enrol(code, "front door", "1")
            assert enrolment.token and load.shed == 1
    finally:
        gates.released.set()
        app.state.cloud.database.close()


# -- the serve option -----------------------------------------------------------------------------------


def test_max_in_flight_comes_from_the_option_or_the_environment(tmp_path, capsys, monkeypatch):
    served: list[dict[str, Any]] = []
    monkeypatch.setattr(serve, "serve", lambda url, **kw: served.append(kw) or 0)
    url = f"sqlite:///{tmp_path / 'c.db'}"
    monkeypatch.delenv(cli.MAX_IN_FLIGHT_ENV, raising=False)
    assert cli.main(["serve", "--db", url]) == 0
    assert served[-1]["max_in_flight"] is None  # the app's default budget
    assert cli.main(["serve", "--db", url, "--max-in-flight", "12"]) == 0
    assert served[-1]["max_in_flight"] == 12
    monkeypatch.setenv(cli.MAX_IN_FLIGHT_ENV, "7")
    assert cli.main(["serve", "--db", url]) == 0
    assert served[-1]["max_in_flight"] == 7
    assert cli.main(["serve", "--db", url, "--max-in-flight", "9"]) == 0
    assert served[-1]["max_in_flight"] == 9


def test_serve_builds_the_app_with_the_budget_and_refuses_less_than_one(
    tmp_path, capsys, monkeypatch
):
    url = f"sqlite:///{tmp_path / 'c.db'}"
    assert cli.main(["serve", "--db", url, "--max-in-flight", "0", "--port", "0"]) == 2
    assert "--max-in-flight must be at least 1, not 0" in capsys.readouterr().err
    assert not (tmp_path / "c.db").exists()  # refused before anything was touched

    apps: list[Any] = []

    class NotServing:  # stands in for uvicorn: serve() hands it the app it built
        def __init__(self, config: Any) -> None:
            self.config = config

        def run(self, sockets: list[Any]) -> None:
            apps.append(self.config.app)

    lines: list[str] = []
    monkeypatch.setattr(serve, "uvicorn_server", NotServing)
    try:
        assert (
            serve.serve(url, host="127.0.0.1", port=0, max_in_flight=3, announce=lines.append) == 0
        )
        assert serve.serve(url, host="127.0.0.1", port=0, announce=lines.append) == 0
    finally:
        for app in apps:
            app.state.cloud.database.close()
    assert [app.state.device_load.max_in_flight for app in apps] == [3, DEFAULT_MAX_IN_FLIGHT]
    assert all("(1 process)" in line for line in lines)
