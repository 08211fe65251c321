"""The local store (kiosk.data.store, kiosk.data.migrations): schema history, journal, replica, failures.

Every test runs on a real SQLite file in a temporary folder; failures (full disk, lock, damaged
file, newer schema) are produced by SQLite itself, not by mocks.
"""

from __future__ import annotations

import re
import sqlite3
import uuid
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta, timezone
from pathlib import Path

import pytest

from kiosk.core.model import (
    AccessWindow,
    Checkin,
    ClockQuality,
    Closure,
    Decision,
    LastEntry,
    Member,
    Membership,
    MembershipType,
    MemberStatus,
    Now,
    Plan,
    Reason,
    ReplicaInfo,
    SiteFacts,
    SyncState,
    Verdict,
)
from kiosk.data.database import StoreError
from kiosk.data.door_path import DOOR_PATH_QUERIES
from kiosk.data.migrations import LATEST_VERSION, MIGRATIONS, apply_migrations
from kiosk.data.replica import ReplicaSnapshot
from kiosk.data.store import Store

T0 = datetime(2024, 5, 6, 9, 0, 0, 123456, tzinfo=UTC)
BOOT = "3f0c2a9e-boot"

ALICE = Member("m-alice", "org-1", "Alice", "Archer", MemberStatus.ACTIVE)
BOB = Member("m-bob", "org-1", "Bob", "Baker", MemberStatus.ACTIVE)
GRACE = Member("m-grace", "org-1", "Grace", "Hopper", MemberStatus.PAUSED, is_staff=True)
OFF_PEAK = Plan(
    "plan-offpeak",
    "Off-peak",
    (AccessWindow(0, 360, 960), AccessWindow(0, 1200, 1440), AccessWindow(2, 360, 960)),
)
FULL = Plan("plan-full", "Full access")
ALICE_SUB = Membership(
    "ms-alice", "m-alice", MembershipType.SUBSCRIPTION, date(2024, 1, 1), None, None, "plan-full"
)
BOB_PACK = Membership(
    "ms-bob-pack", "m-bob", MembershipType.CLASS_PACK, date(2024, 4, 1), date(2024, 9, 30), 5,
    "plan-offpeak",
)  # fmt: skip
BOB_PT = Membership("ms-bob-pt", "m-bob", MembershipType.PT, date(2024, 4, 1), None, 2)


def snapshot(**changes: object) -> ReplicaSnapshot:
    base = ReplicaSnapshot(
        members=[(ALICE, "hash-alice"), (BOB, "hash-bob"), (GRACE, "hash-grace")],
        memberships=[ALICE_SUB, BOB_PACK, BOB_PT],
        plans=[FULL, OFF_PEAK],
        opening_hours=[AccessWindow(1, 360, 1320), AccessWindow(0, 360, 1320)],
        closures=[Closure(date(2024, 12, 25), date(2024, 12, 26), "Christmas")],
        version=7,
        synced_at=T0,
        code_salt=b"\x00salt\xff",
    )
    return replace(base, **changes)


def now_at(wall: datetime, *, mono: int = 1_000, quality=ClockQuality.NTP_SYNCED) -> Now:
    return Now(wall=wall, monotonic_ns=mono, boot_id=BOOT, quality=quality)


def granted(member_id: str, membership_id: str | None = None, classes: int = 0) -> Decision:
    reason = Reason.CLASS_PACK if classes else Reason.SUBSCRIPTION
    return Decision(Verdict.GRANTED, reason, member_id, membership_id, classes)


UNKNOWN = Decision(Verdict.DENIED, Reason.UNKNOWN_CODE)


def record(store: Store, decision: Decision = UNKNOWN, *, door: str = "front", at=T0, mono=1_000):
    return store.append_checkin(
        decision, door_id=door, replica_version=7, now=now_at(at, mono=mono)
    )


def checkin_by_id(store: Store, checkin_id: str) -> Checkin | None:
    """The journal's row ``checkin_id`` as ``recent_checkins`` reads it back, or None."""
    return next(
        (c for c in store.recent_checkins(store.checkin_count()) if c.id == checkin_id), None
    )


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "var" / "lib" / "kiosk" / "kiosk.db"


@pytest.fixture
def store(db_path: Path):
    with Store.open(db_path) as opened:
        yield opened


# -- opening and migrations ------------------------------------------------------------------------


def test_fresh_store_is_created_migrated_and_durable(db_path: Path) -> None:
    assert not db_path.parent.exists()
    with Store.open(db_path) as store:
        assert store.schema_version() == LATEST_VERSION == MIGRATIONS[-1].version
        assert store.integrity_check() == ["ok"]
        assert store.replica_info() == ReplicaInfo(version=0, synced_at=None)
        assert store.code_salt() == b""
        assert store.member_count() == 0
        assert store.clock_floor() is None
        conn = store._conn  # the store's own connection: per-connection settings live there
        assert conn is not None
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
        assert conn.execute("PRAGMA foreign_keys").fetchone()[0] == 1
        assert conn.execute("PRAGMA busy_timeout").fetchone()[0] == 5000
    # Reopening finds nothing to migrate and keeps what was written.
    with Store.open(db_path) as store:
        record(store)
    with Store.open(db_path) as store:
        assert store.checkin_count() == 1
        raw = sqlite3.connect(db_path, isolation_level=None)
        assert apply_migrations(raw) == []
        raw.close()


def test_migrations_from_scratch_apply_in_order(tmp_path: Path) -> None:
    conn = sqlite3.connect(tmp_path / "m.db", isolation_level=None)
    assert apply_migrations(conn, target=1) == [1]
    assert conn.execute("PRAGMA user_version").fetchone()[0] == 1
    assert apply_migrations(conn) == list(range(2, LATEST_VERSION + 1))
    assert conn.execute("PRAGMA user_version").fetchone()[0] == LATEST_VERSION
    with pytest.raises(ValueError, match="unknown schema version"):
        apply_migrations(conn, target=LATEST_VERSION + 1)
    conn.close()


def _v1_database_with_journal(path: Path) -> None:
    """A database as release 1 left it: schema v1, a replica, and check-ins (two pending, one
    synced) written the way v1 wrote them, counter and row in one transaction."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    apply_migrations(conn, target=1)
    rows = [
        ("01900000-0000-7000-8000-000000000001", "m-bob", "ms-bob-pack", 1, "pending"),
        ("01900000-0000-7000-8000-000000000002", "m-bob", "ms-bob-pack", 1, "synced"),
        ("01900000-0000-7000-8000-000000000003", "m-bob", "ms-bob-pack", 1, "pending"),
    ]
    for seq, (checkin_id, member, membership, classes, state) in enumerate(rows, start=1):
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("UPDATE journal_counter SET last_seq = last_seq + 1")
        conn.execute(
            "INSERT INTO checkins (id, seq, member_id, membership_id, door_id, decision, reason,"
            " classes_used, replica_version, wall_time, sync_state, synced_at)"
            " VALUES (?, ?, ?, ?, 'front', 'granted', 'class_pack', ?, 3, ?, ?, ?)",
            (
                checkin_id,
                seq,
                member,
                membership,
                classes,
                f"2024-05-0{seq}T10:00:00.000000Z",
                state,
                "2024-05-05T00:00:00.000000Z" if state == "synced" else None,
            ),
        )
        conn.execute("COMMIT")
    conn.close()


def test_upgrade_from_v1_keeps_pending_checkins(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    _v1_database_with_journal(path)
    with Store.open(path) as store:
        assert store.schema_version() == LATEST_VERSION
        assert store.counts_by_state() == {"pending": 2, "synced": 1, "rejected": 0}
        pending = store.pending_checkins()
        assert [c.seq for c in pending] == [1, 3]
        old = pending[0]
        assert old.id == "01900000-0000-7000-8000-000000000001"
        assert old.wall_time == datetime(2024, 5, 1, 10, 0, tzinfo=UTC)
        assert (old.member_id, old.membership_id, old.classes_used) == ("m-bob", "ms-bob-pack", 1)
        # v1 did not record clock provenance; the upgrade says so instead of inventing it.
        assert (old.boot_id, old.monotonic_ns, old.clock_quality) == ("", 0, ClockQuality.UNSYNCED)
        # The counter carried over: the sequence continues without a gap or a reuse.
        assert record(store).seq == 4
        # The old pending class uses still count against the balance after the upgrade.
        store.replace_replica(snapshot())
        facts = store.member_facts("m-bob", "front")
        assert facts is not None
        assert facts.pending_uses == {"ms-bob-pack": 2}
        assert store.integrity_check() == ["ok"]


def test_failed_migration_rolls_back_to_the_previous_version(tmp_path: Path) -> None:
    path = tmp_path / "clash.db"
    _v1_database_with_journal(path)
    # An object with the name v2 wants makes v2 fail after its ALTER TABLEs ran.
    raw = sqlite3.connect(path, isolation_level=None)
    raw.execute("CREATE INDEX checkins_by_wall_time ON plans (name)")
    raw.close()
    with pytest.raises(StoreError, match=re.escape(str(path))):
        Store.open(path)
    raw = sqlite3.connect(path, isolation_level=None)
    assert raw.execute("PRAGMA user_version").fetchone()[0] == 1
    columns = [row[1] for row in raw.execute("PRAGMA table_info(checkins)")]
    assert "clock_quality" not in columns
    assert raw.execute("SELECT COUNT(*) FROM checkins").fetchone()[0] == 3
    raw.close()


def test_newer_schema_is_refused_and_left_untouched(db_path: Path) -> None:
    with Store.open(db_path) as store:
        record(store)
    raw = sqlite3.connect(db_path, isolation_level=None)
    raw.execute(f"PRAGMA user_version = {LATEST_VERSION + 5}")
    raw.close()
    before = db_path.read_bytes()
    for readonly in (False, True):
        with pytest.raises(StoreError) as caught:
            Store.open(db_path, readonly=readonly)
        message = str(caught.value)
        assert str(LATEST_VERSION + 5) in message
        assert f"version {LATEST_VERSION}" in message
        assert str(db_path) in message
    assert db_path.read_bytes() == before


@pytest.mark.parametrize("readonly", [False, True])
def test_garbage_file_is_reported_and_left_byte_identical(tmp_path: Path, readonly: bool) -> None:
    path = tmp_path / "kiosk.db"
    garbage = b"this is a gym's spreadsheet, not a database\n" * 200
    path.write_bytes(garbage)
    with pytest.raises(StoreError) as caught:
        Store.open(path, readonly=readonly)
    message = str(caught.value)
    assert str(path) in message
    assert "not a SQLite database or is damaged" in message
    assert "left untouched" in message
    assert "restore a backup" in message
    assert caught.value.code == "SQLITE_NOTADB"
    assert path.read_bytes() == garbage
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kiosk.db"]


# -- read-only -------------------------------------------------------------------------------------


def test_readonly_reads_but_refuses_every_write(db_path: Path) -> None:
    with Store.open(db_path) as writer:
        writer.replace_replica(snapshot())
        first = record(writer)
    # The writer is closed: no -wal file is left, and a read-only open still works.
    with Store.open(db_path, readonly=True) as reader:
        assert reader.readonly
        assert checkin_by_id(reader, first.id) == first
        assert reader.member_count() == 3
        attempts = {
            "append": lambda: record(reader),
            "replica": lambda: reader.replace_replica(snapshot(version=8)),
            "prune": lambda: reader.prune_synced(T0 + timedelta(days=999)),
            "mark": lambda: reader.mark_synced([first.id], at=T0),
        }
        for name, attempt in attempts.items():
            with pytest.raises(StoreError) as caught:
                attempt()
            assert caught.value.code == "SQLITE_READONLY", name
            assert "read-only" in str(caught.value), name
            assert str(db_path) in str(caught.value), name
        assert "check-in NOT recorded" in _message_of(lambda: record(reader))
    with Store.open(db_path) as writer:
        assert writer.checkin_count() == 1
        assert writer.replica_info().version == 7
        assert writer.counts_by_state()["pending"] == 1


def _message_of(action) -> str:
    with pytest.raises(StoreError) as caught:
        action()
    return str(caught.value)


def test_readonly_sees_commits_of_a_live_writer(db_path: Path) -> None:
    with Store.open(db_path) as writer, Store.open(db_path, readonly=True) as reader:
        assert reader.checkin_count() == 0
        checkin = record(writer)
        assert reader.recent_checkins() == [checkin]


def test_readonly_never_creates_nor_migrates(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "kiosk.db"
    assert "does not exist" in _message_of(lambda: Store.open(missing, readonly=True))
    assert not missing.parent.exists()
    old = tmp_path / "old.db"
    _v1_database_with_journal(old)
    message = _message_of(lambda: Store.open(old, readonly=True))
    assert "never migrates" in message
    assert str(old) in message
    raw = sqlite3.connect(old)
    assert raw.execute("PRAGMA user_version").fetchone()[0] == 1
    raw.close()


# -- journal ---------------------------------------------------------------------------------------


def test_append_assigns_gap_free_seq_and_unique_uuid7_ids(store: Store) -> None:
    made = [record(store, at=T0 + timedelta(seconds=i), mono=i) for i in range(25)]
    assert [c.seq for c in made] == list(range(1, 26))
    parsed = [uuid.UUID(c.id) for c in made]
    assert all(u.version == 7 for u in parsed)
    assert len({c.id for c in made}) == 25
    # UUIDv7 ids sort by creation, like the sequence.
    assert sorted(c.id for c in made) == [c.id for c in made]
    assert all(checkin_by_id(store, c.id) == c for c in made)
    assert checkin_by_id(store, "01900000-0000-7000-8000-00000000dead") is None
    assert store.checkin_count() == 25
    assert [c.seq for c in store.recent_checkins(4)] == [25, 24, 23, 22]
    assert [c.seq for c in store.pending_checkins(3)] == [1, 2, 3]


def test_two_handles_on_one_file_share_the_sequence(db_path: Path) -> None:
    # The scanner and the demo's other components each open their own store on the same file.
    with Store.open(db_path) as a, Store.open(db_path) as b:
        assert [record(a).seq, record(b).seq, record(a).seq] == [1, 2, 3]


def test_append_round_trips_every_field_in_utc(store: Store) -> None:
    plus_two = timezone(timedelta(hours=2))
    local = datetime(2024, 5, 6, 11, 0, 0, 654321, tzinfo=plus_two)
    decision = Decision(Verdict.GRANTED, Reason.CLASS_PACK, "m-bob", "ms-bob-pack", 1, "detail")
    for quality in ClockQuality:
        checkin = store.append_checkin(
            decision,
            door_id="side",
            replica_version=42,
            now=Now(local, 987_654_321_000, BOOT, quality),
        )
        assert checkin.wall_time == local
        assert checkin.wall_time.tzinfo is UTC
        assert checkin.wall_time.microsecond == 654321
        assert checkin.clock_quality is quality
        stored = checkin_by_id(store, checkin.id)
        assert stored == checkin
        assert (stored.decision, stored.reason) == (Verdict.GRANTED, Reason.CLASS_PACK)
        assert (stored.door_id, stored.replica_version) == ("side", 42)
        assert (stored.monotonic_ns, stored.boot_id) == (987_654_321_000, BOOT)
        assert stored.sync_state is SyncState.PENDING


def test_naive_wall_time_is_refused_before_anything_is_written(store: Store) -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        record(store, at=datetime(2024, 5, 6, 9, 0))
    assert store.checkin_count() == 0
    assert record(store).seq == 1


def test_mark_synced_and_rejected_only_move_pending_rows(store: Store) -> None:
    a, b, c = (record(store) for _ in range(3))
    assert store.mark_synced([a.id, b.id, "no-such-id"], at=T0) == 2
    assert store.mark_synced([a.id], at=T0) == 0  # a repeated acknowledgement changes nothing
    assert store.mark_rejected([b.id, c.id], at=T0) == 1
    assert store.counts_by_state() == {"pending": 0, "synced": 2, "rejected": 1}
    assert checkin_by_id(store, c.id).sync_state is SyncState.REJECTED
    assert store.pending_checkins() == []


def test_prune_deletes_only_old_synced_rows_and_seq_stays_gap_free(store: Store) -> None:
    old = [record(store, at=T0 + timedelta(minutes=i)) for i in range(6)]
    store.mark_synced([c.id for c in old[:3]], at=T0 + timedelta(hours=1))
    store.mark_rejected([old[3].id], at=T0 + timedelta(hours=1))
    recent = record(store, at=T0 + timedelta(days=30))
    store.mark_synced([recent.id], at=T0 + timedelta(days=30))
    cutoff = T0 + timedelta(days=7)

    assert store.prune_synced(cutoff) == 3
    assert store.prune_synced(cutoff) == 0
    remaining = {c.seq for c in store.recent_checkins(100)}
    assert remaining == {4, 5, 6, 7}  # rejected, two pending, and the recent synced row
    assert store.counts_by_state() == {"pending": 2, "synced": 1, "rejected": 1}
    # Pruned numbers are never handed out again.
    assert record(store).seq == 8
    # Even a cutoff far in the future never touches pending or rejected rows.
    assert store.prune_synced(T0 + timedelta(days=10_000)) == 1
    assert store.counts_by_state() == {"pending": 3, "synced": 0, "rejected": 1}


def test_seq_is_not_reused_when_the_newest_rows_are_pruned(store: Store) -> None:
    made = [record(store) for _ in range(3)]
    store.mark_synced([c.id for c in made], at=T0)
    assert store.prune_synced(T0 + timedelta(days=1)) == 3
    assert store.checkin_count() == 0
    assert record(store).seq == 4


def test_prune_keeps_rows_synced_recently_even_if_recorded_long_ago(store: Store) -> None:
    # Recorded with a clock stuck in 2020 (unsynced), uploaded only now.
    stale_clock = record(store, at=datetime(2020, 1, 1, tzinfo=UTC))
    store.mark_synced([stale_clock.id], at=T0)
    assert store.prune_synced(T0 - timedelta(days=7)) == 0
    assert store.prune_synced(T0 + timedelta(days=7)) == 1


def test_clock_floor_is_the_newest_known_time(store: Store) -> None:
    assert store.clock_floor() is None
    record(store, at=T0)
    record(store, at=T0 - timedelta(hours=5))  # a clock that stepped back does not lower it
    assert store.clock_floor() == T0
    store.replace_replica(snapshot(synced_at=T0 + timedelta(hours=1)))
    assert store.clock_floor() == T0 + timedelta(hours=1)
    record(store, at=T0 + timedelta(hours=2))
    assert store.clock_floor() == T0 + timedelta(hours=2)


# -- replica ---------------------------------------------------------------------------------------


def test_replace_replica_round_trips_and_replaces_everything(store: Store) -> None:
    store.replace_replica(snapshot())
    assert store.replica_info() == ReplicaInfo(version=7, synced_at=T0)
    assert store.code_salt() == b"\x00salt\xff"
    assert store.member_count() == 3
    assert store.find_member_id("hash-bob") == "m-bob"
    assert store.find_member_id("hash-nobody") is None
    assert store.site_facts() == SiteFacts(
        opening_hours=(AccessWindow(0, 360, 1320), AccessWindow(1, 360, 1320)),
        closures=(Closure(date(2024, 12, 25), date(2024, 12, 26), "Christmas"),),
    )
    grace = store.member_facts("m-grace", "front")
    assert grace is not None and grace.member == GRACE and grace.memberships == ()

    store.replace_replica(
        snapshot(
            members=[(ALICE, "hash-alice-2")],
            memberships=[ALICE_SUB],
            plans=[FULL],
            opening_hours=[],
            closures=[],
            version=8,
            synced_at=None,
            code_salt=b"new",
        )
    )
    assert store.replica_info() == ReplicaInfo(version=8, synced_at=None)
    assert store.code_salt() == b"new"
    assert store.member_count() == 1
    assert store.find_member_id("hash-alice") is None
    assert store.find_member_id("hash-alice-2") == "m-alice"
    assert store.member_facts("m-bob", "front") is None
    assert store.site_facts() == SiteFacts()


BROKEN_SNAPSHOTS = {
    "duplicate member id": {"members": [(ALICE, "h1"), (BOB, "h2"), (ALICE, "h3")]},
    "duplicate code hash": {"members": [(ALICE, "same"), (BOB, "same"), (GRACE, "h3")]},
    "membership of an unknown member": {
        "memberships": [ALICE_SUB, replace(BOB_PT, member_id="m-ghost")]
    },
    "membership of an unknown plan": {
        "memberships": [ALICE_SUB, replace(BOB_PACK, plan_id="plan-ghost")]
    },
    "weekday out of range": {"opening_hours": [AccessWindow(7, 0, 60)]},
    "window ending before it starts": {
        "plans": [FULL, Plan("p", "P", (AccessWindow(1, 600, 60),))]
    },
}


@pytest.mark.parametrize("broken", BROKEN_SNAPSHOTS.values(), ids=BROKEN_SNAPSHOTS.keys())
def test_failed_replace_leaves_the_old_replica_intact(store: Store, broken: dict) -> None:
    store.replace_replica(snapshot())
    before = (
        store.replica_info(),
        store.code_salt(),
        store.member_count(),
        store.member_facts("m-bob", "front"),
        store.site_facts(),
    )
    bad = snapshot(version=99, synced_at=T0 + timedelta(days=1), code_salt=b"other", **broken)
    with pytest.raises(StoreError) as caught:
        store.replace_replica(bad)
    assert "replica NOT replaced" in str(caught.value)
    assert str(store.path) in str(caught.value)
    after = (
        store.replica_info(),
        store.code_salt(),
        store.member_count(),
        store.member_facts("m-bob", "front"),
        store.site_facts(),
    )
    assert after == before
    assert store.find_member_id("hash-alice") == "m-alice"


def test_replace_replica_streams_from_generators(store: Store) -> None:
    # A sync agent hands over lazily produced rows; nothing has to be a list.
    many = 2_000
    members = (
        (Member(f"m{i}", "org", "F", "L", MemberStatus.ACTIVE), f"h{i}") for i in range(many)
    )
    store.replace_replica(snapshot(members=members, memberships=(), closures=iter(())))
    assert store.member_count() == many
    assert store.find_member_id("h1999") == "m1999"


# -- door path -------------------------------------------------------------------------------------


def test_member_facts_counts_only_pending_uses_and_last_entry_at_this_door(store: Store) -> None:
    store.replace_replica(snapshot())
    hour = timedelta(hours=1)
    rejected = record(store, granted("m-bob", "ms-bob-pack", 1), at=T0 - hour, mono=5)
    pending_front = record(store, granted("m-bob", "ms-bob-pack", 1), at=T0, mono=10)
    synced_front = record(store, granted("m-bob", "ms-bob-pack", 1), at=T0 + hour, mono=20)
    pt_side = record(store, granted("m-bob", "ms-bob-pt", 1), door="side", at=T0 + 2 * hour)
    record(
        store,
        Decision(Verdict.DENIED, Reason.PASSBACK, "m-bob", "ms-bob-pack", 0),
        at=T0 + 3 * hour,
    )
    record(store, granted("m-alice", "ms-alice"), at=T0 + 4 * hour)  # someone else
    store.mark_synced([synced_front.id], at=T0 + hour)
    store.mark_rejected([rejected.id], at=T0 + hour)

    facts = store.member_facts("m-bob", "front")
    assert facts is not None
    assert facts.member == BOB
    assert facts.memberships == (BOB_PACK, BOB_PT)
    assert facts.plans == {"plan-offpeak": OFF_PEAK}
    # One pending pack use at the front, one pending PT use at the side; the synced and the
    # rejected uses are the cloud's business now.
    assert facts.pending_uses == {"ms-bob-pack": 1, "ms-bob-pt": 1}
    # Newest GRANTED entry at THIS door: not the later denial, not the side door, and a synced
    # row counts (the turnstile turned all the same).
    assert facts.last_entry == LastEntry(T0 + hour, BOOT, 20)
    side = store.member_facts("m-bob", "side")
    assert side is not None and side.last_entry == LastEntry(pt_side.wall_time, BOOT, 1_000)
    back = store.member_facts("m-bob", "back")
    assert back is not None and back.last_entry is None
    assert pending_front.sync_state is SyncState.PENDING
    assert store.member_facts("m-nobody", "front") is None


def test_door_path_queries_use_indexes_never_scans(store: Store) -> None:
    store.replace_replica(snapshot())
    for i in range(50):
        record(store, granted("m-bob", "ms-bob-pack", 1), at=T0 + timedelta(minutes=i))
    raw = sqlite3.connect(store.path)
    # The replica file, attached as every store attaches it (kiosk.data.database).
    raw.execute("ATTACH DATABASE ? AS replica", (str(store.replica_file),))
    raw.execute("ANALYZE")  # the plans must hold with statistics too, not only without
    for name, sql in DOOR_PATH_QUERIES.items():
        params = ("x",) * sql.count("?")
        plan = [row[3] for row in raw.execute(f"EXPLAIN QUERY PLAN {sql}", params)]
        text = " | ".join(plan)
        assert not re.search(r"\bSCAN\b", text), f"{name} scans a table: {text}"
        assert "TEMP B-TREE" not in text, f"{name} sorts rows: {text}"
        if sql.startswith(("SELECT", "UPDATE")):
            assert "USING" in text, f"{name} uses no index: {text}"
    raw.close()


# -- failures --------------------------------------------------------------------------------------


def test_disk_full_refuses_the_checkin_and_keeps_earlier_rows(store: Store) -> None:
    earlier = [record(store) for _ in range(5)]
    conn = store._conn  # the cap is per connection, so it must be the store's own
    assert conn is not None
    (pages,) = conn.execute("PRAGMA page_count").fetchone()
    conn.execute(f"PRAGMA max_page_count = {pages}")
    written = 0
    with pytest.raises(StoreError) as caught:
        for _ in range(5_000):  # a few pages' worth; the loop ends at the first full page
            record(store)
            written += 1
    message = str(caught.value)
    assert message.startswith("disk full: check-in NOT recorded")
    assert str(store.path) in message
    assert caught.value.code == "SQLITE_FULL"
    assert [checkin_by_id(store, c.id) for c in earlier] == earlier
    assert store.checkin_count() == 5 + written
    conn.execute("PRAGMA max_page_count = 1073741823")
    # The failed append did not advance the sequence.
    assert record(store).seq == 5 + written + 1
    assert store.integrity_check() == ["ok"]


def test_lock_held_too_long_is_reported_and_costs_no_sequence_number(db_path: Path) -> None:
    with Store.open(db_path, busy_timeout_ms=20) as store:
        other = sqlite3.connect(db_path, isolation_level=None)
        other.execute("BEGIN IMMEDIATE")  # another process in a long write
        message = _message_of(lambda: record(store))
        assert "locked by another process for more than 20 ms" in message
        assert "check-in NOT recorded" in message
        other.execute("ROLLBACK")
        other.close()
        assert record(store).seq == 1


def test_a_closed_store_says_so(db_path: Path) -> None:
    store = Store.open(db_path)
    store.close()
    store.close()
    assert "is closed" in _message_of(store.checkin_count)


def test_unwritable_location_is_reported(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the data folder should be")
    message = _message_of(lambda: Store.open(blocker / "kiosk.db"))
    assert str(blocker) in message
    assert blocker.read_text() == "a file where the data folder should be"


def test_last_entry_is_the_latest_recorded_even_if_the_clock_stepped_back(store: Store) -> None:
    store.replace_replica(snapshot())
    record(store, granted("m-alice", "ms-alice"), at=T0, mono=100)
    record(store, granted("m-alice", "ms-alice"), at=T0 - timedelta(hours=3), mono=200)
    facts = store.member_facts("m-alice", "front")
    assert facts is not None
    assert facts.last_entry == LastEntry(T0 - timedelta(hours=3), BOOT, 200)
