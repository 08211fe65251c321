"""The owner page's words: reasons, states and errors as a gym owner reads them, member names masked
as configured, and readable ages and times. Pure functions over plain values.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from kiosk.core.model import EventKind, Reason
from kiosk.ops.status import human_bytes
from sync.text import one_line

# One line per reason (docs/architecture.md#reasons), in the owner's words. A test checks that
# every Reason has its words.
REASON_WORDS: dict[Reason, str] = {
    Reason.SUBSCRIPTION: "Subscription covers today",
    Reason.CLASS_PACK: "Class pack (one class used)",
    Reason.PERSONAL_TRAINING: "Personal training membership",
    Reason.STAFF_OVERRIDE: "Staff (always admitted)",
    Reason.UNKNOWN_CODE: "Code not known (no member has it)",
    Reason.MALFORMED_CODE: "Not one of the gym's codes (someone else's QR code, or garbage)",
    Reason.MEMBER_PAUSED: "Membership paused",
    Reason.MEMBER_EXPIRED: "Member's account has expired",
    Reason.NO_VALID_MEMBERSHIP: "No membership covers today",
    Reason.PACK_EMPTY: "Class pack used up",
    Reason.OUTSIDE_HOURS: "Outside opening hours or the plan's hours",
    Reason.FACILITY_CLOSED: "Gym closed today (holiday or closure)",
    Reason.PASSBACK: "Already entered a moment ago (anti-passback)",
    Reason.REPLICA_STALE: "Member list too old to trust (no sync for too long)",
    Reason.TOKEN_EXPIRED: "Phone code expired (refresh it in the app)",
    Reason.TOKEN_REPLAYED: "Phone code already used (a copy or a screenshot?)",
    Reason.BAD_SIGNATURE: "Phone code not genuine (bad signature)",
    Reason.CLOCK_UNTRUSTED: "Door's clock not set yet (no network time since start-up)",
    Reason.AT_CAPACITY: "Gym full (as many inside as the capacity allows)",
    Reason.VISIT_LIMIT: "Visits for today used up (the plan's limit per day)",
}

# The turnstile's passage events (the journal's ``door_events``), in the owner's words. A test
# checks that every kind has its words.
EVENT_WORDS: dict[EventKind, str] = {
    EventKind.ENTRY: "Entry confirmed (the turnstile turned)",
    EventKind.ANNULLED: "Granted but did not go through",
    EventKind.TAILGATING: "Passage with no check-in",
    EventKind.EXIT: "Left the gym (exit)",
}

VERDICT_WORDS = {"granted": "Admitted", "denied": "Refused"}

SCANNER_STATE_WORDS = {
    "scanning": "Scanning",
    "camera_stale": "Camera not delivering frames",
    "stopped": "Scanner stopped",
}
NOT_REPORTING = "Scanner not reporting (is the scanner service running?)"

ACTION_WORDS = {
    "sync_now": "Sync now",
    "test_door": "Door test",
    "login": "Sign-in",
    "logout": "Sign-out",
    "diagnostics": "Diagnostics download",
}
OUTCOME_WORDS = {
    "requested": "requested",
    "running": "running",
    "done": "done",
    "failed": "failed",
    "expired": "expired (nobody picked it up)",
    "ok": "ok",
    "throttled": "locked out (too many wrong passwords)",
    "csrf_refused": "refused (cross-site or stale form)",
    "downloaded": "downloaded",
}

NAME_MODES = ("first_name", "full", "initials", "hidden")
NO_MEMBER = "—"  # a decision that names no member (unknown or malformed code)


def reason_words(reason: str) -> str:
    """``reason`` (a ``Reason`` value, or text from a newer release) in the owner's words."""
    try:
        return REASON_WORDS[Reason(reason)]
    except ValueError:
        return f"Other reason ({one_line(reason, 60)})"


def event_words(kind: str) -> str:
    """A passage event's kind (``EVENT_WORDS``) in the owner's words; a kind from a newer release
    keeps its text."""
    try:
        return EVENT_WORDS[EventKind(kind)]
    except ValueError:
        return f"Other event ({one_line(kind, 40)})"


def verdict_words(verdict: str) -> str:
    return VERDICT_WORDS.get(verdict, one_line(verdict, 20))


def action_words(action: str) -> str:
    return ACTION_WORDS.get(action, one_line(action, 40))


def outcome_words(outcome: str) -> str:
    return OUTCOME_WORDS.get(outcome, one_line(outcome, 40))


def mask_name(first: str | None, last: str | None, mode: str) -> str:
    """A member's name as the owner chose to show it (``web.names``): ``first_name`` "Alice S.",
    ``full`` "Alice Smith", ``initials`` "A. S.", ``hidden`` "member". Missing parts are left
    out; a member without any name part shows as "member". Raises ValueError for an unknown
    mode (the config's choices prevent it)."""
    if mode not in NAME_MODES:
        raise ValueError(f"unknown name mode {mode!r}: one of {', '.join(NAME_MODES)}")
    first = one_line(first or "", 60)
    last = one_line(last or "", 60)
    if mode == "hidden" or not (first or last):
        return "member"
    if mode == "full":
        return f"{first} {last}".strip()
    if mode == "initials":
        return " ".join(f"{part[0]}." for part in (first, last) if part)
    return f"{first} {last[0]}.".strip() if last else first


def credential_words(reason: str, by_pass: bool) -> str:
    """What the member showed, in the owner's words: "phone pass" or "card"; "—" for a code that
    was not a credential at all (someone else's QR code)."""
    if by_pass:
        return "phone pass"
    return NO_MEMBER if reason == "malformed_code" else "card"


def decision_name(has_member: bool, first: str | None, last: str | None, mode: str) -> str:
    """The name column of a decision: the masked name, "—" when the decision names no member,
    "former member" when the member has left the replica since (never the member's id)."""
    if not has_member:
        return NO_MEMBER
    if first is None and last is None:
        return "member" if mode == "hidden" else "former member"
    return mask_name(first, last, mode)


_URL_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^/\s@]+@")


def error_words(text: str | None) -> str | None:
    """An error recorded by another process (the sync agent's ``last_error``) made fit to show:
    the failing step named in words, credentials in URLs removed, one line. None stays None."""
    if not text:
        return None
    clean = _URL_USERINFO.sub(r"\1", str(text))
    step, sep, rest = clean.partition(": ")
    steps = {
        "push": "Uploading check-ins failed",
        "pull": "Fetching the member list failed",
        "heartbeat": "Reporting to the cloud failed",
    }
    if sep and step in steps:
        clean = f"{steps[step]}: {rest}"
    return one_line(clean, 300)


def age_words(seconds: float | None) -> str:
    """A readable age: "never", "just now", "12 s ago", "2 min ago", "3 h ago", "4 days ago"; a
    time ahead of now (a clock set back) reads "in the future"."""
    if seconds is None:
        return "never"
    if seconds < -5:
        return "in the future (clock changed?)"
    if seconds < 2:
        return "just now"
    if seconds < 90:
        return f"{seconds:.0f} s ago"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min ago"
    if seconds < 48 * 3600:
        return f"{seconds / 3600:.0f} h ago"
    return f"{seconds / 86400:.0f} days ago"


def duration_words(seconds: float | None) -> str:
    """A length of time: "45 s", "12 min", "5.2 h", "3.0 days" ("unknown" for None)."""
    if seconds is None:
        return "unknown"
    seconds = max(0.0, seconds)
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    if seconds < 172800:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


def local_time(moment: datetime | None, zone: ZoneInfo, now: datetime) -> str:
    """``moment`` in the gym's time zone: "14:03:12" today, "Mon 4 May 14:03" within a year,
    else "2025-05-04 14:03" ("" for None)."""
    if moment is None:
        return ""
    here, today = moment.astimezone(zone), now.astimezone(zone)
    if here.date() == today.date():
        return here.strftime("%H:%M:%S")
    if abs(today - here) < timedelta(days=330):
        return f"{here:%a} {here.day} {here:%b %H:%M}"
    return here.strftime("%Y-%m-%d %H:%M")


def bytes_words(size: int | None) -> str:
    """A size in bytes as "512 B", "3.4 MiB", "12.1 GiB" ("unknown" for None): the same words
    as ``kiosk status``."""
    return human_bytes(size)
