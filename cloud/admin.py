"""The organisation's data as its admin edits it: gyms, plans, members, memberships, opening
hours, closures, enrolment codes, admin tokens, devices, attendance, and the tombstone purge.
(Phone passes, which members activate themselves, are ``cloud.passes``; the organisation's pass
settings are here.)

Every function is scoped to one organisation: an id from another organisation is simply not found
(``NotFound``, 404), never "forbidden", so ids do not leak across tenants. Replica writes bump the
organisation's version **first** (taking the counter's lock until commit), then read, validate and
write, so a concurrent edit can never be lost between our read and our write, and versions follow
commit order. Rows are validated with ``sync.protocol.make_row`` (exactly what the device will
accept) and stored with their row hash. Deletes are soft: the row stays as a tombstone carrying the
version of its deletion until ``purge`` removes it.

A member's printed card code is stored (the admin may see it again) next to its keyed hash; only
the hash is replicated.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cloud import db, tokens
from cloud.errors import Clash, Invalid, NotFound
from cloud.replica import row_data
from sync.credentials import StaticCode, code_hash
from sync.passes import MAX_PERIOD_S, MIN_PERIOD_S
from sync.protocol import (
    ProtocolError,
    ReplicaRow,
    make_row,
    need_text,
    utc_from_text,
    utc_text,
)

DEFAULT_LIST_ROWS = 100
MAX_LIST_ROWS = 1000
MAX_ENROLMENT_TTL_MINUTES = 24 * 60
MAX_LIVE_PASSES_LIMIT = 10  # the most ACTIVE phone passes an organisation may allow a member
_HOURS_PER_GYM = 10_000  # far more opening windows than a week can hold
_ID_PREFIX = {
    "plan": "pln",
    "member": "mbr",
    "membership": "msh",
    "hours": "hrs",
    "closure": "cls",
}


# -- helpers ---------------------------------------------------------------------------------------


def field_path(where: str) -> str:
    """A protocol error's path as an admin field: ``data.windows[0][1]`` → ``windows[0][1]``."""
    return where[len("data.") :] if where.startswith("data.") else where or "body"


def validated(kind: str, row_id: str, data: dict[str, Any]) -> ReplicaRow:
    """The row as the device will see it, or Invalid naming the field."""
    try:
        return make_row(kind, row_id, data)
    except ProtocolError as exc:
        raise Invalid([(field_path(exc.where), exc.problem)]) from None


def check_timezone(name: object, field: str = "timezone") -> str:
    try:
        text = need_text(name, field, 64)
        ZoneInfo(text)
    except (ProtocolError, ZoneInfoNotFoundError, ValueError):
        raise Invalid([(field, "expected an IANA time zone like Europe/Berlin")]) from None
    return text


def check_name(value: object, field: str) -> str:
    try:
        text = need_text(value, field)
    except ProtocolError as exc:
        raise Invalid([(field, exc.problem)]) from None
    if not text.strip():
        raise Invalid([(field, "empty")])
    return text


def store_row(
    tx: db.Tx,
    org_id: str,
    row: ReplicaRow,
    *,
    gym_id: str | None,
    version: int,
    now: str,
    extra: dict[str, Any] | None = None,
) -> None:
    """Store a validated row (``validated``) at ``version`` with its row hash; ``extra`` holds
    the kind's stored-but-not-replicated columns (a member's card code, a pass's times)."""
    table = db.REPLICA_TABLES[row.kind]
    data = row.data or {}
    # A key the normal form leaves out (a plan without a visit limit) is stored as NULL.
    values = {column: data.get(column) for column in table.columns}
    values.update(extra or {})
    write = db.RowWrite(gym_id, row.id, values, row.row_hash())
    db.upsert_replica_rows(tx, row.kind, org_id, [write], version=version, now=now)


def _live(tx: db.Tx, org_id: str, kind: str, row_id: str) -> dict[str, Any]:
    row = db.replica_row(tx, kind, org_id, row_id)
    if row is None or row["deleted"]:
        raise NotFound(f"no {kind} {row_id}")
    return row


def _new_row_id(
    tx: db.Tx, org_id: str, kind: str, wanted: str | None, gym_id: str | None = None
) -> str:
    """The id for a new row: the caller's (refused if a live row has it; a tombstone is revived)
    or a random one. A per-gym row (hours, closure) revives only a tombstone of the same gym:
    another gym's id is refused (Clash), so a row never moves between gyms' replicas."""
    if wanted is None:
        return tokens.new_id(_ID_PREFIX[kind])
    existing = db.replica_row(tx, kind, org_id, wanted)
    if existing is not None and not existing["deleted"]:
        raise Clash(f"id: a {kind} {wanted} already exists")
    if existing is not None and existing["gym_id"] != gym_id:
        raise Clash(f"id: {wanted} was a {kind} of another gym; choose another id")
    return wanted


def _page(rows: list[dict[str, Any]], limit: int, view: Callable[[dict[str, Any]], Any]) -> dict:
    return {
        "items": [view(r) for r in rows],
        "next": rows[-1]["id"] if len(rows) >= limit else None,
    }


# -- organisations, tokens, gyms -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class NewOrganization:
    """What ``create_organization`` made. ``admin_token`` is shown once and stored only hashed."""

    organization_id: str
    gym_id: str
    admin_token: str


def create_organization(
    database: db.Database, name: str, gym_name: str, timezone: str, now: datetime
) -> NewOrganization:
    """An organisation with its first gym and an admin token, in one transaction."""
    org_name = check_name(name, "org")
    gym_label = check_name(gym_name, "gym")
    zone = check_timezone(timezone)

    def make(tx: db.Tx) -> NewOrganization:
        stamp = utc_text(now)
        org_id = tokens.new_id("org")
        db.insert_organization(tx, org_id, org_name, tokens.new_code_salt().hex(), stamp)
        gym_id = tokens.new_id("gym")
        db.insert_gym(tx, gym_id, org_id, gym_label, zone, stamp)
        return NewOrganization(org_id, gym_id, create_admin_token(tx, org_id, now))

    return database.transact(make)


def create_admin_token(tx: db.Tx, org_id: str, now: datetime) -> str:
    if db.organization(tx, org_id) is None:
        raise NotFound(f"no organisation {org_id}")
    token = tokens.new_admin_token()
    db.insert_admin_token(tx, tokens.sha256_hex(token), org_id, utc_text(now))
    return token


def organization_of_admin(tx: db.Tx, token: str) -> str | None:
    return db.admin_token_org(tx, tokens.sha256_hex(token))


def organization_view(tx: db.Tx, org_id: str) -> dict[str, Any]:
    org = db.organization(tx, org_id)
    if org is None:
        raise NotFound(f"no organisation {org_id}")
    settings = db.pass_settings(tx, org_id) or {}
    return {
        "id": org["id"],
        "name": org["name"],
        "version": int(org["version"]),
        "purged_version": int(org["purged_version"]),
        "created_at": org["created_at"],
        # Phone passes (docs/passes.md): the period of passes activated from now on, and how
        # many ACTIVE passes one member may hold.
        "pass_period_s": int(settings["pass_period_s"]),
        "max_live_passes": int(settings["max_live_passes"]),
    }


def update_organization(tx: db.Tx, org_id: str, changes: dict[str, Any]) -> dict[str, Any]:
    """Change the organisation's phone pass settings: ``pass_period_s`` (5..300 seconds; passes
    keep the period they were activated with) and ``max_live_passes`` (1..10; lowering it
    revokes nothing, it only refuses new activations). Invalid names each bad field."""
    current = organization_view(tx, org_id)
    period = changes.get("pass_period_s", current["pass_period_s"])
    most = changes.get("max_live_passes", current["max_live_passes"])
    problems = []
    if not _int_in(period, MIN_PERIOD_S, MAX_PERIOD_S):
        problems.append(("pass_period_s", f"expected {MIN_PERIOD_S}..{MAX_PERIOD_S} seconds"))
    if not _int_in(most, 1, MAX_LIVE_PASSES_LIMIT):
        problems.append(("max_live_passes", f"expected 1..{MAX_LIVE_PASSES_LIMIT}"))
    if problems:
        raise Invalid(problems)
    db.set_pass_settings(tx, org_id, period, most)
    return organization_view(tx, org_id)


def _int_in(value: object, low: int, high: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


def gym_view(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": row["id"],
        "name": row["name"],
        "timezone": row["timezone"],
        "created_at": row["created_at"],
    }


def get_gym(tx: db.Tx, org_id: str, gym_id: str) -> dict[str, Any]:
    row = db.gym(tx, org_id, gym_id)
    if row is None:
        raise NotFound(f"no gym {gym_id}")
    return gym_view(row)


def list_gyms(tx: db.Tx, org_id: str) -> list[dict[str, Any]]:
    return [gym_view(r) for r in db.gyms(tx, org_id)]


def create_gym(tx: db.Tx, org_id: str, name: str, timezone: str, now: datetime) -> dict[str, Any]:
    gym_id = tokens.new_id("gym")
    db.insert_gym(
        tx, gym_id, org_id, check_name(name, "name"), check_timezone(timezone), utc_text(now)
    )
    return get_gym(tx, org_id, gym_id)


def update_gym(tx: db.Tx, org_id: str, gym_id: str, changes: dict[str, Any]) -> dict[str, Any]:
    current = get_gym(tx, org_id, gym_id)
    name = check_name(changes.get("name", current["name"]), "name")
    zone = check_timezone(changes.get("timezone", current["timezone"]))
    db.update_gym(tx, org_id, gym_id, name, zone)
    return get_gym(tx, org_id, gym_id)


def create_enrolment_code(
    tx: db.Tx, org_id: str, gym_id: str, ttl_minutes: int, now: datetime
) -> dict[str, Any]:
    """A single-use code for enrolling one device at this gym, valid ``ttl_minutes`` (1..1440).
    The code is shown once; only its hash is stored."""
    get_gym(tx, org_id, gym_id)
    if isinstance(ttl_minutes, bool) or not 1 <= ttl_minutes <= MAX_ENROLMENT_TTL_MINUTES:
        raise Invalid([("ttl_minutes", f"expected 1..{MAX_ENROLMENT_TTL_MINUTES} minutes")])
    code = tokens.new_enrolment_code()
    expires = utc_text(now + timedelta(minutes=ttl_minutes))
    db.insert_enrolment_code(
        tx, tokens.enrolment_code_hash(code), org_id, gym_id, utc_text(now), expires
    )
    return {"code": code, "gym_id": gym_id, "expires_at": expires}


# -- plans -----------------------------------------------------------------------------------------


def plan_view(row: dict[str, Any]) -> dict[str, Any]:
    """A plan as the admin sees it: ``max_visits_per_day`` is always there (null: no limit)."""
    return {
        "id": row["id"],
        "max_visits_per_day": None,
        **row_data("plan", row),
        "version": int(row["version"]),
    }


def list_plans(tx: db.Tx, org_id: str, after: str | None, limit: int) -> dict[str, Any]:
    return _page(db.live_rows_page(tx, "plan", org_id, None, after, limit), limit, plan_view)


def get_plan(tx: db.Tx, org_id: str, plan_id: str) -> dict[str, Any]:
    return plan_view(_live(tx, org_id, "plan", plan_id))


def save_plan(
    tx: db.Tx, org_id: str, plan_id: str | None, fields: dict[str, Any], now: datetime
) -> dict[str, Any]:
    """Create (``plan_id`` None: ``fields`` may carry an ``id``) or update a plan."""
    version = db.bump_version(tx, org_id)
    if plan_id is None:
        row_id = _new_row_id(tx, org_id, "plan", fields.get("id"))
        data = {
            "name": fields.get("name"),
            "windows": fields.get("windows", []),
            "max_visits_per_day": fields.get("max_visits_per_day"),
        }
    else:
        row_id = plan_id
        data = {**row_data("plan", _live(tx, org_id, "plan", plan_id)), **fields}
    row = validated("plan", row_id, data)
    store_row(tx, org_id, row, gym_id=None, version=version, now=utc_text(now))
    return get_plan(tx, org_id, row_id)


def delete_plan(tx: db.Tx, org_id: str, plan_id: str, now: datetime) -> None:
    version = db.bump_version(tx, org_id)
    _live(tx, org_id, "plan", plan_id)
    users = db.live_ids_where(tx, "membership", org_id, "plan_id", plan_id)
    if users:
        raise Clash(f"plan {plan_id} is used by {len(users)} membership(s), e.g. {users[0]}")
    db.tombstone(tx, "plan", org_id, plan_id, version=version, now=utc_text(now))


# -- members ---------------------------------------------------------------------------------------


def member_view(row: dict[str, Any]) -> dict[str, Any]:
    """A member for the admin: the printed card code, never its hash."""
    return {
        "id": row["id"],
        "first_name": row["first_name"],
        "last_name": row["last_name"],
        "status": row["status"],
        "is_staff": bool(row["is_staff"]),
        "code": row["card_code"],
        "version": int(row["version"]),
    }


def list_members(tx: db.Tx, org_id: str, after: str | None, limit: int) -> dict[str, Any]:
    return _page(db.live_rows_page(tx, "member", org_id, None, after, limit), limit, member_view)


def get_member(tx: db.Tx, org_id: str, member_id: str) -> dict[str, Any]:
    return member_view(_live(tx, org_id, "member", member_id))


def member_card(
    tx: db.Tx, org_id: str, member_id: str, gym_id: str | None = None
) -> dict[str, Any]:
    """What a live member's printed card shows: ``code`` (the card code), ``first_name``,
    ``last_name``, ``organization_name`` and ``gym_name`` (None without ``gym_id``). NotFound
    for an unknown member or gym, or a member without a card code."""
    member = get_member(tx, org_id, member_id)
    if member["code"] is None:
        raise NotFound(f"member {member_id} has no card code")
    org = db.organization(tx, org_id)
    if org is None:
        raise NotFound(f"no organisation {org_id}")
    return {
        "code": member["code"],
        "first_name": member["first_name"],
        "last_name": member["last_name"],
        "organization_name": org["name"],
        "gym_name": None if gym_id is None else get_gym(tx, org_id, gym_id)["name"],
    }


def card_code_hash(code: object, salt_hex: str, field: str = "code") -> str:
    """The keyed hash of a printed card code; Invalid if it is not a code the door can read."""
    try:
        card = StaticCode(code)  # type: ignore[arg-type]
    except (ValueError, TypeError):
        raise Invalid([(field, "expected 4 to 64 characters from A-Z a-z 0-9 . _ -")]) from None
    return code_hash(card.code, bytes.fromhex(salt_hex))


def _salt(tx: db.Tx, org_id: str) -> str:
    org = db.organization(tx, org_id)
    if org is None:
        raise NotFound(f"no organisation {org_id}")
    return org["code_salt"]


def save_member(
    tx: db.Tx, org_id: str, member_id: str | None, fields: dict[str, Any], now: datetime
) -> dict[str, Any]:
    """Create (``member_id`` None; ``fields`` may carry an ``id``) or update a member. ``code``
    is the printed card code (None: no card); it must be unique among the organisation's live
    members."""
    version = db.bump_version(tx, org_id)
    if member_id is None:
        row_id = _new_row_id(tx, org_id, "member", fields.get("id"))
        current: dict[str, Any] = {"status": "ACTIVE", "is_staff": False, "code": None}
    else:
        row_id = member_id
        current = member_view(_live(tx, org_id, "member", member_id))
    merged = {**current, **{k: v for k, v in fields.items() if k != "id"}}
    code = merged.get("code")
    hashed = None if code is None else card_code_hash(code, _salt(tx, org_id))
    data = {
        "organization_id": org_id,
        "first_name": merged.get("first_name"),
        "last_name": merged.get("last_name"),
        "status": merged.get("status"),
        "is_staff": merged.get("is_staff"),
        "code_hash": hashed,
    }
    row = validated("member", row_id, data)
    if hashed is not None:
        holders = [m for m in db.live_ids_where(tx, "member", org_id, "code_hash", hashed)]
        others = [m for m in holders if m != row_id]
        if others:
            raise Clash(f"code: already the card of member {others[0]}")
    extra = {"card_code": code}
    store_row(tx, org_id, row, gym_id=None, version=version, now=utc_text(now), extra=extra)
    return get_member(tx, org_id, row_id)


def delete_member(tx: db.Tx, org_id: str, member_id: str, now: datetime) -> None:
    """Tombstone a member with its memberships and phone passes (one version)."""
    version = db.bump_version(tx, org_id)
    _live(tx, org_id, "member", member_id)
    stamp = utc_text(now)
    for kind in ("membership", "pass"):
        for row_id in db.live_ids_where(tx, kind, org_id, "member_id", member_id):
            db.tombstone(tx, kind, org_id, row_id, version=version, now=stamp)
    db.tombstone(tx, "member", org_id, member_id, version=version, now=stamp)


# -- memberships -----------------------------------------------------------------------------------


def membership_view(row: dict[str, Any]) -> dict[str, Any]:
    return {"id": row["id"], **row_data("membership", row), "version": int(row["version"])}


def list_memberships(
    tx: db.Tx, org_id: str, member_id: str | None, after: str | None, limit: int
) -> dict[str, Any]:
    if member_id is None:
        rows = db.live_rows_page(tx, "membership", org_id, None, after, limit)
        return _page(rows, limit, membership_view)
    ids = db.live_ids_where(tx, "membership", org_id, "member_id", member_id)
    found = db.replica_rows_by_id(tx, "membership", org_id, ids)
    return {"items": [membership_view(found[i]) for i in ids], "next": None}


def get_membership(tx: db.Tx, org_id: str, membership_id: str) -> dict[str, Any]:
    return membership_view(_live(tx, org_id, "membership", membership_id))


def check_references(tx: db.Tx, org_id: str, data: dict[str, Any], prefix: str = "") -> None:
    """A membership's member (and plan, if any) must be live rows of the organisation."""
    problems = []
    member = data.get("member_id")
    if isinstance(member, str):
        row = db.replica_row(tx, "member", org_id, member)
        if row is None or row["deleted"]:
            problems.append((f"{prefix}member_id", f"no member {member}"))
    plan = data.get("plan_id")
    if isinstance(plan, str):
        row = db.replica_row(tx, "plan", org_id, plan)
        if row is None or row["deleted"]:
            problems.append((f"{prefix}plan_id", f"no plan {plan}"))
    if problems:
        raise Invalid(problems)


def save_membership(
    tx: db.Tx, org_id: str, membership_id: str | None, fields: dict[str, Any], now: datetime
) -> dict[str, Any]:
    version = db.bump_version(tx, org_id)
    if membership_id is None:
        row_id = _new_row_id(tx, org_id, "membership", fields.get("id"))
        base: dict[str, Any] = {"plan_id": None, "end_date": None, "remaining_classes": None}
    else:
        row_id = membership_id
        base = row_data("membership", _live(tx, org_id, "membership", membership_id))
    data = {**base, **{k: v for k, v in fields.items() if k != "id"}}
    row = validated("membership", row_id, data)
    check_references(tx, org_id, data)
    store_row(tx, org_id, row, gym_id=None, version=version, now=utc_text(now))
    return get_membership(tx, org_id, row_id)


def delete_membership(tx: db.Tx, org_id: str, membership_id: str, now: datetime) -> None:
    version = db.bump_version(tx, org_id)
    _live(tx, org_id, "membership", membership_id)
    db.tombstone(tx, "membership", org_id, membership_id, version=version, now=utc_text(now))


# -- opening hours and closures --------------------------------------------------------------------


def hours_view(row: dict[str, Any]) -> dict[str, Any]:
    return {"id": row["id"], **row_data("hours", row), "version": int(row["version"])}


def list_hours(tx: db.Tx, org_id: str, gym_id: str) -> list[dict[str, Any]]:
    get_gym(tx, org_id, gym_id)
    rows = db.live_rows_page(tx, "hours", org_id, gym_id, None, _HOURS_PER_GYM)
    views = [hours_view(r) for r in rows]
    return sorted(views, key=lambda h: (h["weekday"], h["open_minute"], h["close_minute"]))


def replace_hours(
    tx: db.Tx, org_id: str, gym_id: str, windows: list[dict[str, Any]], now: datetime
) -> list[dict[str, Any]]:
    """Make the gym's weekly opening windows exactly ``windows``: rows already matching stay
    (no churn on the devices), the others become tombstones, new ones are added."""
    version = db.bump_version(tx, org_id)
    get_gym(tx, org_id, gym_id)
    wanted: dict[tuple[int, int, int], ReplicaRow] = {}
    problems = []
    for n, window in enumerate(windows):
        try:
            row = make_row("hours", "new", window)
        except ProtocolError as exc:
            problems.append((f"hours[{n}].{field_path(exc.where)}", exc.problem))
            continue
        data = row.data or {}
        wanted.setdefault((data["weekday"], data["open_minute"], data["close_minute"]), row)
    if problems:
        raise Invalid(problems)
    stamp = utc_text(now)
    for current in db.live_rows_page(tx, "hours", org_id, gym_id, None, _HOURS_PER_GYM):
        key = (int(current["weekday"]), int(current["open_minute"]), int(current["close_minute"]))
        if wanted.pop(key, None) is None:
            db.tombstone(tx, "hours", org_id, current["id"], version=version, now=stamp)
    for row in wanted.values():
        fresh = validated("hours", tokens.new_id("hrs"), row.data or {})
        store_row(tx, org_id, fresh, gym_id=gym_id, version=version, now=stamp)
    return list_hours(tx, org_id, gym_id)


def closure_view(row: dict[str, Any]) -> dict[str, Any]:
    return {"id": row["id"], **row_data("closure", row), "version": int(row["version"])}


def list_closures(tx: db.Tx, org_id: str, gym_id: str) -> list[dict[str, Any]]:
    get_gym(tx, org_id, gym_id)
    rows = db.live_rows_page(tx, "closure", org_id, gym_id, None, _HOURS_PER_GYM)
    return sorted((closure_view(r) for r in rows), key=lambda c: (c["start_date"], c["id"]))


def add_closure(
    tx: db.Tx, org_id: str, gym_id: str, fields: dict[str, Any], now: datetime
) -> dict[str, Any]:
    version = db.bump_version(tx, org_id)
    get_gym(tx, org_id, gym_id)
    row_id = _new_row_id(tx, org_id, "closure", fields.get("id"), gym_id)
    data = {k: fields.get(k) for k in ("start_date", "end_date", "reason")}
    if data["reason"] is None:
        data["reason"] = ""
    row = validated("closure", row_id, data)
    store_row(tx, org_id, row, gym_id=gym_id, version=version, now=utc_text(now))
    return closure_view(_live(tx, org_id, "closure", row_id))


def delete_closure(tx: db.Tx, org_id: str, gym_id: str, closure_id: str, now: datetime) -> None:
    version = db.bump_version(tx, org_id)
    row = _live(tx, org_id, "closure", closure_id)
    if row["gym_id"] != gym_id:
        raise NotFound(f"no closure {closure_id}")
    db.tombstone(tx, "closure", org_id, closure_id, version=version, now=utc_text(now))


# -- devices ---------------------------------------------------------------------------------------


def device_view(row: dict[str, Any]) -> dict[str, Any]:
    """A device and its sync health, as last reported by its heartbeat."""
    status = row["hb_replica_status"]
    return {
        "id": row["id"],
        "gym_id": row["gym_id"],
        "name": row["name"],
        "enrolled_at": row["enrolled_at"],
        "revoked_at": row["revoked_at"],
        "last_seen_at": row["last_seen_at"],
        "software_version": row["software_version"],
        "resnapshot_requested": bool(row["resnapshot_requested"]),
        "health": {
            "last_heartbeat_at": row["hb_at"],
            "backlog": row["hb_backlog"],
            "oldest_pending_age_s": row["hb_oldest_pending_age_s"],
            "replica_version": row["hb_replica_version"],
            "replica_checksum": row["hb_replica_checksum"],
            "replica_count": row["hb_replica_count"],
            # match / mismatch (at the cloud's version), behind / ahead, or null before any
            "replica_status": status,
            "replica_matches": None if status not in ("match", "mismatch") else status == "match",
            "clock_quality": row["hb_clock_quality"],
            "device_time": row["hb_device_time"],
            "boot_id": row["hb_boot_id"],
            "last_seq": row["hb_last_seq"],
            "synced_through_seq": row["hb_synced_through_seq"],
            "retained_from_seq": row["hb_retained_from_seq"],
            "last_error": row["hb_last_error"],
        },
        "occupancy": occupancy_view(row),
    }


def occupancy_view(row: dict[str, Any]) -> dict[str, Any] | None:
    """A device's last reported occupancy (its heartbeat's), or None before any report:
    ``reported_at``, ``now``, ``entries_today``, ``exits_today``, ``max_today``, ``capacity``."""
    if row["occ_at"] is None:
        return None
    return {
        "reported_at": row["occ_at"],
        "now": int(row["occ_now"]),
        "entries_today": int(row["occ_entries_today"]),
        "exits_today": int(row["occ_exits_today"]),
        "max_today": int(row["occ_max_today"]),
        "capacity": None if row["occ_capacity"] is None else int(row["occ_capacity"]),
    }


def gym_occupancy(tx: db.Tx, org_id: str, gym_id: str, now: datetime) -> dict[str, Any]:
    """How many people the gym's doors count in it, from each live door's last heartbeat.

    Each door counts on its own (an exit-side scanner counts exits, an entry door entries and
    perhaps exits, a door without an exit signal lets entries expire after the visit length), so
    the gym's count is not the sum of the doors' ``now``: it is all entries minus all exits minus
    the entries the doors let expire (a door's ``entries - exits - now`` when that is positive),
    never below zero. Only reports made today in the gym's time zone count (``counted``); a door
    that went quiet yesterday says nothing about today. ``capacity`` is the largest any counted
    door has configured (null: none has one)."""
    gym = get_gym(tx, org_id, gym_id)
    zone = ZoneInfo(gym["timezone"])
    today = now.astimezone(zone).date()
    doors = []
    entries = exits = expired = 0
    capacities = []
    for row in db.gym_occupancy_reports(tx, org_id, gym_id):
        view = occupancy_view(row)
        assert view is not None  # only devices that reported
        counted = utc_from_text(view["reported_at"]).astimezone(zone).date() == today
        doors.append(
            {"device_id": row["device_id"], "name": row["name"], "counted": counted, **view}
        )
        if counted:
            entries += view["entries_today"]
            exits += view["exits_today"]
            expired += max(0, view["entries_today"] - view["exits_today"] - view["now"])
            if view["capacity"] is not None:
                capacities.append(view["capacity"])
    return {
        "gym_id": gym_id,
        "at": utc_text(now),
        "now": max(0, entries - exits - expired),
        "entries_today": entries,
        "exits_today": exits,
        "capacity": max(capacities, default=None),
        "doors": doors,
    }


def list_devices(tx: db.Tx, org_id: str, gym_id: str | None) -> list[dict[str, Any]]:
    if gym_id is not None:
        get_gym(tx, org_id, gym_id)
    return [device_view(r) for r in db.devices(tx, org_id, gym_id)]


def get_device(tx: db.Tx, org_id: str, device_id: str) -> dict[str, Any]:
    row = db.device(tx, org_id, device_id)
    if row is None:
        raise NotFound(f"no device {device_id}")
    return device_view(row)


def revoke_device(tx: db.Tx, org_id: str, device_id: str, now: datetime) -> dict[str, Any]:
    """The device's token answers 401 from now on; other devices are unaffected."""
    if not db.revoke_device(tx, org_id, device_id, utc_text(now)):
        raise NotFound(f"no device {device_id}")
    return get_device(tx, org_id, device_id)


def request_resnapshot(tx: db.Tx, org_id: str, device_id: str) -> dict[str, Any]:
    """The device's next heartbeat answers ``resnapshot: true`` until it takes a snapshot."""
    if not db.set_resnapshot(tx, org_id, device_id, True):
        raise NotFound(f"no device {device_id}")
    return get_device(tx, org_id, device_id)


# -- attendance ------------------------------------------------------------------------------------


def parse_time(value: str | None, field: str) -> str | None:
    """An ISO 8601 time (``Z`` or an offset; a naive time or a bare date is taken as UTC) as
    stored text, or None."""
    if value is None or value == "":
        return None
    try:
        moment = datetime.fromisoformat(value)
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        return utc_text(moment)
    except ValueError:
        raise Invalid([(field, "expected an ISO 8601 time like 2026-05-01T17:00:00Z")]) from None
    except OverflowError:
        # 9999-12-31T23:00-05:00 is a valid text but no UTC time.
        raise Invalid(
            [(field, "out of range: the time in UTC is before 0001 or after 9999")]
        ) from None


def checkin_cursor(row: dict[str, Any]) -> str:
    return f"{row['occurred_at']}~{row['id']}"


def parse_checkin_cursor(text: str | None) -> tuple[str, str] | None:
    if not text:
        return None
    when, sep, row_id = text.partition("~")
    if not sep or not row_id or len(text) > 200:
        raise Invalid([("cursor", "not a cursor from a previous page's next")])
    return when, row_id


def list_checkins(
    tx: db.Tx,
    org_id: str,
    *,
    gym_id: str | None,
    since: str | None,
    until: str | None,
    cursor: str | None,
    limit: int,
    overdrafts_only: bool = False,
) -> dict[str, Any]:
    """Check-ins by the time they happened (``occurred_at``), oldest first, in [since, until)."""
    if gym_id is not None:
        get_gym(tx, org_id, gym_id)
    rows = db.list_checkins(
        tx,
        org_id,
        gym_id=gym_id,
        since=parse_time(since, "since"),
        until=parse_time(until, "until"),
        after=parse_checkin_cursor(cursor),
        limit=limit,
        overdrafts_only=overdrafts_only,
    )
    items = [dict(r) for r in rows]
    if overdrafts_only:
        ids = [r["membership_id"] for r in items if r["membership_id"]]
        found = db.replica_rows_by_id(tx, "membership", org_id, ids)
        for item in items:
            m = found.get(item["membership_id"] or "")
            item["remaining_classes"] = None if m is None else m["remaining_classes"]
    return {"items": items, "next": checkin_cursor(rows[-1]) if len(rows) >= limit else None}


# -- purge -----------------------------------------------------------------------------------------


def purge(database: db.Database, older_than_days: int, now: datetime) -> dict[str, int]:
    """Delete tombstones older than ``older_than_days`` and raise each organisation's
    ``purged_version``; a device whose version is older then gets 410 and takes a snapshot.
    Phone pass activation codes and staff console invites that expired that long ago go too
    (used or not, they are worth nothing), and every ended console session. Returns
    {organisation: purged version} for the organisations touched."""
    if older_than_days < 0:
        raise Invalid([("older_than_days", "expected a number of days >= 0")])
    cutoff = utc_text(now - timedelta(days=older_than_days))

    def run(tx: db.Tx) -> dict[str, int]:
        purged = db.purge_tombstones(tx, cutoff)
        db.purge_pass_activations(tx, cutoff)
        db.purge_staff_invites(tx, cutoff)
        db.purge_staff_sessions(tx, utc_text(now))
        for org_id, version in purged.items():
            db.raise_purged_version(tx, org_id, version)
        return purged

    return database.transact(run)
