"""The cloud's HTTP surface: ``create_app(database_url)`` builds the FastAPI application.

- ``/v1/...``: the device API (sync protocol v3, docs/sync-protocol.md), in ``api_device``;
- ``/admin/v1/...``: the admin API (an organisation's admin token), in ``api_admin``;
- ``/pass/``: the member's pass page (static files, docs/passes.md), in ``pass_web``;
- ``/console/``: the staff console (HTML pages, docs/console.md), in ``cloud.console``;
- ``/healthz``: ``{"ok": true}`` when the database answers (503 otherwise);
- ``/openapi.json`` and ``/docs``: the API description.

Every answer carries ``FitFlow-Protocol: 3``; a device request announcing another protocol
version answers 426. Errors are ``{"error": code, "detail": plain words}`` (plus ``fields`` for
invalid admin input). A busy or unreachable database answers 503 with ``Retry-After``; nothing a
client sends can produce a 500 short of a bug.

The device API has a budget per process (``DeviceLoad``): past it a device request is answered
503 with ``Retry-After`` at once, before its body is read, instead of queueing behind requests the
process cannot start soon (the door's agent waits and tries again). The admin API, the console, the
pass page and ``/healthz`` are never shed. A client that goes away before its body arrived is one
INFO line in the log, not an internal error.
"""

from __future__ import annotations

import functools
import itertools
import json
import logging
import random
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import metadata
from typing import Any

import anyio
from fastapi import APIRouter, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.routing import BaseRoute

from cloud import db
from cloud.errors import ServiceError, TooLarge, Unavailable
from cloud.migrations import migrate
from sync.protocol import MAX_BATCH_ITEMS, PROTOCOL_HEADER, PROTOCOL_VERSION

log = logging.getLogger("cloud")

Clock = Callable[[], datetime]
RETRY_AFTER_S = 1


def utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class Cloud:
    """What every route needs: the database and the clock (aware UTC datetimes)."""

    database: db.Database
    clock: Clock

    def now(self) -> datetime:
        moment = self.clock()
        if moment.tzinfo is None:
            raise ValueError("the cloud's clock must return timezone-aware datetimes")
        return moment.astimezone(UTC)


def cloud_of(request: Request) -> Cloud:
    return request.app.state.cloud


# No request body may be larger than this (the CSV import's limit plus room); the device routes
# and the import check their own, smaller limits.
MAX_BODY_BYTES = (8 << 20) + (64 << 10)


class ProtocolHeaderMiddleware:
    """Adds ``FitFlow-Protocol: <PROTOCOL_VERSION>`` to every answer, refuses (426) a device request that
    announces another protocol version, and caps every request body at MAX_BODY_BYTES (a body
    over it becomes a 413 before it is buffered). Plain ASGI: next to nothing per request."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        ours = (PROTOCOL_HEADER.lower().encode(), str(PROTOCOL_VERSION).encode())
        received = 0
        overflow: TooLarge | None = None
        answered = False

        def too_large() -> TooLarge:
            device = scope["path"].startswith("/v1/")
            return TooLarge(
                f"the body is larger than {MAX_BODY_BYTES} bytes",
                max_items=MAX_BATCH_ITEMS if device else None,
            )

        async def capped_receive() -> dict[str, Any]:
            nonlocal received, overflow
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > MAX_BODY_BYTES:
                    # FastAPI turns any error while reading a body into a 400; remember the
                    # real reason so the answer below becomes the 413 it is.
                    overflow = too_large()
                    raise overflow
            return message

        async def send_with_header(message: dict[str, Any]) -> None:
            nonlocal answered
            if overflow is not None:
                if not answered:
                    answered = True
                    await answer(413, overflow.body())
                return
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), ours]}
            await send(message)

        async def answer(status: int, payload: dict[str, Any]) -> None:
            await send_json(send, status, payload, [ours])

        headers = dict(scope.get("headers", []))
        if scope["path"].startswith("/v1/"):
            announced = headers.get(ours[0])
            if announced is not None and announced.strip() != ours[1]:
                await answer(
                    426,
                    {
                        "error": "unsupported_protocol",
                        "supported": [PROTOCOL_VERSION],
                        "detail": f"this cloud speaks sync protocol {PROTOCOL_VERSION} only; "
                        f"update the door's software (the kiosk) to a release that speaks it",
                    },
                )
                return
        length = headers.get(b"content-length", b"0").strip()
        if length.isdigit() and int(length) > MAX_BODY_BYTES:
            await answer(413, too_large().body())
            return
        await self.app(scope, capped_receive, send_with_header)


async def send_json(
    send: Any, status: int, payload: dict[str, Any], headers: Iterable[tuple[bytes, bytes]] = ()
) -> None:
    """Answers a whole JSON response through an ASGI ``send`` (for the plain ASGI middleware)."""
    body = json.dumps(payload).encode()
    start = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        *headers,
    ]
    await send({"type": "http.response.start", "status": status, "headers": start})
    await send({"type": "http.response.body", "body": body})


# -- the device API's budget -----------------------------------------------------------------------

# The threads Starlette runs blocking work on: every sync route and ``run_in_threadpool`` call takes
# one of anyio's default thread limiter, which the app's lifespan sets to this many (anyio's own
# default, 40, made the device API's cap a burst size: measured with the fleet bench, doors'
# rounds arrive 32 at once while the oldest has waited 0.1 s, far from overload). A thread waiting
# for a database connection costs little memory; the queue is bounded by the budget below.
REQUEST_THREADS = 136
# Threads the device API leaves to the admin API, the console and /healthz: device load alone can
# never make them wait for a thread.
RESERVED_THREADS = 8
# At most this many device requests in flight: a bound on the threads and the request bodies
# (at most 1 MiB each) a burst can hold. Overload itself is the age rule's to find.
DEFAULT_MAX_IN_FLIGHT = REQUEST_THREADS - RESERVED_THREADS
# With the pool's worth in flight, an oldest request older than this means the queue no longer
# drains (the cores are saturated, or the database is slow or locked): new requests are shed until
# it does. A door gives up after 10 s, and the cloud would still do the work of a request nobody
# waits for.
DEFAULT_MAX_WAIT_S = 2.0
# A shed answer's Retry-After, in whole seconds, picked uniformly: doors shed together come back
# spread over the range instead of together.
SHED_RETRY_AFTER_S = (1, 5)
# Shedding is logged once, then at most once this often (with the count since), never per request.
SHED_LOG_EVERY_S = 10.0


def _shed_retry_after() -> int:
    return random.randint(*SHED_RETRY_AFTER_S)


class DeviceLoad:
    """This process's budget for the device API (``/v1/...``): which of its requests are in flight
    and whether a new one is admitted (``admit``) or answered 503 at once (shed).

    A new request is shed when ``max_in_flight`` are in flight, or when at least ``wait_floor``
    are (the database pool's connections: fewer cannot be queueing for one) and the oldest has
    been in flight more than ``max_wait_s`` seconds. ``retry_after()`` gives each shed answer's
    ``Retry-After`` in whole seconds (default: 1 to 5 at random); ``clock`` is monotonic seconds
    (tests inject both). ``in_flight`` and ``shed`` (a running total) are for tests and reports.
    Thread-safe: a served process runs one event loop, but the test client may run several."""

    def __init__(
        self,
        max_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
        *,
        max_wait_s: float = DEFAULT_MAX_WAIT_S,
        wait_floor: int = db.DEFAULT_POOL_SIZE,
        retry_after: Callable[[], int] = _shed_retry_after,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_in_flight < 1:
            raise ValueError(f"max_in_flight must be at least 1, not {max_in_flight}")
        self.max_in_flight = max_in_flight
        self.max_wait_s = max_wait_s
        self.wait_floor = max(1, wait_floor)
        self.retry_after = retry_after
        self._clock = clock
        self._lock = threading.Lock()
        self._tickets = itertools.count()
        # ticket -> start time; insertion order is start order, so the first is the oldest.
        self._started: dict[int, float] = {}
        self.shed = 0
        self._unreported = 0
        self._reported_at: float | None = None

    @property
    def in_flight(self) -> int:
        return len(self._started)

    def admit(self) -> int | None:
        """A ticket for a new device request (hand it to ``done`` when the request ends), or
        None when the request is to be shed."""
        now = self._clock()
        with self._lock:
            count = len(self._started)
            waited = now - next(iter(self._started.values())) if self._started else 0.0
            full = count >= self.max_in_flight
            if not full and (count < self.wait_floor or waited <= self.max_wait_s):
                ticket = next(self._tickets)
                self._started[ticket] = now
                return ticket
            self.shed += 1
            self._unreported += 1
            if self._reported_at is not None and now - self._reported_at < SHED_LOG_EVERY_S:
                return None
            shed, self._unreported, self._reported_at = self._unreported, 0, now
        # Which rule shed this one: the operator's next step differs (raise --max-in-flight for
        # bursts; add workers or a faster database for a queue that no longer drains).
        log.warning(
            "device API busy (%s): %d request(s) answered 503 since the last report; %d in "
            "flight (cap %d), the oldest for %.1f s (limit %.1f s once %d are in flight)",
            "the cap of requests in flight" if full else "the oldest request waited too long",
            shed,
            count,
            self.max_in_flight,
            waited,
            self.max_wait_s,
            self.wait_floor,
        )
        return None

    def done(self, ticket: int) -> None:
        with self._lock:
            del self._started[ticket]


class DeviceLoadMiddleware:
    """Sheds device requests (``/v1/...``) past this process's ``DeviceLoad``: 503, ``Retry-After``
    and ``{"error": "unavailable", ...}`` before the body is read or the database is touched.
    Every other path passes untouched: the admin API, the console, the pass page and /healthz are
    light, and an operator (or a proxy's health check) must reach a process that sheds load;
    ``RESERVED_THREADS`` keeps threads free for them. Plain ASGI: next to nothing per request."""

    def __init__(self, app: Any, load: DeviceLoad) -> None:
        self.app = app
        self.load = load

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or not scope["path"].startswith("/v1/"):
            await self.app(scope, receive, send)
            return
        ticket = self.load.admit()
        if ticket is None:
            busy = Unavailable("the cloud is busy with other doors: try again after Retry-After")
            retry = str(int(self.load.retry_after())).encode()
            await send_json(send, busy.status, busy.body(), [(b"retry-after", retry)])
            return
        try:
            await self.app(scope, receive, send)
        finally:
            self.load.done(ticket)


def error_response(status: int, body: dict[str, Any], headers: dict[str, str] | None = None):
    return JSONResponse(body, status_code=status, headers=headers)


def _field(loc: tuple[Any, ...] | list[Any]) -> str:
    parts = list(loc)
    if parts and parts[0] in ("body", "query", "path", "header"):
        parts = parts[1:] if parts[0] == "body" else parts
    text = ""
    for part in parts:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "body"


def _client_went_away(request: Request) -> JSONResponse:
    """One log line for a client that closed its connection before its request body arrived (a
    door that timed out, a closed browser tab): nothing failed on this side. The path only: no
    query string, no header, so no token or code reaches the log."""
    log.info("client went away before its request arrived: %s %s", request.method, request.url.path)
    # Nobody reads this answer: uvicorn drops whatever is sent on a closed connection.
    body = {"error": "client_disconnected", "detail": "the connection closed before the body"}
    return error_response(400, body)


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ServiceError)
    async def service_error(_request: Request, exc: ServiceError) -> JSONResponse:
        return error_response(exc.status, exc.body(), exc.headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(_request: Request, exc: RequestValidationError) -> JSONResponse:
        fields = [
            {"field": _field(e.get("loc", ())), "problem": e.get("msg", "")} for e in exc.errors()
        ]
        detail = "; ".join(f"{f['field']}: {f['problem']}" for f in fields)
        return error_response(422, {"error": "invalid_request", "detail": detail, "fields": fields})

    @app.exception_handler(ClientDisconnect)
    async def client_gone(request: Request, _exc: ClientDisconnect) -> JSONResponse:
        return _client_went_away(request)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if isinstance(exc.__cause__, ClientDisconnect):
            # FastAPI turns any error while it reads a route's body into a 400.
            return _client_went_away(request)
        codes = {404: "not_found", 405: "method_not_allowed"}
        body = {"error": codes.get(exc.status_code, "http_error"), "detail": str(exc.detail)}
        return error_response(exc.status_code, body, getattr(exc, "headers", None))

    @app.exception_handler(db.DatabaseBusy)
    async def busy(_request: Request, exc: db.DatabaseBusy) -> JSONResponse:
        log.warning("database busy: %s", exc)
        busy = Unavailable("the database is busy: try again shortly")
        return error_response(busy.status, busy.body(), {"Retry-After": str(RETRY_AFTER_S)})

    @app.exception_handler(db.InvalidValue)
    async def invalid_value(_request: Request, exc: db.InvalidValue) -> JSONResponse:
        body = {"error": "invalid_request", "detail": "a value in the request cannot be stored"}
        return error_response(400, body)

    @app.exception_handler(db.DatabaseError)
    async def database_error(_request: Request, exc: db.DatabaseError) -> JSONResponse:
        log.error("database error: %s", exc)
        body = {"error": "database_error", "detail": "the cloud's database failed"}
        return error_response(500, body)

    @app.exception_handler(Exception)
    async def internal_error(_request: Request, exc: Exception) -> JSONResponse:
        log.exception("internal error", exc_info=exc)
        body = {"error": "internal_error", "detail": "the cloud failed on this request"}
        # Answered outside the middleware stack, so the protocol header is added here.
        return error_response(500, body, {PROTOCOL_HEADER: str(PROTOCOL_VERSION)})


@functools.cache
def _routes() -> tuple[BaseRoute, ...]:
    """Every router's routes, in matching order: the device API, the admin API, the pass API and
    page, the console. Assembled once per process and shared by its apps: FastAPI (0.165)
    prepares an included router's routes on an app's first request, 40 ms of CPU here for these,
    which a process making many apps (the tests, a bench) would pay for each. The routes hold no
    state: a request reaches its own app's through ``request.app.state``."""
    from cloud import api_admin, api_device, api_pass, console, pass_web

    assembled = APIRouter()
    for router in (api_device.router, api_admin.router, api_pass.router, pass_web.router):
        assembled.include_router(router)
    for router in console.routers():
        assembled.include_router(router)
    return tuple(assembled.routes)


def create_app(
    database_url: str,
    *,
    clock: Clock | None = None,
    pool_size: int = db.DEFAULT_POOL_SIZE,
    device_load: DeviceLoad | None = None,
) -> FastAPI:
    """The cloud on this database: migrations are applied now (raises DatabaseUrlError for a bad
    URL, DatabaseError when the database cannot be reached or is newer than this code).
    ``clock`` returns aware UTC datetimes (tests inject one). ``device_load`` is the device API's
    budget (default: ``DeviceLoad(wait_floor=pool_size)``), kept as ``app.state.device_load``.
    The database pool is closed when the app shuts down (``app.state.cloud.database.close()``
    does it by hand)."""
    from cloud import api_pass, console

    database = db.Database(database_url, pool_size=pool_size)
    try:
        migrate(database, clock=clock)
    except BaseException:
        database.close()
        raise

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        # Per event loop: the served process's, or a test client's.
        anyio.to_thread.current_default_thread_limiter().total_tokens = REQUEST_THREADS
        yield
        database.close()

    app = FastAPI(
        title="FitFlow reference cloud",
        version=metadata.version("fitflow-kiosk"),
        description=(
            "The cloud end of FitFlow Kiosk sync protocol v3 (device API under /v1, see "
            "docs/sync-protocol.md) and the admin API under /admin/v1 (Bearer admin token)."
        ),
        lifespan=lifespan,
        routes=list(_routes()),
    )
    app.state.cloud = Cloud(database, clock or utc_now)
    app.state.device_load = device_load or DeviceLoad(wait_floor=pool_size)
    # Inside the protocol middleware (added last, so outermost): a shed answer carries the
    # protocol header, and a 426 or 413 is answered before the budget is counted.
    app.add_middleware(DeviceLoadMiddleware, load=app.state.device_load)
    app.add_middleware(ProtocolHeaderMiddleware)
    _install_error_handlers(app)
    api_pass.install(app)
    console.install(app)

    @app.get(
        "/healthz",
        summary="Health check",
        description='`{"ok": true}` when the database answers a query, 503 otherwise.',
        tags=["ops"],
    )
    def healthz(request: Request) -> JSONResponse:
        if cloud_of(request).database.ping():
            return JSONResponse({"ok": True})
        return error_response(
            503, {"ok": False, "error": "unavailable", "detail": "the database does not answer"}
        )

    return app
