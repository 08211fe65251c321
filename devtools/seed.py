"""Demo members covering every access rule, and the scenario ``kiosk demo`` plays.

Dates and the off-peak window are computed from "now" in the gym's time zone, so the scenario gives the
same decisions whatever the day or hour the demo runs.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from kiosk.core.model import (
    AccessWindow,
    Member,
    Membership,
    MembershipType,
    MemberStatus,
    Plan,
    Reason,
)
from kiosk.core.passes import PassRecord
from kiosk.data.replica import ReplicaSnapshot
from sync.credentials import code_hash
from sync.passes import DEFAULT_PERIOD_S, pass_payload, step_at

ORG = "org-demo"
DEMO_REPLICA_VERSION = 1
# A fixed salt keeps demo databases comparable between runs, and marks a replica as the demo's:
# real salts come from the cloud.
DEMO_SALT = hashlib.sha256(b"fitflow-demo-salt").digest()
# Kim carries her membership on her phone: the demo plays her phone, so it holds the pass's private
# key. It is derived from a public string and is the demo organisation's only: a real pass's key is
# made on the member's phone and never leaves it (docs/passes.md).
DEMO_PASS_ID = "KIMPASS2"  # noqa: S105 - a pass id, not a secret
_DEMO_PASS_SEED = hashlib.sha256(b"fitflow-demo-phone-pass").digest()


def demo_pass_key():  # -> cryptography's Ed25519PrivateKey
    """The simulated phone's private key (see ``DEMO_PASS_ID``)."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    return Ed25519PrivateKey.from_private_bytes(_DEMO_PASS_SEED)


def demo_passes() -> list[PassRecord]:
    """Kim's phone pass, as the replica holds it."""
    public = demo_pass_key().public_key().public_bytes_raw()
    return [PassRecord(DEMO_PASS_ID, "m-kim", ORG, public, DEFAULT_PERIOD_S)]


@dataclass(frozen=True, slots=True)
class DemoMember:
    member: Member
    code: str
    memberships: tuple[Membership, ...]


def _off_peak_window_excluding(local_now: datetime) -> tuple[AccessWindow, ...]:
    """An off-peak plan window, every day, that does NOT contain the current local time: mornings
    when it is afternoon, afternoons when it is morning."""
    start, end = (5 * 60, 9 * 60) if local_now.hour >= 12 else (14 * 60, 17 * 60)
    return tuple(AccessWindow(day, start, end) for day in range(7))


def demo_members(now: datetime, timezone: str) -> list[DemoMember]:
    """The seeded members. ``now`` is timezone-aware; dates are the gym's local dates."""
    today = now.astimezone(ZoneInfo(timezone)).date()
    month_ago, next_month = today - timedelta(days=30), today + timedelta(days=30)

    def member(mid: str, first: str, last: str, status=MemberStatus.ACTIVE, staff=False) -> Member:
        return Member(mid, ORG, first, last, status, is_staff=staff)

    def ms(mid: str, member_id: str, kind: MembershipType, **kw) -> Membership:
        kw.setdefault("start_date", month_ago)
        kw.setdefault("end_date", next_month)
        return Membership(id=mid, member_id=member_id, type=kind, **kw)

    sub, pack, pt = MembershipType.SUBSCRIPTION, MembershipType.CLASS_PACK, MembershipType.PT
    return [
        DemoMember(member("m-alice", "Alice", "Archer"), "FF-ALICE-1001",
                   (ms("ms-alice", "m-alice", sub, plan_id="plan-full"),)),
        DemoMember(member("m-bob", "Bob", "Baker"), "FF-BOB-1002",
                   (ms("ms-bob", "m-bob", pack, remaining_classes=5, end_date=None),)),
        DemoMember(member("m-carol", "Carol", "Chen", MemberStatus.PAUSED), "FF-CAROL-1003",
                   (ms("ms-carol", "m-carol", sub),)),
        DemoMember(member("m-dave", "Dave", "Dunn"), "FF-DAVE-1004",
                   (ms("ms-dave", "m-dave", sub, start_date=today - timedelta(days=400),
                       end_date=today - timedelta(days=35)),)),
        DemoMember(member("m-erin", "Erin", "Evans"), "FF-ERIN-1005",
                   (ms("ms-erin", "m-erin", pack, remaining_classes=0),)),
        DemoMember(member("m-frank", "Frank", "Fox"), "FF-FRANK-1006",
                   (ms("ms-frank", "m-frank", sub, plan_id="plan-offpeak"),)),
        DemoMember(member("m-grace", "Grace", "Gill", staff=True), "FF-GRACE-1007", ()),
        DemoMember(member("m-heidi", "Heidi", "Hart", MemberStatus.EXPIRED), "FF-HEIDI-1008",
                   (ms("ms-heidi", "m-heidi", sub, end_date=today - timedelta(days=3)),)),
        DemoMember(member("m-ivan", "Ivan", "Ivers"), "FF-IVAN-1009",
                   (ms("ms-ivan", "m-ivan", pt, remaining_classes=8),)),
        DemoMember(member("m-judy", "Judy", "Jones"), "FF-JUDY-1010",
                   (ms("ms-judy", "m-judy", sub, start_date=today, end_date=today),)),
        DemoMember(member("m-kim", "Kim", "Kowalski"), "FF-KIM-1011",
                   (ms("ms-kim", "m-kim", sub, plan_id="plan-full"),)),
        DemoMember(member("m-liam", "Liam", "Lund"), "FF-LIAM-1012",
                   (ms("ms-liam", "m-liam", sub, plan_id="plan-daily"),)),
    ]  # fmt: skip


def demo_snapshot(now: datetime, timezone: str) -> ReplicaSnapshot:
    """The replica the demo runs on: the members above, a full-access and an off-peak plan, a gym
    open around the clock and no closures. ``synced_at`` is ``now``: the replica counts as fresh."""
    local_now = now.astimezone(ZoneInfo(timezone))
    salt = DEMO_SALT
    members = demo_members(now, timezone)
    return ReplicaSnapshot(
        members=[(m.member, code_hash(m.code, salt)) for m in members],
        memberships=[ms for m in members for ms in m.memberships],
        plans=[
            Plan("plan-full", "Full access"),
            Plan("plan-offpeak", "Off-peak", _off_peak_window_excluding(local_now)),
            # A plan that answers card sharing: one visit a day.
            Plan("plan-daily", "One visit a day", max_visits_per_day=1),
        ],
        opening_hours=(),
        closures=(),
        version=DEMO_REPLICA_VERSION,
        synced_at=now,
        code_salt=salt,
        passes=demo_passes(),
    )


@dataclass(frozen=True, slots=True)
class Scan:
    """One step of the scenario: a payload shown to the camera, and the reason we expect."""

    payload: str
    expect: Reason
    note: str


# The fixed scenario of ``kiosk demo --once``. Between scans the camera sees an empty scene for
# longer than the debounce cooldown, so Alice's second scan is a new presentation: anti-passback.
SCENARIO: tuple[Scan, ...] = (
    Scan("FF-ALICE-1001", Reason.SUBSCRIPTION, "monthly subscription"),
    Scan("FF-BOB-1002", Reason.CLASS_PACK, "class pack, 5 classes left"),
    Scan("FF-UNKNOWN-0000", Reason.UNKNOWN_CODE, "a card this gym never issued"),
    Scan("https://example.com/<script>", Reason.MALFORMED_CODE, "someone else's QR code"),
    Scan("FF-CAROL-1003", Reason.MEMBER_PAUSED, "membership paused"),
    Scan("FF-DAVE-1004", Reason.NO_VALID_MEMBERSHIP, "subscription ended last month"),
    Scan("FF-ERIN-1005", Reason.PACK_EMPTY, "class pack used up"),
    Scan("FF-FRANK-1006", Reason.OUTSIDE_HOURS, "off-peak plan at peak time"),
    Scan("FF-GRACE-1007", Reason.STAFF_OVERRIDE, "staff"),
    Scan("FF-HEIDI-1008", Reason.MEMBER_EXPIRED, "member expired"),
    Scan("FF-IVAN-1009", Reason.PERSONAL_TRAINING, "personal-training sessions"),
    Scan("FF-JUDY-1010", Reason.SUBSCRIPTION, "day pass ending today"),
    Scan("FF-LIAM-1012", Reason.SUBSCRIPTION, "one visit a day: today's first"),
    Scan("FF-ALICE-1001", Reason.PASSBACK, "Alice again, card passed back through the gate"),
)

# The simulated turnstile (``kiosk demo``'s mock passage contacts): it turns for every grant but
# Bob's (he walks away: the grant is annulled and his class goes back to the pack after the next
# sync), and Dave, refused, pushes through behind someone (tailgating). After the scenario some
# members leave through the exit side, so the gym's occupancy rises and falls.
WALKS_AWAY = frozenset({"m-bob"})
TAILGATES = frozenset({"m-dave"})
LEAVING = 4  # members who leave while the cloud is down


def scenario_with_passes(now: datetime) -> tuple[Scan, ...]:
    """The scenario with Kim's phone pass and two copies of it woven in: her pass, Alice, a stale
    screenshot of Kim's pass, Bob, Kim's code again, then the rest. The door holds a pass id for
    the debounce cooldown after it was last seen (a phone's code changes while it is in view), so
    other members' cards come between the showings. The codes depend on the time: make this just
    before playing it (``now``: the door's time then)."""
    kim, stale, again = pass_scans(now)
    return (kim, SCENARIO[0], stale, SCENARIO[1], again, *SCENARIO[2:])


def pass_scans(now: datetime) -> tuple[Scan, ...]:
    """Kim at the door with her phone, and two copies of her pass that must not work (see
    ``scenario_with_passes``)."""
    key = demo_pass_key()
    step = step_at(now.timestamp(), DEFAULT_PERIOD_S)
    current = pass_payload(key, ORG, DEMO_PASS_ID, step)
    # Five minutes old: a screenshot someone was sent earlier.
    stale = pass_payload(key, ORG, DEMO_PASS_ID, step - 300 // DEFAULT_PERIOD_S)
    return (
        Scan(current, Reason.SUBSCRIPTION, "Kim's phone pass"),
        Scan(stale, Reason.TOKEN_EXPIRED, "a screenshot of Kim's pass from 5 minutes ago"),
        Scan(current, Reason.TOKEN_REPLAYED, "the code Kim just used, shown again (a copy)"),
    )


@dataclass(frozen=True, slots=True)
class CloudChange:
    member_id: str
    words: str


# What ``kiosk demo --once`` does after the scenario, with the embedded cloud: the front desk lifts
# Carol's pause in the cloud, the agent pulls the change and her next scan is admitted; then the
# cloud goes away, Alice comes back after the anti-passback window and is admitted offline.
CLOUD_CHANGE = CloudChange("m-carol", "the front desk lifted Carol's pause (member m-carol ACTIVE)")
AFTER_CLOUD_CHANGE = Scan(
    "FF-CAROL-1003", Reason.SUBSCRIPTION, "Carol, her pause lifted in the cloud"
)
OUTAGE_S = 11 * 60.0
WHILE_OFFLINE = (
    Scan("FF-ALICE-1001", Reason.SUBSCRIPTION, "Alice, 11 minutes later, cloud down"),
    Scan("FF-LIAM-1012", Reason.VISIT_LIMIT, "Liam's second visit today, on a one-a-day plan"),
)
