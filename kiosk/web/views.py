"""The data each part of the owner page shows, as plain JSON-ready dicts: the HTML templates and the
``/api/*`` twins render the same values. Pure functions of facts already read (``sources``), the
time and the gym's time zone. A member's id never appears here; names are masked on the way in.

Every time is a dict ``{"at": UTC text, "age_s": seconds, "ago": "2 min ago", "local": "14:03:12"}``
(or None), so a monitor can use the first two and a person the last two.

Two notions of now meet here. Times the scanner and the sync agent write into the door's database
(check-ins, the replica's sync time, the agent's status) are on the door's clock, which follows
the cloud's time until NTP syncs (``kiosk.core.clock.AnchoredClock``): they are aged against
``door_now``. Times in the control file (requests, the audit log, the scanner's health report)
are on the kernel's clock (``kiosk.data.control.shared_wall``): they are aged against ``now``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from kiosk.data.control import (
    REQUEST_MAX_AGE_S,
    AuditEntry,
    HealthReport,
    OwnerRequest,
    RequestState,
)
from kiosk.data.day_report import EVENT_KINDS
from kiosk.data.journal import DecisionRow
from kiosk.web.charts import HOURS, gauge, refusal_rows
from kiosk.web.device_health import HEARTBEAT_PROBLEM_S, Check, overall, sync_silent
from kiosk.web.sources import DaySpans, DoorFacts
from kiosk.web.words import (
    NOT_REPORTING,
    SCANNER_STATE_WORDS,
    action_words,
    age_words,
    credential_words,
    decision_name,
    error_words,
    event_words,
    local_time,
    one_line,
    outcome_words,
    reason_words,
    verdict_words,
)
from sync.protocol import utc_text


def parse_utc(text: Any) -> datetime | None:
    """A UTC text written by another kiosk process, or None when absent or unreadable."""
    if not isinstance(text, str):
        return None
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return None
    return moment if moment.tzinfo is not None else None


def time_view(moment: datetime | None, now: datetime, zone: ZoneInfo) -> dict[str, Any] | None:
    if moment is None:
        return None
    age = (now - moment).total_seconds()
    return {
        "at": utc_text(moment),
        "age_s": round(age, 1),
        "ago": age_words(age),
        "local": local_time(moment, zone, now),
    }


def door_view(
    report: HealthReport | None,
    newest: DecisionRow | None,
    *,
    door_id: str,
    now: datetime,
    zone: ZoneInfo,
    door_now: datetime | None = None,
) -> dict[str, Any]:
    """The door's state: the scanner's state, the relay, the last pulse and the last decision.
    From the scanner's health report (aged against ``now``); the last decision falls back on the
    journal when the scanner does not report (aged against ``door_now``, default ``now``)."""
    data = report.data if report is not None else {}
    fresh = report is not None and (now - report.updated_at).total_seconds() <= HEARTBEAT_PROBLEM_S
    state = str(data.get("state")) if report is not None else "not_reporting"
    if report is not None and state != "stopped" and not fresh:
        state = "not_reporting"
    relay_open = data.get("relay_open") if fresh and state != "stopped" else None
    if relay_open is True:
        relay_words = "open (the turnstile is released)"
    elif relay_open is False:
        relay_words = "closed"
    else:
        relay_words = "unknown"
    last_decision = None
    decided_at = parse_utc(data.get("last_decision_at"))
    decided_now = now
    if decided_at is not None and data.get("last_verdict"):
        verdict, reason = str(data.get("last_verdict")), str(data.get("last_reason") or "")
    elif newest is not None:
        decided_at, verdict, reason = newest.at, newest.verdict, newest.reason
        decided_now = door_now or now
    else:
        verdict = reason = ""
    if decided_at is not None:
        last_decision = {
            "time": time_view(decided_at, decided_now, zone),
            "verdict": verdict,
            "verdict_words": verdict_words(verdict),
            "reason": reason,
            "reason_words": reason_words(reason),
        }
    pulse_ms = data.get("pulse_ms")
    return {
        "door_id": door_id,
        "state": state,
        "state_words": SCANNER_STATE_WORDS.get(state, NOT_REPORTING)
        if state != "not_reporting"
        else NOT_REPORTING,
        "reported": time_view(report.updated_at, now, zone) if report is not None else None,
        "relay_open": relay_open,
        "relay_words": relay_words,
        "pulse_ms": pulse_ms
        if isinstance(pulse_ms, int) and not isinstance(pulse_ms, bool)
        else None,
        "last_pulse": time_view(parse_utc(data.get("last_pulse_at")), now, zone),
        "last_decision": last_decision,
    }


def decisions_view(
    rows: list[DecisionRow], *, names: str, now: datetime, zone: ZoneInfo
) -> list[dict[str, Any]]:
    """Recent decisions, newest first, names masked per ``names`` (``web.names``)."""
    return [
        {
            "seq": row.seq,
            "time": time_view(row.at, now, zone),
            "door_id": row.door_id,
            "verdict": row.verdict,
            "verdict_words": verdict_words(row.verdict),
            "reason": row.reason,
            "reason_words": reason_words(row.reason),
            "name": decision_name(row.has_member, row.first_name, row.last_name, names),
            "credential": credential_words(row.reason, row.by_pass),
            "sync_state": row.sync_state,
        }
        for row in rows
    ]


def today_view(counts: dict[tuple[str, str], int]) -> dict[str, int]:
    """Today's decisions: granted, denied and total."""
    granted = sum(n for (verdict, _), n in counts.items() if verdict == "granted")
    denied = sum(n for (verdict, _), n in counts.items() if verdict == "denied")
    return {"granted": granted, "denied": denied, "total": granted + denied}


def hourly(by_minute: Mapping[datetime, int], zone: ZoneInfo) -> list[int]:
    """Counts per UTC minute (``DayCounts.entries_by_minute``) summed into the 24 hours of the
    gym's local clock (hour 0 first). On the day the clocks go back, the repeated hour's two
    halves share one bar; on the day they go forward, the skipped hour stays empty."""
    hours = [0] * HOURS
    for minute, count in by_minute.items():
        hours[minute.astimezone(zone).hour] += count
    return hours


def _whole(value: Any) -> int | None:
    """A count from another process's report: a non-negative int, else None."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        return None
    return value


def occupancy_view(report: HealthReport | None, *, now: datetime) -> dict[str, Any]:
    """How many are in the gym, from the scanner's health report (its ``occupancy``: ``now``,
    ``max_today``, ``entries_today``, ``exits_today``, ``capacity``; aged against ``now``, the
    kernel's clock). ``known`` is False while the scanner does not report (or reports no
    occupancy): a figure from a silent scanner is not news. ``fill`` is the bar's length, 0-100,
    against the capacity (or, without one, today's maximum)."""
    data = report.data if report is not None else {}
    fresh = (
        report is not None
        and (now - report.updated_at).total_seconds() <= HEARTBEAT_PROBLEM_S
        and data.get("state") != "stopped"
    )
    occupancy = data.get("occupancy")
    if not isinstance(occupancy, dict):
        occupancy = {}
    here = _whole(occupancy.get("now"))
    if not fresh or here is None:
        unknown = dict.fromkeys(
            ("now", "max_today", "entries_today", "exits_today", "capacity", "fill")
        )
        why = "the scanner is not reporting" if not fresh else "the scanner does not count it"
        return {"known": False, **unknown, "words": f"unknown: {why}"}
    most = _whole(occupancy.get("max_today"))
    capacity = _whole(occupancy.get("capacity")) or None  # 0 or none: no limit
    most = max(here, most) if most is not None else here
    if capacity is not None:
        words = f"{here} of {capacity} allowed" + (" (full)" if here >= capacity else "")
    else:
        words = f"{here} in the gym now"
    return {
        "known": True,
        "now": here,
        "max_today": most,
        "entries_today": _whole(occupancy.get("entries_today")),
        "exits_today": _whole(occupancy.get("exits_today")),
        "capacity": capacity,
        "fill": gauge(here, capacity if capacity is not None else most),
        "words": words,
    }


def day_view(facts: DoorFacts, days: DaySpans, *, now: datetime, zone: ZoneInfo) -> dict[str, Any]:
    """Today at the door, for the picture of the day: entries per local hour today and on the
    same weekday last week (``entries_by_hour``, 24 counts each), refusals by reason (most first,
    in words, with their bar's length), the passage events by kind. ``now`` is the door's notion
    of now. Counts are 0 while the database cannot be read (the page says why elsewhere)."""
    today = facts.day
    before = facts.last_week
    here = now.astimezone(zone)
    compare_day = days.last_week_start.astimezone(zone)
    refused = {reason: n for (verdict, reason), n in facts.today.items() if verdict == "denied"}
    events = today.events if today is not None else dict.fromkeys(EVENT_KINDS, 0)
    by_hour = hourly(today.entries_by_minute, zone) if today is not None else [0] * HOURS
    before_by_hour = hourly(before.entries_by_minute, zone) if before is not None else [0] * HOURS
    return {
        "date": here.date().isoformat(),
        "compare_date": compare_day.date().isoformat(),
        "compare_words": f"last {compare_day:%A}",
        "compare_title": f"Last {compare_day:%A}",
        "current_hour": here.hour,
        "entries_by_hour": {"today": by_hour, "last_week": before_by_hour},
        "entries_today": sum(by_hour),
        "entries_last_week": sum(before_by_hour),
        "refused_today": sum(refused.values()),
        "refusals": [asdict(row) for row in refusal_rows(refused)],
        "events": [
            {"kind": kind, "words": event_words(kind), "count": int(count)}
            for kind, count in events.items()
        ],
        "annulled_today": int(events.get("annulled", 0)),
        "tailgating_today": int(events.get("tailgating", 0)),
    }


_SYNC_STATE_WORDS = {
    "running": "running",
    "offline": "cannot reach the cloud (retrying)",
    "stopped": "stopped",
    "never_ran": "has not run yet",
}


def sync_view(
    facts: DoorFacts, *, now: datetime, zone: ZoneInfo, silent_after_s: float | None = None
) -> dict[str, Any]:
    """Sync health: online, last pull and push, the backlog and its oldest check-in, the replica,
    the last error in plain words. ``now`` is the door's notion of now. An agent whose status is
    older than ``silent_after_s`` (``device_health.sync_silent_after``) is shown as not reporting
    and never as online: its last word is no longer news."""
    status = facts.sync
    state = str(status.get("state") or "never_ran")
    state_words = _SYNC_STATE_WORDS.get(state, one_line(state, 40))
    position = facts.position
    online = status.get("online")
    online = online if isinstance(online, bool) else None
    updated = parse_utc(status.get("updated_at"))
    age = None if updated is None else (now - updated).total_seconds()
    if silent_after_s is not None and state != "stopped" and sync_silent(age, silent_after_s):
        state = "not_reporting"
        state_words = (
            f"not reporting since {local_time(updated, zone, now)} ({age_words(age)}): "
            f"is the sync service running?"
        )
        online = False
    return {
        "state": state,
        "state_words": state_words,
        "online": online,
        "reported": time_view(updated, now, zone),
        "last_pull": time_view(parse_utc(status.get("last_pull_at")), now, zone),
        "last_push": time_view(parse_utc(status.get("last_push_at")), now, zone),
        "backlog": None if position is None else position.backlog,
        "oldest_pending": time_view(
            None if position is None else position.oldest_pending_at, now, zone
        ),
        "replica_version": facts.replica_version,
        "replica_members": facts.members,
        "replica_synced": time_view(facts.replica_synced_at, now, zone),
        "last_error": error_words(status.get("last_error")),
        "last_error_at": time_view(parse_utc(status.get("last_error_at")), now, zone),
    }


def health_view(checks: list[Check]) -> dict[str, Any]:
    return {"grade": overall(checks).value, "checks": [c.to_json() for c in checks]}


def audit_view(entries: list[AuditEntry], *, now: datetime, zone: ZoneInfo) -> list[dict[str, Any]]:
    return [
        {
            "time": time_view(e.at, now, zone),
            "action": e.action,
            "action_words": action_words(e.action),
            "outcome": e.outcome,
            "outcome_words": outcome_words(e.outcome),
            "detail": e.detail,
            "client": e.client,
        }
        for e in entries
    ]


NOT_PICKED_UP = "not picked up: is the scanner/sync service running?"
NOT_FINISHED = "not finished after a minute: is the scanner/sync service running?"


def _request_state_words(request: OwnerRequest, now: datetime) -> str:
    """A request's state in words; one still waiting (or running) after ``REQUEST_MAX_AGE_S``
    says that nobody seems to be taking care of it (the control file itself only marks it
    expired when a claimer next looks, which a stopped service never does)."""
    late = (now - request.requested_at).total_seconds() > REQUEST_MAX_AGE_S
    if late and request.state is RequestState.PENDING:
        return NOT_PICKED_UP
    if late and request.state is RequestState.RUNNING:
        return NOT_FINISHED
    return outcome_words(request.state.value)


def requests_view(
    requests: list[OwnerRequest], *, now: datetime, zone: ZoneInfo
) -> list[dict[str, Any]]:
    """The latest owner requests; ``now`` is the kernel's clock (the control file's)."""
    return [
        {
            "id": r.id,
            "kind": r.kind.value,
            "kind_words": action_words(r.kind.value),
            "state": r.state.value,
            "state_words": _request_state_words(r, now),
            "requested": time_view(r.requested_at, now, zone),
            "finished": time_view(r.finished_at, now, zone),
            "result": r.result,
        }
        for r in requests
    ]
