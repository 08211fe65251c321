"""Doors: the organisation's enrolled doors and their health, enrolment codes, revoking a door,
asking a door for a fresh copy of the member list, and class-pack overdrafts to settle
(docs/console.md, "Doors").

- ``GET /console/doors`` (owner, front desk): every door with its health, read from the devices
  table as its last heartbeat left it: online (seen within ONLINE_WITHIN_S), last seen, backlog
  and oldest pending upload, replica match, software version, clock quality, occupancy, last
  error; and the open overdrafts;
- ``POST /console/doors/enrolment-code`` (owner): a single-use code for enrolling a door at a
  gym, shown once (only its hash is stored);
- ``GET|POST /console/doors/{device_id}/revoke`` (owner): the confirmation page, then the revoke
  (the door's token answers 401 from then on; its check-ins stay);
- ``POST /console/doors/{device_id}/resnapshot`` (owner): the door's next heartbeat is told to
  take a fresh snapshot of the member list;
- ``POST /console/doors/overdrafts/{checkin_id}/settle`` (owner, front desk): the desk has dealt
  with an overdraft (the member paid for the class, or the gym lets it go): the check-in's
  overdraft flag is cleared; the balance stays as the doors spent it (a new pack is set on the
  member's membership).

The front desk sees the doors but changes only overdrafts: enrolling and revoking a door, and
re-snapshots, are the owner's (DOOR_ROLES). Every change writes an audit row in its transaction.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from cloud import admin, db
from cloud.console import audit, words
from cloud.console.auth import (
    ConsoleError,
    FormFields,
    StaffUser,
    address_of,
    allow,
    not_found,
    now_of,
    transact,
)
from cloud.console.pages import PREFIX, render, see_other
from cloud.errors import Invalid, NotFound
from sync.protocol import utc_from_text
from sync.text import one_line

router = APIRouter(prefix=PREFIX, include_in_schema=False)

# Enrolling, revoking and re-snapshotting doors: the owner's. The front desk sees the doors and
# settles overdrafts (memberships are its work).
DOOR_ROLES = ("owner",)
VIEW_ROLES = ("owner", "staff")
SETTLE_ROLES = ("owner", "staff")

# A door heartbeats once a sync round, every ``sync.interval_s`` (30 s unless configured): it is
# online when the cloud heard from it within two rounds. A door configured with a longer interval
# shows as offline between its rounds.
SYNC_INTERVAL_S = 30.0
ONLINE_WITHIN_S = 2 * SYNC_INTERVAL_S
ENROLMENT_TTLS = (15, 60, 240, 1440)  # minutes offered for a code (the admin API allows 1..1440)
DEFAULT_ENROLMENT_TTL = 60
MAX_OVERDRAFTS = 200  # listed at once (the newest)
MAX_ID_CHARS = 200

Viewer = Annotated[StaffUser, Depends(allow(*VIEW_ROLES))]
DoorKeeper = Annotated[StaffUser, Depends(allow(*DOOR_ROLES))]
Settler = Annotated[StaffUser, Depends(allow(*SETTLE_ROLES))]


def _zone(name: str | None) -> ZoneInfo:
    try:
        return ZoneInfo(name or "UTC")
    except (ZoneInfoNotFoundError, ValueError):
        return ZoneInfo("UTC")


def _local(text: str | None, zone: ZoneInfo, now: datetime) -> str:
    """A stored time in the gym's zone: "14:03" today, "2026-04-30 14:03" another day."""
    if not text:
        return ""
    moment = utc_from_text(text).astimezone(zone)
    if moment.date() == now.astimezone(zone).date():
        return moment.strftime("%H:%M")
    return moment.strftime("%Y-%m-%d %H:%M")


def door_view(device: dict[str, Any], gym: dict[str, Any] | None, now: datetime) -> dict[str, Any]:
    """A device (``admin.device_view``) as the doors page shows it, its state in words."""
    zone = _zone(gym["timezone"] if gym else None)
    health = device["health"]
    seen = device["last_seen_at"]
    age = None if seen is None else (now - utc_from_text(seen)).total_seconds()
    if device["revoked_at"]:
        state, state_words = "revoked", "Revoked"
    elif age is not None and age <= ONLINE_WITHIN_S:
        state, state_words = "online", "Online"
    else:
        state, state_words = "offline", "Offline"
    occupancy = device["occupancy"]
    backlog = health["backlog"]
    return {
        "id": device["id"],
        "name": device["name"],
        "gym": gym["name"] if gym else "",
        "gym_id": device["gym_id"],
        "state": state,
        "state_words": state_words,
        "revoked": bool(device["revoked_at"]),
        "revoked_at": _local(device["revoked_at"], zone, now),
        "enrolled_at": _local(device["enrolled_at"], zone, now),
        "last_seen": words.age_words(age) if seen else "never",
        "last_seen_at": _local(seen, zone, now),
        "reported": health["last_heartbeat_at"] is not None,
        "backlog": None if backlog is None else int(backlog),
        "oldest_pending": (
            None
            if health["oldest_pending_age_s"] is None
            else words.duration_words(health["oldest_pending_age_s"])
        ),
        "replica_status": health["replica_status"],
        "replica_ok": health["replica_status"] in (None, "match", "behind"),
        "replica": words.replica_words(health["replica_status"]),
        "software_version": device["software_version"] or "unknown",
        "clock_quality": health["clock_quality"],
        "clock_ok": health["clock_quality"] in (None, "ntp_synced"),
        "clock": words.clock_words(health["clock_quality"]),
        "last_error": one_line(health["last_error"], 300) if health["last_error"] else None,
        "resnapshot_requested": device["resnapshot_requested"],
        "occupancy": occupancy,
        "occupancy_at": _local(occupancy["reported_at"], zone, now) if occupancy else "",
    }


def overdraft_view(row: dict[str, Any], zone: ZoneInfo, now: datetime) -> dict[str, Any]:
    balance = row["remaining_classes"]
    return {
        "id": row["id"],
        "member_id": row["member_id"],
        "name": words.member_name(row["member_id"], row["first_name"], row["last_name"]),
        "known": row["member_id"] is not None and row["first_name"] is not None,
        "membership_id": row["membership_id"],
        "kind": (
            words.membership_type_words(row["membership_type"])
            if row["membership_type"]
            else "Membership (deleted)"
        ),
        "balance": None if balance is None else int(balance),
        "classes_used": int(row["classes_used"]),
        "when": _local(row["occurred_at"], zone, now),
        "door": row["device_name"] or row["door_id"],
        "overdraft": bool(row.get("overdraft", True)),
    }


def doors_view(tx: db.Tx, org_id: str, now: datetime) -> dict[str, Any]:
    gyms = admin.list_gyms(tx, org_id)
    by_id = {g["id"]: g for g in gyms}
    doors = [
        door_view(d, by_id.get(d["gym_id"]), now) for d in admin.list_devices(tx, org_id, None)
    ]
    sections = []
    for gym in gyms:
        mine = [d for d in doors if d["gym_id"] == gym["id"] and not d["revoked"]]
        gone = [d for d in doors if d["gym_id"] == gym["id"] and d["revoked"]]
        sections.append({"gym": gym, "doors": mine, "revoked": gone})
    zone = _zone(gyms[0]["timezone"] if gyms else None)
    overdrafts = db.open_overdrafts(tx, org_id, MAX_OVERDRAFTS)
    return {
        "sections": sections,
        "gyms": gyms,
        "overdrafts": [overdraft_view(r, zone, now) for r in overdrafts],
        "overdraft_count": db.count_overdrafts(tx, org_id),
        "zone": zone.key,
    }


_NOTICES = {
    "revoked": "The door was revoked: it can no longer sync. Enrol it again with a new code.",
    "already_revoked": "That door was revoked already.",
    "resnapshot": "The door will take a fresh copy of the member list at its next sync.",
    "settled": "The overdraft was settled.",
    "already_settled": "That check-in has no open overdraft (settled already, or an annulment "
    "gave its class back).",
}


async def _doors_page(
    request: Request, me: StaffUser, status: int = 200, error: str | None = None
) -> Response:
    now = now_of(request)
    data = await transact(request, lambda tx: doors_view(tx, me.organization_id, now), write=False)
    return render(
        request,
        "doors.html",
        status,
        **data,
        may_act=me.role in DOOR_ROLES,
        may_settle=me.role in SETTLE_ROLES,
        ttls=ENROLMENT_TTLS,
        default_ttl=DEFAULT_ENROLMENT_TTL,
        online_within=int(ONLINE_WITHIN_S),
        error=error,
        notice=_NOTICES.get(request.query_params.get("done", "")),
    )


def _id(text: str, what: str) -> str:
    if not text or len(text) > MAX_ID_CHARS:
        raise not_found(what)
    return text


@router.get("/doors")
async def doors(request: Request, me: Viewer) -> Response:
    return await _doors_page(request, me)


@router.post("/doors/enrolment-code")
async def enrolment_code(request: Request, me: DoorKeeper, form: FormFields) -> Response:
    gym_id = _id(form.get("gym_id", "").strip(), "gym")
    ttl_text = form.get("ttl_minutes", str(DEFAULT_ENROLMENT_TTL)).strip()
    ttl = int(ttl_text) if ttl_text.isdigit() and len(ttl_text) <= 5 else 0
    now = now_of(request)
    address = address_of(request)

    def make(tx: db.Tx) -> tuple[dict[str, Any], dict[str, Any]]:
        try:
            gym = admin.get_gym(tx, me.organization_id, gym_id)
        except NotFound:
            raise not_found("gym") from None
        made = admin.create_enrolment_code(tx, me.organization_id, gym_id, ttl, now)
        # Never the code itself: the audit row says which gym and until when.
        audit.record(
            tx,
            me,
            "door.enrolment_code",
            gym_id,
            f"enrolment code for {gym['name']}, valid {ttl} min until {made['expires_at']}",
            address,
            at=now,
        )
        return made, gym

    try:
        made, gym = await transact(request, make)
    except Invalid:
        return await _doors_page(
            request, me, 400, "Choose how long the code stays valid (1 minute to 24 hours)."
        )
    base = str(request.base_url).rstrip("/")
    return render(
        request,
        "door_code.html",
        code=made["code"],
        gym=gym,
        ttl=ttl,
        expires=_local(made["expires_at"], _zone(gym["timezone"]), now),
        cloud_url=base,
    )


async def _device(request: Request, me: StaffUser, device_id: str) -> dict[str, Any]:
    device_id = _id(device_id, "door")
    now = now_of(request)

    def load(tx: db.Tx) -> dict[str, Any]:
        try:
            device = admin.get_device(tx, me.organization_id, device_id)
            gym = admin.get_gym(tx, me.organization_id, device["gym_id"])
        except NotFound:
            raise not_found("door") from None
        return door_view(device, gym, now)

    return await transact(request, load, write=False)


@router.get("/doors/{device_id}/revoke")
async def revoke_form(request: Request, device_id: str, me: DoorKeeper) -> Response:
    door = await _device(request, me, device_id)
    return render(request, "door_revoke.html", door=door)


@router.post("/doors/{device_id}/revoke")
async def revoke(request: Request, device_id: str, me: DoorKeeper) -> Response:
    device_id = _id(device_id, "door")
    now = now_of(request)
    address = address_of(request)

    def run(tx: db.Tx) -> bool:
        row = db.device(tx, me.organization_id, device_id)
        if row is None:
            raise not_found("door")
        if row["revoked_at"] is not None:
            return False
        admin.revoke_device(tx, me.organization_id, device_id, now)
        audit.record(tx, me, "door.revoke", device_id, f"revoked {row['name']}", address, at=now)
        return True

    changed = await transact(request, run)
    return see_other(f"{PREFIX}/doors?done={'revoked' if changed else 'already_revoked'}")


@router.post("/doors/{device_id}/resnapshot")
async def resnapshot(request: Request, device_id: str, me: DoorKeeper) -> Response:
    device_id = _id(device_id, "door")
    now = now_of(request)
    address = address_of(request)

    def run(tx: db.Tx) -> None:
        row = db.device(tx, me.organization_id, device_id)
        if row is None:
            raise not_found("door")
        if row["revoked_at"] is not None:
            raise ConsoleError(
                409, "Not possible", "That door is revoked: it no longer syncs. Nothing changed."
            )
        admin.request_resnapshot(tx, me.organization_id, device_id)
        audit.record(
            tx,
            me,
            "door.resnapshot",
            device_id,
            f"asked {row['name']} for a fresh copy of the member list",
            address,
            at=now,
        )

    await transact(request, run)
    return see_other(f"{PREFIX}/doors?done=resnapshot")


@router.post("/doors/overdrafts/{checkin_id}/settle")
async def settle(request: Request, checkin_id: str, me: Settler) -> Response:
    checkin_id = _id(checkin_id, "overdraft")
    now = now_of(request)
    address = address_of(request)

    def run(tx: db.Tx) -> bool:
        row = db.overdraft_checkin(tx, me.organization_id, checkin_id)
        if row is None:
            raise not_found("overdraft")
        if not db.settle_overdraft(tx, me.organization_id, checkin_id):
            return False
        name = words.member_name(row["member_id"], row["first_name"], row["last_name"])
        balance = row["remaining_classes"]
        audit.record(
            tx,
            me,
            "overdraft.settle",
            checkin_id,
            f"settled the overdraft of {name} (membership {row['membership_id']}, "
            f"balance {'unknown' if balance is None else balance}, left unchanged)",
            address,
            at=now,
        )
        return True

    changed = await transact(request, run)
    return see_other(f"{PREFIX}/doors?done={'settled' if changed else 'already_settled'}")
