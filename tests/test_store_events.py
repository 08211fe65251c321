"""The journal's door events (kiosk.data.journal): grants waiting for their passage, entry and
annulled exactly once, tailgating and exits in the journal's one sequence, the upload queue of
check-ins and events together, what annulled grants no longer count for (passback, class uses,
visits), the door's movements for the occupancy; and the upgrades from the previous journal
schema and replica format. Real SQLite files in a temporary folder throughout."""

from __future__ import annotations

import contextlib
import sqlite3
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest

from kiosk.core.model import (
    AccessWindow,
    ClockQuality,
    Decision,
    DoorEvent,
    EventKind,
    Member,
    Membership,
    MembershipType,
    MemberStatus,
    Now,
    Plan,
    Reason,
    SyncState,
    Verdict,
)
from kiosk.core.occupancy import Movement, OccupancyRules
from kiosk.core.passes import PassRecord
from kiosk.data.journal import JournalPosition, PassageWait
from kiosk.data.migrations import LATEST_VERSION, REPLICA_FORMAT
from kiosk.data.replica import ReplicaSnapshot, snapshot_rows
from kiosk.data.store import Store
from sync.protocol import checksum

T0 = datetime(2026, 5, 6, 9, 0, 0, tzinfo=UTC)
BOOT = "boot-1"
DOOR = "front"
S = 1_000_000_000  # ns

ALICE = Member("m-alice", "org-1", "Alice", "Archer", MemberStatus.ACTIVE)
BOB = Member("m-bob", "org-1", "Bob", "Baker", MemberStatus.ACTIVE)
TWICE = Plan("plan-twice", "Twice a day", max_visits_per_day=2)
ALICE_SUB = Membership(
    "ms-alice", "m-alice", MembershipType.SUBSCRIPTION, date(2026, 1, 1), None, None, "plan-twice"
)
BOB_PACK = Membership("ms-bob", "m-bob", MembershipType.CLASS_PACK, date(2026, 1, 1), None, 5, None)
KEY = bytes(range(32))


def snapshot(**changes: object) -> ReplicaSnapshot:
    base = ReplicaSnapshot(
        members=[(ALICE, "a" * 64), (BOB, "b" * 64)],
        memberships=[ALICE_SUB, BOB_PACK],
        plans=[TWICE, Plan("plan-free", "Free")],
        opening_hours=[],
        closures=[],
        version=7,
        synced_at=T0,
        code_salt=b"salt",
        passes=[PassRecord("ALICEPHN", "m-alice", "org-1", KEY, 15)],
    )
    return replace(base, **changes)


def at(seconds: float, *, boot: str = BOOT) -> Now:
    """The door's time ``seconds`` after T0, on both clocks (monotonic 1000 s at T0)."""
    return Now(
        wall=T0 + timedelta(seconds=seconds),
        monotonic_ns=int((1000 + seconds) * S),
        boot_id=boot,
        quality=ClockQuality.NTP_SYNCED,
    )


def grant(store: Store, member: str = "m-alice", seconds: float = 0, *, wait: bool = True,
          classes: int = 0, membership: str = "ms-alice", door: str = DOOR, **kw):  # fmt: skip
    reason = Reason.CLASS_PACK if classes else Reason.SUBSCRIPTION
    decision = Decision(Verdict.GRANTED, reason, member, membership, classes)
    return store.append_checkin(
        decision, door_id=door, replica_version=7, now=at(seconds),
        await_passage_s=5.0 if wait else None, **kw,
    )  # fmt: skip


def event(store: Store, kind: EventKind, seconds: float, checkin_id: str | None = None,
          door: str = DOOR) -> DoorEvent | None:  # fmt: skip
    return store.append_event(kind, door_id=door, at=at(seconds), checkin_id=checkin_id)


@pytest.fixture
def store(tmp_path: Path):
    with Store.open(tmp_path / "kiosk.db") as opened:
        opened.replace_replica(snapshot())
        yield opened


# -- waiting for the passage, and its outcome ---------------------------------------------------


def test_a_grant_waits_for_its_passage_on_both_clocks_and_is_confirmed_once(store: Store):
    checkin = grant(store)
    assert store.passage_waits() == [
        PassageWait(checkin.id, checkin.seq, DOOR, BOOT, 1005 * S, T0 + timedelta(seconds=5))
    ]
    entry = event(store, EventKind.ENTRY, 1.5, checkin.id)
    assert entry is not None
    assert (entry.kind, entry.checkin_id, entry.seq) == (EventKind.ENTRY, checkin.id, 2)
    assert entry.wall_time == T0 + timedelta(seconds=1.5) and entry.monotonic_ns == 1001.5 * S
    assert store.passage_waits() == []
    # Settled once: neither a second entry nor an annulment is written, nor takes a seq.
    assert event(store, EventKind.ENTRY, 2, checkin.id) is None
    assert event(store, EventKind.ANNULLED, 6, checkin.id) is None
    assert store.door_events() == [entry]
    assert store.last_seq() == 2


def test_an_annulment_resolves_the_wait_and_is_the_only_outcome(store: Store):
    checkin = grant(store)
    annulled = event(store, EventKind.ANNULLED, 5, checkin.id)
    assert annulled is not None and annulled.kind is EventKind.ANNULLED
    assert event(store, EventKind.ENTRY, 7, checkin.id) is None  # too late: never both
    assert [e.kind for e in store.door_events()] == [EventKind.ANNULLED]
    # The database holds the rule too: one outcome per grant.
    raw = sqlite3.connect(store.path)
    with pytest.raises(sqlite3.IntegrityError):
        raw.execute(
            "INSERT INTO door_events (id, seq, door_id, kind, checkin_id, wall_time, boot_id,"
            " monotonic_ns, clock_quality) VALUES ('x', 99, 'front', 'entry', ?,"
            " '2026-05-06T09:00:07.000000Z', 'b', 1, 'ntp_synced')",
            (checkin.id,),
        )
    raw.close()


def test_tailgating_and_exits_take_the_journal_sequence_between_check_ins(store: Store):
    first = grant(store, wait=False)
    tailgate = event(store, EventKind.TAILGATING, 1)
    out = event(store, EventKind.EXIT, 2)
    second = grant(store, "m-bob", 3, wait=False, membership="ms-bob")
    assert [first.seq, tailgate.seq, out.seq, second.seq] == [1, 2, 3, 4]
    assert tailgate.checkin_id is None and out.checkin_id is None
    assert store.passage_waits() == []


def test_an_exit_side_grant_is_an_exit_event_in_the_same_transaction(store: Store):
    checkin = grant(store, wait=False, exit_event=True)
    [out] = store.door_events()
    assert (out.kind, out.checkin_id, out.seq) == (EventKind.EXIT, checkin.id, checkin.seq + 1)
    assert (out.wall_time, out.monotonic_ns) == (checkin.wall_time, checkin.monotonic_ns)
    assert store.passage_waits() == []


def test_a_failed_check_in_leaves_no_wait_and_no_event(store: Store):
    conn = store._conn
    assert conn is not None
    conn.execute("CREATE TEMP TRIGGER refuse BEFORE INSERT ON door_events BEGIN"
                 " SELECT RAISE(ABORT, 'refused'); END")  # fmt: skip
    with pytest.raises(Exception, match="refused"):
        grant(store, wait=False, exit_event=True)
    assert store.checkin_count() == 0 and store.last_seq() == 0
    conn.execute("DROP TRIGGER temp.refuse")


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda s: grant(s, wait=True, exit_event=True), "not both"),
        (lambda s: s.append_checkin(Decision(Verdict.DENIED, Reason.UNKNOWN_CODE), door_id=DOOR,
                                    replica_version=7, now=at(0), await_passage_s=5.0),
         "only a grant"),
        (lambda s: event(s, EventKind.ENTRY, 1), "names the grant"),
        (lambda s: event(s, EventKind.ANNULLED, 1), "names the grant"),
        (lambda s: event(s, EventKind.TAILGATING, 1, "c-1"), "names no check-in"),
    ],
)  # fmt: skip
def test_contract_breaches_are_refused_before_anything_is_written(store: Store, call, message):
    with pytest.raises(ValueError, match=message):
        call(store)
    assert store.last_seq() == 0 and store.door_events() == []


def test_waits_are_per_door_and_oldest_first(store: Store):
    a = grant(store, seconds=0)
    b = grant(store, "m-bob", 1, membership="ms-bob", door="side")
    c = grant(store, seconds=2)
    assert [w.checkin_id for w in store.passage_waits()] == [a.id, b.id, c.id]
    assert [w.checkin_id for w in store.passage_waits(DOOR)] == [a.id, c.id]


# -- the upload queue: check-ins and events in one seq order --------------------------------------


def test_the_upload_queue_holds_both_in_seq_order_and_both_settle(store: Store):
    first = grant(store)
    entry = event(store, EventKind.ENTRY, 1, first.id)
    second = grant(store, "m-bob", 2, membership="ms-bob")
    annulled = event(store, EventKind.ANNULLED, 7, second.id)
    tailgate = event(store, EventKind.TAILGATING, 8)
    queue = store.pending_uploads()
    assert [(type(r).__name__, r.seq) for r in queue] == [
        ("Checkin", 1), ("DoorEvent", 2), ("Checkin", 3), ("DoorEvent", 4), ("DoorEvent", 5),
    ]  # fmt: skip
    assert [r.id for r in store.pending_uploads(2)] == [first.id, entry.id]
    assert [r.id for r in store.pending_uploads(2, after_seq=2)] == [second.id, annulled.id]
    assert store.pending_checkins() == [first, second]  # the check-ins' own queue is unchanged
    # Acknowledged and refused by id, whichever table the id is in.
    assert store.mark_synced([first.id, entry.id, "nope"], at=T0, cloud_versions={first.id: 3}) == 2
    assert store.mark_rejected([annulled.id], at=T0) == 1
    assert store.mark_synced([entry.id], at=T0) == 0  # a repeated acknowledgement
    assert [r.id for r in store.pending_uploads()] == [second.id, tailgate.id]
    assert store.event_counts_by_state() == {"pending": 1, "synced": 1, "rejected": 1}
    assert store.counts_by_state() == {"pending": 1, "synced": 1, "rejected": 0}
    assert [e.sync_state for e in store.door_events()] == [
        SyncState.PENDING, SyncState.REJECTED, SyncState.SYNCED,
    ]  # fmt: skip


def test_the_position_backlog_and_requeue_cover_the_events(store: Store):
    first = grant(store, wait=False)
    out = event(store, EventKind.EXIT, 1)
    store.mark_synced([first.id], at=T0)
    # The oldest pending row is an event: everything before it is settled.
    assert store.journal_position() == JournalPosition(
        last_seq=2, synced_through_seq=1, retained_from_seq=1, backlog=1,
        oldest_pending_at=T0 + timedelta(seconds=1),
    )  # fmt: skip
    store.mark_synced([out.id], at=T0)
    assert store.journal_position().synced_through_seq == 2
    assert store.requeue_from(2) == 1  # a restored cloud asks from seq 2: the exit goes again
    assert [r.id for r in store.pending_uploads()] == [out.id]
    assert store.journal_position().backlog == 1


def test_synced_events_are_pruned_with_the_check_ins_and_pending_ones_never(store: Store):
    old = grant(store, wait=False)
    synced = event(store, EventKind.EXIT, 1)
    pending = event(store, EventKind.TAILGATING, 2)
    store.mark_synced([old.id, synced.id], at=T0 + timedelta(seconds=3))
    assert store.prune_synced(T0 + timedelta(days=1)) == 2
    assert [e.id for e in store.door_events()] == [pending.id]
    # Every row of the first two seqs is gone; the retained range starts at the tailgating.
    assert store.journal_position().retained_from_seq == 3


def test_the_clock_floor_counts_the_events(store: Store):
    grant(store, wait=False)
    event(store, EventKind.EXIT, 3600)
    assert store.clock_floor() == T0 + timedelta(hours=1)


# -- what an annulled grant no longer counts for ---------------------------------------------------


def test_an_annulled_grant_is_no_last_entry_no_visit_and_no_class_used(store: Store):
    confirmed = grant(store, "m-bob", 0, classes=1, membership="ms-bob")
    event(store, EventKind.ENTRY, 1, confirmed.id)
    walked_away = grant(store, "m-bob", 60, classes=1, membership="ms-bob")
    waiting = grant(store, "m-bob", 120, classes=1, membership="ms-bob")
    since = T0 - timedelta(days=1)
    facts = store.member_facts("m-bob", DOOR, entries_since=since)
    assert facts.pending_uses == {"ms-bob": 3}
    assert facts.last_entry.wall_time == waiting.wall_time  # still waiting: it counts
    event(store, EventKind.ANNULLED, 65, walked_away.id)
    event(store, EventKind.ANNULLED, 125, waiting.id)
    facts = store.member_facts("m-bob", DOOR, entries_since=since)
    assert facts.pending_uses == {"ms-bob": 1}
    assert facts.last_entry.wall_time == confirmed.wall_time
    assert facts.recent_entries == (confirmed.wall_time,)


def test_recent_entries_are_this_doors_newest_first_from_the_given_time(store: Store):
    times = [0, 3600, 7200]
    for seconds in times:
        grant(store, seconds=seconds, wait=False)
    grant(store, seconds=7300, wait=False, door="side")
    facts = store.member_facts("m-alice", DOOR, entries_since=T0 + timedelta(seconds=1800))
    assert facts.recent_entries == (T0 + timedelta(seconds=7200), T0 + timedelta(seconds=3600))
    assert store.member_facts("m-alice", DOOR).recent_entries == ()  # not asked for
    assert facts.plans["plan-twice"] == TWICE  # the plan's limit comes with it


# -- the door's movements, for the occupancy ------------------------------------------------------


def test_door_movements_are_the_grants_that_count_and_the_passages(store: Store):
    confirmed = grant(store, seconds=10)
    event(store, EventKind.ENTRY, 11, confirmed.id)
    annulled = grant(store, "m-bob", 20, membership="ms-bob")
    event(store, EventKind.ANNULLED, 25, annulled.id)
    grant(store, seconds=30, wait=False, exit_event=True)  # an exit-side grant: an exit only
    event(store, EventKind.TAILGATING, 40)
    event(store, EventKind.EXIT, 50)
    grant(store, seconds=60, wait=False, door="side")  # another door
    grant(store, seconds=-3600, wait=False)  # before the reset
    moved = store.door_movements(T0, DOOR)
    assert sorted(moved, key=lambda m: m.at) == [
        Movement(T0 + timedelta(seconds=10), "grant"),
        Movement(T0 + timedelta(seconds=11), "entry"),
        Movement(T0 + timedelta(seconds=30), "exit"),
        Movement(T0 + timedelta(seconds=40), "tailgating"),
        Movement(T0 + timedelta(seconds=50), "exit"),
    ]


# -- upgrades -------------------------------------------------------------------------------------


def test_a_schema_5_journal_gains_the_door_events_and_keeps_every_row(tmp_path: Path):
    db = tmp_path / "kiosk.db"
    with Store.open(db) as store:
        store.replace_replica(snapshot())
        kept = [grant(store, seconds=n, wait=False) for n in range(3)]
        store.mark_synced([kept[0].id], at=T0)
    with contextlib.closing(sqlite3.connect(db, isolation_level=None)) as conn:
        conn.execute("DROP TABLE passage_waits")
        conn.execute("DROP TABLE door_events")
        conn.execute("PRAGMA user_version = 5")
    with Store.open(db) as store:
        assert store.schema_version() == LATEST_VERSION == 6
        assert [c.id for c in store.recent_checkins(10)][::-1] == [c.id for c in kept]
        assert [r.id for r in store.pending_uploads()] == [kept[1].id, kept[2].id]
        # The sequence goes on from the counter, events and check-ins alike.
        assert event(store, EventKind.TAILGATING, 10).seq == 4
        assert grant(store, seconds=11).seq == 5 and len(store.passage_waits()) == 1
        facts = store.member_facts("m-alice", DOOR, entries_since=T0 - timedelta(days=1))
        assert len(facts.recent_entries) == 4


def test_a_format_2_replica_carries_over_with_its_passes_plans_and_hashes(tmp_path: Path):
    db = tmp_path / "kiosk.db"
    with Store.open(db) as store:
        store.replace_replica(snapshot(plans=[Plan("plan-twice", "Twice"), Plan("p2", "Free")]))
        before = store.replica_checksum()
        old_file = store.replica_file
    with contextlib.closing(sqlite3.connect(db, isolation_level=None)) as conn:
        conn.execute("DROP TABLE passage_waits")
        conn.execute("DROP TABLE door_events")
        conn.execute("PRAGMA user_version = 5")
    with contextlib.closing(sqlite3.connect(old_file, isolation_level=None)) as conn:
        conn.execute("ALTER TABLE plans DROP COLUMN max_visits_per_day")
        conn.execute("PRAGMA user_version = 2")
    with Store.open(db) as store:
        assert store.replica_file != old_file
        with contextlib.closing(sqlite3.connect(store.replica_file)) as conn:
            assert conn.execute("PRAGMA user_version").fetchone() == (REPLICA_FORMAT,) == (3,)
            limits = conn.execute("SELECT max_visits_per_day FROM plans").fetchall()
        assert limits == [(None,), (None,)]
        assert store.find_pass("ALICEPHN") == PassRecord("ALICEPHN", "m-alice", "org-1", KEY, 15)
        # A plan without a limit hashes as before: the carried-over hashes are still right.
        assert store.replica_checksum() == before == store.stored_replica_totals()


def test_a_plans_visit_limit_is_stored_and_hashed_as_the_protocol_row(tmp_path: Path):
    with Store.open(tmp_path / "kiosk.db") as store:
        snap = snapshot()
        store.replace_replica(snap)
        rows = list(snapshot_rows(snap))
        assert {"max_visits_per_day": 2}.items() <= rows[0].data.items()
        assert "max_visits_per_day" not in rows[1].data  # the normal form leaves "none" out
        assert store.replica_checksum() == (len(rows), checksum(r.row_hash() for r in rows))
        facts = store.member_facts("m-alice", DOOR)
        assert facts.plans["plan-twice"].max_visits_per_day == 2


def test_the_stores_occupancy_counts_from_the_gyms_last_closing(tmp_path: Path):
    # Open 06:00-22:00 every day: the count of T0 (09:00) starts at 22:00 the evening before.
    hours = [AccessWindow(day, 360, 1320) for day in range(7)]
    with Store.open(tmp_path / "kiosk.db") as store:
        store.replace_replica(snapshot(opening_hours=hours))
        grant(store, seconds=-12 * 3600, wait=False)  # 21:00 the day before: before the reset
        confirmed = grant(store, seconds=0)
        event(store, EventKind.ENTRY, 1, confirmed.id)
        grant(store, "m-bob", 60, membership="ms-bob")  # still waiting
        event(store, EventKind.TAILGATING, 120)
        rules = OccupancyRules(timezone="UTC", confirmed=True, capacity=30)
        counted = store.occupancy(DOOR, rules, T0 + timedelta(minutes=5))
        assert counted.since == datetime(2026, 5, 5, 22, 0, tzinfo=UTC)
        assert counted.report() == {
            "now": 2, "entries_today": 2, "exits_today": 0, "max_today": 2, "capacity": 30,
        }  # fmt: skip
        # Counted by grants (no entry input), the one waiting counts too.
        unconfirmed = store.occupancy(DOOR, OccupancyRules(), T0 + timedelta(minutes=5))
        assert unconfirmed.report()["now"] == 3  # two grants and the tailgater
