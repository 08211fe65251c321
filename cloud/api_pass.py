"""The member-facing phone pass API under ``/pass/v1`` (docs/passes.md): what the pass page in a
member's browser calls. No admin token: an activation code, or a current pass code, is the
credential.

- ``POST /pass/v1/activate`` ``{"code", "public_key"}`` → 201 ``{"pass_id", "organization_id",
  "organization_name", "first_name", "period_s", "skew_steps", "server_time"}``; 410
  ``activation_invalid`` for an unknown, used or expired code (one answer for all three), 409
  ``too_many_passes``, 400 ``invalid_request``.
- ``POST /pass/v1/status`` ``{"code": "FFP1:..."}`` → 200 ``{"pass_id", "status", "period_s",
  "server_time"}``; 404 unknown pass, 403 ``bad_signature``, 403 ``code_expired`` (with
  ``server_time`` and ``period_s``: the phone's clock is off), 400.

Bodies are read raw (at most 4 KiB) and parsed by ``cloud.passes``, so nothing a browser sends
becomes a 500. Every answer under ``/pass/v1`` carries ``Cache-Control: no-store`` and
``X-Content-Type-Options: nosniff`` (errors too: ``PassHeadersMiddleware``); there is no CORS, so
only pages of the cloud's own origin (the pass page at ``/pass/``) can read an answer.

**Guessing is throttled** per client address: each failed attempt (400, 403, 404, 410, 413)
spends one of 20 tokens, refilled one every 6 s (10 a minute); with none left the answer is 429
``too_many_attempts`` with ``Retry-After``, before the body is read or the database asked.
Successes and 409s spend nothing, so a gym full of members activating at once is never slowed.
Codes are 80 bits, so this is about load, not odds: at 10 guesses a minute a code would take
10^17 years. The buckets live in each worker process (N workers allow N times as much) and are
keyed by the address the server sees: behind a reverse proxy that is the proxy's, shared by all,
so rate-limit per client at the proxy as well.
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from cloud import passes
from cloud.app import cloud_of
from cloud.errors import BadRequest, NotFound, ServiceError, TooLarge
from sync.protocol import ProtocolError, parse_json

PREFIX = "/pass/v1"
MAX_BODY_BYTES = 4 << 10
ATTEMPT_BUDGET = 20  # failed attempts a client may make in a burst
ATTEMPT_REFILL_S = 6.0  # one more failed attempt allowed every this many seconds
MAX_TRACKED_CLIENTS = 10_000  # buckets kept; the least recently seen are forgotten
SECURITY_HEADERS = (
    (b"cache-control", b"no-store"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
)

router = APIRouter(prefix=PREFIX, tags=["phone passes"])


class TooManyAttempts(ServiceError):
    """Too many failed attempts from this client address (429, with Retry-After)."""

    status, code = 429, "too_many_attempts"


class AttemptBudget:
    """Token buckets of failed attempts, one per client key. Pure apart from a lock: time is
    passed in (seconds, any monotonic-enough scale; a clock stepping back refills nothing). At
    most ``max_clients`` buckets are kept, the least recently used forgotten first (a forgotten
    client starts full again, which only ever errs towards letting members in)."""

    def __init__(
        self,
        capacity: int = ATTEMPT_BUDGET,
        refill_s: float = ATTEMPT_REFILL_S,
        max_clients: int = MAX_TRACKED_CLIENTS,
    ) -> None:
        self.capacity = capacity
        self.refill_s = refill_s
        self.max_clients = max_clients
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()
        self._lock = threading.Lock()

    def _level(self, client: str, now_s: float) -> float:
        tokens, since = self._buckets.get(client, (float(self.capacity), now_s))
        elapsed = max(0.0, now_s - since)
        return min(float(self.capacity), tokens + elapsed / self.refill_s)

    def retry_after(self, client: str, now_s: float) -> int | None:
        """None when ``client`` may try now, else the whole seconds until it may."""
        with self._lock:
            level = self._level(client, now_s)
        if level >= 1.0:
            return None
        return max(1, math.ceil((1.0 - level) * self.refill_s))

    def spend(self, client: str, now_s: float) -> None:
        """Count one failed attempt of ``client`` at ``now_s``."""
        with self._lock:
            level = self._level(client, now_s)
            self._buckets[client] = (max(0.0, level - 1.0), now_s)
            self._buckets.move_to_end(client)
            while len(self._buckets) > self.max_clients:
                self._buckets.popitem(last=False)


class PassHeadersMiddleware:
    """Adds the security headers to every answer under ``/pass/v1`` (errors included, whoever
    made them). Plain ASGI."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or not scope["path"].startswith(PREFIX + "/"):
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                headers = [
                    (k, v)
                    for k, v in message.get("headers", [])
                    if k.lower() not in {name for name, _ in SECURITY_HEADERS}
                ]
                message = {**message, "headers": [*headers, *SECURITY_HEADERS]}
            await send(message)

        await self.app(scope, receive, send_with_headers)


def install(app: FastAPI) -> None:
    """The pass API's headers and this app's attempt budget on ``app`` (its routes, ``router``,
    come with the others: ``cloud.app``)."""
    app.state.pass_attempts = AttemptBudget()
    app.add_middleware(PassHeadersMiddleware)


def _client(request: Request) -> str:
    return request.client.host if request.client is not None else "unknown"


async def _read_json(request: Request) -> object:
    length = request.headers.get("content-length")
    if length is not None and (not length.strip().isdigit() or int(length) > MAX_BODY_BYTES):
        raise TooLarge(f"the body is larger than {MAX_BODY_BYTES} bytes")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise TooLarge(f"the body is larger than {MAX_BODY_BYTES} bytes")
        chunks.append(chunk)
    try:
        return parse_json(b"".join(chunks), "the body")
    except ProtocolError as exc:
        raise BadRequest(str(exc)) from None


# The answers that spend a failed attempt: everything a guesser or a broken client gets.
_FAILURES = (BadRequest, TooLarge, NotFound, passes.ActivationInvalid, passes.BadPassSignature)
_FAILURES += (passes.PassCodeExpired,)


async def _attempt(
    request: Request,
    work: Callable[[Any, object, Any], dict[str, Any]],
    status: int,
    *,
    write: bool,
) -> JSONResponse:
    """Throttle, read the body, run ``work(tx, body, now)`` in one transaction in the thread
    pool; a failure spends one of the client's attempts."""
    cloud = cloud_of(request)
    now = cloud.now()
    budget: AttemptBudget = request.app.state.pass_attempts
    client = _client(request)
    wait = budget.retry_after(client, now.timestamp())
    if wait is not None:
        raise TooManyAttempts(
            f"too many failed attempts from this address: try again in {wait} s",
            headers={"Retry-After": str(wait)},
        )
    try:
        body = await _read_json(request)
        answer = await run_in_threadpool(
            cloud.database.transact, lambda tx: work(tx, body, cloud.now()), write=write
        )
    except _FAILURES:
        budget.spend(client, now.timestamp())
        raise
    return JSONResponse(answer, status_code=status)


def _body_schema(properties: dict[str, Any]) -> dict[str, Any]:
    schema = {"type": "object", "properties": properties, "required": list(properties)}
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}


_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"description": "Not JSON, or not the right shape (the detail names the field)"},
    413: {"description": "The body is larger than 4 KiB"},
    429: {"description": "Too many failed attempts from this address; see Retry-After"},
    503: {"description": "The database is busy; retry after Retry-After seconds"},
}


@router.post(
    "/activate",
    status_code=201,
    summary="Activate a phone pass",
    description=(
        "Spend a single-use activation code (made by the gym's admin) on a new phone pass for "
        "the phone's Ed25519 public key (43 characters of unpadded base64url). The answer's "
        "`pass_id` and `organization_id` are what the phone signs its codes with, every "
        "`period_s` seconds; doors accept a code within `skew_steps` steps of their clock."
    ),
    responses={
        **_ERRORS,
        409: {"description": "The member already holds the most active passes allowed"},
        410: {"description": "Unknown, used or expired activation code"},
    },
    openapi_extra=_body_schema(
        {
            "code": {"type": "string", "example": "MFRGGZDFMZTWQ2LK"},
            "public_key": {
                "type": "string",
                "example": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo",
            },
        }
    ),
)
async def activate(request: Request) -> JSONResponse:
    def work(tx: Any, body: object, now: Any) -> dict[str, Any]:
        return passes.activate(tx, passes.parse_activate_request(body), now)

    return await _attempt(request, work, 201, write=True)


@router.post(
    "/status",
    summary="A pass's status, asked by its phone",
    description=(
        "A current pass code (`FFP1:...`) proves the caller holds the pass's key; the answer is "
        "the pass's status (ACTIVE or REVOKED), its period and the cloud's time. A code whose "
        "step is more than 2 steps from the cloud's answers 403 `code_expired` with "
        "`server_time`: the phone's clock is off."
    ),
    responses={
        **_ERRORS,
        403: {"description": "Bad signature, or a code outside the time window"},
        404: {"description": "No pass has this id"},
    },
    openapi_extra=_body_schema({"code": {"type": "string", "example": "FFP1:..."}}),
)
async def status(request: Request) -> JSONResponse:
    return await _attempt(request, passes.pass_status, 200, write=False)
