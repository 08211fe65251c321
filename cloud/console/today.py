"""Today: the desk's landing page (docs/console.md, "Attendance").

- ``GET /console/`` (every role; ``?gym=<id>`` for one gym): today's check-ins across the
  organisation's doors, newest first (at most MAX_ROWS), each with the member, the door, the time
  in the gym's time zone, the decision and its reason in words, annulled entries marked; the
  day's totals and refusals by reason; how many people each gym's doors count inside now. A
  trainer sees only the check-ins (and refusals) of the members assigned to them.
- ``GET /console/live`` (every role; ``?gym=<id>``): the same check-ins as they arrive, as
  server-sent events (``cloud.console.live``), scoped to the signed-in organisation and, for a
  trainer, to their members. The page's script (``console.js``) prepends them without a reload;
  without the script the page is a plain page showing the latest at each reload.

"Today" is each gym's own calendar day in its time zone, read on ``occurred_at`` (when the door
decided, placed on the cloud's clock): a check-in a door uploads late still lands on its day.
"""

from __future__ import annotations

import json
import urllib.parse
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from fastapi import APIRouter, Request
from fastapi.responses import Response

from cloud import admin, db
from cloud.console import words
from cloud.console.auth import SignedIn, StaffUser, not_found, now_of, transact
from cloud.console.live import OVERLAP_S, live_stream
from cloud.console.pages import PREFIX, render
from sync.protocol import utc_from_text, utc_text

router = APIRouter(prefix=PREFIX, include_in_schema=False)

MAX_ROWS = 200  # check-ins listed per page load (the day's totals count them all)
MAX_GYM_ID_CHARS = 100


@dataclass(frozen=True, slots=True)
class GymDay:
    """One gym's calendar day: ``since``/``until`` are its local midnights as stored UTC
    texts, ``date`` the local date (ISO)."""

    gym: dict[str, Any]
    zone: ZoneInfo
    since: str
    until: str
    date: str


def _zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return ZoneInfo("UTC")


def gym_day(gym: dict[str, Any], now: datetime) -> GymDay:
    """The gym's day around ``now`` (aware UTC), from its local midnight to the next."""
    zone = _zone(gym["timezone"])
    today = now.astimezone(zone).date()
    start = datetime.combine(today, time(0), tzinfo=zone)
    end = datetime.combine(today + timedelta(days=1), time(0), tzinfo=zone)
    return GymDay(gym, zone, utc_text(start), utc_text(end), today.isoformat())


def chosen_gyms(tx: db.Tx, org_id: str, gym_id: str | None) -> list[dict[str, Any]]:
    """The organisation's gyms, or the one ``gym_id`` names (ConsoleError 404 when it is not
    one of them)."""
    gyms = admin.list_gyms(tx, org_id)
    if gym_id is None:
        return gyms
    found = [g for g in gyms if g["id"] == gym_id]
    if not found:
        raise not_found("gym")
    return found


def gym_param(request: Request) -> str | None:
    """The ``gym`` query parameter (None when absent or empty)."""
    value = request.query_params.get("gym", "").strip()
    if not value:
        return None
    if len(value) > MAX_GYM_ID_CHARS:
        raise not_found("gym")
    return value


def checkin_view(row: dict[str, Any], day: GymDay) -> dict[str, Any]:
    """A check-in as the page shows it (and as the script builds live ones: keep the two
    alike)."""
    moment = utc_from_text(row["occurred_at"]).astimezone(day.zone)
    return {
        "id": row["id"],
        "at": row["occurred_at"],
        "time": moment.strftime("%H:%M:%S"),
        "gym": day.gym["name"],
        "door": row["device_name"] or row["door_id"],
        "door_id": row["door_id"],
        "member_id": row["member_id"],
        "name": words.member_name(row["member_id"], row["first_name"], row["last_name"]),
        "known": row["member_id"] is not None and row["first_name"] is not None,
        "granted": row["decision"] == "granted",
        "decision": words.decision_words(row["decision"]),
        "reason": words.reason_words(row["reason"]),
        "annulled": bool(row["annulled"]),
        "overdraft": bool(row["overdraft"]),
        "by_pass": row["pass_id"] is not None,
    }


def today_view(tx: db.Tx, me: StaffUser, gym_id: str | None, now: datetime) -> dict[str, Any]:
    """Everything the Today page shows, read in one transaction."""
    org = me.organization_id
    trainer = me.id if me.role == "trainer" else None
    days = [gym_day(g, now) for g in chosen_gyms(tx, org, gym_id)]
    rows: list[tuple[dict[str, Any], GymDay]] = []
    counts: Counter[tuple[str, str, bool]] = Counter()
    for day in days:
        found = db.day_checkins(tx, org, day.gym["id"], day.since, day.until, MAX_ROWS, trainer)
        rows += [(row, day) for row in found]
        for c in db.day_counts(tx, org, day.gym["id"], day.since, day.until, trainer):
            counts[(c["decision"], c["reason"], c["annulled"])] += c["n"]
    rows.sort(key=lambda pair: (pair[0]["occurred_at"], pair[0]["id"]), reverse=True)
    refusals: Counter[str] = Counter()
    for (decision, reason, _annulled), n in counts.items():
        if decision != "granted":
            refusals[reason] += n
    totals = {
        "admitted": sum(n for (d, _r, a), n in counts.items() if d == "granted" and not a),
        "annulled": sum(n for (d, _r, a), n in counts.items() if d == "granted" and a),
        "refused": sum(refusals.values()),
    }
    occupancy = []
    for day in days:
        gym = admin.gym_occupancy(tx, org, day.gym["id"], now)
        for door in gym["doors"]:
            door["reported"] = (
                utc_from_text(door["reported_at"]).astimezone(day.zone).strftime("%H:%M")
            )
        occupancy.append({"name": day.gym["name"], **gym})
    return {
        "checkins": [checkin_view(row, day) for row, day in rows[:MAX_ROWS]],
        "more": sum(totals.values()) > MAX_ROWS,
        "totals": totals,
        "refusals": [
            {"reason": reason, "words": words.reason_words(reason), "count": n}
            for reason, n in sorted(refusals.items(), key=lambda kv: (-kv[1], kv[0]))
        ],
        "occupancy": occupancy,
        "days": days,
        "all_gyms": admin.list_gyms(tx, org),
    }


def live_config(days: list[GymDay], gym_id: str | None, now: datetime) -> dict[str, str]:
    """What the page's script needs, as data attributes (JSON, autoescaped by the template):
    the stream's address (starting ``OVERLAP_S`` before now, so a check-in that arrived while
    the page was made is not missed; the script skips ids it shows already), the words, and each
    gym's name, time zone and date."""
    after = utc_text(now - timedelta(seconds=OVERLAP_S))
    query = {"after": after, **({"gym": gym_id} if gym_id else {})}
    return {
        "url": f"{PREFIX}/live?{urllib.parse.urlencode(query)}",
        "words": json.dumps(
            {
                "reasons": words.REASON_WORDS,
                "decisions": words.DECISION_WORDS,
                "annulled": words.ANNULLED_WORDS,
                "unknown_member": words.member_name(None, None, None),
                "former_member": words.member_name("x", None, None),
            },
            separators=(",", ":"),
        ),
        "gyms": json.dumps(
            {
                d.gym["id"]: {"name": d.gym["name"], "zone": d.zone.key, "date": d.date}
                for d in days
            },
            separators=(",", ":"),
        ),
    }


@router.get("/")
async def today(request: Request, me: SignedIn) -> Response:
    gym_id = gym_param(request)
    now = now_of(request)
    data = await transact(request, lambda tx: today_view(tx, me, gym_id, now), write=False)
    return render(
        request,
        "today.html",
        **data,
        gym_id=gym_id or "",
        live=live_config(data["days"], gym_id, now),
        trainer=me.role == "trainer",
        max_rows=MAX_ROWS,
        annulled_words=words.ANNULLED_WORDS,
    )


@router.get("/live")
async def live(request: Request, me: SignedIn) -> Response:
    """The live feed of the signed-in organisation (one gym's with ``?gym=``; a trainer's
    members only)."""
    gym_id = gym_param(request)
    org = me.organization_id

    def scope(tx: db.Tx) -> list[str] | None:
        if gym_id is not None:
            chosen_gyms(tx, org, gym_id)
        if me.role != "trainer":
            return None
        return [row["id"] for row in db.trainer_member_rows(tx, org, me.id)]

    member_ids = await transact(request, scope, write=False)
    return await live_stream(request, org, gym_id=gym_id, member_ids=member_ids)


# The route-table tests open every GET page once; this one streams until the client goes.
live.console_long_lived = True  # type: ignore[attr-defined]
