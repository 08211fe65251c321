"""Plain data shared by the store, the access policy and the scanner loop.

Everything here is immutable and free of I/O, so the access policy can be a pure function of these
values and its tests can be tables. Times are timezone-aware UTC ``datetime`` values unless a name
says otherwise; local (gym) time only exists inside the policy.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime
from enum import StrEnum


class Verdict(StrEnum):
    GRANTED = "granted"
    DENIED = "denied"


class Reason(StrEnum):
    """The fixed reason vocabulary: shown on the owner page and sent to the cloud."""

    # granted
    SUBSCRIPTION = "subscription"
    CLASS_PACK = "class_pack"
    PERSONAL_TRAINING = "personal_training"
    STAFF_OVERRIDE = "staff_override"
    # denied
    UNKNOWN_CODE = "unknown_code"
    MALFORMED_CODE = "malformed_code"
    MEMBER_PAUSED = "member_paused"
    MEMBER_EXPIRED = "member_expired"
    NO_VALID_MEMBERSHIP = "no_valid_membership"
    PACK_EMPTY = "pack_empty"
    OUTSIDE_HOURS = "outside_hours"
    FACILITY_CLOSED = "facility_closed"
    PASSBACK = "passback"
    REPLICA_STALE = "replica_stale"
    TOKEN_EXPIRED = "token_expired"
    TOKEN_REPLAYED = "token_replayed"
    BAD_SIGNATURE = "bad_signature"
    CLOCK_UNTRUSTED = "clock_untrusted"
    AT_CAPACITY = "at_capacity"
    VISIT_LIMIT = "visit_limit"

    @property
    def verdict(self) -> Verdict:
        return Verdict.GRANTED if self in GRANTED_REASONS else Verdict.DENIED


GRANTED_REASONS = frozenset(
    {Reason.SUBSCRIPTION, Reason.CLASS_PACK, Reason.PERSONAL_TRAINING, Reason.STAFF_OVERRIDE}
)


class MemberStatus(StrEnum):
    ACTIVE = "ACTIVE"
    EXPIRED = "EXPIRED"
    PAUSED = "PAUSED"


class MembershipType(StrEnum):
    SUBSCRIPTION = "SUBSCRIPTION"
    CLASS_PACK = "CLASS_PACK"
    PT = "PT"


class ClockQuality(StrEnum):
    """How far the wall time on a check-in can be trusted (docs/architecture.md#the-door-loop)."""

    NTP_SYNCED = "ntp_synced"
    SERVER_ANCHORED = "server_anchored"
    UNSYNCED = "unsynced"


class SyncState(StrEnum):
    PENDING = "pending"
    SYNCED = "synced"
    REJECTED = "rejected"


class EventKind(StrEnum):
    """What a door event says happened at the turnstile (docs/architecture.md#door-events).

    ``entry``: the turnstile turned for a grant (the grant is confirmed). ``annulled``: it did not
    turn within the passage timeout after the grant (the member never went in). ``tailgating``: an
    entry passage with no grant waiting for one. ``exit``: an exit passage, or a grant at an
    exit-side scanner."""

    ENTRY = "entry"
    ANNULLED = "annulled"
    TAILGATING = "tailgating"
    EXIT = "exit"


class StalePolicy(StrEnum):
    """What the door does once the replica is older than the grace period."""

    # Keep admitting members whose membership has a definite end date still in the future.
    PAID_THROUGH = "paid_through"
    # Refuse everyone except staff until a sync succeeds.
    REFUSE = "refuse"


@dataclass(frozen=True, slots=True)
class Member:
    id: str
    organization_id: str
    first_name: str
    last_name: str
    status: MemberStatus
    is_staff: bool = False

    @property
    def display_name(self) -> str:
        """First name and last initial: enough for a door log, little personal data."""
        initial = f" {self.last_name[:1]}." if self.last_name else ""
        return f"{self.first_name}{initial}"


@dataclass(frozen=True, slots=True)
class AccessWindow:
    """A weekly window in the gym's local time: ``weekday`` 0 = Monday, minutes since local midnight,
    half-open ``[start_minute, end_minute)``; ``end_minute`` may be 1440 (midnight at the day's end)."""

    weekday: int
    start_minute: int
    end_minute: int


@dataclass(frozen=True, slots=True)
class Plan:
    """A membership plan. No windows means the plan admits whenever the facility is open.
    ``max_visits_per_day`` caps the member's entries per local day at a door (None: no cap)."""

    id: str
    name: str
    windows: tuple[AccessWindow, ...] = ()
    max_visits_per_day: int | None = None


@dataclass(frozen=True, slots=True)
class Membership:
    """One membership of a member. Dates are the gym's local calendar dates, both inclusive;
    ``end_date`` None means open-ended. ``remaining_classes`` is the cloud's balance (class packs, and
    PT memberships sold as a number of sessions); None means unlimited."""

    id: str
    member_id: str
    type: MembershipType
    start_date: date
    end_date: date | None
    remaining_classes: int | None = None
    plan_id: str | None = None


@dataclass(frozen=True, slots=True)
class Closure:
    """The facility is closed on every local date from ``start_date`` to ``end_date`` inclusive."""

    start_date: date
    end_date: date
    reason: str = ""


@dataclass(frozen=True, slots=True)
class LastEntry:
    """The member's latest granted entry at this door, for anti-passback."""

    wall_time: datetime
    boot_id: str
    monotonic_ns: int


@dataclass(frozen=True, slots=True)
class MemberFacts:
    """Everything the policy needs to know about one member, read from the replica and the journal
    in one short read transaction. ``pending_uses`` maps membership id to classes used by check-ins
    whose use the replica's balance does not include yet: not yet acknowledged by the cloud, or
    acknowledged at a cloud version newer than the replica; annulled grants (the member never
    went through) use nothing. ``last_entry`` is the newest granted, not annulled check-in at this
    door. ``recent_entries`` are the wall times of the member's granted, not annulled check-ins at
    this door over the last two days at least (newest first), for the plan's visit limit: the
    policy counts those of today's local date."""

    member: Member
    memberships: tuple[Membership, ...]
    plans: dict[str, Plan]
    pending_uses: dict[str, int]
    last_entry: LastEntry | None
    recent_entries: tuple[datetime, ...] = ()


@dataclass(frozen=True, slots=True)
class SiteFacts:
    """Facility-wide rules. No opening hours at all means open around the clock."""

    opening_hours: tuple[AccessWindow, ...] = ()
    closures: tuple[Closure, ...] = ()


@dataclass(frozen=True, slots=True)
class ReplicaInfo:
    """``version`` is the replica version decisions are taken on (0 = never loaded); ``synced_at`` is
    the server time of the last successful pull (None = never)."""

    version: int
    synced_at: datetime | None


@dataclass(frozen=True, slots=True)
class Now:
    """The scanner's view of time at a decision. ``clock_floor`` is the latest wall time the device
    knows to have happened (newest journal row or last server time): a clock that is not NTP-synced
    and reads earlier than that has stepped backwards."""

    wall: datetime
    monotonic_ns: int
    boot_id: str
    quality: ClockQuality
    clock_floor: datetime | None = None


@dataclass(frozen=True, slots=True)
class PolicySettings:
    """The owner's settings of the access policy. ``capacity`` is the most people the door lets
    be inside at once (0: no limit; staff are exempt)."""

    timezone: str = "UTC"
    passback_minutes: float = 10.0
    stale_after_hours: float = 72.0
    when_stale: StalePolicy = StalePolicy.PAID_THROUGH
    capacity: int = 0


@dataclass(frozen=True, slots=True)
class Decision:
    verdict: Verdict
    reason: Reason
    member_id: str | None = None
    membership_id: str | None = None
    classes_used: int = 0
    # Plain words for the owner page and the demo; never contains the scanned payload.
    detail: str = ""


@dataclass(frozen=True, slots=True)
class Checkin:
    """One journal row as written by the scanner (docs/architecture.md#the-check-in-journal)."""

    id: str
    seq: int
    door_id: str
    decision: Verdict
    reason: Reason
    member_id: str | None
    membership_id: str | None
    classes_used: int
    replica_version: int
    wall_time: datetime
    boot_id: str
    monotonic_ns: int
    clock_quality: ClockQuality
    sync_state: SyncState = SyncState.PENDING
    # The phone pass the scanned code named (its 8-character id), whatever the decision; None for
    # a card, or a code that could not be parsed.
    pass_id: str | None = None


@dataclass(frozen=True, slots=True)
class DoorEvent:
    """One door event as written to the journal (docs/architecture.md#door-events): what the
    turnstile reported, or did not report in time. ``checkin_id`` names the grant it is about
    (``entry``, ``annulled``, and ``exit`` at an exit-side scanner); None for ``tailgating`` and an
    exit passage. ``seq`` comes from the journal's one counter, shared with the check-ins.
    ``wall_time`` and ``monotonic_ns`` are when it happened (the passage, the deadline that ran
    out), on the door's clocks."""

    id: str
    seq: int
    door_id: str
    kind: EventKind
    checkin_id: str | None
    wall_time: datetime
    boot_id: str
    monotonic_ns: int
    clock_quality: ClockQuality
    sync_state: SyncState = SyncState.PENDING
