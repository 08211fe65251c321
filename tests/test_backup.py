"""``kiosk db backup / restore / check`` (kiosk.ops.backup, kiosk.cli.db, store file helpers).

Every test works on real SQLite files in a temporary folder; failures (full disk, damage, a newer
schema, a file held open) come from SQLite itself. Only the outside world is injected: the clock,
the free-space probe, systemctl's answer and the confirmation prompt.
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
import stat
import subprocess
import sys
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from test_store import _v1_database_with_journal, granted, record, snapshot

from kiosk.cli import db as dbcli
from kiosk.core.model import SyncState
from kiosk.data.database import StoreError
from kiosk.data.dbfile import exclusive_access, inspect_database
from kiosk.data.migrations import LATEST_VERSION
from kiosk.data.store import Store
from kiosk.ops.backup import (
    DbError,
    active_services,
    backup_name,
    make_backup,
    restore_backup,
    rotation,
)

T0 = datetime(2024, 5, 6, 21, 30, 0, tzinfo=UTC)


def clock_at(*moments: datetime):
    """A clock returning ``moments`` in turn (the last one forever after)."""
    queue = list(moments)
    return lambda: queue.pop(0) if len(queue) > 1 else queue[0]


def no_services() -> list[str]:
    return []


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def journal(path: Path) -> list[tuple[str, int, str]]:
    """(id, seq, sync state) of every check-in, read without changing the file."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return [
            (str(i), int(s), str(st))
            for i, s, st in conn.execute("SELECT id, seq, sync_state FROM checkins ORDER BY seq")
        ]
    finally:
        conn.close()


@pytest.fixture
def live(tmp_path: Path) -> Path:
    """A live database with a replica and six check-ins: seqs 1-2 synced, 3-6 pending."""
    path = tmp_path / "var" / "kiosk.db"
    with Store.open(path) as store:
        store.replace_replica(snapshot())
        rows = [record(store, granted("m-alice", "ms-alice")) for _ in range(6)]
        store.mark_synced([rows[0].id, rows[1].id], at=T0)
    return path


def run(*argv: str, **kwargs) -> int:
    kwargs.setdefault("services", no_services)
    kwargs.setdefault("clock", clock_at(T0))
    return dbcli.main(list(argv), **kwargs)


def backup_of(live: Path, folder: Path, at: datetime = T0) -> Path:
    made = make_backup(live, folder, now=at)
    return made.path


# -- backup ----------------------------------------------------------------------------------------


def test_backup_writes_a_verified_private_copy_with_pending_checkins(live: Path, capsys) -> None:
    assert run("db", "backup", "--db", str(live)) == 0
    folder = live.parent / "backups"
    made = folder / "kiosk-20240506T213000Z.db"
    assert sorted(p.name for p in folder.iterdir()) == [made.name]  # no temp left behind
    assert stat.S_IMODE(made.stat().st_mode) == 0o640
    # One self-contained file: no log beside it that a copy to a USB stick would miss.
    assert not Path(f"{made}-wal").exists()
    assert journal(made) == journal(live)
    report = inspect_database(made)
    assert report.sound and report.schema_version == LATEST_VERSION
    assert report.checkins == {"pending": 4, "synced": 2, "rejected": 0}
    out = capsys.readouterr().out
    assert str(made) in out and "4 pending" in out and "last seq 6" in out


def test_backup_while_another_process_writes_is_a_consistent_snapshot(live: Path) -> None:
    stop = threading.Event()
    written: list[int] = []

    def door() -> None:  # the scanner, on its own connection
        with Store.open(live) as store:
            while not stop.is_set():
                written.append(record(store).seq)

    writer = threading.Thread(target=door)
    writer.start()
    try:
        backups = []
        for n in range(5):
            while len(written) < 20 * (n + 1):  # let the door record between backups
                stop.wait(0.001)
            backups.append(backup_of(live, live.parent / "b", T0 + timedelta(seconds=n)))
    finally:
        stop.set()
        writer.join()
    seen = []
    for path in backups:
        report = inspect_database(path)
        assert report.sound
        rows = journal(path)
        # Each copy is one moment of the journal: every seq up to its last, no gap, no torn row.
        assert [seq for _, seq, _ in rows] == list(range(1, report.last_seq + 1))
        seen.append(report.last_seq)
    assert seen == sorted(seen) and seen[-1] > seen[0] > 6  # taken while rows kept coming
    assert journal(live)[: seen[-1]] == journal(backups[-1])


def test_keeps_the_newest_seven_and_never_touches_other_files(live: Path, capsys) -> None:
    folder = live.parent / "backups"
    folder.mkdir()
    (folder / "notes.txt").write_text("mine")
    (folder / "kiosk-latest.db").write_text("not one of ours")
    days = [T0 + timedelta(days=n) for n in range(9)]
    for day in days:
        assert run("db", "backup", "--db", str(live), clock=clock_at(day)) == 0
    names = sorted(p.name for p in folder.iterdir())
    expected = [f"kiosk-{(T0 + timedelta(days=n)):%Y%m%dT%H%M%SZ}.db" for n in range(2, 9)]
    assert names == sorted([*expected, "kiosk-latest.db", "notes.txt"])
    assert "deleted old backup" in capsys.readouterr().out
    assert run("db", "backup", "--db", str(live), "--keep", "2", clock=clock_at(days[-1])) == 0
    # The same second twice gets a suffix rather than overwriting.
    kept = sorted(p.name for p in folder.glob("kiosk-2*.db"))
    assert kept == ["kiosk-20240514T213000Z-2.db", "kiosk-20240514T213000Z.db"]


def test_rotation_keeps_the_new_backup_even_when_the_clock_went_back() -> None:
    names = [f"kiosk-2024050{d}T000000Z.db" for d in range(1, 8)]
    newest = "kiosk-19700101T000012Z.db"  # a Pi without a real-time clock, before NTP
    doomed = rotation([*names, newest, "other.db"], 7, newest=newest)
    assert doomed == ["kiosk-20240501T000000Z.db"]
    assert rotation(names, 7, newest=names[-1]) == []
    assert backup_name(T0, ["kiosk-20240506T213000Z.db", "kiosk-20240506T213000Z-2.db"]) == (
        "kiosk-20240506T213000Z-3.db"
    )
    with pytest.raises(ValueError, match="at least 1"):
        rotation(names, 0, newest=names[-1])


def test_disk_full_removes_the_partial_file_and_keeps_older_backups(live: Path, capsys) -> None:
    folder = live.parent / "backups"
    older = backup_of(live, folder, T0 - timedelta(days=1))
    with Store.open(live) as store:  # grow the database well past the room left
        for _ in range(300):
            record(store)
    with pytest.raises(DbError) as caught:
        make_backup(live, folder, now=T0, keep=1, reserve_bytes=0, free_bytes=lambda _: 16384)
    assert caught.value.exit_code == 3
    assert "disk full" in str(caught.value) and "partial file was removed" in str(caught.value)
    assert sorted(folder.iterdir()) == [older]  # nothing half-written, nothing rotated away
    # Below the reserve kept for the door's journal, it does not even start.
    with pytest.raises(DbError, match="kept free for the door's journal"):
        make_backup(live, folder, now=T0, free_bytes=lambda _: 1024)


def test_backup_of_a_missing_database_says_so(tmp_path: Path, capsys) -> None:
    assert run("db", "backup", "--db", str(tmp_path / "nope.db")) == 3
    assert "no database at" in capsys.readouterr().err
    assert not (tmp_path / "nope.db").exists()


# -- restore ---------------------------------------------------------------------------------------


def test_round_trip_keeps_pending_checkins_pending_with_their_ids_and_seqs(
    live: Path, capsys
) -> None:
    backup = backup_of(live, live.parent / "backups")
    at_backup = journal(live)
    with Store.open(live) as store:  # life goes on after the backup: seqs 7-9, all uploaded
        later = [record(store) for _ in range(3)]
        store.mark_synced([c.id for c in store.pending_checkins()], at=T0)
    os.chmod(live, 0o660)
    restored_at = T0 + timedelta(hours=1)
    assert (
        run("db", "restore", str(backup), "--db", str(live), "--yes", clock=clock_at(restored_at))
        == 0
    )
    assert journal(live) == at_backup
    with Store.open(live) as store:
        pending = store.pending_checkins()
        assert [(c.id, c.seq) for c in pending] == [
            (i, s) for i, s, st in at_backup if st == "pending"
        ]
        assert all(c.sync_state is SyncState.PENDING for c in pending)
        assert store.integrity_check() == ["ok"]
    assert stat.S_IMODE(live.stat().st_mode) == 0o660  # the live file's mode carried over
    kept = live.parent / "kiosk.db.before-restore-20240506T223000Z"
    assert {c.id for c in later} <= {i for i, _, _ in journal(kept)}
    out, err = capsys.readouterr()
    # The counter continues after the replaced database's seqs, which the cloud holds.
    assert "pending 4, synced 2, rejected 0" in out and "last seq 9" in out
    assert str(kept) in out
    assert "new check-ins continue after 9" in err
    with Store.open(live) as store:
        assert record(store).seq == 10
    assert not [p for p in live.parent.iterdir() if p.name.endswith(".tmp")]


def test_restore_refuses_to_leave_unuploaded_checkins_behind_unless_forced(live: Path) -> None:
    backup = backup_of(live, live.parent / "backups")
    with Store.open(live) as store:  # recorded after the backup, not uploaded yet
        later = [record(store) for _ in range(3)]
    live_digest = digest(live)
    asked: list[str] = []

    def restore(**kwargs) -> object:
        return restore_backup(
            live, backup, now=T0, confirm=lambda q: asked.append(q) or True,
            services=no_services, **kwargs,
        )  # fmt: skip

    with pytest.raises(DbError) as refused:
        restore()
    assert refused.value.exit_code == 1
    message = str(refused.value)
    assert "holds 3 pending check-in(s) that the backup lacks" in message
    assert "--force" in message and "Nothing was changed" in message
    assert asked == [] and digest(live) == live_digest
    assert not list(live.parent.glob("*before-restore*"))
    assert not list(live.parent.glob("*.tmp"))

    done = restore(force=True)
    (question,) = asked
    assert "3 pending check-in(s) of the current database are not in the backup" in question
    assert any("3 pending check-in(s)" in w and str(done.kept_as) in w for w in done.warnings)
    assert journal(live) == journal(backup)
    assert done.kept_as is not None
    assert {c.id for c in later} <= {i for i, _, st in journal(done.kept_as) if st == "pending"}
    # Seqs 7-9 went to check-ins only the kept file has: never handed out again.
    assert done.last_seq == 9
    with Store.open(live) as store:
        assert record(store).seq == 10


def test_pending_checkins_the_backup_also_holds_do_not_block_a_restore(live: Path) -> None:
    backup = backup_of(live, live.parent / "backups")  # seqs 3-6 pending in both
    done = restore_backup(live, backup, now=T0, confirm=lambda q: True, services=no_services)
    assert done.checkins["pending"] == 4 and done.last_seq == 6
    assert not any("pending check-in" in w for w in done.warnings)


def test_restore_discards_the_stale_log_of_the_replaced_database(live: Path) -> None:
    backup = backup_of(live, live.parent / "backups")
    # A process dies with committed rows still in the -wal only (no checkpoint on exit).
    script = (
        "import sqlite3, os, sys\n"
        "c = sqlite3.connect(sys.argv[1], isolation_level=None)\n"
        "c.execute('PRAGMA wal_autocheckpoint = 0')\n"
        "c.execute(\"UPDATE checkins SET sync_state = 'rejected'\")\n"
        "os._exit(0)\n"
    )
    subprocess.run([sys.executable, "-c", script, str(live)], check=True)
    assert Path(f"{live}-wal").stat().st_size > 0
    assert (
        dbcli.main(["db", "restore", str(backup), "--db", str(live), "--yes"], services=no_services)
        == 0
    )
    # The old log was neither replayed onto the restored file nor lost: it is in the kept one.
    assert {st for _, _, st in journal(live)} == {"pending", "synced"}
    (kept,) = live.parent.glob("kiosk.db.before-restore-*")
    assert {st for _, _, st in journal(kept)} == {"rejected"}


def test_restore_of_an_older_schema_migrates_and_keeps_pending(live: Path, capsys) -> None:
    old = live.parent / "release1.db"
    _v1_database_with_journal(old)
    with Store.open(live) as store:  # nothing left to upload: the restore may go ahead
        store.mark_synced([c.id for c in store.pending_checkins()], at=T0)
    assert run("db", "restore", str(old), "--db", str(live), "--yes") == 0
    assert "schema 3, migrated from schema 1" in capsys.readouterr().out.replace(
        str(LATEST_VERSION), "3"
    )
    with Store.open(live) as store:
        assert store.schema_version() == LATEST_VERSION
        assert [c.seq for c in store.pending_checkins()] == [1, 3]


def test_restore_onto_a_damaged_database_keeps_it_as_found(live: Path, capsys) -> None:
    backup = backup_of(live, live.parent / "backups")
    live.write_bytes(b"\x00garbage" * 1000)
    damaged = digest(live)
    assert run("db", "restore", str(backup), "--db", str(live), "--yes") == 0
    kept = live.parent / "kiosk.db.before-restore-20240506T213000Z"
    assert digest(kept) == damaged
    assert not Path(f"{live}-wal").exists()  # its log went with it, not onto the new file
    assert journal(live) == journal(backup)
    err = capsys.readouterr().err
    assert "is damaged, so it could not be locked" in err
    assert "could not be read" in err  # neither its pending check-ins nor its last seq


def test_a_restored_file_belongs_to_the_owner_of_the_data_folder(tmp_path: Path, live: Path):
    backup = backup_of(live, tmp_path / "usb")
    folder = tmp_path / "new-card"
    folder.mkdir()
    if os.geteuid() == 0:  # the sandbox runs as root: a folder of another user
        os.chown(folder, 12345, 12345)
    fresh = folder / "kiosk.db"
    done = restore_backup(fresh, backup, now=T0, confirm=lambda q: True, services=no_services)
    assert done.kept_as is None
    owner = fresh.stat()
    assert (owner.st_uid, owner.st_gid) == (folder.stat().st_uid, folder.stat().st_gid)
    assert stat.S_IMODE(owner.st_mode) == 0o640
    assert sorted(p.name for p in folder.iterdir()) == ["kiosk.db"]  # no root-owned leftovers


def test_a_backup_holds_the_journal_and_a_restore_keeps_the_replica_beside(
    tmp_path: Path, live: Path, capsys
) -> None:
    backup = backup_of(live, live.parent / "backups")
    report = inspect_database(backup)
    assert report.members is None and report.replica_file is None  # the journal only
    assert run("db", "check", "--db", str(backup)) == 0
    assert "replica: none beside this file" in capsys.readouterr().out
    with Store.open(live) as store:
        replica, version = store.replica_file, store.replica_info().version
    assert replica is not None
    assert run("db", "restore", str(backup), "--db", str(live), "--yes") == 0
    assert f"member replica in use: version {version}, 3 members" in capsys.readouterr().out
    with Store.open(live) as store:  # the door goes on with the replica it had, offline too
        assert store.replica_file == replica and store.member_count() == 3
    # On a new SD card there is none: the sync agent pulls one at its next round.
    fresh = tmp_path / "new-card" / "kiosk.db"
    assert run("db", "restore", str(backup), "--db", str(fresh), "--yes") == 0
    assert "no member replica beside it yet" in capsys.readouterr().out


def test_restore_into_an_empty_place(tmp_path: Path, live: Path) -> None:
    backup = backup_of(live, tmp_path / "usb")
    fresh = tmp_path / "new-card" / "kiosk.db"
    assert run("db", "restore", str(backup), "--db", str(fresh), "--yes") == 0
    assert journal(fresh) == journal(backup)


def _corrupt(path: Path) -> None:
    """Overwrite the middle of the file (b-tree pages, not the header) with garbage."""
    data = bytearray(path.read_bytes())
    page = 4096
    assert len(data) >= 4 * page
    data[2 * page : 4 * page] = b"\xa5" * (2 * page)
    path.write_bytes(bytes(data))


def _newer(path: Path) -> None:
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA user_version = {LATEST_VERSION + 1}")
    conn.close()


def _foreign(path: Path) -> None:
    path.unlink()
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE photos (id INTEGER PRIMARY KEY, name TEXT)")
    conn.execute("PRAGMA user_version = 2")
    conn.commit()
    conn.close()


def _text(path: Path) -> None:
    path.write_text("members.csv\nalice,bob\n" * 200)


@pytest.mark.parametrize(
    ("spoil", "says"),
    [
        (_corrupt, "damaged"),
        (_text, "not a SQLite database"),
        (_newer, f"schema version {LATEST_VERSION + 1} is newer than this kiosk knows"),
        (_foreign, "not a FitFlow kiosk database"),
    ],
)
def test_restore_refuses_an_unusable_file_and_leaves_the_live_one_untouched(
    live: Path, spoil, says: str, capsys
) -> None:
    backup = backup_of(live, live.parent / "backups")
    spoil(backup)
    before = sorted(p.name for p in live.parent.iterdir())
    live_digest = digest(live)
    asked = []
    code = run("db", "restore", str(backup), "--db", str(live), confirm=asked.append)
    assert code == 3
    err = capsys.readouterr().err
    assert says in err and "nothing was changed" in err
    assert asked == []  # refused before any question
    assert digest(live) == live_digest
    assert sorted(p.name for p in live.parent.iterdir()) == before


def test_restore_refuses_while_the_database_is_open_elsewhere(live: Path, capsys) -> None:
    backup = backup_of(live, live.parent / "backups")
    with Store.open(live, readonly=True) as owner_page:
        code = run("db", "restore", str(backup), "--db", str(live), "--yes")
        assert code == 1
        assert "open in another process" in capsys.readouterr().err
        assert owner_page.checkin_count() == 6
    assert not list(live.parent.glob("*before-restore*"))
    assert not list(live.parent.glob("*.tmp"))


def test_restore_refuses_while_a_kiosk_service_runs(live: Path, capsys) -> None:
    backup = backup_of(live, live.parent / "backups")
    live_digest = digest(live)
    code = run(
        "db", "restore", str(backup), "--db", str(live), "--yes",
        services=lambda: ["fitflow-sync.service"],
    )  # fmt: skip
    assert code == 1
    assert "sudo systemctl stop fitflow-scanner.service" in capsys.readouterr().err
    assert digest(live) == live_digest


def test_restore_asks_first_and_a_no_changes_nothing(live: Path, capsys) -> None:
    backup = backup_of(live, live.parent / "backups")
    with Store.open(live) as store:
        store.mark_synced([record(store).id], at=T0)
    live_digest = digest(live)
    questions: list[str] = []

    def refuse(question: str) -> bool:
        questions.append(question)
        return False

    assert run("db", "restore", str(backup), "--db", str(live), confirm=refuse) == 1
    assert "cancelled" in capsys.readouterr().err
    (question,) = questions
    assert "pending 4, synced 2" in question and "before-restore" in question
    assert digest(live) == live_digest
    assert run("db", "restore", str(backup), "--db", str(live), confirm=lambda q: True) == 0
    assert journal(live) == journal(backup)


def test_restore_refuses_the_live_file_itself(live: Path, capsys) -> None:
    assert run("db", "restore", str(live), "--db", str(live), "--yes") == 2
    assert "is the live database itself" in capsys.readouterr().err


def test_exclusive_access_folds_the_log_and_holds_off_writers(live: Path) -> None:
    with Store.open(live) as store:
        record(store)
    with exclusive_access(live):
        assert not Path(f"{live}-wal").exists() and not Path(f"{live}-shm").exists()
        # A process starting meanwhile cannot even open it (the switch back to WAL is a write).
        with pytest.raises(StoreError, match="stayed locked by another process"):
            Store.open(live, busy_timeout_ms=10)
    assert len(journal(live)) == 7


def test_active_services_reads_systemctl() -> None:
    def systemctl(argv):
        assert argv[:2] == ["systemctl", "is-active"]
        return subprocess.CompletedProcess(argv, 0, "active\ninactive\nactivating\n", "")

    assert active_services(systemctl) == ["fitflow-scanner.service", "fitflow-web.service"]

    def missing(argv):
        raise FileNotFoundError(argv[0])

    assert active_services(missing) is None


# -- check -----------------------------------------------------------------------------------------


def test_check_reports_integrity_schema_and_counts(live: Path, capsys) -> None:
    assert run("db", "check", "--db", str(live)) == 0
    out = capsys.readouterr().out
    assert f"{live}: ok" in out
    assert f"schema version: {LATEST_VERSION}" in out
    assert "check-ins: 6 (pending 4, synced 2, rejected 0), last seq 6" in out
    assert "replica: 3 members, version 7" in out


def test_check_of_an_unusable_database_exits_3(live: Path, capsys) -> None:
    _newer(live)
    assert run("db", "check", "--db", str(live)) == 3
    assert "NOT usable" in capsys.readouterr().out
    _text(live)
    assert run("db", "check", "--db", str(live)) == 3
    assert "not a SQLite database" in capsys.readouterr().err


def test_database_path_comes_from_the_config(live: Path, tmp_path: Path, capsys) -> None:
    config = tmp_path / "kiosk.toml"
    config.write_text(f'[store]\npath = "{live}"\n')
    assert run("db", "check", "--config", str(config)) == 0
    assert f"{live}: ok" in capsys.readouterr().out
    config.write_text('[store]\npath = ""\n')
    assert run("db", "backup", "--config", str(config)) == 2
    assert "invalid configuration" in capsys.readouterr().err


def test_restore_uses_now_for_names(live: Path) -> None:
    # Not the wall clock of the test machine: names come from the injected clock.
    backup = backup_of(live, live.parent / "backups")
    result = restore_backup(
        live, backup, now=T0 + timedelta(days=3), confirm=lambda q: True, services=no_services
    )
    assert result.kept_as == live.parent / "kiosk.db.before-restore-20240509T213000Z"
    assert result.checkins == {"pending": 4, "synced": 2, "rejected": 0}


def test_cli_restore_needs_force_to_leave_unuploaded_checkins_behind(live: Path, capsys) -> None:
    backup = backup_of(live, live.parent / "backups")
    with Store.open(live) as store:
        record(store)
    assert run("db", "restore", str(backup), "--db", str(live), "--yes") == 1
    assert "--force" in capsys.readouterr().err
    assert run("db", "restore", str(backup), "--db", str(live), "--yes", "--force") == 0
    assert journal(live) == journal(backup)
