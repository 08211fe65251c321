"""The device API, sync protocol v3 (docs/sync-protocol.md is the contract; this follows it).

Bodies are read raw and parsed with ``sync.protocol`` (the same parser the device uses), so a
broken or hostile body becomes a 400 naming the field, never a 500. The body size is checked from
``Content-Length`` and again while reading (a chunked body cannot sneak past). Database work runs
in the thread pool. The request's arrival time (the app's clock) is the time of the anchor the
cloud records from it; the answer's ``server_time`` is read again just before answering, since
the device pairs it with the moment it receives the answer.
"""

from __future__ import annotations

import dataclasses
from typing import Annotated, Any, NoReturn

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.concurrency import run_in_threadpool

from cloud import db, replica, uploads
from cloud.app import Cloud, cloud_of
from cloud.errors import BadRequest, TooLarge, Unauthorized
from sync.protocol import (
    MAX_BATCH_ITEMS,
    MAX_REQUEST_BYTES,
    BatchTooLarge,
    ProtocolError,
    parse_heartbeat,
    parse_json,
    parse_upload_envelope,
    utc_text,
)

router = APIRouter(tags=["device"])
_bearer = HTTPBearer(
    auto_error=False,
    scheme_name="device token",
    description="The device token returned by POST /v1/enrol.",
)
DeviceCredentials = Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
_ENROL_MAX_BYTES = 16 << 10

_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"description": "Not JSON, or not the right shape (the detail names the field)"},
    401: {"description": "Missing, unknown or revoked device token"},
    426: {
        "description": "The device speaks another protocol version (`FitFlow-Protocol`); "
        "`supported` lists the versions this cloud speaks: update the door's software"
    },
    503: {"description": "The database is busy; retry after Retry-After seconds"},
}


def _body_schema(properties: dict[str, Any], required: list[str]) -> dict[str, Any]:
    schema = {"type": "object", "properties": properties, "required": required}
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, or TooLarge once it is known to exceed ``limit`` bytes."""
    length = request.headers.get("content-length")
    if length is not None:
        if not length.strip().isdigit():
            raise BadRequest("Content-Length: not a number")
        if int(length) > limit:
            raise TooLarge(f"the body is larger than {limit} bytes", max_items=MAX_BATCH_ITEMS)
    chunks = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise TooLarge(f"the body is larger than {limit} bytes", max_items=MAX_BATCH_ITEMS)
        chunks.append(chunk)
    return b"".join(chunks)


def _token(credentials: HTTPAuthorizationCredentials | None) -> str | None:
    return None if credentials is None else credentials.credentials


def _json(body: bytes, what: str) -> object:
    try:
        return parse_json(body, what)
    except ProtocolError as exc:
        raise BadRequest(str(exc)) from None


# -- enrolment -------------------------------------------------------------------------------------


@router.post(
    "/v1/enrol",
    status_code=201,
    summary="Enrol a device",
    description=(
        "Spend a single-use enrolment code (made by the gym's admin, valid at most 24 h) on a new "
        "device; the answer carries the device's token, shown this once. An unknown, used or "
        "expired code answers 403 `enrolment_refused`."
    ),
    responses={**_ERRORS, 403: {"description": "Unknown, used or expired enrolment code"}},
    openapi_extra=_body_schema(
        {
            "code": {"type": "string", "example": "7KQ4-M2XD-9HVA"},
            "name": {"type": "string", "example": "front door"},
            "software_version": {"type": "string", "example": "0.1.0"},
        },
        ["code"],
    ),
)
async def enrol(request: Request) -> JSONResponse:
    cloud = cloud_of(request)
    now = cloud.now()
    body = await read_body(request, _ENROL_MAX_BYTES)

    def work() -> dict[str, Any]:
        try:
            parsed = uploads.parse_enrol_request(_json(body, "the enrolment request"))
        except ProtocolError as exc:
            raise BadRequest(str(exc)) from None
        enrolment = cloud.database.transact(lambda tx: uploads.enrol(tx, parsed, now))
        return enrolment.to_wire()

    return JSONResponse(await run_in_threadpool(work), status_code=201)


# -- replica ---------------------------------------------------------------------------------------


def _device(cloud: Cloud, credentials: HTTPAuthorizationCredentials | None) -> uploads.DeviceAuth:
    return uploads.authenticate_device(cloud.database, _token(credentials), cloud.now())


# Uploads and heartbeats authenticate inside their own write transaction, after the body is read
# and parsed: no round trips of their own on the way that matters. The answers stay those of a
# token checked first: a missing token is refused before the body is read, and a body refused
# (400, 413) is refused as 401 instead when its token is unknown or revoked (checked then, on
# that error path only).


async def _read_device_body(request: Request, cloud: Cloud, token: str | None) -> bytes:
    if not token:
        raise Unauthorized("missing bearer token")
    try:
        return await read_body(request, MAX_REQUEST_BYTES)
    except TooLarge:
        await run_in_threadpool(uploads.authenticate_device, cloud.database, token, cloud.now())
        raise


def _refuse_body(cloud: Cloud, token: str | None, refusal: Exception) -> NoReturn:
    uploads.authenticate_device(cloud.database, token, cloud.now())
    raise refusal from None


@router.get(
    "/v1/replica/snapshot",
    summary="A page of the replica",
    description=(
        "Live rows of the device's replica (its organisation's plans, members, memberships and its "
        "gym's hours and closures) in (kind, id) order after the cursor `after`, at most `limit` "
        "(default 1000, max 5000). `next` is the cursor of the following page, null on the last. "
        "Asking for the first page clears an admin's re-snapshot request."
    ),
    responses=_ERRORS,
)
def snapshot(
    request: Request,
    credentials: DeviceCredentials,
    after: str | None = None,
    limit: str | None = None,
) -> JSONResponse:
    cloud = cloud_of(request)
    device = _device(cloud, credentials)
    size = replica.parse_limit(limit)
    scope = replica.Scope(device.organization_id, device.gym_id)
    page = cloud.database.transact(
        lambda tx: replica.snapshot_page(tx, scope, after, size), write=False
    )
    if after is None and device.resnapshot_requested:
        cloud.database.transact(
            lambda tx: db.set_resnapshot(tx, device.organization_id, device.id, False)
        )
    return JSONResponse(page)


@router.get(
    "/v1/replica/changes",
    summary="Changes since a version",
    description=(
        "Rows and tombstones changed after version `since`, in (version, kind, id) order; the "
        "last page (`next` null) carries the checkpoint (version, checksum, count of the whole "
        "replica), read in the same transaction. 304 with no body when `since` is the current "
        "version, no cursor is given and If-None-Match names that version (the idle poll; ETag "
        '`"v<version>"`). 410 '
        "`cursor_expired` when `since` is older than purged tombstones or newer than the cloud."
    ),
    responses={
        **_ERRORS,
        304: {"description": "Nothing changed since `since`"},
        410: {"description": "Take a fresh snapshot"},
    },
)
def changes(
    request: Request,
    credentials: DeviceCredentials,
    since: str | None = None,
    after: str | None = None,
    limit: str | None = None,
) -> Response:
    cloud = cloud_of(request)
    device = _device(cloud, credentials)
    version_since = replica.parse_since(since)
    size = replica.parse_limit(limit)
    scope = replica.Scope(device.organization_id, device.gym_id)
    if after is None:
        # The idle poll: the version counter was read with the device's token, by one statement.
        version, purged = device.org_version, device.org_purged_version
        replica.check_since(version_since, version, purged)
        # Only a poll that says which version it holds gets a 304: the catch-up after a
        # snapshot asks without If-None-Match and needs the checkpoint even when nothing changed.
        etag = f'"v{version}"'
        if version_since == version and _etag_matches(request.headers.get("if-none-match"), etag):
            return Response(status_code=304, headers={"ETag": etag})
    page = cloud.database.transact(
        lambda tx: replica.change_page(tx, scope, version_since, after, size), write=False
    )
    headers = {}
    if page["checkpoint"] is not None:
        headers["ETag"] = f'"v{page["checkpoint"]["version"]}"'
    return JSONResponse(page, headers=headers)


def _etag_matches(header: str | None, etag: str) -> bool:
    """If-None-Match holds ``etag`` (weak or strong, possibly in a list, or ``*``)."""
    if not header:
        return False
    tags = [tag.strip().removeprefix("W/") for tag in header.split(",")]
    return "*" in tags or etag in tags


# -- uploads and heartbeats ------------------------------------------------------------------------


@router.post(
    "/v1/checkins",
    summary="Upload check-ins and passage events",
    description=(
        "A batch of journal rows (at most 500 items, 1 MiB): check-ins (`kind` `checkin`) and "
        "the door's passage events (`kind` `entry`, `annulled`, `tailgating`, `exit`). Each item "
        "is stored by its id exactly once and answered `created`, `duplicate` (this device sent "
        "it before) or `rejected` with a code (`invalid_item` naming the field, `id_conflict`). "
        "Class-pack and PT balances go down only for newly created granted check-ins, and back "
        "up only for newly created `annulled` events of a check-in that spent a class (it is "
        "marked annulled; an `entry` marks it confirmed); the result's `version` is the replica "
        "version carrying that change. Each check-in's `pass_id` names the phone pass the code "
        "was (null: a card) and is stored with it. `clock` and `anchors` place offline events "
        "in time."
    ),
    responses={**_ERRORS, 413: {"description": "More than 500 items or more than 1 MiB"}},
    openapi_extra=_body_schema(
        {
            "items": {"type": "array", "items": {"type": "object"}, "maxItems": MAX_BATCH_ITEMS},
            "clock": {"type": "object"},
            "anchors": {"type": "array", "items": {"type": "object"}},
        },
        ["items"],
    ),
)
async def checkins(
    request: Request,
    credentials: DeviceCredentials,
) -> JSONResponse:
    cloud = cloud_of(request)
    now = cloud.now()
    token = _token(credentials)
    body = await _read_device_body(request, cloud, token)

    def work() -> dict[str, Any]:
        try:
            envelope = parse_upload_envelope(_json(body, "the upload"))
        except BatchTooLarge as exc:
            _refuse_body(cloud, token, TooLarge(str(exc), max_items=MAX_BATCH_ITEMS))
        except ProtocolError as exc:
            _refuse_body(cloud, token, BadRequest(str(exc)))
        except BadRequest as exc:
            _refuse_body(cloud, token, exc)
        results = cloud.database.transact(
            lambda tx: uploads.receive_upload(tx, token, envelope, now)
        )
        return {"results": [r.to_wire() for r in results], "server_time": utc_text(cloud.now())}

    return JSONResponse(await run_in_threadpool(work))


@router.post(
    "/v1/heartbeat",
    summary="Report health",
    description=(
        "The device's sync health and journal position. The answer carries the server time (an "
        "anchor for the device), `resnapshot` (the admin asked, or the device is at the cloud's "
        "version with another checksum or count) and `resend_from_seq` (the first retained seq "
        "the cloud holds nothing for, after a restore from backup). `occupancy` (optional) is "
        "the door's count of people in the gym; the cloud keeps the latest."
    ),
    responses=_ERRORS,
    openapi_extra=_body_schema(
        {
            "software_version": {"type": "string"},
            "boot_id": {"type": "string"},
            "monotonic_ns": {"type": "integer"},
            "device_time": {"type": "string"},
            "clock_quality": {"type": "string"},
            "backlog": {"type": "integer"},
            "oldest_pending_age_s": {"type": ["number", "null"]},
            "replica_version": {"type": "integer"},
            "replica_checksum": {"type": "string"},
            "replica_count": {"type": "integer"},
            "last_seq": {"type": "integer"},
            "synced_through_seq": {"type": "integer"},
            "retained_from_seq": {"type": "integer"},
            "last_error": {"type": ["string", "null"]},
            "anchors": {"type": "array", "items": {"type": "object"}},
            "occupancy": {"type": "object"},
        },
        ["software_version", "boot_id", "monotonic_ns", "device_time", "replica_version"],
    ),
)
async def heartbeat(
    request: Request,
    credentials: DeviceCredentials,
) -> JSONResponse:
    cloud = cloud_of(request)
    now = cloud.now()
    token = _token(credentials)
    body = await _read_device_body(request, cloud, token)

    def work() -> dict[str, Any]:
        try:
            beat = parse_heartbeat(_json(body, "the heartbeat"))
        except ProtocolError as exc:
            _refuse_body(cloud, token, BadRequest(str(exc)))
        except BadRequest as exc:
            _refuse_body(cloud, token, exc)
        reply = uploads.receive_heartbeat(cloud.database, token, beat, now)
        return dataclasses.replace(reply, server_time=cloud.now()).to_wire()

    return JSONResponse(await run_in_threadpool(work))
