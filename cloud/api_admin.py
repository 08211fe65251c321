"""The admin API under ``/admin/v1``: an organisation's admin token (``Authorization: Bearer
ffa_...``, made by ``kiosk cloud init`` or ``kiosk cloud admin-token``) scopes every call to that
organisation. Another organisation's ids answer 404, like ids that do not exist.

Invalid input answers 422 ``{"error": "invalid_request", "detail", "fields": [{"field",
"problem"}]}``; a clash with stored data (an id or card code taken, a plan in use) 409.
Lists are keyset-paginated: ``limit`` (1-1000, default 100) and ``after`` = the previous page's
``next``.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ConfigDict, Field, StrictInt
from starlette.concurrency import run_in_threadpool

from cloud import admin, cards, importer, passes
from cloud.api_device import read_body
from cloud.app import Cloud, cloud_of
from cloud.errors import BadRequest, TooLarge, Unauthorized

router = APIRouter(prefix="/admin/v1", tags=["admin"])
_bearer = HTTPBearer(
    auto_error=False,
    scheme_name="admin token",
    description="An organisation's admin token (kiosk cloud init / kiosk cloud admin-token).",
)
_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"description": "Missing or unknown admin token"},
    404: {"description": "No such row in this organisation"},
    422: {"description": "Invalid input; `fields` names each bad field"},
}
BearerCredentials = Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
Limit = Query(admin.DEFAULT_LIST_ROWS, ge=1, le=admin.MAX_LIST_ROWS, description="rows per page")
After = Query(None, description="the previous page's `next`")


class Admin:
    """The caller: its organisation, with the database and clock."""

    def __init__(self, cloud: Cloud, org_id: str) -> None:
        self.cloud = cloud
        self.org = org_id

    def read(self, fn: Any) -> Any:
        return self.cloud.database.transact(fn, write=False)

    def write(self, fn: Any) -> Any:
        return self.cloud.database.transact(fn, write=True)

    def now(self) -> Any:
        return self.cloud.now()


def admin_caller(request: Request, credentials: BearerCredentials) -> Admin:
    cloud = cloud_of(request)
    if credentials is None:
        raise Unauthorized("missing bearer admin token")
    org = cloud.database.transact(
        lambda tx: admin.organization_of_admin(tx, credentials.credentials), write=False
    )
    if org is None:
        raise Unauthorized("unknown admin token")
    return Admin(cloud, org)


AdminDep = Annotated[Admin, Depends(admin_caller)]


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _set(model: BaseModel) -> dict[str, Any]:
    """The fields the caller actually sent (a PATCH changes only those)."""
    return model.model_dump(exclude_unset=True)


# -- organisation and gyms -------------------------------------------------------------------------


@router.get("/organization", summary="This organisation", responses=_ERRORS)
def get_organization(
    a: AdminDep,
) -> dict[str, Any]:
    """The organisation's id, name, replica version and phone pass settings."""
    return a.read(lambda tx: admin.organization_view(tx, a.org))


class OrganizationPatch(_In):
    pass_period_s: StrictInt | None = Field(
        None, description="seconds between a new phone pass's codes, 5-300 (default 15)"
    )
    max_live_passes: StrictInt | None = Field(
        None, description="active phone passes a member may hold, 1-10 (default 2)"
    )


@router.patch(
    "/organization",
    summary="Change the phone pass settings",
    description=(
        "`pass_period_s` applies to passes activated from now on (a pass keeps its period); "
        "lowering `max_live_passes` revokes nothing, it only refuses new activations."
    ),
    responses=_ERRORS,
)
def update_organization(a: AdminDep, body: OrganizationPatch) -> dict[str, Any]:
    return a.write(lambda tx: admin.update_organization(tx, a.org, _set(body)))


class GymIn(_In):
    name: str
    timezone: str = Field("UTC", description="IANA time zone, e.g. Europe/Berlin")


class GymPatch(_In):
    name: str | None = None
    timezone: str | None = None


@router.get("/gyms", summary="List gyms", responses=_ERRORS)
def list_gyms(
    a: AdminDep,
) -> dict[str, Any]:
    return {"items": a.read(lambda tx: admin.list_gyms(tx, a.org)), "next": None}


@router.post("/gyms", status_code=201, summary="Create a gym", responses=_ERRORS)
def create_gym(a: AdminDep, body: GymIn) -> dict[str, Any]:
    return a.write(lambda tx: admin.create_gym(tx, a.org, body.name, body.timezone, a.now()))


@router.get("/gyms/{gym_id}", summary="Get a gym", responses=_ERRORS)
def get_gym(a: AdminDep, gym_id: str) -> dict[str, Any]:
    return a.read(lambda tx: admin.get_gym(tx, a.org, gym_id))


@router.patch("/gyms/{gym_id}", summary="Rename a gym or change its time zone", responses=_ERRORS)
def update_gym(a: AdminDep, gym_id: str, body: GymPatch) -> dict[str, Any]:
    return a.write(lambda tx: admin.update_gym(tx, a.org, gym_id, _set(body)))


class HoursWindowIn(_In):
    weekday: int = Field(description="0 = Monday .. 6 = Sunday")
    open_minute: int = Field(description="minutes after local midnight, 0-1439")
    close_minute: int = Field(description="minutes after local midnight, 1-1440")


class HoursIn(_In):
    hours: list[HoursWindowIn]


@router.get(
    "/gyms/{gym_id}/occupancy",
    summary="People in the gym now",
    description=(
        "From each live door's last heartbeat: the gym's count (`now`: all entries minus all "
        "exits minus the entries doors without an exit signal let expire, never below zero), "
        "`entries_today`, `exits_today`, the largest `capacity` a door has configured, and each "
        "door's own report (`doors`: `now`, `entries_today`, `exits_today`, `max_today`, "
        "`capacity`, `reported_at`). Only reports made today in the gym's time zone count "
        "(`counted`)."
    ),
    responses=_ERRORS,
)
def gym_occupancy(a: AdminDep, gym_id: str) -> dict[str, Any]:
    return a.read(lambda tx: admin.gym_occupancy(tx, a.org, gym_id, a.now()))


@router.get("/gyms/{gym_id}/hours", summary="Weekly opening hours", responses=_ERRORS)
def get_hours(a: AdminDep, gym_id: str) -> dict[str, Any]:
    return {"items": a.read(lambda tx: admin.list_hours(tx, a.org, gym_id)), "next": None}


@router.put(
    "/gyms/{gym_id}/hours",
    summary="Replace the weekly opening hours",
    description="The gym's opening windows become exactly these (local time of the gym).",
    responses=_ERRORS,
)
def put_hours(a: AdminDep, gym_id: str, body: HoursIn) -> dict[str, Any]:
    windows = [w.model_dump() for w in body.hours]
    items = a.write(lambda tx: admin.replace_hours(tx, a.org, gym_id, windows, a.now()))
    return {"items": items, "next": None}


class ClosureIn(_In):
    id: str | None = None
    start_date: str = Field(description="YYYY-MM-DD, first closed day")
    end_date: str = Field(description="YYYY-MM-DD, last closed day")
    reason: str = ""


@router.get("/gyms/{gym_id}/closures", summary="List closures", responses=_ERRORS)
def list_closures(a: AdminDep, gym_id: str) -> dict[str, Any]:
    return {"items": a.read(lambda tx: admin.list_closures(tx, a.org, gym_id)), "next": None}


@router.post("/gyms/{gym_id}/closures", status_code=201, summary="Add a closure", responses=_ERRORS)
def add_closure(a: AdminDep, gym_id: str, body: ClosureIn) -> dict[str, Any]:
    return a.write(lambda tx: admin.add_closure(tx, a.org, gym_id, _set(body), a.now()))


@router.delete(
    "/gyms/{gym_id}/closures/{closure_id}",
    status_code=204,
    summary="Delete a closure",
    responses=_ERRORS,
)
def delete_closure(a: AdminDep, gym_id: str, closure_id: str) -> Response:
    a.write(lambda tx: admin.delete_closure(tx, a.org, gym_id, closure_id, a.now()))
    return Response(status_code=204)


class EnrolmentCodeIn(_In):
    ttl_minutes: int = Field(60, description="validity in minutes, 1-1440 (24 h)")


@router.post(
    "/gyms/{gym_id}/enrolment-codes",
    status_code=201,
    summary="Make an enrolment code",
    description="A single-use code for enrolling one device at this gym; shown only now.",
    responses=_ERRORS,
)
def enrolment_code(a: AdminDep, gym_id: str, body: EnrolmentCodeIn | None = None) -> dict[str, Any]:
    ttl = 60 if body is None else body.ttl_minutes
    return a.write(lambda tx: admin.create_enrolment_code(tx, a.org, gym_id, ttl, a.now()))


# -- plans -----------------------------------------------------------------------------------------


_VISITS = "the most entries a member of the plan may make in one local day, 1-100; null: no limit"


class PlanIn(_In):
    id: str | None = None
    name: str
    windows: list[list[int]] = Field(
        default_factory=list,
        description="access windows [weekday 0-6, start_minute, end_minute] in local time; "
        "empty: any time the gym is open",
    )
    max_visits_per_day: StrictInt | None = Field(None, description=_VISITS)


class PlanPatch(_In):
    name: str | None = None
    windows: list[list[int]] | None = None
    max_visits_per_day: StrictInt | None = Field(None, description=_VISITS)


@router.get("/plans", summary="List plans", responses=_ERRORS)
def list_plans(a: AdminDep, limit: int = Limit, after: str | None = After) -> dict[str, Any]:
    return a.read(lambda tx: admin.list_plans(tx, a.org, after, limit))


@router.post("/plans", status_code=201, summary="Create a plan", responses=_ERRORS)
def create_plan(a: AdminDep, body: PlanIn) -> dict[str, Any]:
    return a.write(lambda tx: admin.save_plan(tx, a.org, None, _set(body), a.now()))


@router.get("/plans/{plan_id}", summary="Get a plan", responses=_ERRORS)
def get_plan(a: AdminDep, plan_id: str) -> dict[str, Any]:
    return a.read(lambda tx: admin.get_plan(tx, a.org, plan_id))


@router.patch("/plans/{plan_id}", summary="Change a plan", responses=_ERRORS)
def update_plan(a: AdminDep, plan_id: str, body: PlanPatch) -> dict[str, Any]:
    return a.write(lambda tx: admin.save_plan(tx, a.org, plan_id, _set(body), a.now()))


@router.delete(
    "/plans/{plan_id}",
    status_code=204,
    summary="Delete a plan",
    description="Refused (409) while live memberships use it.",
    responses={**_ERRORS, 409: {"description": "The plan is in use"}},
)
def delete_plan(a: AdminDep, plan_id: str) -> Response:
    a.write(lambda tx: admin.delete_plan(tx, a.org, plan_id, a.now()))
    return Response(status_code=204)


# -- members ---------------------------------------------------------------------------------------


class MemberIn(_In):
    id: str | None = None
    first_name: str
    last_name: str
    status: str = Field("ACTIVE", description="ACTIVE, EXPIRED or PAUSED")
    is_staff: bool = False
    code: str | None = Field(None, description="the printed card code (unique), or null")


class MemberPatch(_In):
    first_name: str | None = None
    last_name: str | None = None
    status: str | None = None
    is_staff: bool | None = None
    code: str | None = None


@router.get("/members", summary="List members", responses=_ERRORS)
def list_members(a: AdminDep, limit: int = Limit, after: str | None = After) -> dict[str, Any]:
    return a.read(lambda tx: admin.list_members(tx, a.org, after, limit))


@router.post(
    "/members",
    status_code=201,
    summary="Create a member",
    responses={**_ERRORS, 409: {"description": "The id or card code is taken"}},
)
def create_member(a: AdminDep, body: MemberIn) -> dict[str, Any]:
    return a.write(lambda tx: admin.save_member(tx, a.org, None, _set(body), a.now()))


@router.post(
    "/members/import",
    summary="Import members from CSV",
    description=(
        "Body: text/csv with a header line. Columns: member_id?, first_name, last_name, code, "
        "status?, plan_id?, membership_type?, start_date?, end_date?, remaining_classes?, "
        "membership_id?. All or nothing: any bad line → 422 with the per-line report and "
        "nothing stored; otherwise every line is stored in one transaction. At most 8 MiB and "
        "50,000 lines. `dry_run=true` checks without storing."
    ),
    responses={**_ERRORS, 413: {"description": "The file is larger than 8 MiB"}},
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"text/csv": {"schema": {"type": "string"}}},
        }
    },
)
async def import_members(a: AdminDep, request: Request, dry_run: bool = False) -> dict[str, Any]:
    try:
        raw = await read_body(request, importer.MAX_IMPORT_BYTES)
    except TooLarge:
        raise TooLarge(f"the CSV is larger than {importer.MAX_IMPORT_BYTES} bytes") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise BadRequest(f"the CSV is not UTF-8 (byte {exc.start})") from None
    now = a.now()
    return await run_in_threadpool(
        a.write, lambda tx: importer.import_members(tx, a.org, text, now, dry_run=dry_run)
    )


@router.get("/members/{member_id}", summary="Get a member", responses=_ERRORS)
def get_member(a: AdminDep, member_id: str) -> dict[str, Any]:
    return a.read(lambda tx: admin.get_member(tx, a.org, member_id))


@router.patch(
    "/members/{member_id}",
    summary="Change a member",
    responses={**_ERRORS, 409: {"description": "The card code is taken"}},
)
def update_member(a: AdminDep, member_id: str, body: MemberPatch) -> dict[str, Any]:
    return a.write(lambda tx: admin.save_member(tx, a.org, member_id, _set(body), a.now()))


@router.delete(
    "/members/{member_id}",
    status_code=204,
    summary="Delete a member",
    description="The member and its memberships become tombstones.",
    responses=_ERRORS,
)
def delete_member(a: AdminDep, member_id: str) -> Response:
    a.write(lambda tx: admin.delete_member(tx, a.org, member_id, a.now()))
    return Response(status_code=204)


# -- phone passes and printed cards ----------------------------------------------------------------


class PassActivationIn(_In):
    ttl_minutes: StrictInt = Field(
        passes.DEFAULT_ACTIVATION_TTL_MINUTES, description="validity in minutes, 1-1440 (24 h)"
    )


@router.post(
    "/members/{member_id}/pass-activations",
    status_code=201,
    summary="Make a phone pass activation code",
    description=(
        "A single-use code (16 characters, A-Z and 2-7) with which the member activates one "
        "phone pass on the pass page (`activation_path`, e.g. sent as a link); shown only now. "
        "409 `too_many_passes` when the member already holds the most active passes allowed."
    ),
    responses={**_ERRORS, 409: {"description": "The member holds the most active passes"}},
)
def pass_activation(
    a: AdminDep, member_id: str, body: PassActivationIn | None = None
) -> dict[str, Any]:
    ttl = passes.DEFAULT_ACTIVATION_TTL_MINUTES if body is None else body.ttl_minutes
    return a.write(lambda tx: passes.create_activation(tx, a.org, member_id, ttl, a.now()))


@router.get(
    "/members/{member_id}/passes",
    summary="A member's phone passes",
    description="Active and revoked passes, oldest first (never their keys).",
    responses=_ERRORS,
)
def list_passes(a: AdminDep, member_id: str) -> dict[str, Any]:
    return a.read(lambda tx: passes.list_passes(tx, a.org, member_id))


@router.post(
    "/passes/{pass_id}/revoke",
    summary="Revoke a phone pass",
    description=(
        "The pass becomes REVOKED in a new replica version: every door refuses it after its next "
        "pull. Revoking a revoked pass changes nothing."
    ),
    responses=_ERRORS,
)
def revoke_pass(a: AdminDep, pass_id: str) -> dict[str, Any]:
    return a.write(lambda tx: passes.revoke_pass(tx, a.org, pass_id, a.now()))


_CARD_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    # An SVG opened on its own runs no script and loads nothing.
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'",
}
_CARD_GYM = Query(None, description="also print this gym's name on the card")


@router.get(
    "/members/{member_id}/card.svg",
    summary="The member's printable card (SVG)",
    description=(
        "The QR code of the member's card code, the code in text under it, the member's and the "
        "organisation's (and, with `gym_id`, the gym's) names, at credit-card size "
        "(85.6 x 54 mm). 404 when the member has no card code."
    ),
    responses={**_ERRORS, 200: {"content": {"image/svg+xml": {}}}},
    response_class=Response,
)
def card_svg(a: AdminDep, member_id: str, gym_id: str | None = _CARD_GYM) -> Response:
    card = a.read(lambda tx: admin.member_card(tx, a.org, member_id, gym_id))
    svg = cards.card_svg(
        card["code"],
        first_name=card["first_name"],
        last_name=card["last_name"],
        organization_name=card["organization_name"],
        gym_name=card["gym_name"],
    )
    return Response(svg, media_type="image/svg+xml", headers=_CARD_HEADERS)


@router.get(
    "/members/{member_id}/card.png",
    summary="The QR code of the member's card (PNG)",
    description=(
        "The symbol alone, with its quiet zone, 10 px a module, for card-printing software that "
        "adds the text itself. 404 when the member has no card code."
    ),
    responses={**_ERRORS, 200: {"content": {"image/png": {}}}},
    response_class=Response,
)
def card_png(a: AdminDep, member_id: str) -> Response:
    card = a.read(lambda tx: admin.member_card(tx, a.org, member_id))
    return Response(cards.card_png(card["code"]), media_type="image/png", headers=_CARD_HEADERS)


# -- memberships -----------------------------------------------------------------------------------


class MembershipIn(_In):
    id: str | None = None
    member_id: str
    plan_id: str | None = None
    type: str = Field(description="SUBSCRIPTION, CLASS_PACK or PT")
    start_date: str = Field(description="YYYY-MM-DD")
    end_date: str | None = Field(None, description="YYYY-MM-DD or null (open-ended)")
    remaining_classes: int | None = Field(None, description="class packs and PT; null: unlimited")


class MembershipPatch(_In):
    member_id: str | None = None
    plan_id: str | None = None
    type: str | None = None
    start_date: str | None = None
    end_date: str | None = None
    remaining_classes: int | None = None


@router.get("/memberships", summary="List memberships", responses=_ERRORS)
def list_memberships(
    a: AdminDep, member_id: str | None = None, limit: int = Limit, after: str | None = After
) -> dict[str, Any]:
    return a.read(lambda tx: admin.list_memberships(tx, a.org, member_id, after, limit))


@router.post("/memberships", status_code=201, summary="Create a membership", responses=_ERRORS)
def create_membership(a: AdminDep, body: MembershipIn) -> dict[str, Any]:
    return a.write(lambda tx: admin.save_membership(tx, a.org, None, _set(body), a.now()))


@router.get("/memberships/{membership_id}", summary="Get a membership", responses=_ERRORS)
def get_membership(a: AdminDep, membership_id: str) -> dict[str, Any]:
    return a.read(lambda tx: admin.get_membership(tx, a.org, membership_id))


@router.patch("/memberships/{membership_id}", summary="Change a membership", responses=_ERRORS)
def update_membership(a: AdminDep, membership_id: str, body: MembershipPatch) -> dict[str, Any]:
    return a.write(lambda tx: admin.save_membership(tx, a.org, membership_id, _set(body), a.now()))


@router.delete(
    "/memberships/{membership_id}",
    status_code=204,
    summary="Delete a membership",
    responses=_ERRORS,
)
def delete_membership(a: AdminDep, membership_id: str) -> Response:
    a.write(lambda tx: admin.delete_membership(tx, a.org, membership_id, a.now()))
    return Response(status_code=204)


# -- devices ---------------------------------------------------------------------------------------


@router.get(
    "/devices",
    summary="List devices with their sync health",
    description=(
        "Each device's last heartbeat: backlog, age of the oldest pending check-in, replica "
        "version/checksum/count and whether it matches the cloud's (`replica_status`: match, "
        "mismatch, behind, ahead), software version, clock quality, last error, last seen; and "
        "the occupancy it last reported (`occupancy`: `now`, `entries_today`, `exits_today`, "
        "`max_today`, `capacity`, `reported_at`; null before any)."
    ),
    responses=_ERRORS,
)
def list_devices(a: AdminDep, gym_id: str | None = None) -> dict[str, Any]:
    return {"items": a.read(lambda tx: admin.list_devices(tx, a.org, gym_id)), "next": None}


@router.get("/devices/{device_id}", summary="Get a device", responses=_ERRORS)
def get_device(a: AdminDep, device_id: str) -> dict[str, Any]:
    return a.read(lambda tx: admin.get_device(tx, a.org, device_id))


@router.post(
    "/devices/{device_id}/revoke",
    summary="Revoke a device",
    description="Its token answers 401 from now on; other devices are unaffected.",
    responses=_ERRORS,
)
def revoke_device(a: AdminDep, device_id: str) -> dict[str, Any]:
    return a.write(lambda tx: admin.revoke_device(tx, a.org, device_id, a.now()))


@router.post(
    "/devices/{device_id}/resnapshot",
    summary="Ask a device for a fresh snapshot",
    description="Its next heartbeat answers `resnapshot: true` until it asks for a snapshot.",
    responses=_ERRORS,
)
def request_resnapshot(a: AdminDep, device_id: str) -> dict[str, Any]:
    return a.write(lambda tx: admin.request_resnapshot(tx, a.org, device_id))


# -- attendance ------------------------------------------------------------------------------------


@router.get(
    "/checkins",
    summary="Attendance",
    description=(
        "Check-ins by the time they happened (`occurred_at`, placed from clock anchors; "
        "`time_source` says how), oldest first, in [since, until). `pass_id` is the phone pass "
        "the member showed (null: a card). `confirmed`: the turnstile turned for it; "
        "`annulled`: it did not turn in time, so the member never came in and a class used was "
        "given back. Times are ISO 8601; `cursor` is the previous page's `next`."
    ),
    responses=_ERRORS,
)
def list_checkins(
    a: AdminDep,
    gym_id: str | None = None,
    since: str | None = None,
    until: str | None = None,
    limit: int = Limit,
    cursor: str | None = None,
) -> dict[str, Any]:
    return a.read(
        lambda tx: admin.list_checkins(
            tx, a.org, gym_id=gym_id, since=since, until=until, cursor=cursor, limit=limit
        )
    )


@router.get(
    "/overdrafts",
    summary="Overdrafts",
    description=(
        "Check-ins that took a class pack or PT balance below zero (two doors spent the last "
        "class while offline), with the membership's current balance. An annulled check-in is "
        "no overdraft, and a class given back by an annulment clears the newest overdraft of "
        "that membership it covers."
    ),
    responses=_ERRORS,
)
def list_overdrafts(
    a: AdminDep, gym_id: str | None = None, limit: int = Limit, cursor: str | None = None
) -> dict[str, Any]:
    return a.read(
        lambda tx: admin.list_checkins(
            tx,
            a.org,
            gym_id=gym_id,
            since=None,
            until=None,
            cursor=cursor,
            limit=limit,
            overdrafts_only=True,
        )
    )
