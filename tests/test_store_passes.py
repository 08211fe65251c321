"""Phone passes in the door's database (docs/passes.md): the replica's ``pass`` kind (snapshots,
changes, checksums, revocation), the journal's replay memory (written with its check-in, refused
twice, pruned), migration 5 of the journal file, and the carry-over of a replica file made before
passes (format 1) into the current format. Real SQLite files throughout; checksums are compared
with ``sync.protocol.checksum`` computed from the rows."""

from __future__ import annotations

import contextlib
import logging
import sqlite3
from datetime import UTC, datetime, timedelta

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from kiosk.core.model import (
    ClockQuality,
    Decision,
    Member,
    Membership,
    MembershipType,
    MemberStatus,
    Now,
    Reason,
    Verdict,
)
from kiosk.core.passes import PRUNE_MARGIN, PassAccepted, PassRecord
from kiosk.data.database import StoreError
from kiosk.data.migrations import (
    LATEST_VERSION,
    REPLICA_FORMAT,
    REPLICA_KIND_TABLES,
    apply_migrations,
)
from kiosk.data.replica import ReplicaSnapshot, snapshot_rows
from kiosk.data.store import Store
from sync.passes import public_key_text
from sync.protocol import KINDS, Checkpoint, ReplicaRow, checksum, make_row

T0 = datetime(2026, 5, 6, 9, 0, tzinfo=UTC)
# Pass ids (8 base32 characters).
PHONE_A, PHONE_B, PHONE_C, PHONE_D, PHONE_Z = (c * 8 for c in "ABCDZ")
SALT = b"\x02" * 32
PUBLIC = Ed25519PrivateKey.from_private_bytes(bytes(range(32))).public_key().public_bytes_raw()
OTHER = Ed25519PrivateKey.from_private_bytes(bytes(range(1, 33))).public_key().public_bytes_raw()


def member(n: int) -> ReplicaRow:
    return make_row("member", f"m{n}", {
        "organization_id": "org-1", "first_name": f"First{n}", "last_name": "Last",
        "status": "ACTIVE", "is_staff": False, "code_hash": f"{n:064x}",
    })  # fmt: skip


def membership(n: int) -> ReplicaRow:
    return make_row("membership", f"ms{n}", {
        "member_id": f"m{n}", "plan_id": None, "type": "SUBSCRIPTION",
        "start_date": "2026-01-01", "end_date": None, "remaining_classes": None,
    })  # fmt: skip


def phone(pass_id: str, n: int, *, status: str = "ACTIVE", key: bytes = PUBLIC, period: int = 15):
    return make_row("pass", pass_id, {
        "member_id": f"m{n}", "organization_id": "org-1", "public_key": public_key_text(key),
        "period_s": period, "status": status,
    })  # fmt: skip


def tombstone(kind: str, row_id: str) -> ReplicaRow:
    return ReplicaRow(kind, row_id, None, deleted=True)


def checkpoint_of(version: int, rows: list[ReplicaRow]) -> Checkpoint:
    return Checkpoint(version, checksum(r.row_hash() for r in rows), len(rows))


BASE = [member(1), member(2), membership(1), membership(2), phone(PHONE_A, 1),
        phone(PHONE_B, 2, status="REVOKED", period=30)]  # fmt: skip


def load(store: Store, rows: list[ReplicaRow], version: int = 10) -> None:
    """A replica through the snapshot path (pages as the cloud sends them, in kind order)."""
    store.begin_snapshot()
    store.add_snapshot_rows(sorted(rows, key=lambda r: KINDS.index(r.kind)))
    result = store.apply_checkpoint(
        checkpoint_of(version, rows), code_salt=SALT, synced_at=T0, into_snapshot=True
    )
    assert result.ok, result


def apply(store: Store, changes: list[ReplicaRow], expected: list[ReplicaRow], version: int):
    store.stage_changes(changes)
    return store.apply_checkpoint(
        checkpoint_of(version, expected), code_salt=SALT, synced_at=T0, into_snapshot=False
    )


def totals(store: Store) -> tuple[int, str | None]:
    return store.replica_checksum()


@pytest.fixture
def store(tmp_path):
    with Store.open(tmp_path / "kiosk.db") as opened:
        yield opened


def now(seconds: float = 0, **changes) -> Now:
    return Now(T0 + timedelta(seconds=seconds), 1 + int(seconds * 1e9), "boot-1",
               ClockQuality.NTP_SYNCED, **changes)  # fmt: skip


def use(pass_id: str = PHONE_A, step: int = 100, keep_until: datetime = T0) -> PassAccepted:
    return PassAccepted(pass_id, "m1", step, keep_until)


GRANTED = Decision(Verdict.GRANTED, Reason.SUBSCRIPTION, "m1", "ms1")


# -- the replica's pass kind -------------------------------------------------------------------------


def test_a_snapshot_with_passes_is_found_by_id_and_summed_like_every_row(store):
    load(store, BASE)
    assert store.find_pass(PHONE_A) == PassRecord(PHONE_A, "m1", "org-1", PUBLIC, 15)
    revoked = store.find_pass(PHONE_B)
    assert revoked == PassRecord(PHONE_B, "m2", "org-1", PUBLIC, 30, revoked=True)
    assert store.find_pass(PHONE_C) is None
    assert store.pass_count() == 2
    assert totals(store) == (len(BASE), checkpoint_of(0, BASE).checksum)
    assert store.stored_replica_totals() == totals(store)


def test_a_snapshot_whose_passes_differ_from_the_checkpoint_is_not_switched_in(store):
    load(store, BASE)
    cloud = [*BASE[:4], phone(PHONE_A, 1, key=OTHER), BASE[5]]  # the cloud has another key
    store.begin_snapshot()
    store.add_snapshot_rows(BASE)  # ... but the pages said PUBLIC
    result = store.apply_checkpoint(
        checkpoint_of(11, cloud), code_salt=SALT, synced_at=T0, into_snapshot=True
    )
    assert not result.ok and store.replica_info().version == 10


def test_changes_revoke_add_and_delete_passes_in_one_verified_transaction(store):
    load(store, BASE)
    changes = [phone(PHONE_A, 1, status="REVOKED"), tombstone("pass", PHONE_B),
               phone(PHONE_C, 2, key=OTHER)]  # fmt: skip
    after = [*BASE[:4], changes[0], changes[2]]
    # A checkpoint that does not match rolls every change back.
    wrong = apply(store, changes, [*after, phone(PHONE_D, 1)], 11)
    assert not wrong.ok and store.find_pass(PHONE_A).revoked is False
    store.discard_staged()
    result = apply(store, changes, after, 11)
    assert result.ok and result.applied == 3
    assert store.find_pass(PHONE_A).revoked is True
    assert store.find_pass(PHONE_B) is None
    assert store.find_pass(PHONE_C) == PassRecord(PHONE_C, "m2", "org-1", OTHER, 15)
    assert totals(store) == (len(after), checkpoint_of(0, after).checksum)
    assert store.stored_replica_totals() == totals(store)


def test_a_pass_stays_when_its_member_goes_exactly_as_the_cloud_says(store):
    """No cascade from members to passes on the device: the replica holds the cloud's rows, so
    its checksum is the cloud's whatever the cloud does with a departed member's passes."""
    load(store, BASE)
    after = [member(2), membership(2), *BASE[4:]]
    result = apply(store, [tombstone("member", "m1"), tombstone("membership", "ms1")], after, 11)
    assert result.ok
    assert store.find_pass(PHONE_A) is not None and store.member_facts("m1", "d") is None
    after = [member(2), membership(2), BASE[5]]
    assert apply(store, [tombstone("pass", PHONE_A)], after, 12).ok
    assert store.find_pass(PHONE_A) is None


def test_replace_replica_writes_a_snapshots_passes_as_protocol_rows(store):
    alice = Member("m1", "org-1", "Alice", "A", MemberStatus.ACTIVE)
    snapshot = ReplicaSnapshot(
        members=[(alice, "a" * 64)],
        memberships=[Membership("ms1", "m1", MembershipType.SUBSCRIPTION, T0.date(), None)],
        plans=[], opening_hours=[], closures=[], version=3, synced_at=T0, code_salt=SALT,
        passes=[PassRecord(PHONE_A, "m1", "org-1", PUBLIC, 20),
                PassRecord(PHONE_B, "m1", "org-1", OTHER, 15, revoked=True)],
    )  # fmt: skip
    rows = list(snapshot_rows(snapshot))
    assert [r.kind for r in rows] == ["member", "membership", "pass", "pass"]
    assert rows[2] == phone(PHONE_A, 1, period=20)
    store.replace_replica(snapshot)
    assert [store.find_pass(p.pass_id) for p in snapshot.passes] == list(snapshot.passes)
    assert totals(store) == (4, checkpoint_of(0, rows).checksum)


def test_a_damaged_key_in_the_file_is_a_key_no_signature_matches(store):
    load(store, BASE)
    with contextlib.closing(sqlite3.connect(store.replica_file)) as conn, conn:
        conn.execute("UPDATE passes SET public_key = 'not base64' WHERE id = ?", (PHONE_A,))
    assert store.find_pass(PHONE_A).public_key == b""


# -- the replay memory -------------------------------------------------------------------------------


def test_a_pass_use_is_committed_with_its_checkin_and_found_in_one_read(store):
    load(store, BASE)
    assert store.pass_lookup(PHONE_A, 100) == (store.find_pass(PHONE_A), False)
    row = store.append_checkin(GRANTED, door_id="d", replica_version=10, now=now(), pass_use=use())
    assert row.pass_id == PHONE_A
    assert store.recent_checkins(1)[0].pass_id == PHONE_A
    assert store.pass_used(PHONE_A, 100) and not store.pass_used(PHONE_A, 101)
    assert store.pass_lookup(PHONE_A, 100) == (store.find_pass(PHONE_A), True)
    assert store.pass_lookup(PHONE_Z, 100) == (None, False)
    # A card's row and a refused pass's row: no use remembered.
    card = store.append_checkin(GRANTED, door_id="d", replica_version=10, now=now(1))
    refused = Decision(Verdict.DENIED, Reason.BAD_SIGNATURE)
    forged = store.append_checkin(refused, door_id="d", replica_version=10, now=now(2),
                                  pass_id=PHONE_A)  # fmt: skip
    assert (card.pass_id, forged.pass_id) == (None, PHONE_A)
    assert store.pass_use_count() == 1


def test_the_same_code_cannot_be_committed_twice(store):
    store.append_checkin(GRANTED, door_id="d", replica_version=0, now=now(), pass_use=use())
    with pytest.raises(StoreError, match="check-in NOT recorded"):
        store.append_checkin(GRANTED, door_id="d", replica_version=0, now=now(1), pass_use=use())
    # Nothing of the refused transaction remains: no row, no sequence number used.
    assert store.checkin_count() == 1 and store.last_seq() == 1
    row = store.append_checkin(GRANTED, door_id="d", replica_version=0, now=now(2),
                               pass_use=use(step=101))  # fmt: skip
    assert row.seq == 2


def test_used_codes_are_pruned_once_past_every_window_and_the_margin(store):
    store.append_checkin(GRANTED, door_id="d", replica_version=0, now=now(), pass_use=use(step=1))
    store.append_checkin(GRANTED, door_id="d", replica_version=0, now=now(1),
                         pass_use=use(step=2, keep_until=T0 + timedelta(minutes=5)))  # fmt: skip
    # Just inside the margin of the first: both kept.
    inside = PRUNE_MARGIN.total_seconds() - 1
    store.append_checkin(GRANTED, door_id="d", replica_version=0, now=now(inside),
                         pass_use=use(step=3, keep_until=T0 + timedelta(hours=1)))  # fmt: skip
    assert store.pass_use_count() == 3
    # Past it: the first goes, in the next use's transaction; the others stay.
    store.append_checkin(GRANTED, door_id="d", replica_version=0, now=now(inside + 2),
                         pass_use=use(step=4, keep_until=T0 + timedelta(hours=1)))  # fmt: skip
    assert not store.pass_used(PHONE_A, 1)
    assert [store.pass_used(PHONE_A, s) for s in (2, 3, 4)] == [True, True, True]


def test_a_pass_use_must_be_the_rows_pass_and_aware(store):
    with pytest.raises(ValueError, match="another pass"):
        store.append_checkin(GRANTED, door_id="d", replica_version=0, now=now(),
                             pass_id=PHONE_B, pass_use=use())  # fmt: skip
    naive = use(keep_until=datetime(2026, 5, 6, 9, 0))
    with pytest.raises(ValueError, match="timezone-aware"):
        store.append_checkin(GRANTED, door_id="d", replica_version=0, now=now(), pass_use=naive)
    assert store.checkin_count() == 0


# -- the journal file's migration 5 -----------------------------------------------------------------


def test_a_schema_4_journal_gains_the_pass_columns_and_keeps_every_row(tmp_path):
    db = tmp_path / "kiosk.db"
    conn = sqlite3.connect(db, isolation_level=None)
    assert apply_migrations(conn, target=4) == [1, 2, 3, 4]
    conn.execute("UPDATE journal_counter SET last_seq = 1")
    conn.execute(
        "INSERT INTO checkins (id, seq, door_id, decision, reason, replica_version, wall_time,"
        " boot_id, monotonic_ns, clock_quality) VALUES ('01900000-0000-7000-8000-000000000001',"
        " 1, 'front', 'denied', 'unknown_code', 3, '2026-05-01T10:00:00.000000Z', 'b', 5,"
        " 'ntp_synced')"
    )
    conn.close()
    with Store.open(db) as store:
        assert store.schema_version() == LATEST_VERSION == 6
        (old,) = store.recent_checkins(5)
        assert old.pass_id is None and old.seq == 1 and old.sync_state.value == "pending"
        new = store.append_checkin(GRANTED, door_id="front", replica_version=3, now=now(),
                                   pass_use=use())  # fmt: skip
        assert new.seq == 2 and store.pass_used(PHONE_A, 100)
        assert store.integrity_check() == ["ok"]
    # The journal refuses a pass id that is not one (the CHECK), whatever writes it.
    with contextlib.closing(sqlite3.connect(db)) as raw, pytest.raises(sqlite3.IntegrityError):
        raw.execute("UPDATE checkins SET pass_id = 'lower123' WHERE seq = 2")


# -- a replica file made before passes (format 1) ------------------------------------------------------


def make_format_1(db, rows: list[ReplicaRow]) -> None:
    """``db`` with a replica file exactly as format 1 made it: the tables of today but passes."""
    with Store.open(db) as store:
        load(store, rows)
        path = store.replica_file
    with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as conn:
        conn.execute("DROP TABLE passes")
        conn.execute("PRAGMA user_version = 1")


def test_a_replica_file_of_format_1_is_carried_over_with_every_row(tmp_path, caplog):
    db = tmp_path / "kiosk.db"
    rows = BASE[:4]
    make_format_1(db, rows)
    old = (tmp_path / "kiosk.db-replica").read_text().strip()
    # A read-only process (the owner page) does not use a file of another format ...
    page = Store.open(db, readonly=True)
    assert page.member_count() == 0
    # ... until a read-write process (the door or the sync agent) has carried it over.
    with caplog.at_level(logging.INFO, logger="kiosk.data.database"), Store.open(db) as store:
        assert store.replica_file is not None and store.replica_file.name != old
        assert store.replica_info().version == 10 and store.code_salt() == SALT
        assert totals(store) == (len(rows), checkpoint_of(0, rows).checksum)
        assert store.stored_replica_totals() == totals(store)
        assert store.find_member_id(f"{1:064x}") == "m1" and store.pass_count() == 0
        # Passes arrive as changes on top of it, verified like any other.
        assert apply(store, [BASE[4]], [*rows, BASE[4]], 11).ok
        assert store.find_pass(PHONE_A) is not None
    assert "format 1 carried over" in caplog.text
    assert page.member_count() == 2  # it followed the switch
    page.close()
    assert not (tmp_path / old).exists()
    new = tmp_path / (tmp_path / "kiosk.db-replica").read_text().strip()
    with contextlib.closing(sqlite3.connect(new)) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == REPLICA_FORMAT
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert set(REPLICA_KIND_TABLES.values()) <= tables


def test_a_format_1_replica_that_cannot_be_carried_over_is_pulled_again(tmp_path, caplog):
    db = tmp_path / "kiosk.db"
    make_format_1(db, BASE[:4])
    path = tmp_path / (tmp_path / "kiosk.db-replica").read_text().strip()
    with contextlib.closing(sqlite3.connect(path)) as conn, conn:  # a membership without member
        conn.execute("DELETE FROM members WHERE id = 'm2'")
    with caplog.at_level(logging.ERROR, logger="kiosk.data.database"), Store.open(db) as store:
        assert store.replica_info().synced_at is None and store.member_count() == 0
        assert store.checkin_count() == 0 and store.schema_version() == LATEST_VERSION
    assert "could not carry the replica of format 1 over" in caplog.text


def test_a_replica_file_of_an_unknown_format_is_left_aside(tmp_path):
    db = tmp_path / "kiosk.db"
    with Store.open(db) as store:
        load(store, BASE)
        path = store.replica_file
    with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as conn:
        conn.execute(f"PRAGMA user_version = {REPLICA_FORMAT + 1}")  # a newer release's
    with Store.open(db) as store:
        assert store.replica_file is None and store.member_count() == 0
    assert path.exists()  # never deleted by a reader; the next snapshot replaces it
