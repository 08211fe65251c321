"""The access policy as tables: each row is one situation at the door and the decision it must get.

The reference day is Tuesday 2026-03-10; unless a row says otherwise the scan happens at 12:00 UTC,
the gym is in UTC, the replica synced at 08:00 that day, and anti-passback is 10 minutes.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, date, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kiosk.core.model import (
    AccessWindow,
    ClockQuality,
    Closure,
    Decision,
    LastEntry,
    Member,
    MemberFacts,
    Membership,
    MembershipType,
    MemberStatus,
    Now,
    Plan,
    PolicySettings,
    Reason,
    ReplicaInfo,
    SiteFacts,
    StalePolicy,
    Verdict,
)
from kiosk.core.policy import EARLIEST_TRUSTED_TIME, decide, effective_time

SUB = MembershipType.SUBSCRIPTION
PACK = MembershipType.CLASS_PACK
PT = MembershipType.PT

TODAY = date(2026, 3, 10)  # a Tuesday
YESTERDAY = TODAY - timedelta(days=1)
TOMORROW = TODAY + timedelta(days=1)
MINUTE_NS = 60 * 1_000_000_000
BOOT_MONO_NS = 10_000 * MINUTE_NS  # the scanner's monotonic clock at NOON


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


NOON = utc("2026-03-10T12:00")


def sub(
    mid: str = "sub",
    start: date = date(2026, 1, 1),
    end: date | None = None,
    plan: str | None = None,
) -> Membership:
    return Membership(mid, "mem-1", SUB, start, end, None, plan)


def pack(
    mid: str = "pack",
    remaining: int | None = 5,
    start: date = date(2026, 1, 1),
    end: date | None = date(2026, 12, 31),
    plan: str | None = None,
) -> Membership:
    return Membership(mid, "mem-1", PACK, start, end, remaining, plan)


def pt(
    mid: str = "pt", remaining: int | None = 5, end: date | None = date(2026, 12, 31)
) -> Membership:
    return Membership(mid, "mem-1", PT, date(2026, 1, 1), end, remaining)


def facts(
    *memberships: Membership,
    status: MemberStatus = MemberStatus.ACTIVE,
    staff: bool = False,
    plans: tuple[Plan, ...] = (),
    pending: dict[str, int] | None = None,
    last: LastEntry | None = None,
) -> MemberFacts:
    member = Member("mem-1", "org-1", "Ada", "Lovelace", status, staff)
    return MemberFacts(member, memberships, {p.id: p for p in plans}, pending or {}, last)


def now(
    wall: datetime = NOON,
    *,
    quality: ClockQuality = ClockQuality.NTP_SYNCED,
    floor: datetime | None = None,
    mono: int = BOOT_MONO_NS,
    boot: str = "boot-a",
) -> Now:
    return Now(wall, mono, boot, quality, floor)


def entry(minutes_ago: float, *, boot: str = "boot-a", wall: datetime | None = None) -> LastEntry:
    """A last entry ``minutes_ago`` on the monotonic clock of ``boot``; its wall time is the same
    distance before NOON unless given (to model a wall clock that stepped)."""
    wall_time = wall if wall is not None else NOON - timedelta(minutes=minutes_ago)
    return LastEntry(wall_time, boot, BOOT_MONO_NS - int(minutes_ago * MINUTE_NS))


def every_day(start: str, end: str) -> tuple[AccessWindow, ...]:
    """The same window on all seven weekdays, times as HH:MM (end "24:00" = midnight)."""
    return tuple(AccessWindow(day, _minutes(start), _minutes(end)) for day in range(7))


def _minutes(hhmm: str) -> int:
    hours, minutes = hhmm.split(":")
    return int(hours) * 60 + int(minutes)


OFF_PEAK = Plan(
    "off-peak", "Off-peak", tuple(AccessWindow(day, 9 * 60, 16 * 60) for day in range(5))
)
ANYTIME = Plan("anytime", "Anytime")
OPEN = SiteFacts()
FRESH = ReplicaInfo(version=7, synced_at=utc("2026-03-10T08:00"))
IN_UTC = PolicySettings(timezone="UTC", passback_minutes=10, stale_after_hours=72)
BERLIN = PolicySettings(timezone="Europe/Berlin")
LOS_ANGELES = PolicySettings(timezone="America/Los_Angeles")


def row(
    id_: str,
    member_facts: MemberFacts | None,
    reason: Reason,
    *,
    membership: str | None = None,
    used: int = 0,
    site: SiteFacts = OPEN,
    replica: ReplicaInfo = FRESH,
    at: Now | None = None,
    policy: PolicySettings = IN_UTC,
):
    """One table row: the situation, then the expected reason, membership and classes used."""
    return pytest.param(
        member_facts, site, replica, at or now(), policy, reason, membership, used, id=id_
    )


COLUMNS = "member_facts,site,replica,at,policy,reason,membership,used"


def check(member_facts, site, replica, at, policy, reason, membership, used) -> Decision:
    decision = decide(member_facts, site, replica, at, policy)
    assert (decision.reason, decision.membership_id, decision.classes_used) == (
        reason,
        membership,
        used,
    ), decision.detail
    assert decision.verdict == reason.verdict
    assert decision.member_id == (None if member_facts is None else member_facts.member.id)
    assert decision.detail
    return decision


MEMBER_AND_STAFF = [
    row("unknown code", None, Reason.UNKNOWN_CODE),
    row("active subscriber", facts(sub()), Reason.SUBSCRIPTION, membership="sub"),
    row("paused", facts(sub(), status=MemberStatus.PAUSED), Reason.MEMBER_PAUSED),
    row("expired account", facts(sub(), status=MemberStatus.EXPIRED), Reason.MEMBER_EXPIRED),
    row("staff without membership", facts(staff=True), Reason.STAFF_OVERRIDE),
    row(
        "paused staff is paused",
        facts(staff=True, status=MemberStatus.PAUSED),
        Reason.MEMBER_PAUSED,
    ),
    row(
        "staff at a closure",
        facts(staff=True),
        Reason.STAFF_OVERRIDE,
        site=SiteFacts(closures=(Closure(TODAY, TODAY, "floor repairs"),)),
    ),
    row(
        "staff outside opening hours",
        facts(staff=True),
        Reason.STAFF_OVERRIDE,
        site=SiteFacts(opening_hours=every_day("06:00", "08:00")),
    ),
    row("staff inside passback window", facts(staff=True, last=entry(1)), Reason.STAFF_OVERRIDE),
    row(
        "staff with a stale replica under refuse",
        facts(staff=True),
        Reason.STAFF_OVERRIDE,
        replica=ReplicaInfo(7, None),
        policy=PolicySettings(when_stale=StalePolicy.REFUSE),
    ),
]


@pytest.mark.parametrize(COLUMNS, MEMBER_AND_STAFF)
def test_member_status_and_staff(member_facts, site, replica, at, policy, reason, membership, used):
    check(member_facts, site, replica, at, policy, reason, membership, used)


EXPIRES_TODAY = sub(end=TODAY)
CLOCK = [
    row(
        "never set (1970), no floor",
        facts(sub()),
        Reason.CLOCK_UNTRUSTED,
        at=now(utc("1970-01-01T00:05"), quality=ClockQuality.UNSYNCED),
    ),
    row(
        "NTP claims 1970 and no floor",
        facts(sub()),
        Reason.CLOCK_UNTRUSTED,
        at=now(utc("1970-01-01T00:05")),
    ),
    row(
        "unknown code is still unknown at 1970",
        None,
        Reason.UNKNOWN_CODE,
        at=now(utc("1970-01-01T00:05"), quality=ClockQuality.UNSYNCED),
    ),
    row(
        "1970 with a floor that an unset clock wrote is still untrusted",
        facts(sub()),
        Reason.CLOCK_UNTRUSTED,
        at=now(
            utc("1970-01-01T00:05"),
            quality=ClockQuality.UNSYNCED,
            floor=utc("1970-01-01T00:01"),
        ),
    ),
    row(
        "1970 with a floor uses the floor",
        facts(sub()),
        Reason.SUBSCRIPTION,
        membership="sub",
        at=now(utc("1970-01-01T00:05"), quality=ClockQuality.UNSYNCED, floor=NOON),
    ),
    row(
        "unsynced clock stepped back past expiry stays expired",
        facts(EXPIRES_TODAY),
        Reason.NO_VALID_MEMBERSHIP,
        at=now(
            utc("2026-03-09T12:00"), quality=ClockQuality.UNSYNCED, floor=utc("2026-03-11T09:00")
        ),
    ),
    row(
        # The floor came from rows journaled while the clock ran a year ahead; the cloud's time
        # (anchored) is the authority the memberships are defined against.
        "server-anchored time wins over a floor journaled by a clock running ahead",
        facts(sub(end=date(2026, 6, 30))),
        Reason.SUBSCRIPTION,
        at=now(
            utc("2026-03-09T12:00"),
            quality=ClockQuality.SERVER_ANCHORED,
            floor=utc("2027-03-09T09:00"),
        ),
        membership="sub",
    ),
    row(
        "stepped-back clock before floor still serves a valid member",
        facts(sub(end=date(2026, 12, 31))),
        Reason.SUBSCRIPTION,
        membership="sub",
        at=now(utc("2026-03-09T12:00"), quality=ClockQuality.UNSYNCED, floor=NOON),
    ),
    row(
        "NTP-synced clock before the floor is believed",
        facts(EXPIRES_TODAY),
        Reason.SUBSCRIPTION,
        membership="sub",
        at=now(NOON, floor=utc("2026-03-11T09:00")),
    ),
]


@pytest.mark.parametrize(COLUMNS, CLOCK)
def test_clock_trust(member_facts, site, replica, at, policy, reason, membership, used):
    check(member_facts, site, replica, at, policy, reason, membership, used)


LATE_EVENING_UTC = now(utc("2026-03-10T23:30"))  # Berlin: 00:30 on the 11th; LA: 16:30 on the 10th
STARTS_TOMORROW = sub(start=TOMORROW)
OPEN_6_TO_22 = SiteFacts(opening_hours=every_day("06:00", "22:00"))
TIME_ZONE = [
    row(
        "ends today, 23:30 UTC in UTC",
        facts(EXPIRES_TODAY),
        Reason.SUBSCRIPTION,
        membership="sub",
        at=LATE_EVENING_UTC,
    ),
    row(
        "ends today, 23:30 UTC is tomorrow in Berlin",
        facts(EXPIRES_TODAY),
        Reason.NO_VALID_MEMBERSHIP,
        at=LATE_EVENING_UTC,
        policy=BERLIN,
    ),
    row(
        "ends today, 23:30 UTC is still today in Los Angeles",
        facts(EXPIRES_TODAY),
        Reason.SUBSCRIPTION,
        membership="sub",
        at=LATE_EVENING_UTC,
        policy=LOS_ANGELES,
    ),
    row(
        "starts tomorrow, 23:30 UTC is tomorrow in Berlin",
        facts(STARTS_TOMORROW),
        Reason.SUBSCRIPTION,
        membership="sub",
        at=LATE_EVENING_UTC,
        policy=BERLIN,
    ),
    row(
        "starts tomorrow, 23:30 UTC is today in Los Angeles",
        facts(STARTS_TOMORROW),
        Reason.NO_VALID_MEMBERSHIP,
        at=LATE_EVENING_UTC,
        policy=LOS_ANGELES,
    ),
    row(
        "ends today admits at 23:59:59 local (Berlin)",
        facts(EXPIRES_TODAY),
        Reason.SUBSCRIPTION,
        membership="sub",
        at=now(utc("2026-03-10T22:59:59")),
        policy=BERLIN,
    ),
    row(
        "ends today refuses at 00:00 local (Berlin)",
        facts(EXPIRES_TODAY),
        Reason.NO_VALID_MEMBERSHIP,
        at=now(utc("2026-03-10T23:00")),
        policy=BERLIN,
    ),
    row(
        "closure tomorrow, 23:30 UTC is tomorrow in Berlin",
        facts(sub()),
        Reason.FACILITY_CLOSED,
        site=SiteFacts(closures=(Closure(TOMORROW, TOMORROW),)),
        at=LATE_EVENING_UTC,
        policy=BERLIN,
    ),
    row(
        "closure tomorrow, 23:30 UTC is today in Los Angeles",
        facts(sub()),
        Reason.SUBSCRIPTION,
        membership="sub",
        site=SiteFacts(closures=(Closure(TOMORROW, TOMORROW),)),
        at=LATE_EVENING_UTC,
        policy=LOS_ANGELES,
    ),
    row(
        "opening hours in local time: 05:30 UTC is 06:30 in Berlin",
        facts(sub()),
        Reason.SUBSCRIPTION,
        membership="sub",
        site=OPEN_6_TO_22,
        at=now(utc("2026-03-10T05:30")),
        policy=BERLIN,
    ),
    row(
        "opening hours in local time: 05:30 UTC in UTC",
        facts(sub()),
        Reason.OUTSIDE_HOURS,
        site=OPEN_6_TO_22,
        at=now(utc("2026-03-10T05:30")),
    ),
    row(
        "summer time: 05:30 UTC is 07:30 in Berlin after the change",
        facts(sub()),
        Reason.SUBSCRIPTION,
        membership="sub",
        site=SiteFacts(opening_hours=every_day("07:00", "22:00")),
        replica=ReplicaInfo(7, utc("2026-03-29T01:00")),
        at=now(utc("2026-03-29T05:30")),
        policy=BERLIN,
    ),
    row(
        "winter time: 05:30 UTC is 06:30 in Berlin the day before",
        facts(sub()),
        Reason.OUTSIDE_HOURS,
        site=SiteFacts(opening_hours=every_day("07:00", "22:00")),
        replica=ReplicaInfo(7, utc("2026-03-28T01:00")),
        at=now(utc("2026-03-28T05:30")),
        policy=BERLIN,
    ),
]


@pytest.mark.parametrize(COLUMNS, TIME_ZONE)
def test_gym_time_zone(member_facts, site, replica, at, policy, reason, membership, used):
    check(member_facts, site, replica, at, policy, reason, membership, used)


COVERAGE = [
    row("no memberships at all", facts(), Reason.NO_VALID_MEMBERSHIP),
    row("starts tomorrow", facts(STARTS_TOMORROW), Reason.NO_VALID_MEMBERSHIP),
    row("ended yesterday", facts(sub(end=YESTERDAY)), Reason.NO_VALID_MEMBERSHIP),
    row("starts today", facts(sub(start=TODAY)), Reason.SUBSCRIPTION, membership="sub"),
    row("open-ended", facts(sub(end=None)), Reason.SUBSCRIPTION, membership="sub"),
    row(
        "expired one ignored, valid one used",
        facts(sub("old", end=YESTERDAY), sub("new", start=TODAY)),
        Reason.SUBSCRIPTION,
        membership="new",
    ),
    row(
        "pack ended yesterday with classes left",
        facts(pack(end=YESTERDAY)),
        Reason.NO_VALID_MEMBERSHIP,
    ),
]


@pytest.mark.parametrize(COLUMNS, COVERAGE)
def test_membership_must_cover_the_local_date(
    member_facts, site, replica, at, policy, reason, membership, used
):
    check(member_facts, site, replica, at, policy, reason, membership, used)


CHOICE = [
    row(
        "pack with balance", facts(pack(remaining=5)), Reason.CLASS_PACK, membership="pack", used=1
    ),
    row("pack at zero", facts(pack(remaining=0)), Reason.PACK_EMPTY),
    row(
        "pack used up by pending uploads",
        facts(pack(remaining=3), pending={"pack": 3}),
        Reason.PACK_EMPTY,
    ),
    row(
        "pack with pending below balance",
        facts(pack(remaining=3), pending={"pack": 2}),
        Reason.CLASS_PACK,
        membership="pack",
        used=1,
    ),
    row(
        "pending on another membership does not count",
        facts(pack(remaining=1), pending={"other": 4}),
        Reason.CLASS_PACK,
        membership="pack",
        used=1,
    ),
    row(
        "negative pending never lifts the balance",
        facts(pack(remaining=0), pending={"pack": -2}),
        Reason.PACK_EMPTY,
    ),
    row(
        "unlimited class pack spends nothing",
        facts(pack(remaining=None)),
        Reason.CLASS_PACK,
        membership="pack",
    ),
    row(
        "subscription preferred over pack",
        facts(pack(remaining=5), sub()),
        Reason.SUBSCRIPTION,
        membership="sub",
    ),
    row(
        "subscription preferred over empty pack",
        facts(pack(remaining=0), sub()),
        Reason.SUBSCRIPTION,
        membership="sub",
    ),
    row(
        "unlimited PT preferred over pack",
        facts(pack(remaining=5), pt(remaining=None)),
        Reason.PERSONAL_TRAINING,
        membership="pt",
    ),
    row(
        "unlimited pack preferred over counted pack",
        facts(pack("counted", remaining=5), pack("unlimited", remaining=None)),
        Reason.CLASS_PACK,
        membership="unlimited",
    ),
    row(
        "pack preferred over counted PT",
        facts(pt(remaining=5), pack(remaining=5)),
        Reason.CLASS_PACK,
        membership="pack",
        used=1,
    ),
    row(
        "counted PT alone",
        facts(pt(remaining=2)),
        Reason.PERSONAL_TRAINING,
        membership="pt",
        used=1,
    ),
    row(
        "counted PT when the pack is empty",
        facts(pack(remaining=1), pt(remaining=2), pending={"pack": 1}),
        Reason.PERSONAL_TRAINING,
        membership="pt",
        used=1,
    ),
    row("PT sessions used up", facts(pt(remaining=0)), Reason.PACK_EMPTY),
    row(
        "the pack ending first is spent first",
        facts(pack("late", end=date(2026, 12, 31)), pack("soon", end=date(2026, 4, 30))),
        Reason.CLASS_PACK,
        membership="soon",
        used=1,
    ),
]


@pytest.mark.parametrize(COLUMNS, CHOICE)
def test_choice_of_membership_and_class_balance(
    member_facts, site, replica, at, policy, reason, membership, used
):
    check(member_facts, site, replica, at, policy, reason, membership, used)


def test_pack_empty_detail_explains_pending_uploads() -> None:
    decision = decide(facts(pack(remaining=2), pending={"pack": 2}), OPEN, FRESH, now(), IN_UTC)
    assert decision.reason == Reason.PACK_EMPTY
    assert "2 classes left at the last sync" in decision.detail
    assert "2 used since and awaiting upload" in decision.detail


PASSBACK = [
    row("same boot, 5 min ago", facts(sub(), last=entry(5)), Reason.PASSBACK),
    row(
        "same boot, 11 min ago",
        facts(sub(), last=entry(11)),
        Reason.SUBSCRIPTION,
        membership="sub",
    ),
    row("same boot, 9 min 59 s ago", facts(sub(), last=entry(9 + 59 / 60)), Reason.PASSBACK),
    row(
        "same boot, exactly 10 min ago is outside the window",
        facts(sub(), last=entry(10)),
        Reason.SUBSCRIPTION,
        membership="sub",
    ),
    row(
        "same boot, 5 min by monotonic though the wall clock jumped 2 h ahead",
        facts(sub(), last=entry(5, wall=NOON - timedelta(hours=2))),
        Reason.PASSBACK,
    ),
    row(
        "same boot, 11 min by monotonic though the wall clock stepped back",
        facts(sub(), last=entry(11, wall=NOON + timedelta(minutes=30))),
        Reason.SUBSCRIPTION,
        membership="sub",
    ),
    row(
        "other boot, 5 min ago by wall time",
        facts(sub(), last=entry(5, boot="boot-old")),
        Reason.PASSBACK,
    ),
    row(
        "other boot, 11 min ago by wall time",
        facts(sub(), last=entry(11, boot="boot-old")),
        Reason.SUBSCRIPTION,
        membership="sub",
    ),
    row(
        "other boot, entry in the future counts as just now",
        facts(sub(), last=entry(60, boot="boot-old", wall=NOON + timedelta(hours=3))),
        Reason.PASSBACK,
    ),
    row(
        "other boot, 5 min before the floor when the clock stepped back",
        facts(sub(), last=entry(0, boot="boot-old", wall=NOON - timedelta(minutes=5))),
        Reason.PASSBACK,
        at=now(utc("2026-03-01T00:00"), quality=ClockQuality.UNSYNCED, floor=NOON),
    ),
    row(
        "anti-passback switched off",
        facts(sub(), last=entry(0.1)),
        Reason.SUBSCRIPTION,
        membership="sub",
        policy=PolicySettings(passback_minutes=0),
    ),
    row(
        "passback wins over a closure",
        facts(sub(), last=entry(2)),
        Reason.PASSBACK,
        site=SiteFacts(closures=(Closure(TODAY, TODAY),)),
    ),
]


@pytest.mark.parametrize(COLUMNS, PASSBACK)
def test_anti_passback(member_facts, site, replica, at, policy, reason, membership, used):
    check(member_facts, site, replica, at, policy, reason, membership, used)


def at_time(hhmm: str, day: str = "2026-03-10") -> Now:
    return now(utc(f"{day}T{hhmm}"))


SITE = [
    row(
        "closed today",
        facts(sub()),
        Reason.FACILITY_CLOSED,
        site=SiteFacts(closures=(Closure(TODAY, TODAY, "Inspection"),)),
    ),
    row(
        "inside a multi-day closure",
        facts(sub()),
        Reason.FACILITY_CLOSED,
        site=SiteFacts(closures=(Closure(YESTERDAY, TOMORROW),)),
    ),
    row(
        "closure ended yesterday",
        facts(sub()),
        Reason.SUBSCRIPTION,
        membership="sub",
        site=SiteFacts(closures=(Closure(date(2026, 3, 1), YESTERDAY),)),
    ),
    row(
        "closure before hours",
        facts(sub()),
        Reason.FACILITY_CLOSED,
        site=SiteFacts(
            opening_hours=every_day("06:00", "08:00"), closures=(Closure(TODAY, TODAY),)
        ),
    ),
    row(
        "hours before membership",
        facts(),
        Reason.OUTSIDE_HOURS,
        site=SiteFacts(opening_hours=every_day("06:00", "08:00")),
    ),
    row(
        "inside opening hours",
        facts(sub()),
        Reason.SUBSCRIPTION,
        membership="sub",
        site=OPEN_6_TO_22,
        at=at_time("21:59"),
    ),
    row(
        "at the opening minute",
        facts(sub()),
        Reason.SUBSCRIPTION,
        membership="sub",
        site=OPEN_6_TO_22,
        at=at_time("06:00"),
    ),
    row(
        "before opening", facts(sub()), Reason.OUTSIDE_HOURS, site=OPEN_6_TO_22, at=at_time("05:59")
    ),
    row(
        "at the closing minute (half-open)",
        facts(sub()),
        Reason.OUTSIDE_HOURS,
        site=OPEN_6_TO_22,
        at=at_time("22:00"),
    ),
    row(
        "window ending at midnight (1440)",
        facts(sub()),
        Reason.SUBSCRIPTION,
        membership="sub",
        site=SiteFacts(opening_hours=every_day("20:00", "24:00")),
        at=at_time("23:59:59"),
    ),
    row(
        "only open on Mondays, today is Tuesday",
        facts(sub()),
        Reason.OUTSIDE_HOURS,
        site=SiteFacts(opening_hours=(AccessWindow(0, 0, 1440),)),
    ),
]


@pytest.mark.parametrize(COLUMNS, SITE)
def test_closures_and_opening_hours(
    member_facts, site, replica, at, policy, reason, membership, used
):
    check(member_facts, site, replica, at, policy, reason, membership, used)


PLAN_WINDOWS = [
    row(
        "off-peak plan at peak",
        facts(sub(plan="off-peak"), plans=(OFF_PEAK,)),
        Reason.OUTSIDE_HOURS,
        at=at_time("18:00"),
    ),
    row(
        "off-peak plan off-peak",
        facts(sub(plan="off-peak"), plans=(OFF_PEAK,)),
        Reason.SUBSCRIPTION,
        membership="sub",
        at=at_time("10:00"),
    ),
    row(
        "off-peak plan at the weekend",
        facts(sub(plan="off-peak"), plans=(OFF_PEAK,)),
        Reason.OUTSIDE_HOURS,
        replica=ReplicaInfo(7, utc("2026-03-14T08:00")),
        at=at_time("10:00", day="2026-03-14"),
    ),
    row(
        "plan without windows",
        facts(sub(plan="anytime"), plans=(ANYTIME,)),
        Reason.SUBSCRIPTION,
        membership="sub",
        at=at_time("18:00"),
    ),
    row(
        "plan missing from the replica",
        facts(sub(plan="gone")),
        Reason.SUBSCRIPTION,
        membership="sub",
        at=at_time("18:00"),
    ),
    row(
        "off-peak subscription at peak falls back to a class pack",
        facts(sub(plan="off-peak"), pack(remaining=3), plans=(OFF_PEAK,)),
        Reason.CLASS_PACK,
        membership="pack",
        used=1,
        at=at_time("18:00"),
    ),
    row(
        "expired membership is not reported as outside hours",
        facts(sub(plan="off-peak", end=YESTERDAY), plans=(OFF_PEAK,)),
        Reason.NO_VALID_MEMBERSHIP,
        at=at_time("18:00"),
    ),
]


@pytest.mark.parametrize(COLUMNS, PLAN_WINDOWS)
def test_plan_access_windows(member_facts, site, replica, at, policy, reason, membership, used):
    check(member_facts, site, replica, at, policy, reason, membership, used)


SYNCED_73H_AGO = ReplicaInfo(7, NOON - timedelta(hours=73))
SYNCED_71H_AGO = ReplicaInfo(7, NOON - timedelta(hours=71))
NEVER_SYNCED = ReplicaInfo(0, None)
REFUSE = PolicySettings(when_stale=StalePolicy.REFUSE)
PAID_THROUGH = PolicySettings(when_stale=StalePolicy.PAID_THROUGH)
STALENESS = [
    row(
        "71 h old is within the grace",
        facts(sub()),
        Reason.SUBSCRIPTION,
        membership="sub",
        replica=SYNCED_71H_AGO,
        policy=REFUSE,
    ),
    row(
        "73 h old, refuse",
        facts(sub()),
        Reason.REPLICA_STALE,
        replica=SYNCED_73H_AGO,
        policy=REFUSE,
    ),
    row(
        "never synced, refuse",
        facts(sub(end=date(2026, 12, 31))),
        Reason.REPLICA_STALE,
        replica=NEVER_SYNCED,
        policy=REFUSE,
    ),
    row(
        "73 h old, paid-through, open-ended subscription",
        facts(sub()),
        Reason.REPLICA_STALE,
        replica=SYNCED_73H_AGO,
        policy=PAID_THROUGH,
    ),
    row(
        "73 h old, paid-through, paid until December",
        facts(sub(end=date(2026, 12, 31))),
        Reason.SUBSCRIPTION,
        membership="sub",
        replica=SYNCED_73H_AGO,
        policy=PAID_THROUGH,
    ),
    row(
        "73 h old, paid-through, paid until today",
        facts(EXPIRES_TODAY),
        Reason.SUBSCRIPTION,
        membership="sub",
        replica=SYNCED_73H_AGO,
        policy=PAID_THROUGH,
    ),
    row(
        "73 h old, paid-through, paid until yesterday",
        facts(sub(end=YESTERDAY)),
        Reason.REPLICA_STALE,
        replica=SYNCED_73H_AGO,
        policy=PAID_THROUGH,
    ),
    row(
        "never synced, paid-through, paid until December",
        facts(sub(end=date(2026, 12, 31))),
        Reason.SUBSCRIPTION,
        membership="sub",
        replica=NEVER_SYNCED,
        policy=PAID_THROUGH,
    ),
    row(
        "paid-through skips the open-ended subscription for a dated pack",
        facts(sub(), pack(remaining=2)),
        Reason.CLASS_PACK,
        membership="pack",
        used=1,
        replica=SYNCED_73H_AGO,
        policy=PAID_THROUGH,
    ),
    row(
        "age is measured from the floor when the clock stepped back",
        facts(sub()),
        Reason.REPLICA_STALE,
        replica=SYNCED_73H_AGO,
        at=now(NOON - timedelta(hours=10), quality=ClockQuality.UNSYNCED, floor=NOON),
        policy=REFUSE,
    ),
    row(
        "a shorter grace from the settings",
        facts(sub()),
        Reason.REPLICA_STALE,
        replica=ReplicaInfo(7, NOON - timedelta(hours=5)),
        policy=PolicySettings(stale_after_hours=4, when_stale=StalePolicy.REFUSE),
    ),
]


@pytest.mark.parametrize(COLUMNS, STALENESS)
def test_offline_staleness(member_facts, site, replica, at, policy, reason, membership, used):
    check(member_facts, site, replica, at, policy, reason, membership, used)


EFFECTIVE_TIME = [
    pytest.param(now(NOON), NOON, id="NTP-synced"),
    pytest.param(now(NOON, quality=ClockQuality.UNSYNCED), NOON, id="unsynced without floor"),
    pytest.param(
        now(NOON, quality=ClockQuality.UNSYNCED, floor=NOON + timedelta(hours=1)),
        NOON + timedelta(hours=1),
        id="unsynced behind the floor",
    ),
    pytest.param(
        now(NOON, quality=ClockQuality.SERVER_ANCHORED, floor=NOON - timedelta(hours=1)),
        NOON,
        id="ahead of the floor",
    ),
    pytest.param(
        now(NOON, quality=ClockQuality.SERVER_ANCHORED, floor=NOON + timedelta(days=365)),
        NOON,
        id="server-anchored behind a floor from a clock that ran ahead",
    ),
    pytest.param(
        now(NOON, floor=NOON + timedelta(hours=1)), NOON, id="NTP-synced behind the floor"
    ),
    pytest.param(now(utc("1970-01-01T00:00")), None, id="1970 without floor"),
    pytest.param(
        now(EARLIEST_TRUSTED_TIME - timedelta(seconds=1)), None, id="just before the trust date"
    ),
    pytest.param(now(EARLIEST_TRUSTED_TIME), EARLIEST_TRUSTED_TIME, id="at the trust date"),
]


@pytest.mark.parametrize(("at", "expected"), EFFECTIVE_TIME)
def test_effective_time(at: Now, expected: datetime | None) -> None:
    assert effective_time(at) == expected


def test_naive_times_are_refused_with_a_clear_message() -> None:
    with pytest.raises(ValueError, match=r"Now\.wall must be a timezone-aware"):
        decide(facts(sub()), OPEN, FRESH, now(datetime(2026, 3, 10, 12)), IN_UTC)
    with pytest.raises(ValueError, match=r"ReplicaInfo\.synced_at"):
        decide(facts(sub()), OPEN, ReplicaInfo(1, datetime(2026, 3, 10)), now(), IN_UTC)


def test_unknown_time_zone_is_refused_with_a_clear_message() -> None:
    with pytest.raises(ValueError, match="Mars/Olympus_Mons"):
        decide(facts(sub()), OPEN, FRESH, now(), PolicySettings(timezone="Mars/Olympus_Mons"))


# --- property: any facts give a well-formed decision -------------------------------------------
#
# Times are drawn around one scan time so that memberships, closures, syncs and last entries land
# near it often enough for every rule, grants included, to be reached; the clock may also be unset.

dates = st.dates(min_value=date(2025, 12, 1), max_value=date(2026, 12, 31))
scan_times = st.datetimes(
    min_value=datetime(2026, 1, 1), max_value=datetime(2026, 12, 1), timezones=st.just(UTC)
)
offsets = st.timedeltas(min_value=timedelta(days=-5), max_value=timedelta(days=5))
windows = st.builds(
    lambda day, start, length: AccessWindow(day, start, min(1440, start + length)),
    st.integers(0, 6),
    st.integers(0, 1439),
    st.integers(1, 1440),
)
window_lists = st.just(()) | st.lists(windows, max_size=6).map(tuple)


@st.composite
def situations(draw: st.DrawFn) -> tuple[MemberFacts | None, SiteFacts, ReplicaInfo, Now]:
    scan = draw(scan_times)
    near = st.builds(lambda offset: scan + offset, offsets)
    today = scan.date()
    near_dates = st.builds(lambda days: today + timedelta(days=days), st.integers(-60, 60))
    boot = draw(st.sampled_from(["boot-a", "boot-b"]))
    mono = draw(st.integers(10**12, 10**15))
    wall = draw(st.just(scan) | near | st.just(utc("1970-01-01T00:01")))
    at = Now(wall, mono, boot, draw(st.sampled_from(list(ClockQuality))), draw(st.none() | near))

    kinds = st.sampled_from(list(MembershipType))
    membership = st.builds(
        lambda mid, kind, start, days, remaining, plan: Membership(
            mid,
            "mem-1",
            kind,
            start,
            None if days is None else start + timedelta(days=days),
            remaining,
            plan,
        ),
        st.sampled_from(["a", "b", "c"]),
        kinds,
        near_dates,
        st.none() | st.integers(0, 120),
        st.none() | st.integers(-1, 8),
        st.sampled_from([None, "p1", "p2", "missing"]),
    )
    last = st.builds(
        lambda wall_time, last_boot, back_ns: LastEntry(wall_time, last_boot, mono - back_ns),
        near,
        st.sampled_from(["boot-a", "boot-b"]),
        st.integers(-(10**12), 10**13),
    )
    facts_ = st.builds(
        lambda status, staff, ms, p1, p2, pending, last_entry: MemberFacts(
            Member("mem-1", "org-1", "Ada", "L", status, staff),
            tuple(ms),
            {"p1": Plan("p1", "One", p1), "p2": Plan("p2", "Two", p2)},
            pending,
            last_entry,
        ),
        st.sampled_from([MemberStatus.ACTIVE] * 4 + [MemberStatus.PAUSED, MemberStatus.EXPIRED]),
        st.sampled_from([False] * 5 + [True]),
        st.lists(membership, max_size=4),
        window_lists,
        window_lists,
        st.dictionaries(st.sampled_from(["a", "b", "c", "x"]), st.integers(-1, 10)),
        st.none() | last,
    )
    closure = st.builds(
        lambda d, n: Closure(d, d + timedelta(days=n)), near_dates, st.integers(0, 3)
    )
    site = SiteFacts(draw(window_lists), tuple(draw(st.lists(closure, max_size=2))))
    replica = ReplicaInfo(draw(st.integers(0, 100)), draw(st.none() | near))
    known_code = draw(st.sampled_from([True] * 6 + [False]))
    return (draw(facts_) if known_code else None), site, replica, at


policies = st.builds(
    PolicySettings,
    st.sampled_from(["UTC", "Europe/Berlin", "America/Los_Angeles", "Asia/Kolkata"]),
    st.floats(0, 60),
    st.floats(0, 200),
    st.sampled_from(list(StalePolicy)),
)


@settings(max_examples=400, deadline=None)
@given(situations(), policies)
def test_any_facts_give_a_well_formed_decision(situation, policy: PolicySettings) -> None:
    member_facts, site, replica, at = situation
    decision = decide(member_facts, site, replica, at, policy)
    assert isinstance(decision, Decision)
    assert isinstance(decision.reason, Reason)
    assert decision.verdict == decision.reason.verdict
    assert decision.classes_used in (0, 1)
    if decision.classes_used == 1:
        assert decision.verdict == Verdict.GRANTED
    if decision.verdict == Verdict.GRANTED and decision.reason != Reason.STAFF_OVERRIDE:
        assert member_facts is not None
        assert decision.membership_id in {m.id for m in member_facts.memberships}
    else:
        assert decision.membership_id is None
    assert decision.detail


def test_passback_detail_never_shows_a_negative_time() -> None:
    last = entry(60, boot="boot-old", wall=NOON + timedelta(hours=3))
    decision = decide(facts(sub(), last=last), OPEN, FRESH, now(), IN_UTC)
    assert decision.reason == Reason.PASSBACK
    assert decision.detail.startswith("entered 0 s ago")


# -- capacity and visit limits ---------------------------------------------------------------------

FULL_AT_2 = PolicySettings(timezone="UTC", capacity=2)
TWICE_A_DAY = Plan("twice", "Twice a day", max_visits_per_day=2)
OFF_PEAK_ONCE = Plan("off-peak-once", "Off-peak, once a day", OFF_PEAK.windows, 1)


def visited(member_facts: MemberFacts, *times: str) -> MemberFacts:
    """``member_facts`` with granted, not annulled entries at this door at ``times`` (UTC)."""
    return replace(member_facts, recent_entries=tuple(utc(t) for t in times))


def limited(**kw) -> Membership:
    return sub("twice", plan="twice", **kw)


def crowd_row(id_: str, member_facts, reason: Reason, *, inside: int, **kw):
    """A row with ``inside`` people counted inside the gym by the door."""
    param = row(id_, member_facts, reason, **kw)
    return pytest.param(*param.values, inside, id=param.id)


CAPACITY_AND_VISITS = [
    crowd_row("below capacity", facts(sub()), Reason.SUBSCRIPTION, membership="sub", inside=1,
              policy=FULL_AT_2),
    crowd_row("at capacity", facts(sub()), Reason.AT_CAPACITY, inside=2, policy=FULL_AT_2),
    crowd_row("over capacity", facts(sub()), Reason.AT_CAPACITY, inside=7, policy=FULL_AT_2),
    crowd_row("no capacity set: never full", facts(sub()), Reason.SUBSCRIPTION, membership="sub",
              inside=500),
    crowd_row("staff are exempt from capacity", facts(staff=True), Reason.STAFF_OVERRIDE,
              inside=2, policy=FULL_AT_2),
    # Facility-wide rules first: a closed gym is closed, whoever is inside.
    crowd_row("closed beats capacity", facts(sub()), Reason.FACILITY_CLOSED, inside=2,
              policy=FULL_AT_2, site=SiteFacts(closures=(Closure(TODAY, TODAY),))),
    crowd_row("outside hours beats capacity", facts(sub()), Reason.OUTSIDE_HOURS, inside=2,
              policy=FULL_AT_2, site=SiteFacts(opening_hours=every_day("06:00", "08:00"))),
    crowd_row("passback beats capacity", facts(sub(), last=entry(2)), Reason.PASSBACK, inside=2,
              policy=FULL_AT_2),
    # ... and capacity before the member's own: a full gym is nobody's membership problem.
    crowd_row("capacity beats an expired membership", facts(sub(end=YESTERDAY)),
              Reason.AT_CAPACITY, inside=2, policy=FULL_AT_2),
    crowd_row("capacity beats the visit limit",
              visited(facts(limited(), plans=(TWICE_A_DAY,)), "2026-03-10T07:00",
                      "2026-03-10T09:00"),
              Reason.AT_CAPACITY, inside=2, policy=FULL_AT_2),
    # Visit limits: today's local date, at this door; the third visit of a twice-a-day plan.
    crowd_row("first visit of the day", facts(limited(), plans=(TWICE_A_DAY,)),
              Reason.SUBSCRIPTION, membership="twice", inside=0),
    crowd_row("second visit", visited(facts(limited(), plans=(TWICE_A_DAY,)), "2026-03-10T07:00"),
              Reason.SUBSCRIPTION, membership="twice", inside=0),
    crowd_row("third visit", visited(facts(limited(), plans=(TWICE_A_DAY,)), "2026-03-10T07:00",
                                     "2026-03-10T09:00"), Reason.VISIT_LIMIT, inside=0),
    crowd_row("yesterday's visits do not count",
              visited(facts(limited(), plans=(TWICE_A_DAY,)), "2026-03-09T20:00",
                      "2026-03-09T23:59"),
              Reason.SUBSCRIPTION, membership="twice", inside=0),
    # The day is the gym's: 23:30 UTC on the 9th is the 10th in Berlin.
    crowd_row("the local date counts",
              visited(facts(limited(), plans=(TWICE_A_DAY,)), "2026-03-09T23:30",
                      "2026-03-10T09:00"),
              Reason.VISIT_LIMIT, inside=0, policy=BERLIN),
    # Another membership without a limit still admits, and is the one used.
    crowd_row("an unlimited membership beside the limited one",
              visited(facts(limited(), pack(), plans=(TWICE_A_DAY,)), "2026-03-10T07:00",
                      "2026-03-10T09:00"),
              Reason.CLASS_PACK, membership="pack", used=1, inside=0),
    # With the plan's rules: its windows first, then its limit, both before the balance.
    crowd_row("the plan's hours before its limit",
              visited(facts(sub("o", plan="off-peak-once"), plans=(OFF_PEAK_ONCE,)),
                      "2026-03-10T09:30"),
              Reason.OUTSIDE_HOURS, inside=0, at=now(utc("2026-03-10T18:00"))),
    crowd_row("the limit before the balance",
              visited(facts(pack("p", remaining=0, plan="twice"), plans=(TWICE_A_DAY,)),
                      "2026-03-10T07:00", "2026-03-10T09:00"),
              Reason.VISIT_LIMIT, inside=0),
    crowd_row("no valid membership before the limit",
              visited(facts(limited(end=YESTERDAY), plans=(TWICE_A_DAY,)), "2026-03-10T07:00",
                      "2026-03-10T09:00"),
              Reason.NO_VALID_MEMBERSHIP, inside=0),
    crowd_row("staff have no visit limit",
              visited(facts(limited(), staff=True, plans=(TWICE_A_DAY,)), "2026-03-10T07:00",
                      "2026-03-10T09:00"),
              Reason.STAFF_OVERRIDE, inside=0),
]  # fmt: skip


@pytest.mark.parametrize(f"{COLUMNS},inside", CAPACITY_AND_VISITS)
def test_capacity_and_visit_limits(
    member_facts, site, replica, at, policy, reason, membership, used, inside
):
    decision = decide(member_facts, site, replica, at, policy, occupancy=inside)
    assert (decision.reason, decision.membership_id, decision.classes_used) == (
        reason,
        membership,
        used,
    ), decision.detail
    assert decision.verdict == reason.verdict and decision.detail


def test_the_refusals_say_why_in_numbers() -> None:
    full = decide(facts(sub()), OPEN, FRESH, now(), FULL_AT_2, occupancy=3)
    assert full.detail == "3 people inside, the limit is 2"
    twice = visited(facts(limited(), plans=(TWICE_A_DAY,)), "2026-03-10T07:00", "2026-03-10T09:00")
    limit = decide(twice, OPEN, FRESH, now(), IN_UTC)
    assert limit.detail == "2 visits today at this door; the plan allows 2 a day"
