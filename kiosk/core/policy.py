"""The access policy: who may enter, now, and why.

``decide`` is a pure function of the member's facts, the site's rules, the replica's age, the
scanner's view of time and the owner's settings. It reads no clock, touches no file or network and
keeps no state, so the same inputs always give the same ``Decision`` and its tests are tables.

Rules, applied in this order; the first that applies gives the one reason of the decision:

a. no member for the code -> ``unknown_code``. Nothing else can be judged without a member.
b. the effective time. An unsynced clock (neither NTP nor anchored to the cloud's time) that
   reads earlier than the latest time the device knows has happened (``Now.clock_floor``) has
   stepped backwards; the floor is used instead, so a stepped clock can never revive an expired
   membership, while the member is still served. A time before 2026-01-01 UTC
   (``kiosk.core.clock.EARLIEST_TRUSTED_TIME``) with no floor is a clock that was never set (a Pi
   without a battery clock boots in 1970) -> ``clock_untrusted``: every later rule needs today's
   date.
   The member check comes first so that an unknown card is still reported as unknown.
c. member status: ``PAUSED`` -> ``member_paused``, ``EXPIRED`` -> ``member_expired``. The account
   comes before staff rights: a staff member who left is expired like anyone else.
d. staff -> ``staff_override``. Staff must get in to open up, to fix the door during a closure
   and while the uplink is down, and walk in and out all day, so hours, closures, anti-passback
   and replica staleness do not apply to them.
e. timed anti-passback -> ``passback``. A second entry minutes after the first points to a shared
   card whatever else is true, and that is what the owner needs to see.
f. closures, then g. opening hours -> ``facility_closed`` / ``outside_hours``. Facility-wide rules
   come before the member's own, so the reason does not blame the member for the gym being shut.
g2. capacity -> ``at_capacity``: with ``PolicySettings.capacity`` above 0, the door's occupancy
   (``kiosk.core.occupancy``, given by the caller) at or above it. Also facility-wide: a full gym
   is nobody's membership problem, and a member who could not get in anyway hears why first.
h. replica staleness -> ``replica_stale``. It decides which membership data may still be trusted:
   under ``PAID_THROUGH`` only memberships with a definite end date today or later stay
   candidates; under ``REFUSE`` nobody but staff is admitted.
i. a membership covering today -> else ``no_valid_membership``.
j. the plan's access windows (off-peak plans) -> else ``outside_hours``.
j2. the plan's visit limit -> else ``visit_limit``: a membership whose plan allows at most
   ``max_visits_per_day`` entries stays a candidate only while the member's granted, not
   annulled entries at this door on today's local date are fewer (``MemberFacts.recent_entries``).
   It is a rule of the plan, like its windows, so it comes with them; before the balance, so a
   class is never spent on a visit the plan does not allow.
k. a membership with something left to spend, preferring the ones that spend nothing, so a class is
   never used up while an unlimited membership covers the visit:
   subscription > unlimited personal training > unlimited class pack > class pack with balance >
   personal training with balance. Balance = the cloud's ``remaining_classes`` minus the uses still
   waiting for upload; it must be above 0. Among equals the membership ending first is used (its
   classes would lapse first). Only used-up packs left -> ``pack_empty``.

Rules i to k run from the general to the specific, so the reason names the first thing the member
would have to fix. Dates and weekly windows are in the gym's time zone
(``PolicySettings.timezone``); windows are half-open ``[start, end)`` in minutes since local
midnight, and a window that runs past midnight is written as two windows. ``malformed_code`` and
the token reasons come from the credential check before the policy runs, never from here.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from kiosk.core.clock import EARLIEST_TRUSTED_TIME
from kiosk.core.model import (
    AccessWindow,
    ClockQuality,
    Closure,
    Decision,
    MemberFacts,
    Membership,
    MembershipType,
    MemberStatus,
    Now,
    PolicySettings,
    Reason,
    ReplicaInfo,
    SiteFacts,
    StalePolicy,
)

_WEEKDAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")


def effective_time(now: Now) -> datetime | None:
    """The UTC time the policy decides at, or None when the clock cannot be trusted at all.

    This is ``now.wall``, except that an unsynced clock (neither NTP nor anchored to the cloud's
    time) that reads earlier than ``now.clock_floor`` gives the floor (the clock stepped
    backwards). An NTP-synced or server-anchored time is trusted over the floor: the floor may come
    from rows journaled while an unsynced clock ran ahead. None means the time is before
    ``EARLIEST_TRUSTED_TIME`` and no floor is known: the clock was never set. A floor that is itself
    before ``EARLIEST_TRUSTED_TIME`` (rows journaled by an unset clock) counts as no floor. Raises ``ValueError``
    if a time is naive (all times must be timezone-aware).
    """
    _require_aware("Now.wall", now.wall)
    floor = now.clock_floor
    if floor is not None:
        _require_aware("Now.clock_floor", floor)
        if floor < EARLIEST_TRUSTED_TIME:
            floor = None  # journaled by a clock that was never set: proves nothing
    if floor is not None:
        if now.quality == ClockQuality.UNSYNCED and now.wall < floor:
            return floor
        return now.wall
    if now.wall < EARLIEST_TRUSTED_TIME:
        return None
    return now.wall


def decide(
    facts: MemberFacts | None,
    site: SiteFacts,
    replica: ReplicaInfo,
    now: Now,
    settings: PolicySettings,
    *,
    occupancy: int = 0,
) -> Decision:
    """Decide one check-in. Pure: no I/O, no clock reads; the rules and their order are in the
    module docstring. ``facts`` is None when no member has the scanned code. ``occupancy`` is how
    many people the door counts inside now (``kiosk.core.occupancy``); it matters only with a
    ``settings.capacity`` above 0.

    Returns a ``Decision`` with exactly one reason; ``membership_id`` names the membership used on
    a grant (None for staff), ``classes_used`` is 1 only when a class or session is spent.
    Raises ``ValueError`` for a broken contract rather than a door decision: a naive datetime in
    ``now``, ``replica`` or ``facts.last_entry``, or an unknown ``settings.timezone``.
    """
    if facts is None:
        return _denied(Reason.UNKNOWN_CODE, None, "no member has this code")
    member_id = facts.member.id

    when = effective_time(now)
    if when is None:
        return _denied(
            Reason.CLOCK_UNTRUSTED,
            member_id,
            f"the clock reads {now.wall.astimezone(UTC):%Y-%m-%d %H:%M} UTC and no later time is "
            "known; waiting for a time sync",
        )
    local = when.astimezone(_zone(settings.timezone))
    today = local.date()
    weekday = local.weekday()
    minute = local.hour * 60 + local.minute
    at = f"{_WEEKDAYS[weekday]} {local:%H:%M} local time"

    if facts.member.status == MemberStatus.PAUSED:
        return _denied(Reason.MEMBER_PAUSED, member_id, "the member's account is paused")
    if facts.member.status == MemberStatus.EXPIRED:
        return _denied(Reason.MEMBER_EXPIRED, member_id, "the member's account has expired")
    if facts.member.status != MemberStatus.ACTIVE:
        # A status this version does not know must not admit anyone.
        return _denied(Reason.NO_VALID_MEMBERSHIP, member_id, "the member's account is not active")

    if facts.member.is_staff:
        return Decision(
            verdict=Reason.STAFF_OVERRIDE.verdict,
            reason=Reason.STAFF_OVERRIDE,
            member_id=member_id,
            detail="staff: opening hours, closures, anti-passback and replica age do not apply",
        )

    since_last = _time_since_last_entry(facts, now, when)
    if since_last is not None and settings.passback_minutes > 0:
        window = timedelta(minutes=settings.passback_minutes)
        if since_last < window:
            return _denied(
                Reason.PASSBACK,
                member_id,
                f"entered {_duration(since_last)} ago at this door; re-entry is refused for "
                f"{settings.passback_minutes:g} min after an entry",
            )

    closure = _closure_on(site.closures, today)
    if closure is not None:
        why = f": {closure.reason}" if closure.reason else ""
        return _denied(
            Reason.FACILITY_CLOSED,
            member_id,
            f"facility closed from {closure.start_date} to {closure.end_date}{why}",
        )

    if site.opening_hours and not _in_windows(site.opening_hours, weekday, minute):
        return _denied(Reason.OUTSIDE_HOURS, member_id, f"the facility is not open at {at}")

    if settings.capacity > 0 and occupancy >= settings.capacity:
        return _denied(
            Reason.AT_CAPACITY,
            member_id,
            f"{occupancy} people inside, the limit is {settings.capacity}",
        )

    candidates = facts.memberships
    replica_age = _replica_age(replica, when)
    grace = timedelta(hours=settings.stale_after_hours)
    if replica_age is None or replica_age > grace:
        synced = (
            "the replica was never synced"
            if replica_age is None
            else f"the replica was last synced {_duration(replica_age)} ago"
        )
        if settings.when_stale == StalePolicy.REFUSE:
            return _denied(
                Reason.REPLICA_STALE,
                member_id,
                f"{synced} (grace {settings.stale_after_hours:g} h); the owner's policy refuses "
                "members until a sync succeeds",
            )
        candidates = tuple(m for m in candidates if m.end_date is not None and m.end_date >= today)
        if not candidates:
            return _denied(
                Reason.REPLICA_STALE,
                member_id,
                f"{synced} (grace {settings.stale_after_hours:g} h); only memberships paid "
                "through a definite date admit until a sync succeeds, and this member has none",
            )

    covering = [m for m in candidates if _covers(m, today)]
    if not covering:
        return _denied(
            Reason.NO_VALID_MEMBERSHIP,
            member_id,
            f"no membership covers {today.isoformat()} (local date)",
        )

    in_window = [m for m in covering if _plan_admits(facts, m, weekday, minute)]
    if not in_window:
        names = sorted({facts.plans[m.plan_id].name for m in covering if m.plan_id in facts.plans})
        return _denied(
            Reason.OUTSIDE_HOURS,
            member_id,
            f"the member's plan ({', '.join(names)}) does not admit at {at}",
        )

    visits = _visits_on(facts.recent_entries, today, settings.timezone)
    allowed = [m for m in in_window if _visits_left(facts, m, visits)]
    if not allowed:
        cap = min(limit for m in in_window if (limit := _visit_limit(facts, m)) is not None)
        return _denied(
            Reason.VISIT_LIMIT,
            member_id,
            f"{visits} visits today at this door; the plan allows {cap} a day",
        )

    options = [o for m in allowed if (o := _option(m, facts.pending_uses)) is not None]
    usable = [o for o in options if o.usable]
    if not usable:
        if not options:
            # Only memberships of a type this version does not know: admit nobody on them.
            return _denied(
                Reason.NO_VALID_MEMBERSHIP, member_id, "no membership of a known type covers today"
            )
        empty = min(options, key=_option_order)
        return _denied(Reason.PACK_EMPTY, member_id, empty.describe_empty())

    chosen = min(usable, key=_option_order)
    return Decision(
        verdict=chosen.reason.verdict,
        reason=chosen.reason,
        member_id=member_id,
        membership_id=chosen.membership.id,
        classes_used=chosen.classes_used,
        detail=chosen.describe_grant(),
    )


@dataclass(frozen=True, slots=True)
class _Option:
    """One covering membership as a way in: how it ranks and what it would spend.
    ``balance`` is None for unlimited memberships."""

    rank: int
    membership: Membership
    reason: Reason
    balance: int | None
    pending: int

    @property
    def usable(self) -> bool:
        return self.balance is None or self.balance > 0

    @property
    def classes_used(self) -> int:
        return 0 if self.balance is None else 1

    @property
    def noun(self) -> str:
        return "class pack" if self.reason == Reason.CLASS_PACK else "personal training"

    def describe_grant(self) -> str:
        m = self.membership
        until = f"until {m.end_date}" if m.end_date is not None else "open-ended"
        if self.reason == Reason.SUBSCRIPTION:
            return f"subscription, {until}"
        if self.balance is None:
            return f"{self.noun} with unlimited classes, {until}"
        return (
            f"{self.noun}: 1 class used, {self.balance - 1} left after this entry "
            f"({self.pending} awaiting upload), {until}"
        )

    def describe_empty(self) -> str:
        left = self.membership.remaining_classes
        return (
            f"{self.noun} empty ({left} classes left at the last sync, "
            f"{self.pending} used since and awaiting upload)"
        )


# Lower rank is preferred; see rule k in the module docstring.
_RANK_SUBSCRIPTION = 0
_RANK_UNLIMITED_PT = 1
_RANK_UNLIMITED_PACK = 2
_RANK_PACK = 3
_RANK_PT = 4


def _option(membership: Membership, pending_uses: dict[str, int]) -> _Option | None:
    # A negative pending count can only be a bug elsewhere; it must never lift the balance above
    # the cloud's, which is the authority.
    pending = max(0, pending_uses.get(membership.id, 0))
    remaining = membership.remaining_classes
    balance = None if remaining is None else remaining - pending
    if membership.type == MembershipType.SUBSCRIPTION:
        return _Option(_RANK_SUBSCRIPTION, membership, Reason.SUBSCRIPTION, None, pending)
    if membership.type == MembershipType.PT:
        rank = _RANK_UNLIMITED_PT if balance is None else _RANK_PT
        return _Option(rank, membership, Reason.PERSONAL_TRAINING, balance, pending)
    if membership.type == MembershipType.CLASS_PACK:
        rank = _RANK_UNLIMITED_PACK if balance is None else _RANK_PACK
        return _Option(rank, membership, Reason.CLASS_PACK, balance, pending)
    return None


def _option_order(option: _Option) -> tuple[int, date, str]:
    end = option.membership.end_date or date.max
    return (option.rank, end, option.membership.id)


def _time_since_last_entry(facts: MemberFacts, now: Now, when: datetime) -> timedelta | None:
    """Time since the member's last entry at this door, never negative. Within one boot the
    monotonic clock is used, which no wall-clock step can move; across boots only wall times
    compare, and an entry that seems to lie in the future counts as just now."""
    last = facts.last_entry
    if last is None:
        return None
    if last.boot_id == now.boot_id:
        elapsed_ns = max(0, now.monotonic_ns - last.monotonic_ns)
        return timedelta(microseconds=elapsed_ns / 1000)
    _require_aware("LastEntry.wall_time", last.wall_time)
    return max(timedelta(0), when - last.wall_time)


def _closure_on(closures: tuple[Closure, ...], day: date) -> Closure | None:
    for closure in closures:
        if closure.start_date <= day <= closure.end_date:
            return closure
    return None


def _in_windows(windows: tuple[AccessWindow, ...], weekday: int, minute: int) -> bool:
    return any(w.weekday == weekday and w.start_minute <= minute < w.end_minute for w in windows)


def _covers(membership: Membership, day: date) -> bool:
    if membership.start_date > day:
        return False
    return membership.end_date is None or day <= membership.end_date


def _plan_admits(facts: MemberFacts, membership: Membership, weekday: int, minute: int) -> bool:
    # A membership without a plan, or whose plan the replica does not hold, has no time
    # restriction: the plan's windows can only narrow access, never be the reason for it.
    plan = facts.plans.get(membership.plan_id) if membership.plan_id is not None else None
    if plan is None or not plan.windows:
        return True
    return _in_windows(plan.windows, weekday, minute)


def _visit_limit(facts: MemberFacts, membership: Membership) -> int | None:
    """The most entries a day ``membership``'s plan allows (None: no limit, or no plan)."""
    plan = facts.plans.get(membership.plan_id) if membership.plan_id is not None else None
    return None if plan is None else plan.max_visits_per_day


def _visits_left(facts: MemberFacts, membership: Membership, visits: int) -> bool:
    limit = _visit_limit(facts, membership)
    return limit is None or visits < limit


def _visits_on(entries: tuple[datetime, ...], day: date, timezone: str) -> int:
    """How many of ``entries`` (aware UTC) fall on the local date ``day``."""
    zone = _zone(timezone)
    for entry in entries:
        _require_aware("MemberFacts.recent_entries", entry)
    return sum(1 for entry in entries if entry.astimezone(zone).date() == day)


def _denied(reason: Reason, member_id: str | None, detail: str) -> Decision:
    return Decision(verdict=reason.verdict, reason=reason, member_id=member_id, detail=detail)


def _duration(span: timedelta) -> str:
    seconds = int(span.total_seconds())
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min"
    if seconds < 72 * 3600:
        return f"{seconds // 3600} h {seconds % 3600 // 60} min"
    return f"{seconds // 86400} days"


def _zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ValueError(
            f"PolicySettings.timezone {name!r} is not a known IANA time zone (e.g. 'Europe/Berlin')"
        ) from exc


def _replica_age(replica: ReplicaInfo, when: datetime) -> timedelta | None:
    """How long ago the last successful pull was, None if there never was one. A sync time after
    ``when`` gives a negative age, i.e. fresh: the floor logic already guards against a clock that
    runs behind."""
    if replica.synced_at is None:
        return None
    _require_aware("ReplicaInfo.synced_at", replica.synced_at)
    return when - replica.synced_at


def _require_aware(name: str, value: datetime) -> None:
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{name} must be a timezone-aware datetime (UTC), got a naive one")
