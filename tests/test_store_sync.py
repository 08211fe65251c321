"""The store's sync side: protocol rows with hashes, staged changes applied at a checkpoint
(verified from the replica's own record, not a full read), snapshots built in a replica file of
their own and switched in, class uses between upload and pull, the journal's position, clock
anchors and the sync status. (Kills at every phase of a build and a switch, and the door during
one: test_replica_switch.py.)

Real SQLite files throughout; checksums are compared with ``sync.protocol.checksum`` computed
independently from the rows.
"""

from __future__ import annotations

import contextlib
import random
import re
import sqlite3
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest

from kiosk.core.model import (
    AccessWindow,
    Checkin,
    ClockQuality,
    Closure,
    Decision,
    Member,
    Membership,
    MembershipType,
    MemberStatus,
    Now,
    Plan,
    Reason,
    Verdict,
)
from kiosk.data.database import StoreError
from kiosk.data.journal import UNKNOWN_CLOUD_VERSION, JournalPosition
from kiosk.data.migrations import LATEST_VERSION, apply_migrations
from kiosk.data.replica import ReplicaSnapshot, snapshot_rows
from kiosk.data.store import Store
from sync.protocol import Anchor, Checkpoint, ReplicaRow, checksum, make_row

T0 = datetime(2026, 5, 6, 9, 0, tzinfo=UTC)
SALT = b"\x01" * 32


def member(n: int, code: int | None = None, **changes) -> ReplicaRow:
    data = {
        "organization_id": "org-1",
        "first_name": f"First{n}",
        "last_name": "Last",
        "status": "ACTIVE",
        "is_staff": False,
        "code_hash": f"{n if code is None else code:064x}",
    }
    data.update(changes)
    return make_row("member", f"m{n}", data)


def membership(n: int, member_n: int, *, plan: str | None = None, left: int | None = None):
    return make_row(
        "membership",
        f"ms{n}",
        {
            "member_id": f"m{member_n}",
            "plan_id": plan,
            "type": "CLASS_PACK" if left is not None else "SUBSCRIPTION",
            "start_date": "2026-01-01",
            "end_date": None,
            "remaining_classes": left,
        },
    )


def plan(pid: str, name: str = "Plan", windows=()) -> ReplicaRow:
    return make_row("plan", pid, {"name": name, "windows": [list(w) for w in windows]})


def hours(hid: str, weekday: int = 0) -> ReplicaRow:
    return make_row("hours", hid, {"weekday": weekday, "open_minute": 360, "close_minute": 1320})


def closure(cid: str) -> ReplicaRow:
    return make_row(
        "closure", cid, {"start_date": "2026-12-25", "end_date": "2026-12-26", "reason": "Xmas"}
    )


def tombstone(kind: str, row_id: str) -> ReplicaRow:
    return ReplicaRow(kind, row_id, None, deleted=True)


def checkpoint_of(version: int, rows: list[ReplicaRow]) -> Checkpoint:
    return Checkpoint(version, checksum(r.row_hash() for r in rows), len(rows))


BASE = [
    plan("p1", "Full", [(0, 360, 960)]),
    member(1),
    member(2),
    membership(1, 1, plan="p1"),
    membership(2, 2, left=5),
    hours("h0"),
    closure("c1"),
]


def load(store: Store, rows: list[ReplicaRow], version: int = 10) -> None:
    """A replica through the snapshot path."""
    store.begin_snapshot()
    store.add_snapshot_rows(rows)
    result = store.apply_checkpoint(
        checkpoint_of(version, rows), code_salt=SALT, synced_at=T0, into_snapshot=True
    )
    assert result.ok, result


def facts_view(store: Store):
    """What the door reads, for before/after comparisons."""
    return (
        store.replica_info(),
        store.code_salt(),
        store.replica_checksum(),
        store.member_facts("m1", "front"),
        store.member_facts("m2", "front"),
        store.site_facts(),
        store.find_member_id(f"{1:064x}"),
    )


@pytest.fixture
def store(tmp_path: Path):
    with Store.open(tmp_path / "kiosk.db") as opened:
        yield opened


def now_at(wall: datetime) -> Now:
    return Now(wall=wall, monotonic_ns=1, boot_id="boot", quality=ClockQuality.NTP_SYNCED)


def use_class(store: Store, member_id: str, membership_id: str):
    decision = Decision(Verdict.GRANTED, Reason.CLASS_PACK, member_id, membership_id, 1)
    return store.append_checkin(decision, door_id="front", replica_version=10, now=now_at(T0))


def checkin_by_id(store: Store, checkin_id: str) -> Checkin | None:
    """The journal's row ``checkin_id`` as ``recent_checkins`` reads it back, or None."""
    return next(
        (c for c in store.recent_checkins(store.checkin_count()) if c.id == checkin_id), None
    )


_ROWS = (
    "SELECT (SELECT COUNT(*) FROM plans) + (SELECT COUNT(*) FROM members)"
    " + (SELECT COUNT(*) FROM memberships) + (SELECT COUNT(*) FROM opening_hours)"
    " + (SELECT COUNT(*) FROM closures)"
)


def replica_files(store: Store) -> list[Path]:
    """The replica files beside the store's database (in use, being built, or left behind)."""
    return sorted(
        p
        for p in store.path.parent.iterdir()
        if re.fullmatch(r"kiosk\.db-replica-[0-9a-f]{32}", p.name)
    )


def building_rows(store: Store) -> int:
    """How many rows the replica files not in use hold (a snapshot being built, or what a killed
    build left), read with plain SQL beside the store's connection; 0 when there are none."""
    total = 0
    for path in replica_files(store):
        if path == store.replica_file:
            continue
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as conn:
            total += int(conn.execute(_ROWS).fetchone()[0])
    return total


# -- migration v3 ----------------------------------------------------------------------------------


def _v2_database(path: Path) -> None:
    conn = sqlite3.connect(path, isolation_level=None)
    assert apply_migrations(conn, target=2) == [1, 2]
    conn.execute("INSERT INTO members (id, organization_id, first_name, last_name, status, code_hash)"
                 " VALUES ('m2', 'org-1', 'Bob', 'B', 'ACTIVE', 'hash-bob')")  # fmt: skip
    conn.execute(
        "INSERT INTO memberships (id, member_id, type, start_date, remaining_classes)"
        " VALUES ('ms2', 'm2', 'CLASS_PACK', '2026-01-01', 5)"
    )
    conn.execute("INSERT INTO opening_hours (weekday, open_minute, close_minute) VALUES (0, 1, 2)")
    conn.execute("INSERT INTO replica_meta (key, value) VALUES ('version', '7')")
    for seq, state in enumerate(("pending", "synced", "pending"), start=1):
        conn.execute("UPDATE journal_counter SET last_seq = last_seq + 1")
        conn.execute(
            "INSERT INTO checkins (id, seq, member_id, membership_id, door_id, decision, reason,"
            " classes_used, replica_version, wall_time, sync_state, synced_at, boot_id,"
            " monotonic_ns, clock_quality)"
            " VALUES (?, ?, 'm2', 'ms2', 'front', 'granted', 'class_pack', 1, 7, ?, ?, ?, 'b', ?,"
            " 'unsynced')",
            (
                f"01900000-0000-7000-8000-00000000000{seq}",
                seq,
                f"2026-05-0{seq}T10:00:00.000000Z",
                state,
                "2026-05-05T00:00:00.000000Z" if state == "synced" else None,
                seq * 100,
            ),
        )
    conn.close()


def test_upgrade_from_v2_keeps_the_journal_and_marks_the_replica_unverified(tmp_path):
    path = tmp_path / "v2.db"
    _v2_database(path)
    with Store.open(path) as store:
        assert store.schema_version() == LATEST_VERSION == 6
        # The replica was carried over into a file of its own (kiosk.data.database).
        assert store.replica_file is not None and store.replica_info().version == 7
        assert store.counts_by_state() == {"pending": 2, "synced": 1, "rejected": 0}
        assert [c.seq for c in store.pending_checkins()] == [1, 3]
        assert checkin_by_id(store, "01900000-0000-7000-8000-000000000003").monotonic_ns == 300
        # Old rows carry no hash: the checksum is unknown, so the agent takes a fresh snapshot.
        assert store.replica_checksum() == (3, None)
        # The door keeps working on the old replica, pending uses still counted.
        facts = store.member_facts("m2", "front")
        assert facts is not None and facts.pending_uses == {"ms2": 2}
        assert store.journal_position() == JournalPosition(
            last_seq=3,
            synced_through_seq=0,
            retained_from_seq=1,
            backlog=2,
            oldest_pending_at=datetime(2026, 5, 1, 10, tzinfo=UTC),
        )
        # A snapshot replaces the legacy rows (hours without an id included).
        load(store, BASE)
        assert store.replica_checksum() == (len(BASE), checkpoint_of(0, BASE).checksum)
        assert store.site_facts().opening_hours == (AccessWindow(0, 360, 1320),)
        assert store.integrity_check() == ["ok"]


# -- rows, hashes and checksums --------------------------------------------------------------------


def test_checksum_in_sql_equals_the_protocols_for_any_hashes(store):
    rng = random.Random(7)
    extremes = [-(2**63), 2**63 - 1, -1, 0, 1, 2**32, -(2**32), 2**31 - 1]
    values = extremes + [rng.randrange(-(2**63), 2**63) for _ in range(2000)]
    load(store, [])
    with contextlib.closing(sqlite3.connect(store.replica_file)) as conn, conn:
        conn.executemany(
            "INSERT INTO closures (id, start_date, end_date, reason, row_hash) VALUES"
            " (?, '2026-01-01', '2026-01-01', '', ?)",
            ((f"c{n}", v) for n, v in enumerate(values)),
        )
    assert store.replica_checksum() == (len(values), checksum(values))


def test_replace_replica_fills_ids_and_hashes_matching_the_protocol(store):
    snap = ReplicaSnapshot(
        members=[(Member("m1", "org-1", "A", "B", MemberStatus.ACTIVE), f"{1:064x}")],
        memberships=[Membership("ms1", "m1", MembershipType.PT, date(2026, 1, 1), None, 3, "p1")],
        plans=[Plan("p1", "Off-peak", (AccessWindow(2, 60, 120), AccessWindow(0, 360, 960)))],
        opening_hours=[AccessWindow(0, 360, 1320), AccessWindow(0, 360, 1320)],
        closures=[Closure(date(2026, 12, 25), date(2026, 12, 26), "Xmas")],
        version=4,
        synced_at=T0,
        code_salt=SALT,
    )
    rows = list(snapshot_rows(snap))
    # The data is already in the protocol's normal form: the cloud would hash the same bytes.
    assert all(make_row(r.kind, r.id, r.data) == r for r in rows)
    assert [r.id for r in rows if r.kind == "hours"] == ["hours-0-360-1320", "hours-0-360-1320-2"]
    store.replace_replica(snap)
    assert store.replica_checksum() == (len(rows), checkpoint_of(0, rows).checksum)
    # The ids and hashes let the next checkpoint apply on top of a seeded replica.
    store.stage_changes([tombstone("hours", "hours-0-360-1320-2")])
    rest = [r for r in rows if r.id != "hours-0-360-1320-2"]
    result = store.apply_checkpoint(
        checkpoint_of(5, rest), code_salt=SALT, synced_at=T0, into_snapshot=False
    )
    assert result.ok and store.replica_info().version == 5


# -- changes at a checkpoint -----------------------------------------------------------------------


def test_staged_changes_apply_at_a_matching_checkpoint(store):
    load(store, BASE)
    changed = member(1, status="PAUSED")
    new_member, new_ms = member(3), membership(3, 3, left=2)
    store.stage_changes([changed, tombstone("closure", "c1"), tombstone("member", "m-never")])
    # A later page changes a row staged earlier: the later change wins.
    store.stage_changes([new_ms, new_member, member(3, first_name="Third")])
    after = [r for r in BASE if r.id not in ("m1", "c1")] + [
        changed,
        member(3, first_name="Third"),
        new_ms,
    ]
    result = store.apply_checkpoint(
        checkpoint_of(12, after), code_salt=SALT, synced_at=T0 + timedelta(1), into_snapshot=False
    )
    assert result.ok and result.applied == 5 and result.switch_ms is None  # m3 staged twice
    assert store.stored_replica_totals() == store.replica_checksum()  # kept without a full read
    assert store.replica_info().version == 12
    assert store.replica_info().synced_at == T0 + timedelta(1)
    assert store.member_facts("m1", "front").member.status is MemberStatus.PAUSED
    third = store.member_facts("m3", "front")
    assert third.member.first_name == "Third"
    assert [ms.id for ms in third.memberships] == ["ms3"]  # child staged before parent: fine
    assert store.site_facts().closures == ()
    assert store.replica_checksum() == (len(after), checkpoint_of(0, after).checksum)
    # Staged changes are consumed: applying again finds nothing to do.
    again = store.apply_checkpoint(
        checkpoint_of(12, after), code_salt=SALT, synced_at=T0, into_snapshot=False
    )
    assert again.ok and again.applied == 0


def test_a_mismatching_checkpoint_rolls_everything_back(store):
    load(store, BASE)
    before = facts_view(store)
    store.stage_changes([member(1, status="EXPIRED"), tombstone("membership", "ms2")])
    wrong = Checkpoint(11, "0123456789abcdef", len(BASE) - 1)
    result = store.apply_checkpoint(
        wrong, code_salt=b"\x09" * 32, synced_at=T0, into_snapshot=False
    )
    assert not result.ok
    assert result.count == len(BASE) - 1 and result.checksum != wrong.checksum
    assert facts_view(store) == before


def test_a_code_may_move_between_members_within_one_checkpoint(store):
    load(store, BASE)
    # m2 takes m1's code and m1 gets a new one: applied in any order, the unique index would
    # see two members with one code unless the change clears them first.
    moved = [member(2, code=1), member(1, code=99)]
    store.stage_changes(moved)
    after = [r for r in BASE if r.id not in ("m1", "m2")] + moved
    assert store.apply_checkpoint(
        checkpoint_of(11, after), code_salt=SALT, synced_at=T0, into_snapshot=False
    ).ok
    assert store.find_member_id(f"{1:064x}") == "m2"
    assert store.find_member_id(f"{99:064x}") == "m1"


def test_an_end_state_that_breaks_the_schema_is_refused_and_rolled_back(store):
    load(store, BASE)
    before = facts_view(store)
    orphan = membership(9, 42)  # member m42 does not exist
    store.stage_changes([orphan])
    with pytest.raises(StoreError, match="replica NOT changed"):
        store.apply_checkpoint(
            checkpoint_of(11, [*BASE, orphan]), code_salt=SALT, synced_at=T0, into_snapshot=False
        )
    assert facts_view(store) == before


# -- snapshots in a file of their own ----------------------------------------------------------------


def test_a_snapshot_is_built_in_a_file_of_its_own_and_switched_in_whole(store):
    load(store, BASE)
    store.begin_snapshot()
    fresh = [
        plan("p1", "Renamed", [(1, 0, 60)]),  # changed plan: its memberships keep pointing at it
        member(1),
        member(4),  # m2 is gone, and its membership with it
        membership(1, 1, plan="p1"),
        membership(4, 4, plan="p1"),
        hours("h1", weekday=3),
    ]
    old_file = store.replica_file
    store.add_snapshot_rows(fresh[:2])
    store.add_snapshot_rows(fresh[2:])
    # Until the switch, the door reads the old replica; the new one is in a file of its own.
    assert store.member_facts("m2", "front") is not None
    assert building_rows(store) == len(fresh)
    result = store.apply_checkpoint(
        checkpoint_of(20, fresh), code_salt=b"\x02" * 32, synced_at=T0, into_snapshot=True
    )
    assert result.ok and result.switch_ms is not None and result.write_ms >= result.switch_ms
    assert store.replica_file != old_file and not old_file.exists()
    assert store.replica_info().version == 20 and store.code_salt() == b"\x02" * 32
    assert store.member_facts("m2", "front") is None
    one = store.member_facts("m1", "front")
    assert [ms.plan_id for ms in one.memberships] == ["p1"]
    assert one.plans["p1"] == Plan("p1", "Renamed", (AccessWindow(1, 0, 60),))
    assert store.site_facts().opening_hours == (AccessWindow(3, 360, 1320),)
    assert store.site_facts().closures == ()
    assert store.replica_checksum() == (len(fresh), checkpoint_of(0, fresh).checksum)
    assert replica_files(store) == [store.replica_file]  # the old file's space is given back
    assert store.stored_replica_totals() == store.replica_checksum()
    assert store.integrity_check() == ["ok"]


def test_changes_since_the_first_page_apply_to_the_snapshot_before_the_switch(store):
    load(store, BASE)
    store.begin_snapshot()
    # Page 1 was read at v30; m2 was deleted and m5 added before page 2 was read.
    store.add_snapshot_rows([plan("p1", "Full", [(0, 360, 960)]), member(1), member(2)])
    store.add_snapshot_rows([member(5), membership(1, 1, plan="p1")])
    store.stage_changes(
        [tombstone("member", "m2"), member(5), tombstone("membership", "ms2")], into_snapshot=True
    )
    final = [plan("p1", "Full", [(0, 360, 960)]), member(1), member(5), membership(1, 1, plan="p1")]
    assert store.apply_checkpoint(
        checkpoint_of(32, final), code_salt=SALT, synced_at=T0, into_snapshot=True
    ).ok
    assert store.member_count() == 2 and store.member_facts("m5", "front") is not None


def test_a_snapshot_that_does_not_match_leaves_the_live_replica_alone(store):
    load(store, BASE)
    before = facts_view(store)
    store.begin_snapshot()
    store.add_snapshot_rows([member(1)])
    result = store.apply_checkpoint(
        checkpoint_of(20, [member(1), member(2)]), code_salt=SALT, synced_at=T0, into_snapshot=True
    )
    assert not result.ok and result.count == 1
    assert facts_view(store) == before
    assert replica_files(store) == [store.replica_file]  # the snapshot's file is deleted


def test_an_interrupted_snapshot_leaves_the_live_replica_usable(tmp_path):
    path = tmp_path / "kiosk.db"
    with Store.open(path) as store:
        load(store, BASE)
        before = facts_view(store)
        store.begin_snapshot()
        store.add_snapshot_rows([member(7), member(8)])
        with pytest.raises(ValueError, match="tombstone"):
            store.add_snapshot_rows([member(9), tombstone("member", "m1")])
        assert building_rows(store) == 2  # the failed page added nothing
        store.abandon_snapshot()
        assert building_rows(store) == 0 and len(replica_files(store)) == 1
    # A new process reads the old replica as before. (A writer killed mid-build leaves its file
    # behind instead: test_replica_switch.py.)
    with Store.open(path) as store:
        assert facts_view(store) == before


def test_snapshot_rows_repeating_an_id_are_refused(store):
    store.begin_snapshot()
    store.add_snapshot_rows([member(1)])
    with pytest.raises(StoreError, match="page was not added"):
        store.add_snapshot_rows([member(2), member(1)])
    assert building_rows(store) == 1


# -- class uses between upload and pull ------------------------------------------------------------


def test_class_uses_count_until_the_replica_reaches_their_cloud_version(store):
    load(store, BASE, version=10)
    first, second, third = (use_class(store, "m2", "ms2") for _ in range(3))
    assert store.member_facts("m2", "front").pending_uses == {"ms2": 3}
    # Uploaded: the cloud lowered the balance in v11 and v12; the replica is still at v10.
    store.mark_synced([first.id, second.id], at=T0, cloud_versions={first.id: 11, second.id: 12})
    store.mark_rejected([third.id], at=T0)
    assert store.member_facts("m2", "front").pending_uses == {"ms2": 2}
    # The replica reaches v11: its balance includes the first use, not yet the second.
    store.stage_changes([membership(2, 2, left=4)])
    after = [r for r in BASE if r.id != "ms2"] + [membership(2, 2, left=4)]
    assert store.apply_checkpoint(
        checkpoint_of(11, after), code_salt=SALT, synced_at=T0, into_snapshot=False
    ).ok
    facts = store.member_facts("m2", "front")
    assert facts.pending_uses == {"ms2": 1}
    assert facts.memberships[0].remaining_classes == 4


def test_an_acknowledged_use_with_an_unknown_version_counts_until_the_next_pull(store):
    load(store, BASE, version=10)
    used = use_class(store, "m2", "ms2")
    store.mark_synced([used.id], at=T0, cloud_versions={used.id: UNKNOWN_CLOUD_VERSION})
    assert store.member_facts("m2", "front").pending_uses == {"ms2": 1}
    assert store.settle_unknown_versions(10) == 1
    assert store.member_facts("m2", "front").pending_uses == {}


# -- journal bookkeeping ---------------------------------------------------------------------------


def test_journal_position_requeue_and_prune(store):
    assert store.journal_position() == JournalPosition(0, 0, 0, 0, None)
    rows = [use_class(store, "m2", "ms2") for _ in range(5)]
    store.mark_synced([r.id for r in rows[:2]], at=T0, cloud_versions={rows[0].id: 3})
    store.mark_rejected([rows[2].id], at=T0)
    position = store.journal_position()
    assert (position.last_seq, position.synced_through_seq, position.backlog) == (5, 3, 2)
    assert position.retained_from_seq == 1 and position.oldest_pending_at == T0
    assert store.last_seq() == 5
    assert [c.seq for c in store.pending_checkins(10, after_seq=4)] == [5]
    # A cloud restored from a backup asks from seq 2: synced and rejected rows go back.
    assert store.requeue_from(2) == 2
    assert [c.seq for c in store.pending_checkins()] == [2, 3, 4, 5]
    assert checkin_by_id(store, rows[0].id).sync_state.value == "synced"
    # Everything synced and pruned: nothing retained, the range starts after the last seq.
    store.mark_synced([r.id for r in rows], at=T0)
    assert store.prune_synced(T0 + timedelta(days=1)) == 5
    assert store.journal_position() == JournalPosition(5, 5, 6, 0, None)


# -- clock anchors and status ----------------------------------------------------------------------


def test_anchors_keep_the_newest_per_boot_and_a_bounded_count(store):
    store.record_anchor(Anchor("boot-a", 5_000, T0), recorded_at=T0)
    store.record_anchor(Anchor("boot-a", 4_000, T0 - timedelta(1)), recorded_at=T0)  # older
    assert store.latest_anchor("boot-a") == Anchor("boot-a", 5_000, T0)
    store.record_anchor(Anchor("boot-a", 9_000, T0 + timedelta(seconds=4)), recorded_at=T0)
    assert store.latest_anchor("boot-a") == Anchor("boot-a", 9_000, T0 + timedelta(seconds=4))
    assert store.latest_anchor("boot-b") is None
    for n in range(40):
        store.record_anchor(Anchor(f"boot-{n}", n, T0 + timedelta(hours=n)), recorded_at=T0)
    kept = store.anchors(100)
    assert len(kept) == 32
    assert kept[0] == Anchor("boot-39", 39, T0 + timedelta(hours=39))
    assert store.latest_anchor("boot-a") is None  # the oldest boots went
    assert [a.boot_id for a in store.anchors(2)] == ["boot-39", "boot-38"]


def test_sync_status_merges_json_values(store):
    assert store.sync_status() == {}
    store.set_sync_status({"state": "running", "online": True, "backlog": 3})
    store.set_sync_status({"online": False, "last_error": None})
    assert store.sync_status() == {
        "state": "running",
        "online": False,
        "backlog": 3,
        "last_error": None,
    }


def test_snapshot_rows_of_the_demo_data_round_trip_through_make_row(store):
    from devtools.seed import demo_snapshot

    snap = demo_snapshot(T0, "UTC")
    rows = list(snapshot_rows(snap))
    assert all(make_row(r.kind, r.id, r.data) == r for r in rows)
    store.replace_replica(replace(snap, version=3))
    assert store.replica_checksum() == (len(rows), checkpoint_of(0, rows).checksum)
