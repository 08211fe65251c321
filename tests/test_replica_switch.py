"""The replica lives in a file of its own and is switched in by a pointer (kiosk.data.database):
a replica swap never blocks the door, and a writer killed anywhere leaves the old replica in use.

- SIGKILL of a process building and switching a snapshot, at every phase of it (the writer tells
  each phase on a pipe and waits for a go-ahead, so the kill lands exactly there), and while a
  page is being written: before the switch the old replica is in use, after it the new one, never
  a mix; the journal (check-ins committed meanwhile) is intact; what the killed writer left behind
  is deleted by the next one.
- The same for changes applied in the replica in use, and for the carry-over of a schema 3
  replica into a file of its own (the upgrade from a database of schema 3), and of a replica file
  of format 1 into one of today's format (the upgrade to phone passes).
- At every phase of a build and a switch the journal's write lock is free (the door commits), the
  door reads the old replica until the switch and the new one right after it; replica writes
  succeed while another process holds the journal's write lock; a real door loop picks up a
  switch in the very next frame.

Kills and waits follow events (phases and acknowledged rows reported by the child), never time.
"""

from __future__ import annotations

import contextlib
import logging
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path

import pytest
from replica_writer import (
    A_VERSION,
    B_VERSION,
    C_VERSION,
    PAGES,
    SALT,
    T0,
    b_catch_up,
    b_pages,
    b_rows,
    c_changes,
    c_rows,
    checkpoint_of,
    load_a,
    member_row,
    now,
    replica_a,
)

from devtools.seed import DEMO_SALT, demo_snapshot
from fakes import Scene, clean_env
from kiosk.core.model import (
    Decision,
    Member,
    Membership,
    MembershipType,
    MemberStatus,
    Reason,
    Verdict,
)
from kiosk.data.database import REPLICA_PHASES
from kiosk.data.migrations import LATEST_VERSION, apply_migrations
from kiosk.data.replica import ReplicaSnapshot
from kiosk.data.store import Store
from rig import Rig
from sync.credentials import code_hash
from sync.protocol import ReplicaRow, make_row

WRITER = Path(__file__).resolve().parent / "replica_writer.py"


@dataclass
class Run:
    returncode: int
    phases: list[str] = field(default_factory=list)
    acks: list[str] = field(default_factory=list)
    done: bool = False


def run_writer(db: Path, mode: str, *, kill_at: tuple[str, int] | None = None,
               kill_after: tuple[str, int] | None = None) -> Run:  # fmt: skip
    """Run the child writer; SIGKILL it when it reports phase ``kill_at`` (name, occurrence) and
    waits there, or right after letting phase ``kill_after`` go on (it is then somewhere in the
    work that follows). Returns what it reported."""
    proc = subprocess.Popen(
        [sys.executable, str(WRITER), mode, str(db)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=clean_env(),
        cwd=WRITER.parent,
    )  # fmt: skip
    assert proc.stdin is not None and proc.stdout is not None
    run = Run(returncode=0)
    seen: Counter[str] = Counter()
    try:
        for line in proc.stdout:
            word, _, rest = line.strip().partition(" ")
            if word == "ack":
                run.acks.append(rest)
            elif word == "done":
                run.done = True
            elif word == "phase":
                run.phases.append(rest)
                seen[rest] += 1
                if kill_at == (rest, seen[rest]):
                    proc.send_signal(signal.SIGKILL)
                    break
                proc.stdin.write("go\n")
                proc.stdin.flush()
                if kill_after == (rest, seen[rest]):
                    proc.send_signal(signal.SIGKILL)
                    break
    finally:
        with contextlib.suppress(BrokenPipeError):
            proc.stdin.close()
        # Whatever it printed before the kill landed.
        for line in proc.stdout:
            word, _, rest = line.strip().partition(" ")
            if word == "ack":
                run.acks.append(rest)
        run.returncode = proc.wait(timeout=60)
    return run


# -- what a process that opens the database afterwards finds ------------------------------------------


def journal_is_intact(db: Path, acknowledged: list[str]) -> None:
    with contextlib.closing(sqlite3.connect(db)) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        ids = {row[0] for row in conn.execute("SELECT id FROM checkins")}
        seqs = [row[0] for row in conn.execute("SELECT seq FROM checkins ORDER BY seq")]
    assert set(acknowledged) <= ids, "an acknowledged check-in was lost"
    assert seqs == list(range(1, len(seqs) + 1)), "the journal's sequence has a gap"


def in_use(db: Path) -> tuple[int, tuple[int, str | None]]:
    """(version, (count, checksum)) of the replica a process opening ``db`` reads, checked
    against the rows it should hold."""
    with Store.open(db) as store:
        version = store.replica_info().version
        totals = store.replica_checksum()
        assert store.stored_replica_totals() == totals
        with contextlib.closing(sqlite3.connect(store.replica_file)) as conn:
            assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        return version, totals


def totals_of(rows: list[ReplicaRow]) -> tuple[int, str]:
    cp = checkpoint_of(0, rows)
    return cp.count, cp.checksum


def replica_files(db: Path) -> list[str]:
    return sorted(p.name for p in db.parent.iterdir() if p.name.startswith(f"{db.name}-replica"))


# -- kills while a snapshot is built and switched ----------------------------------------------------

SNAPSHOT_KILLS = [
    ("build:started", 1, "A"),
    ("build:rows", 1, "A"),
    ("build:rows", PAGES + 1, "A"),
    ("build:indexed", 1, "A"),
    ("build:checked", 1, "A"),
    ("build:sealed", 1, "A"),
    ("switch:pointer-written", 1, "A"),
    ("switch:done", 1, "B"),
    ("cleanup:done", 1, "B"),
]


def test_every_phase_of_a_snapshot_is_known_to_the_kill_tests(tmp_path):
    db = tmp_path / "kiosk.db"
    load_a(db)
    run = run_writer(db, "snapshot")
    assert run.done and run.returncode == 0
    assert set(run.phases) == {phase for phase, _n, _r in SNAPSHOT_KILLS}
    assert set(run.phases) <= set(REPLICA_PHASES)
    assert in_use(db) == (B_VERSION, totals_of(b_rows()))
    assert len(run.acks) == PAGES + 3


@pytest.mark.parametrize(("phase", "occurrence", "expected"), SNAPSHOT_KILLS,
                         ids=[f"{p}#{n}" for p, n, _ in SNAPSHOT_KILLS])  # fmt: skip
def test_a_kill_at_any_phase_of_a_snapshot_leaves_a_whole_replica_in_use(
    tmp_path, phase, occurrence, expected
):
    db = tmp_path / "kiosk.db"
    load_a(db)
    killed = run_writer(db, "snapshot", kill_at=(phase, occurrence))
    assert killed.returncode == -signal.SIGKILL and not killed.done
    journal_is_intact(db, killed.acks)
    want = (A_VERSION, totals_of(replica_a())) if expected == "A" else (
        B_VERSION, totals_of(b_rows()))  # fmt: skip
    assert in_use(db) == want
    # The next writer deletes what the killed one left behind, and completes.
    again = run_writer(db, "snapshot")
    assert again.done, again
    journal_is_intact(db, killed.acks + again.acks)
    assert in_use(db) == (B_VERSION, totals_of(b_rows()))
    current = (db.parent / f"{db.name}-replica").read_text().strip()
    names = sorted(p.name for p in db.parent.iterdir())
    assert names == [db.name, f"{db.name}-replica", current, f"{db.name}-replica.lock"]


@pytest.mark.parametrize("page", range(1, PAGES + 2))
def test_a_kill_while_a_page_is_written_leaves_the_old_replica_in_use(tmp_path, page):
    db = tmp_path / "kiosk.db"
    load_a(db)
    # Let page ``page`` commit, then kill: the child is somewhere in its next check-in or page.
    killed = run_writer(db, "snapshot", kill_after=("build:rows", page))
    assert killed.returncode == -signal.SIGKILL
    journal_is_intact(db, killed.acks)
    assert in_use(db) == (A_VERSION, totals_of(replica_a()))


# -- kills while changes are applied ------------------------------------------------------------------


@pytest.mark.parametrize(("phase", "expected"), [("changes:applied", "A"),
                                                 ("changes:committed", "C")])  # fmt: skip
def test_a_kill_while_changes_apply_leaves_one_whole_version(tmp_path, phase, expected):
    db = tmp_path / "kiosk.db"
    load_a(db)
    killed = run_writer(db, "changes", kill_at=(phase, 1))
    assert killed.returncode == -signal.SIGKILL
    journal_is_intact(db, killed.acks)
    want = (A_VERSION, totals_of(replica_a())) if expected == "A" else (
        C_VERSION, totals_of(c_rows()))  # fmt: skip
    assert in_use(db) == want


# -- the upgrade: a database of schema 3 (today's) -----------------------------------------------------


def v3_database(path: Path, *, with_replica: bool = True) -> list[str]:
    """A database exactly as schema 3 left it: replica A in its own tables (with the row hashes
    schema 3 computed), a snapshot a killed agent left half-written in the shadow tables, three
    check-ins (two pending), the agent's status and an anchor. Returns the check-in ids."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    assert apply_migrations(conn, target=3) == [1, 2, 3]
    conn.execute("BEGIN")
    if with_replica:
        for row in replica_a():
            d, h = row.data, row.row_hash()
            if row.kind == "plan":
                conn.execute("INSERT INTO plans (id, name, row_hash) VALUES (?, ?, ?)",
                             (row.id, d["name"], h))  # fmt: skip
                conn.executemany(
                    "INSERT INTO plan_windows (plan_id, weekday, start_minute, end_minute)"
                    " VALUES (?, ?, ?, ?)", [(row.id, *w) for w in d["windows"]],
                )  # fmt: skip
            elif row.kind == "member":
                conn.execute(
                    "INSERT INTO members (id, organization_id, first_name, last_name, status,"
                    " is_staff, code_hash, row_hash) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (row.id, d["organization_id"], d["first_name"], d["last_name"],
                     d["status"], int(d["is_staff"]), d["code_hash"], h),
                )  # fmt: skip
            elif row.kind == "membership":
                conn.execute(
                    "INSERT INTO memberships (id, member_id, plan_id, type, start_date, end_date,"
                    " remaining_classes, row_hash) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (row.id, d["member_id"], d["plan_id"], d["type"], d["start_date"],
                     d["end_date"], d["remaining_classes"], h),
                )  # fmt: skip
            else:
                conn.execute(
                    "INSERT INTO opening_hours (id, weekday, open_minute, close_minute, row_hash)"
                    " VALUES (?, ?, ?, ?, ?)",
                    (row.id, d["weekday"], d["open_minute"], d["close_minute"], h),
                )  # fmt: skip
        conn.executemany(
            "INSERT INTO replica_meta (key, value) VALUES (?, ?)",
            [("version", str(A_VERSION)), ("code_salt", SALT.hex()),
             ("synced_at", "2026-05-06T09:00:00.000000Z")],
        )  # fmt: skip
        conn.execute(
            "INSERT INTO shadow_members (id, organization_id, first_name, last_name, status,"
            " is_staff, code_hash, row_hash) VALUES ('m9999', 'o', 'Half', 'Done', 'ACTIVE', 0,"
            " NULL, 1)"
        )
    ids = []
    for seq, state in enumerate(("pending", "synced", "pending"), start=1):
        checkin_id = f"01900000-0000-7000-8000-00000000000{seq}"
        ids.append(checkin_id)
        conn.execute("UPDATE journal_counter SET last_seq = last_seq + 1")
        conn.execute(
            "INSERT INTO checkins (id, seq, member_id, membership_id, door_id, decision, reason,"
            " classes_used, replica_version, wall_time, sync_state, synced_at, boot_id,"
            " monotonic_ns, clock_quality)"
            " VALUES (?, ?, 'm0001', 'ms0001', 'front', 'granted', 'subscription', 0, 10, ?, ?,"
            " ?, 'b', ?, 'ntp_synced')",
            (checkin_id, seq, f"2026-05-0{seq}T10:00:00.000000Z", state,
             "2026-05-05T00:00:00.000000Z" if state == "synced" else None, seq * 100),
        )  # fmt: skip
    conn.execute("INSERT INTO sync_status (key, value) VALUES ('state', '\"running\"')")
    conn.execute(
        "INSERT INTO clock_anchors (boot_id, monotonic_ns, server_time, recorded_at) VALUES"
        " ('b', 5, '2026-05-06T09:00:00.000000Z', '2026-05-06T09:00:00.000000Z')"
    )
    conn.execute("COMMIT")
    conn.close()
    return ids


def test_a_database_of_schema_3_keeps_its_journal_and_carries_its_replica_over(tmp_path, caplog):
    db = tmp_path / "kiosk.db"
    ids = v3_database(db)
    before = db.stat().st_size
    with caplog.at_level(logging.INFO, logger="kiosk.data.database"), Store.open(db) as store:
        assert store.schema_version() == LATEST_VERSION == 6
        # The journal, exactly as it was.
        assert {c.id for c in store.recent_checkins(10)} == set(ids)
        assert store.counts_by_state() == {"pending": 2, "synced": 1, "rejected": 0}
        assert store.last_seq() == 3 and store.anchors()[0].boot_id == "b"
        assert store.sync_status() == {"state": "running"}
        # The replica, in a file of its own, with the same rows and its own record of them.
        assert store.replica_file is not None
        assert store.replica_info().version == A_VERSION and store.code_salt() == SALT
        assert store.replica_checksum() == totals_of(replica_a())
        assert store.stored_replica_totals() == store.replica_checksum()
        assert store.find_member_id(member_row(1, tag="a").data["code_hash"]) == "m0001"
        facts = store.member_facts("m0001", "front")
        assert facts is not None and [m.id for m in facts.memberships] == ["ms0001"]
        assert facts.last_entry is not None
    assert "replica carried over" in caplog.text
    with contextlib.closing(sqlite3.connect(db)) as conn:
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}
        assert not tables & {"members", "memberships", "shadow_members", "replica_meta"}
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    assert db.stat().st_size <= before  # the old tables' pages went back (VACUUM)


def test_a_schema_3_database_beside_a_replica_file_keeps_that_replica(tmp_path):
    """A backup of schema 3 restored on a device that already has a newer replica file."""
    db = tmp_path / "kiosk.db"
    scratch = tmp_path / "newer" / "kiosk.db"
    load_a(scratch)
    with Store.open(scratch) as store:
        store.stage_changes(c_changes())
        assert store.apply_checkpoint(
            checkpoint_of(C_VERSION, c_rows()), code_salt=SALT, synced_at=T0,
            into_snapshot=False,
        ).ok  # fmt: skip
        newer = store.replica_file
    assert newer is not None
    shutil.copy(newer, tmp_path / newer.name)
    (tmp_path / f"{db.name}-replica").write_text(f"{newer.name}\n")
    v3_database(db)
    with Store.open(db) as store:
        assert store.replica_info().version == C_VERSION
        assert store.replica_checksum() == totals_of(c_rows())
        assert store.schema_version() == LATEST_VERSION and store.checkin_count() == 3


def test_a_schema_3_replica_that_cannot_be_carried_over_is_pulled_again(tmp_path, caplog):
    db = tmp_path / "kiosk.db"
    v3_database(db)
    with contextlib.closing(sqlite3.connect(db)) as conn, conn:  # a membership without a member
        conn.execute("PRAGMA foreign_keys = OFF")
        conn.execute("DELETE FROM members WHERE id = 'm0002'")
    with caplog.at_level(logging.ERROR, logger="kiosk.data.database"), Store.open(db) as store:
        assert store.schema_version() == LATEST_VERSION and store.checkin_count() == 3
        assert store.replica_file is None and store.replica_info().synced_at is None
    assert "could not carry the replica over" in caplog.text
    assert "will pull it again" in caplog.text


CARRY_OVER_KILLS = [
    ("build:started", 1),
    ("carry-over:copied", 1),
    ("build:sealed", 1),
    ("switch:pointer-written", 1),
    ("switch:done", 1),
    ("cleanup:done", 1),
]


def format_1_database(path: Path) -> list[str]:
    """A database of schema 4 beside a replica file of format 1 (made before phone passes: the
    tables of today but ``passes``) holding replica A, and three check-ins. Returns their ids."""
    load_a(path)
    with Store.open(path) as store:
        ids = [door_checkin(store, n) for n in range(3)]
        replica = store.replica_file
    with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as conn:
        conn.execute("DROP TABLE passage_waits")
        conn.execute("DROP TABLE door_events")
        conn.execute("DROP TABLE pass_uses")
        conn.execute("ALTER TABLE checkins DROP COLUMN pass_id")
        conn.execute("PRAGMA user_version = 4")
    with contextlib.closing(sqlite3.connect(replica, isolation_level=None)) as conn:
        conn.execute("DROP TABLE passes")
        conn.execute("ALTER TABLE plans DROP COLUMN max_visits_per_day")
        conn.execute("PRAGMA user_version = 1")
    return ids


def format_2_database(path: Path) -> list[str]:
    """A database of schema 5 beside a replica file of format 2 (made before plans' visit
    limits: the tables of today but ``plans.max_visits_per_day``) holding replica A, and three
    check-ins. Returns their ids."""
    load_a(path)
    with Store.open(path) as store:
        ids = [door_checkin(store, n) for n in range(3)]
        replica = store.replica_file
    with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as conn:
        conn.execute("DROP TABLE passage_waits")
        conn.execute("DROP TABLE door_events")
        conn.execute("PRAGMA user_version = 5")
    with contextlib.closing(sqlite3.connect(replica, isolation_level=None)) as conn:
        conn.execute("ALTER TABLE plans DROP COLUMN max_visits_per_day")
        conn.execute("PRAGMA user_version = 2")
    return ids


UPGRADES = {
    "schema-3": v3_database,
    "format-1": format_1_database,
    "format-2": format_2_database,
}


@pytest.mark.parametrize("upgrade", UPGRADES)
@pytest.mark.parametrize(("phase", "occurrence"), CARRY_OVER_KILLS,
                         ids=[p for p, _ in CARRY_OVER_KILLS])  # fmt: skip
def test_a_kill_during_the_carry_over_loses_neither_journal_nor_replica(
    tmp_path, phase, occurrence, upgrade
):
    db = tmp_path / "kiosk.db"
    ids = UPGRADES[upgrade](db)
    killed = run_writer(db, "open", kill_at=(phase, occurrence))
    assert killed.returncode == -signal.SIGKILL and phase in killed.phases
    journal_is_intact(db, ids)
    # The next process to open it (the door, after systemd restarts it) finishes the upgrade.
    with Store.open(db) as store:
        assert store.schema_version() == LATEST_VERSION
        assert {c.id for c in store.recent_checkins(10)} == set(ids)
        assert store.pass_count() == 0  # the passes table is there (format 2 and later)
    assert in_use(db) == (A_VERSION, totals_of(replica_a()))
    assert len([n for n in replica_files(db) if re.fullmatch(r".*-replica-[0-9a-f]{32}", n)]) == 1


# -- the door during a build and a switch ----------------------------------------------------------


def door_checkin(store: Store, n: int) -> str:
    return store.append_checkin(
        Decision(Verdict.DENIED, Reason.UNKNOWN_CODE), door_id="front", replica_version=0,
        now=now(n),
    ).id  # fmt: skip


def journal_lock_is_free(db: Path) -> bool:
    """True when another process could take the journal's write lock at once (no wait)."""
    conn = sqlite3.connect(db, timeout=0, isolation_level=None)
    try:
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("ROLLBACK")
        return True
    except sqlite3.OperationalError:
        return False
    finally:
        conn.close()


def test_the_door_commits_and_reads_the_old_replica_at_every_phase_until_the_switch(tmp_path):
    db = tmp_path / "kiosk.db"
    load_a(db)
    b_code = member_row(100, tag="b").data["code_hash"]
    a_code = member_row(1, tag="a").data["code_hash"]
    door = Store.open(db)
    seen: list[tuple[str, bool, str | None, str | None]] = []
    count = iter(range(1, 1000))

    def at_phase(phase: str) -> None:
        # The agent waits here; the door goes on in its own store, as the scanner process would.
        free = journal_lock_is_free(db)
        door_checkin(door, next(count))
        door.follow_replica()
        seen.append((phase, free, door.find_member_id(a_code), door.find_member_id(b_code)))

    with door, Store.open(db, on_replica_phase=at_phase) as agent:
        agent.begin_snapshot()
        for page in b_pages():
            agent.add_snapshot_rows(page)
        agent.stage_changes(b_catch_up(), into_snapshot=True)
        assert agent.apply_checkpoint(
            checkpoint_of(B_VERSION, b_rows()), code_salt=SALT, synced_at=T0,
            into_snapshot=True,
        ).ok  # fmt: skip
        changed = [make_row("member", "m0003", {**member_row(3, tag="b").data,
                                                 "status": "PAUSED"})]  # fmt: skip
        agent.stage_changes(changed)
        rows = [changed[0] if r.id == "m0003" else r for r in b_rows()]
        assert agent.apply_checkpoint(
            checkpoint_of(B_VERSION + 1, rows), code_salt=SALT, synced_at=T0,
            into_snapshot=False,
        ).ok  # fmt: skip
        assert door.checkin_count() == len(seen)
    phases = [p for p, *_ in seen]
    switch = phases.index("switch:done")
    assert all(free for _, free, _, _ in seen), "a phase held the journal's write lock"
    # Until the switch the door reads A (member 1 with code a), from it on B (member 100).
    assert all(a == "m0001" and b is None for _, _, a, b in seen[:switch])
    assert all(a is None and b == "m0100" for _, _, a, b in seen[switch:])
    assert phases[switch:] == ["switch:done", "cleanup:done", "changes:applied",
                               "changes:committed"]  # fmt: skip


def test_a_read_only_store_follows_a_switch_and_its_data_version_moves(tmp_path):
    """The owner page and `kiosk status` read through a read-only store: they follow the pointer
    like the door, and the page's cache key (data_version) moves with the replica."""
    db = tmp_path / "kiosk.db"
    load_a(db)
    with Store.open(db, readonly=True) as page, Store.open(db) as agent:
        assert page.replica_summary()[0].version == A_VERSION
        quiet = page.data_version()
        assert page.data_version() == quiet  # nothing happened
        agent.stage_changes(c_changes())
        assert agent.apply_checkpoint(
            checkpoint_of(C_VERSION, c_rows()), code_salt=SALT, synced_at=T0,
            into_snapshot=False,
        ).ok  # fmt: skip
        changed = page.data_version()
        assert changed != quiet and page.replica_summary() == (
            page.replica_info(), len([r for r in c_rows() if r.kind == "member"]))  # fmt: skip
        agent.begin_snapshot()
        for rows in b_pages():
            agent.add_snapshot_rows(rows)
        agent.stage_changes(b_catch_up(), into_snapshot=True)
        assert page.replica_info().version == C_VERSION  # not switched yet
        assert page.data_version() == changed
        assert agent.apply_checkpoint(
            checkpoint_of(B_VERSION, b_rows()), code_salt=SALT, synced_at=T0,
            into_snapshot=True,
        ).ok  # fmt: skip
        assert page.data_version() != changed
        assert page.replica_info().version == B_VERSION
        assert page.replica_file == agent.replica_file
        assert page.replica_checksum() == totals_of(b_rows())


def test_replica_writes_need_nothing_of_the_journals_lock(tmp_path):
    db = tmp_path / "kiosk.db"
    with Store.open(db, busy_timeout_ms=50) as agent:
        locker = sqlite3.connect(db, isolation_level=None)
        locker.execute("BEGIN IMMEDIATE")  # another process holds the journal's write lock
        try:
            agent.begin_snapshot()
            agent.add_snapshot_rows(replica_a())
            assert agent.apply_checkpoint(
                checkpoint_of(A_VERSION, replica_a()), code_salt=SALT, synced_at=T0,
                into_snapshot=True,
            ).ok  # fmt: skip
            agent.stage_changes(c_changes())
            assert agent.apply_checkpoint(
                checkpoint_of(C_VERSION, c_rows()), code_salt=SALT, synced_at=T0,
                into_snapshot=False,
            ).ok  # fmt: skip
            agent.mark_replica_current(synced_at=T0 + timedelta(hours=1))
            assert agent.replica_info().version == C_VERSION
        finally:
            locker.execute("ROLLBACK")
            locker.close()


def test_a_door_loop_takes_up_a_switch_in_the_next_frame(tmp_path):
    """The real door loop, frame by frame: a code only the new replica knows is refused before
    the switch and admitted on the first frame that shows it after the switch."""
    db = tmp_path / "kiosk.db"
    demo = demo_snapshot(T0, "UTC")
    zed = (Member("m-zed", "org-demo", "Zed", "Z.", MemberStatus.ACTIVE),
            code_hash("FF-ZED-9999", DEMO_SALT))  # fmt: skip
    zeds = Membership("ms-zed", "m-zed", MembershipType.SUBSCRIPTION, date(2020, 1, 1), None)
    scene = Scene().add(["FF-ZED-9999"], 2).add([], 130).add(["FF-ZED-9999"], 2)
    rig = Rig(tmp_path, scene)
    switch_after_frame = 66  # in the gap: nobody in front of the camera

    follows: list[tuple[int, bool]] = []
    real_follow = rig.store.follow_replica

    def follow() -> bool:
        switched = real_follow()
        follows.append((rig.camera.reads, switched))
        return switched

    rig.store.follow_replica = follow  # type: ignore[method-assign]
    real_read = rig.camera.read

    def read(timeout_s: float):
        frame = real_read(timeout_s)
        if rig.camera.reads == switch_after_frame:
            # The sync agent, in its own process, switches to a replica that knows Zed.
            with Store.open(db) as agent:
                agent.replace_replica(ReplicaSnapshot(
                    members=[*demo.members, zed], memberships=[*demo.memberships, zeds],
                    plans=demo.plans, opening_hours=demo.opening_hours, closures=demo.closures,
                    version=2, synced_at=rig.clock.wall(), code_salt=DEMO_SALT,
                ))  # fmt: skip
        return frame

    rig.camera.read = read  # type: ignore[method-assign]
    rig.run()
    assert [o.decision.reason for o in rig.outcomes] == [Reason.UNKNOWN_CODE, Reason.SUBSCRIPTION]
    assert rig.outcomes[1].checkin.replica_version == 2
    # The frame after the one during which the switch happened took it up, before its scan.
    assert [reads for reads, switched in follows if switched] == [switch_after_frame]
    assert "fault" not in rig.signal.shown
