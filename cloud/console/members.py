"""The console's members pages (docs/console.md#members): find a member, add and edit one, pause and
resume, memberships, the printed card, phone passes, and the member's last visits and refusals.

Routes (under ``/console``; "desk" is the owner and the front desk, "all" every role, trainers
seeing only the members assigned to them, any other member being a 404 like another
organisation's):

- ``GET /members[?q=TEXT][&after=CURSOR]`` (all): the list in name order, in pages, or what the
  search box finds (name, card code or phone: ``cloud.console.search``); the box works as a plain
  GET form, and the script fills in the results as one types;
- ``GET /members/new``, ``POST /members`` (desk): add a member (a random card code is offered);
- ``GET /members/{member_id}`` (all): the member, memberships, phone passes, last visits;
- ``GET /members/{member_id}/visits[?before=CURSOR]`` (all): every visit and refusal, in pages;
- ``GET|POST /members/{member_id}/edit``, ``/pause``, ``/resume`` (desk; a GET of pause and
  resume is the confirmation page);
- ``GET /members/{member_id}/memberships/new?type=TYPE``, ``POST /members/{member_id}/memberships``,
  ``GET|POST /members/{member_id}/memberships/{membership_id}`` (edit) and ``.../end`` (desk);
- ``GET /members/{member_id}/card`` (the print page), ``card.svg``, ``card.png`` (desk);
- ``POST /members/{member_id}/passes`` (desk): a phone pass activation code, answered with a page
  showing it as a QR code of the whole activation link (this site's public origin and
  ``passes.ACTIVATION_PATH``) for the member's phone to scan; it is shown once;
- ``GET|POST /members/{member_id}/passes/{pass_id}/revoke`` (desk).

Every change goes through the admin API's own functions (``cloud.admin``, ``cloud.passes``), so
the console accepts exactly what the API accepts, inside the request's transaction together with
its audit row (``member.create``, ``member.edit``, ``member.pause``, ``member.resume``,
``membership.create``, ``membership.edit``, ``membership.end``, ``pass.activation``,
``pass.revoke``; never a card code or an activation code in a row). A form that is refused is
shown again with the problem next to its field (422, or 409 for a card code already taken) and
nothing is saved. Edits carry the row's version: a member or membership changed meanwhile (a door
using a class) is not overwritten; the form comes back with the fresh values.
"""

from __future__ import annotations

import base64
import secrets
from datetime import date, datetime
from typing import Annotated, Any
from zoneinfo import ZoneInfo

from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse, Response

from cloud import admin, cards, db, passes
from cloud.console import audit, search
from cloud.console.accounts import may_see_member
from cloud.console.auth import (
    FormFields,
    SignedIn,
    StaffUser,
    address_of,
    allow,
    not_found,
    now_of,
    own_origin,
    transact,
)
from cloud.console.pages import PREFIX, TEMPLATES, render, see_other
from cloud.console.words import (
    decision_words,
    member_status_words,
    membership_type_words,
    pass_status_words,
    reason_words,
)
from cloud.errors import Clash, Invalid, NotFound, ServiceError
from sync.protocol import ProtocolError, need_id

router = APIRouter(prefix=PREFIX, include_in_schema=False)
Desk = Annotated[StaffUser, Depends(allow("owner", "staff"))]

LIST_PAGE = 50  # members a list page shows
SEARCH_LIMIT = 50  # members a search shows (refine the query for others)
VISITS_ON_MEMBER = 10  # visits on the member's page; the visits page has the rest
VISITS_PAGE = 50
MAX_CURSOR_CHARS = 300
MEMBERSHIP_TYPES = ("SUBSCRIPTION", "CLASS_PACK", "PT")
ACTIVATION_TTLS = (15, 60, 24 * 60)  # minutes a desk may choose for an activation code
# A card code offered for a new member: three groups of four characters without look-alikes
# (0/O, 1/I/L, 5/S, 8/B), about 57 bits, in the form a door reads (A-Z 0-9 -).
CARD_CODE_ALPHABET = "234679ACDEFGHJKMNPQRTUVWXYZ"
CARD_CODE_GROUPS, CARD_CODE_GROUP_CHARS = 3, 4

TEMPLATES.globals.update(
    reason_words=reason_words,
    decision_words=decision_words,
    member_status_words=member_status_words,
    membership_type_words=membership_type_words,
    pass_status_words=pass_status_words,
)


def new_card_code() -> str:
    """A random card code to offer for a new member, like ``7KQ4-M2XD-9HVA``."""
    return "-".join(
        "".join(secrets.choice(CARD_CODE_ALPHABET) for _ in range(CARD_CODE_GROUP_CHARS))
        for _ in range(CARD_CODE_GROUPS)
    )


# -- helpers ---------------------------------------------------------------------------------------


def _sentence(text: str) -> str:
    text = text.strip()
    if not text:
        return "Not accepted."
    return text[:1].upper() + text[1:] + ("" if text.endswith(".") else ".")


def field_errors(exc: ServiceError, fields: tuple[str, ...]) -> dict[str, str]:
    """A refused change's problems by form field: ``Invalid``'s fields (``code_hash`` is the
    ``code`` field), a ``Clash`` whose detail starts with a field name (``code: already the card
    of member ...``); anything else under ``form``."""
    errors: dict[str, str] = {}
    pairs: list[tuple[str, str]]
    if isinstance(exc, Invalid):
        pairs = list(exc.fields)
    else:
        name, sep, rest = exc.detail.partition(": ")
        pairs = [(name, rest)] if sep and name in fields else [("form", exc.detail)]
    for path, problem in pairs:
        name = {"code_hash": "code"}.get(path, path)
        key = name if name in fields else "form"
        words = _sentence(problem if key != "form" or name == "form" else f"{path}: {problem}")
        errors[key] = f"{errors[key]} {words}" if key in errors else words
    return errors


def _checked_id(value: str, what: str) -> str:
    """A path's id, or the 404 for one no row can have (so odd text never reaches a query)."""
    try:
        need_id(value, what)
    except ProtocolError:
        raise not_found(what) from None
    return value


def _zones(tx: db.Tx, org_id: str) -> tuple[dict[str, str], str | None]:
    """({gym id: time zone}, the first gym's zone): times are shown in their gym's zone."""
    gyms = db.gyms(tx, org_id)
    return {g["id"]: g["timezone"] for g in gyms}, gyms[0]["timezone"] if gyms else None


def _today(zone: str | None, now: datetime) -> str:
    """Today's date (YYYY-MM-DD) in the gym's zone (UTC without a gym)."""
    return (now.astimezone(ZoneInfo(zone)) if zone else now).date().isoformat()


def _member(tx: db.Tx, me: StaffUser, member_id: str) -> dict[str, Any]:
    """The live member ``me`` may see, with its phone; the one 404 otherwise (another
    organisation's, a trainer's unassigned member, deleted or unknown)."""
    _checked_id(member_id, "member")
    if not may_see_member(tx, me, member_id):
        raise not_found("member")
    try:
        member = admin.get_member(tx, me.organization_id, member_id)
    except NotFound:
        raise not_found("member") from None
    member["phone"] = db.member_phone(tx, me.organization_id, member_id)
    member["name"] = f"{member['first_name']} {member['last_name']}".strip()
    return member


def _membership(tx: db.Tx, me: StaffUser, member_id: str, membership_id: str) -> dict[str, Any]:
    """A live membership of this member (404 otherwise)."""
    _checked_id(membership_id, "membership")
    try:
        membership = admin.get_membership(tx, me.organization_id, membership_id)
    except NotFound:
        raise not_found("membership") from None
    if membership["member_id"] != member_id:
        raise not_found("membership")
    return membership


def _pass(tx: db.Tx, me: StaffUser, member_id: str, pass_id: str) -> dict[str, Any]:
    """A live phone pass of this member (404 otherwise)."""
    _checked_id(pass_id, "pass")
    row = db.replica_row(tx, "pass", me.organization_id, pass_id)
    if row is None or row["deleted"] or row["member_id"] != member_id:
        raise not_found("pass")
    return passes.pass_view(row)


def _cursor(text: str | None) -> tuple[str, str] | None:
    """A page cursor ``<key>~<id>`` from the address (None for none or one this code did not
    make: the first page)."""
    if not text or len(text) > MAX_CURSOR_CHARS or not text.isprintable():
        return None
    key, sep, row_id = text.rpartition("~")
    if not sep:
        return None
    try:
        need_id(row_id, "cursor")
    except ProtocolError:
        return None
    return key, row_id


def _audit(request: Request, tx: db.Tx, me: StaffUser, action: str, target: str, detail: str):
    audit.record(tx, me, action, target, detail, address_of(request), at=now_of(request))


def _same_version(current: dict[str, Any], form: dict[str, str]) -> bool:
    """True when the form was made from the row as it is now (its ``version`` field)."""
    return form.get("version", "") == str(current["version"])


# -- the list and the search -----------------------------------------------------------------------


@router.get("/members")
async def member_list(request: Request, me: SignedIn) -> Response:
    query = search.clean_query(request.query_params.get("q", ""))
    after = _cursor(request.query_params.get("after"))
    trainer = me.id if me.role == "trainer" else None

    def load(tx: db.Tx) -> dict[str, Any]:
        if query:
            found = search.search_members(
                tx, me.organization_id, query, limit=SEARCH_LIMIT, trainer_id=trainer
            )
            return {"rows": found, "next": None, "more": len(found) >= SEARCH_LIMIT}
        rows = db.member_list_page(tx, me.organization_id, after, LIST_PAGE + 1, trainer)
        more = len(rows) > LIST_PAGE
        rows = rows[:LIST_PAGE]
        for row in rows:
            row["code"] = row.pop("card_code")
        last = rows[-1] if more and rows else None
        return {
            "rows": rows,
            "next": None if last is None else f"{last['sort_key']}~{last['id']}",
            "more": False,
        }

    data = await transact(request, load, write=False)
    return render(
        request,
        "members.html",
        **data,
        q=query,
        paged=after is not None,
        may_change=me.at_least("staff"),
        notice=_NOTICES.get(request.query_params.get("done", "")),
    )


# -- adding and editing ----------------------------------------------------------------------------

MEMBER_FIELDS = ("first_name", "last_name", "phone", "code")
_NOTICES = {
    "created": "The member was added. Add a membership below, print the card or issue a pass.",
    "saved": "The changes were saved.",
    "unchanged": "Nothing was changed.",
    "paused": "The member is paused: the doors refuse them until they are resumed.",
    "resumed": "The member is active again.",
    "membership": "The membership was saved.",
    "ended": "The membership's last day was set.",
    "revoked": "The phone pass was revoked: the doors refuse it after their next update.",
}


def _member_form(form: dict[str, str]) -> tuple[dict[str, Any], dict[str, str]]:
    """The member form's values (``first_name``, ``last_name``, ``code``, ``phone`` as stored)
    and the problems found before the admin functions look (an empty name, a bad phone)."""
    values = {
        "first_name": form.get("first_name", "").strip(),
        "last_name": form.get("last_name", "").strip(),
        "code": form.get("code", "").strip() or None,
        "phone": None,
    }
    errors = {}
    for field, label in (("first_name", "first name"), ("last_name", "last name")):
        if not values[field]:
            errors[field] = f"Enter the {label}."
    try:
        values["phone"] = search.normal_phone(form.get("phone", ""))
    except ValueError as exc:
        errors["phone"] = _sentence(str(exc))
    return values, errors


def _form_page(
    request: Request,
    *,
    status: int = 200,
    member: dict[str, Any] | None,
    values: dict[str, Any],
    errors: dict[str, str] | None = None,
    notice: str | None = None,
) -> HTMLResponse:
    return render(
        request,
        "member_form.html",
        status,
        member=member,
        values=values,
        errors=errors or {},
        notice=notice,
        error=(errors or {}).get("form"),
    )


@router.get("/members/new")
async def member_new(request: Request, me: Desk) -> Response:
    values = {"first_name": "", "last_name": "", "phone": "", "code": new_card_code()}
    return _form_page(request, member=None, values=values)


@router.post("/members")
async def member_create(request: Request, me: Desk, form: FormFields) -> Response:
    values, errors = _member_form(form)
    shown = {**values, "phone": form.get("phone", "").strip(), "code": values["code"] or ""}
    if errors:
        return _form_page(request, status=422, member=None, values=shown, errors=errors)
    now = now_of(request)

    def create(tx: db.Tx) -> str:
        fields = {k: values[k] for k in ("first_name", "last_name", "code")}
        made = admin.save_member(tx, me.organization_id, None, fields, now)
        db.set_member_phones(tx, me.organization_id, {made["id"]: values["phone"]})
        extras = [w for w, v in (("card code", values["code"]), ("phone", values["phone"])) if v]
        detail = f"{made['first_name']} {made['last_name']} added"
        if extras:
            detail += f" (with {' and '.join(extras)})"
        _audit(request, tx, me, "member.create", made["id"], detail)
        return made["id"]

    try:
        member_id = await transact(request, create)
    except (Invalid, Clash) as exc:
        errors = field_errors(exc, MEMBER_FIELDS)
        return _form_page(request, status=exc.status, member=None, values=shown, errors=errors)
    return see_other(f"{PREFIX}/members/{member_id}?done=created")


@router.get("/members/{member_id}/edit")
async def member_edit_form(request: Request, member_id: str, me: Desk) -> Response:
    member = await transact(request, lambda tx: _member(tx, me, member_id), write=False)
    values = {**member, "phone": member["phone"] or "", "code": member["code"] or ""}
    return _form_page(request, member=member, values=values)


def _changes(before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    """A member edit in words for the audit log (a card code or phone number never in it)."""
    said = []
    for field, label in (("first_name", "first name"), ("last_name", "last name")):
        if before[field] != after[field]:
            said.append(f"{label} {before[field]} → {after[field]}")
    if before["code"] != after["code"]:
        said.append("card code removed" if after["code"] is None else "card code changed")
    if before["phone"] != after["phone"]:
        said.append("phone removed" if after["phone"] is None else "phone changed")
    return said


@router.post("/members/{member_id}/edit")
async def member_edit(request: Request, member_id: str, me: Desk, form: FormFields) -> Response:
    values, errors = _member_form(form)
    shown = {**values, "phone": form.get("phone", "").strip(), "code": values["code"] or ""}
    now = now_of(request)

    def edit(tx: db.Tx) -> tuple[str, dict[str, Any]]:
        db.lock_version(tx, me.organization_id)
        current = _member(tx, me, member_id)
        if errors:
            return "invalid", current
        if not _same_version(current, form):
            return "stale", current
        said = _changes(current, values)
        if not said:
            return "unchanged", current
        replicated = {k: values[k] for k in ("first_name", "last_name", "code")}
        if any(current[k] != v for k, v in replicated.items()):
            admin.save_member(tx, me.organization_id, member_id, replicated, now)
        db.set_member_phones(tx, me.organization_id, {member_id: values["phone"]})
        name = f"{current['first_name']} {current['last_name']}"
        _audit(request, tx, me, "member.edit", member_id, f"{name}: {'; '.join(said)}")
        return "saved", current

    try:
        outcome, current = await transact(request, edit)
    except (Invalid, Clash) as exc:
        member = await transact(request, lambda tx: _member(tx, me, member_id), write=False)
        errors = field_errors(exc, MEMBER_FIELDS)
        return _form_page(request, status=exc.status, member=member, values=shown, errors=errors)
    if outcome == "invalid":
        return _form_page(request, status=422, member=current, values=shown, errors=errors)
    if outcome == "stale":
        fresh = {**current, "phone": current["phone"] or "", "code": current["code"] or ""}
        return _form_page(
            request,
            status=409,
            member=current,
            values=fresh,
            errors={
                "form": "This member was changed by someone else meanwhile: here is the "
                "member as it is now. Make your change again."
            },
        )
    return see_other(f"{PREFIX}/members/{member_id}?done={outcome}")


# -- pause and resume ------------------------------------------------------------------------------

_STATUS_CHANGES = {
    # action: (new status, statuses it applies to, audit action, words)
    "pause": ("PAUSED", ("ACTIVE", "EXPIRED"), "member.pause", "paused"),
    "resume": ("ACTIVE", ("PAUSED", "EXPIRED"), "member.resume", "resumed"),
}


async def _status_confirm(request: Request, me: StaffUser, member_id: str, action: str):
    member = await transact(request, lambda tx: _member(tx, me, member_id), write=False)
    return render(request, "member_status.html", member=member, action=action)


async def _status_change(request: Request, me: StaffUser, member_id: str, action: str):
    status, applies, audit_action, words = _STATUS_CHANGES[action]
    now = now_of(request)

    def change(tx: db.Tx) -> str:
        db.lock_version(tx, me.organization_id)
        member = _member(tx, me, member_id)
        if member["status"] not in applies:
            return "unchanged"
        admin.save_member(tx, me.organization_id, member_id, {"status": status}, now)
        _audit(request, tx, me, audit_action, member_id, f"{member['name']} {words}")
        return "paused" if action == "pause" else "resumed"

    outcome = await transact(request, change)
    return see_other(f"{PREFIX}/members/{member_id}?done={outcome}")


@router.get("/members/{member_id}/pause")
async def member_pause_form(request: Request, member_id: str, me: Desk) -> Response:
    return await _status_confirm(request, me, member_id, "pause")


@router.post("/members/{member_id}/pause")
async def member_pause(request: Request, member_id: str, me: Desk, form: FormFields) -> Response:
    return await _status_change(request, me, member_id, "pause")


@router.get("/members/{member_id}/resume")
async def member_resume_form(request: Request, member_id: str, me: Desk) -> Response:
    return await _status_confirm(request, me, member_id, "resume")


@router.post("/members/{member_id}/resume")
async def member_resume(request: Request, member_id: str, me: Desk, form: FormFields) -> Response:
    return await _status_change(request, me, member_id, "resume")


# -- the member's page and visits ------------------------------------------------------------------


def _visit_view(row: dict[str, Any], zones: dict[str, str], zone: str | None) -> dict[str, Any]:
    return {**row, "zone": zones.get(row["gym_id"], zone)}


def _membership_state(m: dict[str, Any], today: str) -> str:
    if m["start_date"] > today:
        return "future"
    if m["end_date"] is not None and m["end_date"] < today:
        return "ended"
    return "current"


_STATE_ORDER = {"current": 0, "future": 1, "ended": 2}


async def _member_view(
    request: Request,
    me: StaffUser,
    member_id: str,
    status: int = 200,
    error: str | None = None,
) -> HTMLResponse:
    """The member's page (``error``: a refused action's problem, shown at the top)."""
    now = now_of(request)

    def load(tx: db.Tx) -> dict[str, Any]:
        org = me.organization_id
        member = _member(tx, me, member_id)
        zones, zone = _zones(tx, org)
        today = _today(zone, now)
        plans = {p["id"]: p["name"] for p in _plans(tx, org)}
        memberships = admin.list_memberships(tx, org, member_id, None, admin.MAX_LIST_ROWS)
        shown = [
            {**m, "state": _membership_state(m, today), "plan": plans.get(m["plan_id"] or "")}
            for m in memberships["items"]
        ]
        shown.sort(key=lambda m: (_STATE_ORDER[m["state"]], m["start_date"], m["id"]))
        phone_passes = passes.list_passes(tx, org, member_id)["items"]
        settings = db.pass_settings(tx, org) or {"max_live_passes": 0}
        visits = db.member_checkins(tx, org, member_id, None, VISITS_ON_MEMBER + 1)
        return {
            "member": member,
            "memberships": shown,
            "passes": phone_passes,
            "active_passes": sum(1 for p in phone_passes if p["status"] == "ACTIVE"),
            "max_passes": int(settings["max_live_passes"]),
            "visits": [_visit_view(v, zones, zone) for v in visits[:VISITS_ON_MEMBER]],
            "more_visits": len(visits) > VISITS_ON_MEMBER,
            "zone": zone,
        }

    data = await transact(request, load, write=False)
    return render(
        request,
        "member.html",
        status,
        **data,
        may_change=me.at_least("staff"),
        ttls=ACTIVATION_TTLS,
        default_ttl=passes.DEFAULT_ACTIVATION_TTL_MINUTES,
        types=MEMBERSHIP_TYPES,
        notice=_NOTICES.get(request.query_params.get("done", "")),
        error=error,
    )


@router.get("/members/{member_id}")
async def member_page(request: Request, member_id: str, me: SignedIn) -> Response:
    return await _member_view(request, me, member_id)


@router.get("/members/{member_id}/visits")
async def member_visits(request: Request, member_id: str, me: SignedIn) -> Response:
    before = _cursor(request.query_params.get("before"))

    def load(tx: db.Tx) -> dict[str, Any]:
        member = _member(tx, me, member_id)
        zones, zone = _zones(tx, me.organization_id)
        rows = db.member_checkins(tx, me.organization_id, member_id, before, VISITS_PAGE + 1)
        more = len(rows) > VISITS_PAGE
        rows = rows[:VISITS_PAGE]
        last = rows[-1] if more and rows else None
        return {
            "member": member,
            "visits": [_visit_view(v, zones, zone) for v in rows],
            "next": None if last is None else f"{last['occurred_at']}~{last['id']}",
            "zone": zone,
        }

    data = await transact(request, load, write=False)
    return render(request, "member_visits.html", **data, paged=before is not None)


# -- memberships -----------------------------------------------------------------------------------

MEMBERSHIP_FIELDS = ("type", "plan_id", "start_date", "end_date", "remaining_classes")
MAX_BALANCE = 100_000  # classes or sessions a desk may give at once (the protocol allows 2**31)


def _plans(tx: db.Tx, org_id: str) -> list[dict[str, Any]]:
    return admin.list_plans(tx, org_id, None, admin.MAX_LIST_ROWS)["items"]


def _membership_form(
    form: dict[str, str], current: dict[str, Any] | None
) -> tuple[dict[str, Any], dict[str, str]]:
    """The membership form's values as ``admin.save_membership`` takes them, and the problems
    found before it looks: a balance that is not a whole number, a class pack without one. A
    balance below zero (an overdraft) is kept only when it is the stored one unchanged."""
    kind = form.get("type", "")
    values: dict[str, Any] = {
        "type": kind,
        "plan_id": form.get("plan_id", "").strip() or None,
        "start_date": form.get("start_date", "").strip(),
        "end_date": form.get("end_date", "").strip() or None,
        "remaining_classes": None,
    }
    errors: dict[str, str] = {}
    text = form.get("remaining_classes", "").strip()
    if kind in ("CLASS_PACK", "PT") and text:
        try:
            balance = int(text)
        except ValueError:
            errors["remaining_classes"] = "Enter a whole number."
        else:
            kept = current is not None and balance == current["remaining_classes"]
            if not (0 <= balance <= MAX_BALANCE or kept):
                errors["remaining_classes"] = f"Enter a number from 0 to {MAX_BALANCE}."
            values["remaining_classes"] = balance
    elif kind == "CLASS_PACK":
        errors["remaining_classes"] = "Enter how many classes the pack holds."
    if kind not in MEMBERSHIP_TYPES:
        errors["type"] = "Choose subscription, class pack or personal training."
    return values, errors


def _membership_page(
    request: Request,
    *,
    status: int = 200,
    member: dict[str, Any],
    membership: dict[str, Any] | None,
    values: dict[str, Any],
    plans: list[dict[str, Any]],
    errors: dict[str, str] | None = None,
) -> HTMLResponse:
    shown = {**values}
    for key in ("plan_id", "end_date", "remaining_classes"):
        shown[key] = "" if shown.get(key) is None else shown[key]
    return render(
        request,
        "membership_form.html",
        status,
        member=member,
        membership=membership,
        values=shown,
        plans=plans,
        types=MEMBERSHIP_TYPES,
        errors=errors or {},
        error=(errors or {}).get("form"),
    )


def _membership_words(m: dict[str, Any]) -> str:
    """A membership in words for the audit log."""
    words = f"{membership_type_words(m['type']).lower()} from {m['start_date']}"
    words += f" to {m['end_date']}" if m["end_date"] else ", open-ended"
    if m["remaining_classes"] is not None:
        words += f", {m['remaining_classes']} left"
    if m["plan_id"]:
        words += f", plan {m['plan_id']}"
    return words


@router.get("/members/{member_id}/memberships/new")
async def membership_new(request: Request, member_id: str, me: Desk) -> Response:
    kind = request.query_params.get("type", "SUBSCRIPTION")
    kind = kind if kind in MEMBERSHIP_TYPES else "SUBSCRIPTION"
    now = now_of(request)

    def load(tx: db.Tx) -> dict[str, Any]:
        zone = _zones(tx, me.organization_id)[1]
        return {
            "member": _member(tx, me, member_id),
            "plans": _plans(tx, me.organization_id),
            "today": _today(zone, now),
        }

    data = await transact(request, load, write=False)
    values = {"type": kind, "plan_id": None, "start_date": data["today"], "end_date": None}
    values["remaining_classes"] = 10 if kind == "CLASS_PACK" else None
    return _membership_page(
        request, member=data["member"], membership=None, values=values, plans=data["plans"]
    )


async def _membership_refused(
    request: Request,
    me: StaffUser,
    member_id: str,
    membership: dict[str, Any] | None,
    values: dict[str, Any],
    errors: dict[str, str],
    status: int,
) -> HTMLResponse:
    def load(tx: db.Tx) -> dict[str, Any]:
        return {"member": _member(tx, me, member_id), "plans": _plans(tx, me.organization_id)}

    data = await transact(request, load, write=False)
    return _membership_page(
        request,
        status=status,
        member=data["member"],
        membership=membership,
        values=values,
        plans=data["plans"],
        errors=errors,
    )


@router.post("/members/{member_id}/memberships")
async def membership_create(
    request: Request, member_id: str, me: Desk, form: FormFields
) -> Response:
    values, errors = _membership_form(form, None)
    now = now_of(request)

    def create(tx: db.Tx) -> str | None:
        member = _member(tx, me, member_id)
        if errors:
            return None
        made = admin.save_membership(
            tx, me.organization_id, None, {**values, "member_id": member_id}, now
        )
        detail = f"{member['name']}: {_membership_words(made)}"
        _audit(request, tx, me, "membership.create", made["id"], detail)
        return made["id"]

    try:
        made = await transact(request, create)
    except (Invalid, Clash) as exc:
        made, errors, status = None, field_errors(exc, MEMBERSHIP_FIELDS), exc.status
    else:
        status = 422
    if made is None:
        return await _membership_refused(request, me, member_id, None, values, errors, status)
    return see_other(f"{PREFIX}/members/{member_id}?done=membership")


@router.get("/members/{member_id}/memberships/{membership_id}")
async def membership_edit_form(
    request: Request, member_id: str, membership_id: str, me: Desk
) -> Response:
    def load(tx: db.Tx) -> dict[str, Any]:
        member = _member(tx, me, member_id)
        return {
            "member": member,
            "membership": _membership(tx, me, member_id, membership_id),
            "plans": _plans(tx, me.organization_id),
        }

    data = await transact(request, load, write=False)
    return _membership_page(request, **data, values=data["membership"])


@router.post("/members/{member_id}/memberships/{membership_id}")
async def membership_edit(
    request: Request, member_id: str, membership_id: str, me: Desk, form: FormFields
) -> Response:
    now = now_of(request)

    def edit(tx: db.Tx) -> tuple[str, dict[str, Any], dict[str, Any], dict[str, str]]:
        db.lock_version(tx, me.organization_id)
        member = _member(tx, me, member_id)
        current = _membership(tx, me, member_id, membership_id)
        values, errors = _membership_form(form, current)
        if errors:
            return "invalid", current, values, errors
        if not _same_version(current, form):
            return "stale", current, current, {}
        changed = {k: v for k, v in values.items() if current[k] != v}
        if not changed:
            return "unchanged", current, values, {}
        saved = admin.save_membership(tx, me.organization_id, membership_id, changed, now)
        said = "; ".join(f"{k} {current[k]} → {saved[k]}" for k in changed)
        _audit(request, tx, me, "membership.edit", membership_id, f"{member['name']}: {said}")
        return "saved", saved, values, {}

    try:
        outcome, current, values, errors = await transact(request, edit)
    except (Invalid, Clash) as exc:
        values, _errors = _membership_form(form, None)
        membership = await transact(
            request, lambda tx: _membership(tx, me, member_id, membership_id), write=False
        )
        errors = field_errors(exc, MEMBERSHIP_FIELDS)
        return await _membership_refused(
            request, me, member_id, membership, values, errors, exc.status
        )
    if outcome == "invalid":
        return await _membership_refused(request, me, member_id, current, values, errors, 422)
    if outcome == "stale":
        errors = {
            "form": "This membership was changed meanwhile (a door may have used a class): "
            "here it is as it is now. Make your change again."
        }
        return await _membership_refused(request, me, member_id, current, current, errors, 409)
    done = "membership" if outcome == "saved" else "unchanged"
    return see_other(f"{PREFIX}/members/{member_id}?done={done}")


@router.get("/members/{member_id}/memberships/{membership_id}/end")
async def membership_end_form(
    request: Request, member_id: str, membership_id: str, me: Desk
) -> Response:
    now = now_of(request)

    def load(tx: db.Tx) -> dict[str, Any]:
        member = _member(tx, me, member_id)
        zone = _zones(tx, me.organization_id)[1]
        return {
            "member": member,
            "membership": _membership(tx, me, member_id, membership_id),
            "today": _today(zone, now),
        }

    data = await transact(request, load, write=False)
    last_day = min(data["today"], data["membership"]["end_date"] or data["today"])
    last_day = max(last_day, data["membership"]["start_date"])
    return render(request, "membership_end.html", **data, last_day=last_day, errors={})


@router.post("/members/{member_id}/memberships/{membership_id}/end")
async def membership_end(
    request: Request, member_id: str, membership_id: str, me: Desk, form: FormFields
) -> Response:
    last_day = form.get("last_day", "").strip()
    now = now_of(request)

    def end(tx: db.Tx) -> dict[str, Any]:
        db.lock_version(tx, me.organization_id)
        member = _member(tx, me, member_id)
        current = _membership(tx, me, member_id, membership_id)
        zone = _zones(tx, me.organization_id)[1]
        page = {"member": member, "membership": current, "today": _today(zone, now)}
        problem = _end_problem(current, last_day)
        if problem is not None:
            return {**page, "errors": {"last_day": problem}}
        if last_day == current["end_date"]:
            return {**page, "errors": {}}
        admin.save_membership(tx, me.organization_id, membership_id, {"end_date": last_day}, now)
        was = current["end_date"] or "open-ended"
        detail = f"{member['name']}: {membership_type_words(current['type']).lower()} ends "
        detail += f"{last_day} (was {was})"
        _audit(request, tx, me, "membership.end", membership_id, detail)
        return {**page, "errors": {}}

    page = await transact(request, end)
    if page["errors"]:
        return render(request, "membership_end.html", 422, **page, last_day=last_day)
    return see_other(f"{PREFIX}/members/{member_id}?done=ended")


def _end_problem(membership: dict[str, Any], last_day: str) -> str | None:
    """Why ``last_day`` cannot be a membership's new last day, or None. Checked before anything
    is written (ending only ever moves the end earlier, never before the start)."""
    try:
        date.fromisoformat(last_day)
    except ValueError:
        return "Enter a date like 2026-05-01."
    if len(last_day) != 10:
        return "Enter a date like 2026-05-01."
    if last_day < membership["start_date"]:
        return f"It starts on {membership['start_date']}: choose that day or a later one."
    if membership["end_date"] is not None and last_day > membership["end_date"]:
        return f"It already ends on {membership['end_date']}: choose that day or an earlier one."
    return None


# -- the card --------------------------------------------------------------------------------------


async def _card(request: Request, me: StaffUser, member_id: str) -> dict[str, Any]:
    def load(tx: db.Tx) -> dict[str, Any]:
        _member(tx, me, member_id)
        return admin.member_card(tx, me.organization_id, member_id)

    try:
        return await transact(request, load, write=False)
    except NotFound:
        raise not_found("card") from None


@router.get("/members/{member_id}/card")
async def member_card_page(request: Request, member_id: str, me: Desk) -> Response:
    member = await transact(request, lambda tx: _member(tx, me, member_id), write=False)
    return render(request, "member_card.html", member=member)


def _download(request: Request, name: str) -> dict[str, str]:
    if request.query_params.get("download") != "1":
        return {}
    return {"Content-Disposition": f'attachment; filename="{name}"'}


@router.get("/members/{member_id}/card.svg")
async def member_card_svg(request: Request, member_id: str, me: Desk) -> Response:
    card = await _card(request, me, member_id)
    svg = cards.card_svg(
        card["code"],
        first_name=card["first_name"],
        last_name=card["last_name"],
        organization_name=card["organization_name"],
    )
    headers = _download(request, f"card-{member_id}.svg")
    return Response(svg, media_type="image/svg+xml", headers=headers)


@router.get("/members/{member_id}/card.png")
async def member_card_png(request: Request, member_id: str, me: Desk) -> Response:
    card = await _card(request, me, member_id)
    headers = _download(request, f"card-{member_id}.png")
    return Response(cards.card_png(card["code"]), media_type="image/png", headers=headers)


# -- phone passes ----------------------------------------------------------------------------------


def activation_link(request: Request, activation_path: str) -> str:
    """The whole activation link a member's phone opens: this site's origin as browsers name it
    (``auth.own_origin``: the configured public address, or the request's scheme and host) and
    the path ``passes.create_activation`` made."""
    return own_origin(request) + activation_path


def qr_data_uri(text: str) -> str:
    """``text``'s QR symbol as an SVG ``data:`` URI (the console's CSP allows ``data:`` images)."""
    svg = cards.symbol_svg(text).encode("utf-8")
    return "data:image/svg+xml;base64," + base64.b64encode(svg).decode("ascii")


@router.post("/members/{member_id}/passes")
async def pass_activation(request: Request, member_id: str, me: Desk, form: FormFields) -> Response:
    text = form.get("ttl_minutes", "").strip()
    ttl = int(text) if text.isdigit() and len(text) <= 5 else passes.DEFAULT_ACTIVATION_TTL_MINUTES
    now = now_of(request)

    def make(tx: db.Tx) -> dict[str, Any]:
        member = _member(tx, me, member_id)
        made = passes.create_activation(tx, me.organization_id, member_id, ttl, now)
        _audit(
            request,
            tx,
            me,
            "pass.activation",
            member_id,
            f"phone pass activation code for {member['name']}, valid until {made['expires_at']}",
        )
        zone = _zones(tx, me.organization_id)[1]
        return {"member": member, "made": made, "zone": zone}

    try:
        data = await transact(request, make)
    except (Invalid, Clash) as exc:
        # Too many passes already, or a lifetime the form does not offer: the member's page
        # with the problem (nothing was made).
        problem = exc.fields[0][1] if isinstance(exc, Invalid) else exc.detail
        return await _member_view(request, me, member_id, exc.status, _sentence(problem))
    link = activation_link(request, data["made"]["activation_path"])
    return render(
        request,
        "member_pass.html",
        **data,
        link=link,
        qr=qr_data_uri(link),
        minutes=ttl,
    )


@router.get("/members/{member_id}/passes/{pass_id}/revoke")
async def pass_revoke_form(request: Request, member_id: str, pass_id: str, me: Desk) -> Response:
    def load(tx: db.Tx) -> dict[str, Any]:
        member = _member(tx, me, member_id)
        zone = _zones(tx, me.organization_id)[1]
        return {"member": member, "phone_pass": _pass(tx, me, member_id, pass_id), "zone": zone}

    data = await transact(request, load, write=False)
    return render(request, "member_revoke.html", **data)


@router.post("/members/{member_id}/passes/{pass_id}/revoke")
async def pass_revoke(
    request: Request, member_id: str, pass_id: str, me: Desk, form: FormFields
) -> Response:
    now = now_of(request)

    def revoke(tx: db.Tx) -> str:
        member = _member(tx, me, member_id)
        current = _pass(tx, me, member_id, pass_id)
        if current["status"] == "REVOKED":
            return "unchanged"
        passes.revoke_pass(tx, me.organization_id, pass_id, now)
        detail = f"phone pass of {member['name']} ({member_id}) revoked"
        _audit(request, tx, me, "pass.revoke", pass_id, detail)
        return "revoked"

    outcome = await transact(request, revoke)
    return see_other(f"{PREFIX}/members/{member_id}?done={outcome}")
