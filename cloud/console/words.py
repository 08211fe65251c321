"""The console's words for what the doors report: check-in reasons, decisions, passage events,
membership types and statuses, as the people at the desk read them. The cloud may not import the
device's code (``kiosk``), so the reason vocabulary (``kiosk.core.model.Reason``,
docs/architecture.md#reasons) is written out here as text; tests/test_console_members.py checks
that every reason of that vocabulary has its words. A reason from a newer door release is shown as
"Other reason (its name)". Pure functions.
"""

from __future__ import annotations

from sync.text import one_line

# One line per reason, in the desk's words (the owner page's wording, kiosk/web/words.py).
REASON_WORDS: dict[str, str] = {
    # granted
    "subscription": "Subscription covers today",
    "class_pack": "Class pack (one class used)",
    "personal_training": "Personal training membership",
    "staff_override": "Staff (always admitted)",
    # refused
    "unknown_code": "Code not known (no member has it)",
    "malformed_code": "Not one of the gym's codes (someone else's QR code, or garbage)",
    "member_paused": "Membership paused",
    "member_expired": "Member's account has expired",
    "no_valid_membership": "No membership covers today",
    "pack_empty": "Class pack used up",
    "outside_hours": "Outside opening hours or the plan's hours",
    "facility_closed": "Gym closed today (holiday or closure)",
    "passback": "Already entered a moment ago (anti-passback)",
    "replica_stale": "Member list too old to trust (the door had no sync for too long)",
    "token_expired": "Phone code expired (refresh it in the app)",
    "token_replayed": "Phone code already used (a copy or a screenshot?)",
    "bad_signature": "Phone code not genuine (bad signature)",
    "clock_untrusted": "Door's clock not set yet (no network time since start-up)",
    "at_capacity": "Gym full (as many inside as the capacity allows)",
    "visit_limit": "Visits for today used up (the plan's limit per day)",
}

DECISION_WORDS = {"granted": "Admitted", "denied": "Refused"}

# A turnstile's passage events (the door's ``door_events``), in the desk's words.
EVENT_WORDS = {
    "entry": "Entry confirmed (the turnstile turned)",
    "annulled": "Admitted but did not go through",
    "tailgating": "Passage with no check-in",
    "exit": "Left the gym (exit)",
}

MEMBERSHIP_TYPE_WORDS = {
    "SUBSCRIPTION": "Subscription",
    "CLASS_PACK": "Class pack",
    "PT": "Personal training",
}

MEMBER_STATUS_WORDS = {"ACTIVE": "Active", "PAUSED": "Paused", "EXPIRED": "Expired"}

PASS_STATUS_WORDS = {"ACTIVE": "Active", "REVOKED": "Revoked"}


def reason_words(reason: str) -> str:
    """A check-in's reason in the desk's words; one this table does not know keeps its name."""
    return REASON_WORDS.get(reason) or f"Other reason ({one_line(reason, 60)})"


def decision_words(decision: str) -> str:
    return DECISION_WORDS.get(decision) or one_line(decision, 20)


def event_words(kind: str) -> str:
    """A passage event's kind in the desk's words; one from a newer release keeps its name."""
    return EVENT_WORDS.get(kind) or f"Other event ({one_line(kind, 40)})"


def membership_type_words(kind: str) -> str:
    return MEMBERSHIP_TYPE_WORDS.get(kind) or one_line(kind, 20)


def member_status_words(status: str) -> str:
    return MEMBER_STATUS_WORDS.get(status) or one_line(status, 20)


def pass_status_words(status: str) -> str:
    return PASS_STATUS_WORDS.get(status) or one_line(status, 20)


# -- restored for the Today and Doors pages (see the note below) -----------------------------------
# These were in a words.py the Today/Doors pages' author wrote and that the members part's author
# overwrote by mistake; rewritten from how today.py and doors.py call them.

ANNULLED_WORDS = "did not go through (the turnstile did not turn)"
NO_MEMBER = "—"  # a decision that names no member (an unknown or malformed code)
FORMER_MEMBER = "Former member"

REPLICA_WORDS = {
    "match": "Matches the cloud",
    "mismatch": "Differs from the cloud (request a re-snapshot)",
    "behind": "Catching up with the cloud",
    "ahead": "Ahead of the cloud (was the cloud restored from a backup?)",
}

CLOCK_WORDS = {
    "ntp_synced": "Network time",
    "server_anchored": "Set from the cloud's time",
    "unsynced": "Not set (no network time since start-up)",
}

NOT_REPORTED = "Not reported yet"


def member_name(member_id: str | None, first_name: str | None, last_name: str | None) -> str:
    """A check-in's member as the desk sees it: the name, "Former member" when the member is
    gone from the cloud, "—" when the check-in names no member."""
    if member_id is None:
        return NO_MEMBER
    if first_name is None and last_name is None:
        return FORMER_MEMBER
    return one_line(f"{first_name or ''} {last_name or ''}", 120) or FORMER_MEMBER


def duration_words(seconds: float) -> str:
    """A length of time in words: "45 s", "3 min", "2 h 5 min", "3 days"."""
    total = max(0, int(seconds))
    if total < 90:
        return f"{total} s"
    minutes = round(total / 60)
    if minutes < 90:
        return f"{minutes} min"
    hours, rest = divmod(minutes, 60)
    if hours < 48:
        return f"{hours} h {rest} min" if rest else f"{hours} h"
    return f"{round(hours / 24)} days"


def age_words(seconds: float) -> str:
    """How long ago something happened: "just now", "3 min ago"..."""
    if seconds < 5:
        return "just now"
    return f"{duration_words(seconds)} ago"


def replica_words(status: str | None) -> str:
    if status is None:
        return NOT_REPORTED
    return REPLICA_WORDS.get(status) or one_line(status, 40)


def clock_words(quality: str | None) -> str:
    if quality is None:
        return NOT_REPORTED
    return CLOCK_WORDS.get(quality) or one_line(quality, 40)
