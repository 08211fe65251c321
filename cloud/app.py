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
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import metadata
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from cloud import db
from cloud.errors import ServiceError, TooLarge
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
            body = json.dumps(payload).encode()
            headers = [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
            ]
            headers.append(ours)
            await send({"type": "http.response.start", "status": status, "headers": headers})
            await send({"type": "http.response.body", "body": body})

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

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        codes = {404: "not_found", 405: "method_not_allowed"}
        body = {"error": codes.get(exc.status_code, "http_error"), "detail": str(exc.detail)}
        return error_response(exc.status_code, body, getattr(exc, "headers", None))

    @app.exception_handler(db.DatabaseBusy)
    async def busy(_request: Request, exc: db.DatabaseBusy) -> JSONResponse:
        log.warning("database busy: %s", exc)
        body = {"error": "unavailable", "detail": "the database is busy: try again shortly"}
        return error_response(503, body, {"Retry-After": str(RETRY_AFTER_S)})

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


def create_app(
    database_url: str, *, clock: Clock | None = None, pool_size: int = db.DEFAULT_POOL_SIZE
) -> FastAPI:
    """The cloud on this database: migrations are applied now (raises DatabaseUrlError for a bad
    URL, DatabaseError when the database cannot be reached or is newer than this code).
    ``clock`` returns aware UTC datetimes (tests inject one). The database pool is closed when
    the app shuts down (``app.state.cloud.database.close()`` does it by hand)."""
    from cloud import api_admin, api_device, api_pass, console, pass_web

    database = db.Database(database_url, pool_size=pool_size)
    try:
        migrate(database, clock=clock)
    except BaseException:
        database.close()
        raise

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
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
    )
    app.state.cloud = Cloud(database, clock or utc_now)
    app.add_middleware(ProtocolHeaderMiddleware)
    _install_error_handlers(app)
    app.include_router(api_device.router)
    app.include_router(api_admin.router)
    api_pass.install(app)
    app.include_router(pass_web.router)
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
